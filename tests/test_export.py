"""Export to transformers: AutoModelForCausalLM reloads the framework's logits on a GPT-2 and a
LLaMA-style trunk; the tokenizer comes along; heads and trunks transformers lacks are refused."""

import dataclasses

import pytest
import torch

import export as export_script  # the root script (pytest puts the repo root on sys.path)
from nanoGPT.checkpoint import checkpoint_path, checkpoint_tokenizer, load_model
from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.export import export, hf_tokenizer
from nanoGPT.model import GPT
from nanoGPT.prepare import shakespeare_splits
from nanoGPT.sampling import generate
from nanoGPT.tokenizer import CharTokenizer, gpt2_tokenizer
from tests.conftest import tiny_config

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, dropout=0.0)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos_emb="rope", rope_theta=500.0)
TEXT = "ROMEO: But soft, what light through yonder window breaks?"


def perturbed(config: ModelConfig, stage: int = 3) -> GPT:
    """A model whose norms, biases and LoRA adapters are not at their init (1 and 0), so that
    a weight mapped to the wrong place changes the logits."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    model.set_progressive_stage(stage)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def reloaded_logits(folder: str, idx: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.variant.logits(model.hidden_states(idx))


CASES = {
    "gpt2": dict(),
    "gpt2-untied-nobias": dict(variant="baseline_untied", bias=False),
    "llama": dict(LLAMA, bias=False),
    "llama-bias-smooth": dict(LLAMA, bias=True, variant="smooth"),
    # layers sharing blocks, attention through LoRA adapters: exported as they compute
    "gpt2-progressive-stage2": dict(progressive_group=2, stage=2),
    "llama-progressive-stage3-lora": dict(
        LLAMA, bias=False, progressive_group=2, progressive_stage3_lora=True, stage=3
    ),
}


@pytest.fixture(scope="module")
def chars() -> CharTokenizer:
    return CharTokenizer.from_text(shakespeare_splits()[0])


@pytest.mark.parametrize("case", CASES)
def test_a_reloaded_export_gives_the_framework_logits(case, chars, tmp_path):
    options = dict(CASES[case])
    stage = options.pop("stage", 3)
    model = perturbed(dataclasses.replace(TINY, vocab_size=chars.vocab_size, **options), stage)
    lines = export(model, None, str(tmp_path))
    idx = torch.tensor([chars.encode(TEXT[:24]), chars.encode(TEXT[-24:])])
    assert torch.allclose(reloaded_logits(str(tmp_path), idx), our_logits(model, idx), atol=1e-5)
    assert ("LlamaForCausalLM" if "llama" in case else "GPT2LMHeadModel") in lines[0]


def test_a_character_vocabulary_exports_as_a_tokenizer(chars, tmp_path):
    from transformers import AutoTokenizer

    fast, line = hf_tokenizer(chars)
    fast.save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded.encode(TEXT + "\n") == chars.encode(TEXT + "\n")
    assert reloaded.decode(chars.encode(TEXT)) == TEXT
    assert line == f"tokenizer: {chars.vocab_size} characters (one id each)"


def test_export_script_writes_a_folder_that_reloads_with_its_tokenizer(char_data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanoGPT.train import train

    cfg = tiny_config(char_data, tmp_path, max_iters=2, eval_interval=2, block_size=24, **LLAMA)
    train(cfg)
    folder = str(tmp_path / "hf")
    export_script.main([f"--out_dir={cfg.out_dir}", f"--export_dir={folder}"])
    assert f"to {folder}" in capsys.readouterr().out
    model, ckpt = load_model(checkpoint_path(cfg.out_dir, "last"), "cpu")
    chars = checkpoint_tokenizer(ckpt)
    assert AutoTokenizer.from_pretrained(folder).encode(TEXT) == chars.encode(TEXT)
    idx = torch.tensor([chars.encode(TEXT)[:12]])
    assert torch.allclose(reloaded_logits(folder, idx), our_logits(model, idx), atol=1e-5)
    # greedy continuation: the same tokens from transformers' generate() and ours
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=8, do_sample=False)
    assert torch.equal(generate(model, idx, 8, greedy=True), expected)


def test_the_gpt2_bpe_tokenizer_exports_offline(tmp_path):
    from transformers import AutoTokenizer

    fast, line = hf_tokenizer(gpt2_tokenizer())
    fast.save_pretrained(str(tmp_path))
    reloaded, ours = AutoTokenizer.from_pretrained(str(tmp_path)), gpt2_tokenizer()
    text = TEXT + " <|endoftext|> Juliet's  ¿naïve?\n\n  "
    assert reloaded.encode(text) == ours.encode(text)
    assert reloaded.decode(ours.encode(text)) == text
    assert reloaded.eos_token_id == ours.eot_id and line == "tokenizer: GPT-2 BPE (GPT2TokenizerFast)"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(variant="sigmoid"),
            "variant 'sigmoid' cannot be exported to transformers: its predictive is not a softmax",
        ),
        (dict(variant="bayes"), "variant 'bayes' cannot be exported"),
        (dict(variant="baseline_bias"), "adds a bias to the logits"),
        (dict(norm="rmsnorm"), "norm=rmsnorm, mlp=gelu, pos_emb=learned has no transformers model"),
        (dict(arch="conv", n_layer=3), "arch=conv has no transformers equivalent"),
        (dict(predict_ahead=4), "predicts the token 4 positions ahead"),
    ],
)
def test_what_transformers_cannot_represent_is_refused_in_one_line(overrides, message, tmp_path):
    model = GPT(dataclasses.replace(TINY, vocab_size=61, **overrides))
    with pytest.raises(UserError, match=message) as refused:
        export(model, None, str(tmp_path / "hf"))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "hf").exists()
