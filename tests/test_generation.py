"""Generation options with Hugging Face's semantics: the same tokens as transformers' generate()
on an imported GPT-2, each option doing what its definition says, beam search with the KV cache
and through a Bayesian and a sigmoid variant's predictive."""

import pytest
import torch

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.prepare import shakespeare_splits
from nanoGPT.sampling import generate
from nanoGPT.tokenizer import CharTokenizer

PROMPTS = ("ROMEO: But soft, what light", "JULIET: O Romeo, Romeo! whe")


@pytest.fixture(scope="module")
def chars() -> CharTokenizer:
    text, _ = shakespeare_splits()
    return CharTokenizer.from_text(text)


@pytest.fixture(scope="module")
def prompt(chars) -> torch.Tensor:
    return torch.tensor([chars.encode(p) for p in PROMPTS])


@pytest.fixture(scope="module")
def hf_and_ours(chars, tmp_path_factory):
    """A tiny random GPT-2 over the plays' characters, saved with save_pretrained, and the same
    weights imported into the framework (the baseline variant)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # a wide init gives peaked, varied next-token distributions (no near-ties for float noise)
    space = chars.stoi[" "]
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=chars.vocab_size,
        initializer_range=0.3,
        bos_token_id=space,
        eos_token_id=space,
    )
    folder = str(tmp_path_factory.mktemp("hf_char_gpt2"))
    GPT2LMHeadModel(config).save_pretrained(folder)
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    # HF's greedy search processes raw logits, its beam search log-probs; ours always processes
    # the predictive's log-probs, so HF is given log-probs as its logits (the same for beams)
    hf.lm_head.register_forward_hook(lambda module, args, out: out.log_softmax(-1))
    return hf, GPT.from_pretrained(folder, ModelConfig()).eval()


HF_CASES = [
    dict(num_beams=1),
    dict(num_beams=1, repetition_penalty=1.6, no_repeat_ngram_size=3),
    dict(num_beams=4),
    dict(num_beams=3, length_penalty=0.0, early_stopping=True),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never", no_repeat_ngram_size=2),
    dict(num_beams=2, length_penalty=-1.0, repetition_penalty=1.3),
    # sampling draws the same tokens too: the same processed distributions, the same RNG calls
    dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, repetition_penalty=1.2),
    dict(do_sample=True, num_beams=3, temperature=1.3, top_k=5),
]


@pytest.mark.parametrize("options", HF_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_greedy_beam_search_and_sampling_give_the_tokens_of_hf_generate(hf_and_ours, prompt, chars, options):
    hf, ours = hf_and_ours
    # an end-of-sequence token this model does produce: some rows and beams end early
    eos = chars.stoi['"']
    options = {"do_sample": False, **options}
    torch.manual_seed(5)
    with torch.no_grad():
        expected = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=12,
            eos_token_id=eos,
            pad_token_id=eos,
            **options,
        )
    torch.manual_seed(5)
    greedy = not options.pop("do_sample")
    got = generate(ours, prompt, 12, greedy=greedy, eos_token_id=eos, **options)
    assert torch.equal(got, expected)
    assert got.size(1) > prompt.size(1)


def test_eos_and_length_penalty_matter_in_these_cases(hf_and_ours, prompt, chars):
    """The comparison above would pass with end-of-sequence or length_penalty ignored if
    no beam ended early: check that some do, and that the penalty changes the winner."""
    _, ours = hf_and_ours
    eos = chars.stoi['"']
    ended = generate(ours, prompt, 12, greedy=True, num_beams=3, length_penalty=0.0, eos_token_id=eos)
    assert (ended[:, prompt.size(1) :] == eos).any()
    longer = generate(ours, prompt, 12, greedy=True, num_beams=3, length_penalty=3.0, eos_token_id=eos)
    assert ended.shape != longer.shape or not torch.equal(ended, longer)


def count_repeats(row: list[int], prompt_len: int) -> int:
    """Generated tokens that already occurred earlier in the row."""
    return sum(row[i] in row[:i] for i in range(prompt_len, len(row)))


def repeated_bigrams(row: list[int], prompt_len: int) -> int:
    """Generated tokens that complete a bigram already in the row (the prompt's own repeats
    are the prompt's)."""
    return sum((row[i - 1], row[i]) in set(zip(row[: i - 1], row[1:i])) for i in range(prompt_len, len(row)))


def test_each_sampling_option_does_what_its_definition_says(hf_and_ours, prompt):
    _, model = hf_and_ours
    greedy = generate(model, prompt, 20, greedy=True)
    for option in (dict(temperature=1e-4), dict(top_k=1), dict(top_p=1e-6)):
        torch.manual_seed(1)
        assert torch.equal(generate(model, prompt, 20, **option), greedy), option
    torch.manual_seed(1)
    assert not torch.equal(generate(model, prompt, 20, temperature=2.0), greedy)

    n = prompt.size(1)
    plain = generate(model, prompt, 30, greedy=True)
    no_repeat = generate(model, prompt, 30, greedy=True, no_repeat_ngram_size=2)
    assert sum(repeated_bigrams(row, n) for row in plain.tolist()) > 0  # so the ban has work to do
    assert sum(repeated_bigrams(row, n) for row in no_repeat.tolist()) == 0

    penalised = generate(model, prompt, 30, greedy=True, repetition_penalty=3.0)
    assert sum(count_repeats(r, n) for r in penalised.tolist()) < sum(
        count_repeats(r, n) for r in plain.tolist()
    )


def test_eos_ends_a_row_and_pads_it(hf_and_ours, prompt, chars):
    _, model = hf_and_ours
    plain = generate(model, prompt, 12, greedy=True)
    eos = int(plain[0, prompt.size(1) + 2])  # the third token row 0 generates
    out = generate(model, prompt, 12, greedy=True, eos_token_id=eos)
    first = out[0, prompt.size(1) :].tolist().index(eos)
    assert first <= 2 and set(out[0, prompt.size(1) + first :].tolist()) == {eos}


@pytest.mark.parametrize("variant", ["sigmoid", "bayes"])
def test_beam_search_with_the_kv_cache_equals_without_for_every_predictive(variant, prompt, chars):
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=40,
        vocab_size=chars.vocab_size,
        variant=variant,
        bayes_samples=3,
    )
    model = GPT(config).eval()
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(2)  # a Bayesian head draws the same weight samples in both runs
        runs.append(generate(model, prompt, 20, greedy=True, num_beams=3, use_cache=use_cache))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (2, prompt.size(1) + 20)  # past block_size: cropped and recomputed
    # one new token: the beam's best is the predictive's most likely token
    if variant == "sigmoid":
        hidden = model.hidden_states(prompt)
        best = model.variant.log_probs(hidden[:, -1]).argmax(-1)
        assert torch.equal(generate(model, prompt, 1, greedy=True, num_beams=3)[:, -1], best)


def test_beam_search_with_the_kv_cache_equals_without_on_a_llama_trunk(prompt, chars):
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=64,
        vocab_size=chars.vocab_size,
        bias=False,
        norm="rmsnorm",
        mlp="swiglu",
        pos_emb="rope",
    )
    model = GPT(config).eval()
    options = dict(greedy=True, num_beams=4, no_repeat_ngram_size=3, length_penalty=0.5)
    assert torch.equal(
        generate(model, prompt, 15, **options), generate(model, prompt, 15, use_cache=False, **options)
    )


def test_bad_settings_are_one_line_errors(hf_and_ours, prompt):
    _, model = hf_and_ours
    for bad, message in (
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(num_beams=0), "num_beams must be >= 1"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(early_stopping="sometimes"), "early_stopping must be"),
    ):
        with pytest.raises(UserError, match=message):
            generate(model, prompt, 3, **bad)
