import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from nanoGPT.metrics import (
    MetricAccumulator,
    SampleMixture,
    brier,
    entropy,
    expected_calibration_error,
    sigmoid_token_stats,
    token_byte_table,
)

# Crafted top-1 predictions, 15 bins of width 1/15:
#   0.95 -> bin 14: 2 tokens, accuracy 1/2, gap 0.45, weight 2/6 -> 0.15
#   0.55 -> bin 8:  3 tokens, accuracy 2/3, gap 0.11666..., weight 3/6 -> 0.058333...
#   0.45 -> bin 6:  1 token,  accuracy 0,   gap 0.45, weight 1/6 -> 0.075
CONFIDENCES = [0.95, 0.95, 0.55, 0.55, 0.55, 0.45]
CORRECT = [1, 0, 1, 1, 0, 0]
ECE_BY_HAND = 0.15 + 0.5 * (2 / 3 - 0.55) + 0.45 / 6


def crafted_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs over 4 classes whose top-1 confidences and correctness are the above."""
    rows = [[c] + [(1 - c) / 3] * 3 for c in CONFIDENCES]
    log_probs = torch.tensor(rows).log()
    targets = torch.tensor([0 if ok else 1 for ok in CORRECT])
    return log_probs, targets


def random_batch(n: int, vocab: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return {
        "log_probs": F.log_softmax(3 * torch.randn(n, vocab, generator=gen), -1),
        "targets": targets,
        "token_bytes": torch.randint(1, 5, (n,), generator=gen),
        "extras": {"set_size": torch.rand(n, generator=gen) * 10},
    }


def assert_same_diagram(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert [v is None for v in got[key]] == [v is None for v in values], key
        assert [v for v in got[key] if v is not None] == pytest.approx(
            [v for v in values if v is not None], rel=1e-9
        ), key


def test_ece_by_hand():
    confidences = torch.tensor(CONFIDENCES, dtype=torch.float64)
    ece = expected_calibration_error(confidences, torch.tensor(CORRECT))
    assert ece == pytest.approx(ECE_BY_HAND, abs=1e-12)
    # a calibrated bin has no error, an overconfident one its gap; 1.0 lands in the last bin
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.0
    ece = expected_calibration_error(torch.tensor([0.7, 0.7]), torch.tensor([1, 0]))
    assert ece == pytest.approx(0.2)
    assert expected_calibration_error(torch.tensor([1.0]), torch.tensor([1])) == 0.0


def test_accumulator_ece_and_reliability_match_crafted_predictions():
    log_probs, targets = crafted_batch()
    acc = MetricAccumulator()
    acc.update(log_probs, targets)
    metrics = acc.compute()
    assert metrics["ece"] == pytest.approx(ECE_BY_HAND, abs=1e-6)
    assert metrics["acc"] == pytest.approx(3 / 6)
    assert metrics["tokens"] == 6
    diagram = acc.reliability()
    assert len(diagram["edges"]) == 16 and diagram["edges"][-1] == 1.0
    assert diagram["count"][14] == 2 and diagram["count"][8] == 3 and diagram["count"][6] == 1
    assert sum(diagram["count"]) == 6
    assert diagram["accuracy"][8] == pytest.approx(2 / 3)
    assert diagram["confidence"][14] == pytest.approx(0.95)
    assert diagram["accuracy"][0] is None  # empty bin


def test_brier_matches_dense_one_hot():
    batch = random_batch(50, 11, seed=0)
    probs = batch["log_probs"].exp()
    dense = (probs - F.one_hot(batch["targets"], 11).float()).square().sum(-1)
    torch.testing.assert_close(brier(batch["log_probs"], batch["targets"]), dense)
    # a certain, correct prediction scores 0; a certain, wrong one scores 2
    sure = torch.tensor([[0.0, -math.inf], [0.0, -math.inf]])
    torch.testing.assert_close(brier(sure, torch.tensor([0, 1])), torch.tensor([0.0, 2.0]))


def test_nll_acc_against_cross_entropy():
    batch = random_batch(64, 13, seed=1)
    acc = MetricAccumulator()
    acc.update(batch["log_probs"], batch["targets"])
    metrics = acc.compute()
    expected_nll = F.nll_loss(batch["log_probs"], batch["targets"]).item()
    assert metrics["nll"] == pytest.approx(expected_nll, rel=1e-6)
    assert metrics["ppl"] == pytest.approx(math.exp(expected_nll), rel=1e-6)
    expected_acc = (batch["log_probs"].argmax(-1) == batch["targets"]).float().mean().item()
    assert metrics["acc"] == pytest.approx(expected_acc)
    assert "bpb" not in metrics  # no byte counts were given


def test_two_batches_equal_one_big_batch():
    first, second = random_batch(40, 17, seed=2), random_batch(25, 17, seed=3)
    split = MetricAccumulator()
    split.update(**first)
    split.update(**second)
    whole = MetricAccumulator()
    whole.update(
        torch.cat([first["log_probs"], second["log_probs"]]),
        torch.cat([first["targets"], second["targets"]]),
        torch.cat([first["token_bytes"], second["token_bytes"]]),
        {"set_size": torch.cat([first["extras"]["set_size"], second["extras"]["set_size"]])},
    )
    split_metrics, whole_metrics = split.compute(), whole.compute()
    assert split_metrics.keys() == whole_metrics.keys()
    assert set(whole_metrics) == {"nll", "ppl", "bpb", "acc", "ece", "brier", "set_size", "tokens"}
    for name, value in whole_metrics.items():
        assert split_metrics[name] == pytest.approx(value, rel=1e-9), name
    assert_same_diagram(split.reliability(), whole.reliability())


def test_ignored_targets_and_batched_shapes():
    batch = random_batch(30, 7, seed=4)
    targets = batch["targets"].clone()
    targets[::3] = -1
    keep = targets >= 0
    padded = batch["log_probs"].clone()
    padded[~keep, 0] = -math.inf  # ignored rows may hold anything without poisoning the sums
    masked = MetricAccumulator()
    masked.update(padded.view(5, 6, 7), targets.view(5, 6), batch["token_bytes"].view(5, 6))
    kept = MetricAccumulator()
    kept.update(batch["log_probs"][keep], targets[keep], batch["token_bytes"][keep])
    assert masked.compute() == pytest.approx(kept.compute())
    assert masked.compute()["tokens"] == 20


def test_bits_per_byte_on_known_bytes():
    text = "naïve café — Ω"  # multi-byte characters: bytes != characters
    vocab = sorted(set(text))
    byte_table = token_byte_table(lambda i: vocab[i].encode("utf-8"), len(vocab))
    targets = torch.tensor([vocab.index(ch) for ch in text])
    token_bytes = byte_table[targets]
    assert token_bytes.sum().item() == len(text.encode("utf-8"))
    # a uniform model spends log2(V) bits on every character
    uniform = torch.full((len(text), len(vocab)), -math.log(len(vocab)))
    acc = MetricAccumulator()
    acc.update(uniform, targets, token_bytes)
    expected = len(text) * math.log2(len(vocab)) / len(text.encode("utf-8"))
    assert acc.compute()["bpb"] == pytest.approx(expected, rel=1e-6)
    assert acc.compute()["nll"] == pytest.approx(math.log(len(vocab)), rel=1e-6)


def test_extras_mean_and_reserved_names():
    acc = MetricAccumulator()
    log_probs, targets = crafted_batch()
    acc.update(log_probs, targets, extras={"sigma_true": torch.full((6,), 0.25)})
    acc.update(log_probs[:2], targets[:2], extras={"sigma_true": torch.ones(2)})
    assert acc.compute()["sigma_true"] == pytest.approx((6 * 0.25 + 2) / 8)
    with pytest.raises(ValueError, match="nll"):
        acc.update(log_probs, targets, extras={"nll": torch.zeros(6)})


def test_all_reduce_guards_outside_distributed():
    acc = MetricAccumulator()
    acc.update(**random_batch(8, 5, seed=5))
    before = acc.compute()
    acc.all_reduce()  # no process group: nothing to sum
    assert acc.compute() == before
    with pytest.raises(RuntimeError):
        acc.all_reduce()
    with pytest.raises(RuntimeError):
        acc.update(**random_batch(8, 5, seed=6))


def _reduce_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    acc = MetricAccumulator()
    acc.update(**random_batch(20 + 7 * rank, 9, seed=10 + rank))
    acc.all_reduce()
    if rank == 0:
        torch.save((acc.compute(), acc.reliability()), result_file)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes joining a gloo group
def test_all_reduce_over_two_ranks_equals_one_process(tmp_path):
    result_file = str(tmp_path / "result.pt")
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), result_file), nprocs=2)
    reduced, reduced_diagram = torch.load(result_file)
    single = MetricAccumulator()
    for rank in range(2):
        single.update(**random_batch(20 + 7 * rank, 9, seed=10 + rank))
    assert reduced == pytest.approx(single.compute(), rel=1e-12)
    assert_same_diagram(reduced_diagram, single.reliability())


def test_entropy_handles_zero_probabilities():
    log_probs = torch.tensor([[0.0, -math.inf], [math.log(0.5), math.log(0.5)]])
    torch.testing.assert_close(entropy(log_probs), torch.tensor([0.0, math.log(2)]))


def bayes_token_stats(sample_log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """(S, N, V) log-probs of S weight samples, fed to a SampleMixture one at a time."""
    mixture = SampleMixture()
    for one_sample in sample_log_probs:
        mixture.add(one_sample)
    return mixture.token_stats()


def test_bayes_mutual_information():
    gen = torch.Generator().manual_seed(7)
    one = F.log_softmax(torch.randn(1, 5, 10, generator=gen), -1)
    identical = bayes_token_stats(one.expand(4, 5, 10))
    torch.testing.assert_close(identical["mutual_information"], torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(identical["predictive_entropy"], entropy(one[0]))

    differing = bayes_token_stats(F.log_softmax(torch.randn(4, 5, 10, generator=gen), -1))
    assert (differing["mutual_information"] > 1e-3).all()

    # 2 samples, 2 classes, by hand: p1 = (0.9, 0.1), p2 = (0.2, 0.8); mean = (0.55, 0.45)
    samples = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]]).log()
    stats = bayes_token_stats(samples)

    def h(p: float) -> float:
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    assert stats["predictive_entropy"].item() == pytest.approx(h(0.55), rel=1e-5)
    assert stats["expected_entropy"].item() == pytest.approx((h(0.9) + h(0.2)) / 2, rel=1e-5)
    expected_mi = h(0.55) - (h(0.9) + h(0.2)) / 2
    assert stats["mutual_information"].item() == pytest.approx(expected_mi, rel=1e-4)

    # two certain samples that disagree: all uncertainty is epistemic, ln 2 of it
    certain = bayes_token_stats(torch.tensor([[[0.0, -math.inf]], [[-math.inf, 0.0]]]))
    assert certain["expected_entropy"].item() == 0.0
    assert certain["mutual_information"].item() == pytest.approx(math.log(2))


def test_sigmoid_token_stats_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.2]])
    targets = torch.tensor([0, 2])
    stats = sigmoid_token_stats(logits, targets)

    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    def sigma(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    bce_by_hand = [
        softplus(2.0) + softplus(-1.0) + softplus(0.5) - 2.0,
        softplus(-3.0) + softplus(1.0) + softplus(-0.2) + 0.2,
    ]
    torch.testing.assert_close(stats["bce"], torch.tensor(bce_by_hand))
    dense_bce = F.binary_cross_entropy_with_logits(
        logits, F.one_hot(targets, 3).float(), reduction="none"
    ).sum(-1)
    torch.testing.assert_close(stats["bce"], dense_bce)
    torch.testing.assert_close(stats["sigma_true"], torch.tensor([sigma(2.0), sigma(-0.2)]))
    torch.testing.assert_close(stats["set_size"], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(stats["set_has_true"], torch.tensor([1.0, 0.0]))
