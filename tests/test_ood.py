"""Out-of-distribution evaluation: the AUROC against the pairwise Mann-Whitney count, the
shifted text (offline, deterministic, unknown characters counted), and ood_metrics on a tiny
model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nanoGPT.data import TokenData
from nanoGPT.evaluate import evaluate
from nanoGPT.metrics import MetricAccumulator, WindowAccumulator
from nanoGPT.ood import auroc, encode_shifted, load_shifted, ood_report, shifted_source_text
from nanoGPT.tokenizer import CharTokenizer, gpt2_tokenizer, load_tokenizer
from tests.test_bayes import tiny_gpt


def pairwise_auroc(scores_in, scores_out) -> float:
    """The definition: the fraction of (in, out) pairs ordered out > in, ties counting 1/2."""
    pairs = list(itertools.product(scores_in, scores_out))
    return sum(1.0 if o > i else 0.5 if o == i else 0.0 for i, o in pairs) / len(pairs)


@pytest.mark.parametrize(
    "scores_in, scores_out",
    [
        ([0.1, 0.2, 0.3], [0.4, 0.5]),  # separated: 1
        ([0.4, 0.5], [0.1, 0.2, 0.3]),  # reversed: 0
        ([1.0, 1.0, 1.0], [1.0, 1.0]),  # all tied: 1/2
        ([0.3, 0.1, 0.5, 0.5, 0.2], [0.5, 0.2, 0.9, 0.0]),  # ties across the two sides
        ([2, 2, 3, 1, 1, 7], [1, 2, 2, 2, 3]),
    ],
)
def test_auroc_equals_the_pairwise_count(scores_in, scores_out):
    assert auroc(scores_in, scores_out) == pytest.approx(pairwise_auroc(scores_in, scores_out))


def test_auroc_on_random_scores_with_many_ties():
    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.integers(0, 5, 40), rng.integers(1, 6, 30)
    assert auroc(scores_in, scores_out) == pytest.approx(pairwise_auroc(scores_in, scores_out))
    assert auroc(torch.tensor(scores_in), torch.tensor(scores_out)) == auroc(scores_in, scores_out)


def test_shifted_text_is_offline_deterministic_and_counts_unknown_characters(char_data):
    tokenizer = load_tokenizer(char_data)
    first, second = load_shifted(tokenizer), load_shifted(tokenizer)
    assert first.characters >= 50_000
    np.testing.assert_array_equal(first.ids, second.ids)
    assert first.sha256 == second.sha256
    # the plays have no '_' or '=', the Python documentation has plenty: dropped and counted
    assert first.unknown_kinds["_"] > 100 and first.unknown_kinds["="] > 100
    assert first.handling == "dropped"
    assert len(first.ids) == first.characters - first.unknown_characters
    assert 0 < first.unknown_fraction < 0.2
    assert "=" not in tokenizer.decode(first.ids[:5000])


def test_unknown_characters_are_exactly_those_outside_the_vocabulary():
    tokenizer = CharTokenizer.from_text("abc ")
    shifted = encode_shifted(tokenizer, "a_b=c ab?")
    assert shifted.unknown_kinds == {"_": 1, "=": 1, "?": 1}
    assert tokenizer.decode(shifted.ids) == "abc ab"
    assert encode_shifted(gpt2_tokenizer(), shifted_source_text(2000)).unknown_characters == 0


def test_ood_report_scores_every_window_and_repeats_under_its_seed(char_data):
    tokenizer = load_tokenizer(char_data)
    data = TokenData(char_data, block_size=16, batch_size=4, device="cpu")
    shifted = load_shifted(tokenizer, max_chars=20_000)
    for variant in ("baseline", "bayes", "bayes_sigmoid"):
        torch.manual_seed(0)
        model = tiny_gpt(variant=variant, vocab_size=tokenizer.vocab_size, block_size=16)
        first = ood_report(model, data, tokenizer, "val", num_batches=2, seed=3, shifted=shifted)
        assert first == ood_report(model, data, tokenizer, "val", num_batches=2, seed=3, shifted=shifted)
        assert first["in_windows"] == first["shifted_windows"] == 8
        assert first["shifted_unknown_characters"] == shifted.unknown_characters
        for key, value in first.items():
            if key.startswith("ood_auroc_"):
                assert 0.0 <= value <= 1.0
        expected = {"ood_auroc_max_prob", "ood_auroc_entropy"}
        if variant != "baseline":
            expected |= {
                "ood_auroc_mutual_information",
                "in_mutual_information",
                "shifted_mutual_information",
            }
        if variant == "bayes_sigmoid":
            expected |= {"ood_auroc_set_size", "ood_auroc_max_sigma"}
        assert expected <= first.keys()


def test_held_out_sums_of_the_single_pass_equal_evaluate(char_data):
    """The final evaluation sums its held-out metrics and per-window sums inside ood_report's
    pass: the same numbers evaluate() gives on those windows, window by window."""
    tokenizer = load_tokenizer(char_data)
    data = TokenData(char_data, block_size=16, batch_size=4, device="cpu")
    token_bytes = torch.as_tensor(tokenizer.token_byte_lengths())
    torch.manual_seed(0)
    model = tiny_gpt(variant="sigmoid", vocab_size=tokenizer.vocab_size, block_size=16)
    accumulator, windows = MetricAccumulator(), WindowAccumulator()

    def sum_held_out(log_probs, targets, window, extras):
        accumulator.update(log_probs, targets, token_bytes[targets], extras)
        windows.update(log_probs, targets, window)

    report = ood_report(model, data, tokenizer, "val", num_batches=3, on_held_out=sum_held_out)
    single_pass = accumulator.compute()
    expected = evaluate(model, data, "val", 3, token_bytes)
    assert single_pass.keys() == expected.keys()
    for key, value in expected.items():
        assert single_pass[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    arrays = windows.arrays()
    assert len(arrays["nll"]) == 12 and arrays["tokens"] == [16] * 12
    per_window_nll = torch.tensor(arrays["nll"]) / 16
    assert per_window_nll.mean().item() == pytest.approx(report["in_nll"], rel=1e-6)
