"""sample.py: GPT-2 weights from a local Hugging Face folder, dtype autocast, compile."""

import pytest
import torch

import sample  # the root script (pytest puts the repo root on sys.path)
from nanoGPT.config import ModelConfig, TrainConfig
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.runtime import inference_runtime, setup_runtime
from nanoGPT.sampling import compile_for_generation, generate
from nanoGPT.tokenizer import gpt2_tokenizer

PROMPT = "ROMEO: But soft, what light"


def greedy_config(folder: str, **overrides) -> sample.SampleConfig:
    settings = dict(
        init_from=folder, start=PROMPT, num_samples=2, max_new_tokens=6, do_sample=False, device="cpu"
    )
    return sample.SampleConfig(**{**settings, **overrides})


def test_init_from_a_local_folder_continues_as_the_hf_model_does(hf_gpt2_folder, capsys):
    from transformers import GPT2LMHeadModel

    options = {"init_from": hf_gpt2_folder, "start": PROMPT, "num_samples": 2, "max_new_tokens": 6}
    texts = sample.main(
        [f"--{key}={value}" for key, value in options.items()] + ["--do_sample=False", "--device=cpu"]
    )
    assert texts[0] == texts[1] and texts[0].startswith(PROMPT)
    assert capsys.readouterr().out.count(PROMPT) == 2
    # the same tokens as the Hugging Face model's own greedy continuation
    tokenizer = gpt2_tokenizer()
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    reference = GPT2LMHeadModel.from_pretrained(hf_gpt2_folder).eval()
    with torch.no_grad():
        for _ in range(6):
            next_id = reference(idx).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, next_id], dim=1)
    assert texts[0] == tokenizer.decode(idx[0].tolist())


def test_bfloat16_on_cpu_samples_under_autocast(hf_gpt2_folder, monkeypatch):
    rt = inference_runtime("cpu", "bfloat16")
    assert rt.ptdtype == torch.bfloat16 and isinstance(rt.autocast(), torch.autocast)
    seen = {}

    def generate_and_record(*args, **kwargs):
        seen["autocast"] = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
        return generate(*args, **kwargs)

    monkeypatch.setattr(sample, "generate", generate_and_record)
    texts = sample.sample(greedy_config(hf_gpt2_folder, dtype="bfloat16", do_sample=True, max_new_tokens=8))
    assert seen["autocast"] == (True, torch.bfloat16)
    assert len(texts) == 2 and all(text.startswith(PROMPT) and len(text) > len(PROMPT) for text in texts)


def test_dtype_is_resolved_once_for_sampling_and_training():
    assert inference_runtime("cpu", "auto").ptdtype == torch.float32
    assert inference_runtime("cpu", "float32").autocast().__class__ is not torch.autocast
    # training honours bfloat16 on the CPU too (tests/test_dtype.py)
    assert setup_runtime(TrainConfig(device="cpu", dtype="bfloat16")).ptdtype == torch.bfloat16
    for make in (
        lambda: inference_runtime("cpu", "fp8"),
        lambda: setup_runtime(TrainConfig(device="cpu", dtype="fp8")),
    ):
        with pytest.raises(UserError, match="dtype must be one of auto, float32, bfloat16, float16"):
            make()


def test_hugging_face_models_are_refused_where_they_cannot_be_sampled(hf_gpt2_folder, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(UserError, match="leave variant unset"):
        sample.sample(greedy_config(hf_gpt2_folder, variant="sigmoid"))
    small = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=97)
    GPT2LMHeadModel(small).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="vocabulary of 97 tokens.*GPT-2 tokenizer"):
        sample.sample(greedy_config(str(tmp_path)))


def test_beam_search_options_on_the_command_line_give_hf_generate_text(hf_gpt2_folder, capsys):
    from transformers import GPT2LMHeadModel

    options = dict(do_sample=False, num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.2)
    options.update(length_penalty=0.5, early_stopping="true")
    texts = sample.main([f"--{key}={value}" for key, value in options.items()] + greedy_argv(hf_gpt2_folder))
    tokenizer = gpt2_tokenizer()
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    options["early_stopping"] = True
    reference = GPT2LMHeadModel.from_pretrained(hf_gpt2_folder).eval()
    with torch.no_grad():  # beam search processes log-probs in HF too
        out = reference.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=6, **options)
    assert texts == [tokenizer.decode(out[0].tolist())] * 2
    with pytest.raises(SystemExit) as exit_code:
        sample.main(["--early_stopping=maybe", *greedy_argv(hf_gpt2_folder)])
    assert exit_code.value.code == 2
    assert "error: early_stopping must be true, false or never, got 'maybe'" in capsys.readouterr().err


def greedy_argv(folder: str) -> list[str]:
    config = greedy_config(folder)
    return [
        f"--{key}={getattr(config, key)}" for key in ("init_from", "start", "num_samples", "max_new_tokens")
    ]


def test_a_sample_ends_at_the_first_end_of_text_after_the_prompt():
    assert sample.until_eos([5, 9, 3, 9, 4, 9, 9], 2, 9) == [5, 9, 3]  # the prompt's own eos stays
    assert sample.until_eos([5, 9, 3, 4], 2, None) == [5, 9, 3, 4]


@pytest.mark.slow
def test_compiled_generation_equals_eager():
    # minutes of compiling on 2 CPU cores: the prompt step, the one-token steps and, past
    # block_size, the cropped recomputation are separate graphs
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97, dropout=0.0)
    model = GPT(config).eval()
    idx = torch.randint(97, (2, 5))
    eager = generate(model, idx, 20, greedy=True)
    assert torch.equal(generate(compile_for_generation(model), idx, 20, greedy=True), eager)
