"""The augmenter: alignment, positives, batched filter = reference, cache, teachers, errors."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nanoGPT.augment.cache as cache_module
from augment_demo import DemoConfig, run_demo
from nanoGPT.atomic import atomic_write_json
from nanoGPT.augment import build_augmenter
from nanoGPT.augment.augmenter import DataAugmenter
from nanoGPT.augment.cache import build_cache, cache_paths, open_cache
from nanoGPT.augment.reference import reference_window_perplexity
from nanoGPT.augment.settings import AugmentSettings, select_positions
from nanoGPT.augment.teachers import (
    CheckpointTeacher,
    HFTeacher,
    Teacher,
    load_teacher,
    probable_candidates,
    top_candidates,
)
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.losses import positive_ids, sparse_bce
from nanoGPT.model import GPT
from nanoGPT.prepare import shakespeare_splits, write_text_dataset
from nanoGPT.tokenizer import CharTokenizer, gpt2_tokenizer, load_tokenizer
from nanoGPT.train import train
from nanoGPT.variants.base import ExtraTargets
from tests.conftest import tiny_config


def write_cycle_data(out_dir, letters: str) -> str:
    text = letters * 600
    write_text_dataset(
        str(out_dir), CharTokenizer.from_text(text), {"train": text[:4000], "val": text[4000:]}
    )
    return str(out_dir)


def train_teacher(data_dir, tmp_path, **overrides) -> str:
    cfg = tiny_config(data_dir, tmp_path, **overrides)
    train(cfg)
    return f"ckpt:{cfg.out_dir}"


@pytest.fixture(scope="module")
def cycle_data(tmp_path_factory) -> str:
    """'abcdefgh' repeated: every next character is certain."""
    return write_cycle_data(tmp_path_factory.mktemp("cycle"), "abcdefgh")


@pytest.fixture(scope="module")
def cycle_teacher(cycle_data, tmp_path_factory) -> str:
    return train_teacher(
        cycle_data,
        tmp_path_factory.mktemp("cycle_teacher"),
        block_size=16,
        max_iters=30,
        eval_interval=30,
        learning_rate=2e-2,
    )


@pytest.fixture(scope="module")
def small_char(tmp_path_factory) -> str:
    """20k characters of the plays: small enough to cache in a test."""
    text, splits = shakespeare_splits()
    out_dir = str(tmp_path_factory.mktemp("small_char"))
    write_text_dataset(
        out_dir,
        CharTokenizer.from_text(text),
        {"train": splits["train"][:20_000], "val": splits["val"][:4_000]},
    )
    return out_dir


@pytest.fixture(scope="module")
def char_teacher(small_char, tmp_path_factory) -> str:
    """A briefly trained baseline: a spread-out distribution, so filters have work to do."""
    return train_teacher(small_char, tmp_path_factory.mktemp("char_teacher"), max_iters=30, eval_interval=30)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> str:
    """A randomly initialised GPT-2 (GPT-2 vocabulary) saved as a local Hugging Face folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("hf_gpt2"))
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def augment_config(data_dir, tmp_path, teacher, **overrides):
    settings = dict(
        variant="sigmoid",
        augment=True,
        teacher=teacher,
        augment_filter="prob",
        augment_min_prob=0.05,
        augment_k=5,
        augment_positions="all",
        batch_size=16,
    )
    return tiny_config(data_dir, tmp_path, **{**settings, **overrides})


@pytest.fixture(scope="module")
def built_cache(small_char, char_teacher, tmp_path_factory):
    """The config of a cache built over small_char, and that cache's .bin path."""
    cfg = augment_config(small_char, tmp_path_factory.mktemp("cache_run"), char_teacher)
    return cfg, build_cache(cfg, show_progress=False)


def augmenter_for(teacher_spec, data_dir, **settings) -> DataAugmenter:
    teacher = load_teacher(teacher_spec, "cpu", load_tokenizer(data_dir))
    return DataAugmenter(teacher, AugmentSettings(teacher=teacher_spec, **settings), seed=7)


def as_sets(positives: torch.Tensor) -> torch.Tensor:
    """Slots sorted: the order of candidates within a position carries no meaning."""
    return positives.sort(dim=-1).values


# --- alignment and positives --------------------------------------------------------------


def test_candidates_are_the_teachers_guess_for_the_next_token(cycle_data, cycle_teacher):
    augmenter = augmenter_for(cycle_teacher, cycle_data, k=2, filter="prob", min_prob=0.5, positions="all")
    batch = TokenData(cycle_data, 16, 4, "cpu").train_batch(3)
    positives = augmenter(batch)
    assert positives.shape == (4, 16, 2) and positives.dtype == torch.long
    # near-certain teacher: exactly one candidate passes at each position, and it is y[:, t]
    assert torch.equal(positives[..., 0], batch.y)
    assert (positives[..., 1] == -1).all()
    # the input token x[:, t] (an off-by-one) is never proposed
    assert not (positives == batch.x[..., None]).any()
    proposal = augmenter.propose(batch.x, batch.y, np.broadcast_to(np.arange(16), (4, 16)))
    assert (proposal.log_probs[..., 0] > np.log(0.9)).all()


def test_true_token_always_positive_and_padding_never(small_char, char_teacher):
    augmenter = augmenter_for(char_teacher, small_char, k=8, filter="perplexity", window=8, positions="one")
    batch = TokenData(small_char, 32, 6, "cpu").train_batch(5)
    chosen = select_positions(batch.starts, 32, "one", seed=7)
    # a threshold at the median window perplexity: about half the candidates pass
    median = augmenter.propose(batch.x, batch.y, chosen).perplexity.median().item()
    augmenter.settings = dataclasses.replace(augmenter.settings, threshold=median)
    rng_before = torch.get_rng_state()
    positives = augmenter(batch)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training RNG stream untouched
    assert torch.equal(positives, augmenter(batch))  # a pure function of the batch
    # "one": extras at exactly the chosen position of each row, nowhere else
    has_extras = (positives >= 0).any(-1)
    assert has_extras.sum() > 0
    for b in range(6):
        assert set(torch.nonzero(has_extras[b]).flatten().tolist()) <= {int(chosen[b, 0])}
    kept = positives[positives >= 0]
    assert 0 < kept.numel() < positives[has_extras].numel()  # the filter keeps some, not all

    ids, is_positive = positive_ids(batch.y, positives)
    extras = positives.reshape(-1, 8)
    for row in range(ids.size(0)):
        seen = ids[row][is_positive[row]].tolist()
        expected = {int(batch.y.reshape(-1)[row])} | {i for i in extras[row].tolist() if i >= 0}
        assert sorted(seen) == sorted(expected)  # each positive once, the true token always
    # the loss sees exactly these positives: equal to BCE against the dense multi-hot target
    vocab = load_tokenizer(small_char).vocab_size
    logits = torch.randn(6, 32, vocab)
    dense = torch.zeros(6 * 32, vocab)
    dense[torch.arange(6 * 32), batch.y.reshape(-1)] = 1
    rows, slots = torch.nonzero(extras >= 0, as_tuple=True)
    dense[rows, extras[rows, slots]] = 1
    loss, counts = sparse_bce(logits, batch.y, positives)
    reference = F.binary_cross_entropy_with_logits(logits.reshape(-1, vocab), dense, reduction="none").sum(-1)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    assert torch.equal(counts, dense.sum(-1).long())


def test_positions_fraction_and_all(small_char):
    starts = np.array([0, 5, 1000])
    quarter = select_positions(starts, 32, "0.25", seed=1)
    assert quarter.shape == (3, 8) and all(len(set(r)) == 8 for r in quarter.tolist())
    assert np.array_equal(quarter, select_positions(starts, 32, "0.25", seed=1))
    assert not np.array_equal(quarter, select_positions(starts, 32, "0.25", seed=2))
    assert np.array_equal(select_positions(starts, 32, "all", 1), np.tile(np.arange(32), (3, 1)))
    with pytest.raises(UserError, match="augment_positions"):
        AugmentSettings(positions="some").validate()


# --- the perplexity filter ----------------------------------------------------------------


@pytest.mark.parametrize("window, block_size", [(2, 32), (8, 32), (32, 16)])
def test_batched_perplexity_filter_equals_one_candidate_at_a_time(
    small_char, char_teacher, window, block_size
):
    augmenter = augmenter_for(
        char_teacher, small_char, k=5, filter="perplexity", window=window, threshold=1e9
    )
    batch = TokenData(small_char, block_size, 2, "cpu").train_batch(11)
    T = block_size  # positions near both ends of the rows, where windows are cut
    positions = np.array([[0, 1, 5, T // 2, T - 2, T - 1], [3, 4, T // 2 - 1, T - 5, T - 3, T - 1]])
    proposal = augmenter.propose(batch.x, batch.y, positions)
    batched = proposal.perplexity
    reference = torch.zeros_like(batched)
    for b in range(2):
        row = batch.x[b].tolist() + [int(batch.y[b, -1])]
        for j, t in enumerate(positions[b]):
            for c in range(5):
                reference[b, j, c] = reference_window_perplexity(
                    augmenter.teacher, row, int(t), int(proposal.ids[b, j, c]), window
                )
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=0)
    # a threshold between two neighbouring scores keeps some candidates and drops others:
    # the batched filter keeps exactly those the reference keeps
    values = reference.flatten().sort().values
    threshold = float(values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    augmenter.settings = dataclasses.replace(augmenter.settings, threshold=threshold)
    keep = augmenter.propose(batch.x, batch.y, positions).keep
    assert torch.equal(keep, reference < threshold)
    assert 0 < keep.sum() < keep.numel()


class SoftmaxTeacher(Teacher):
    """A bare head over hidden rows: enough for the candidate functions."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.vocab_size, self.device = weight, weight.size(0), weight.device

    def head_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(hidden @ self.weight.T, dim=-1)


@pytest.mark.parametrize("min_prob", [0.002, 0.02, 0.2])
def test_prob_filter_without_top_k_equals_top_k_then_threshold(min_prob, monkeypatch):
    """probable_candidates (training's prob filter) against top_candidates + the threshold, in
    chunks of 7 rows: rows with none, some, and more than k tokens above the threshold."""
    import nanoGPT.augment.teachers as augmentation_module

    generator = torch.Generator().manual_seed(0)
    teacher = SoftmaxTeacher(torch.randn(300, 16, generator=generator))
    # from nearly flat to peaked (not exactly flat: ties at the k-th place may break either way)
    scales = torch.tensor([0.03, 0.1, 0.5, 1.0, 3.0, 10.0]).repeat(5)[:, None]
    hidden = torch.randn(30, 16, generator=generator) * scales
    monkeypatch.setitem(augmentation_module.LOGIT_CHUNK_ELEMENTS, "cpu", 7 * 300)
    k = 10
    top_log_probs, top_ids = top_candidates(teacher, hidden, k)
    above = top_log_probs >= np.log(min_prob)
    log_probs, ids = probable_candidates(teacher, hidden, k, np.log(min_prob))
    assert torch.equal(ids, torch.where(above, top_ids, -1))
    torch.testing.assert_close(log_probs, torch.where(above, top_log_probs, -torch.inf))
    if min_prob == 0.02:  # the case of every kind of row at once
        kept_per_row = above.sum(1)
        assert (kept_per_row == 0).any() and (kept_per_row == k).any()
        assert ((0 < kept_per_row) & (kept_per_row < k)).any()


# --- the cache ----------------------------------------------------------------------------


def test_cache_and_online_give_the_same_positives(small_char, char_teacher, built_cache):
    cfg, bin_path = built_cache
    assert cache_module.cache_name(cfg) == "out-prob"  # <teacher's folder>-<filter>
    assert bin_path == os.path.join(small_char, "train.aug_out-prob.bin")
    record = json.load(open(cache_paths(small_char, "out-prob")[1]))
    assert record["complete"] and record["made_with"]["settings"]["augment_min_prob"] == 0.05
    data = TokenData(small_char, 32, 4, "cpu")
    # windows that start where the cache's blocks start read the context the cache used
    batch = data.batch_at("train", np.array([0, 32, 32 * 70, 32 * 600]))
    for positions in ("all", "one", "0.5"):
        run = dataclasses.replace(cfg, augment_positions=positions)
        cached = open_cache(run, small_char, "cpu")(batch)
        online = augmenter_for(
            char_teacher, small_char, k=5, filter="prob", min_prob=0.05, positions=positions
        )
        online.seed = run.seed
        expected = online(batch)
        assert (expected >= 0).sum() > 4
        assert torch.equal(as_sets(cached), as_sets(expected)), positions


def test_cache_and_online_give_the_same_teacher_log_probs(small_char, char_teacher, built_cache):
    """What distill reads: the kept ids with the teacher's log-probability of each, the same
    online and from the cache (which stores them as float16), and the teacher's own numbers."""
    cfg, _ = built_cache
    batch = TokenData(small_char, 32, 4, "cpu").batch_at("train", np.array([0, 32, 32 * 70, 32 * 600]))
    cached = open_cache(cfg, small_char, "cpu", with_log_probs=True)(batch)
    online = augmenter_for(char_teacher, small_char, k=5, filter="prob", min_prob=0.05, positions="all")
    online.with_log_probs = True
    expected = online(batch)
    assert isinstance(cached, ExtraTargets) and isinstance(expected, ExtraTargets)
    assert cached.log_probs.dtype == expected.log_probs.dtype == torch.float32
    assert torch.equal(expected.ids, online.positives(batch.x, batch.y, np.tile(np.arange(32), (4, 1))).ids)
    for targets in (cached, expected):  # slots in id order: their order carries no meaning
        order = targets.ids.argsort(dim=-1)
        targets.ids, targets.log_probs = targets.ids.gather(-1, order), targets.log_probs.gather(-1, order)
    assert torch.equal(cached.ids, expected.ids)
    kept = expected.ids >= 0
    assert kept.sum() > 20 and torch.equal(torch.isinf(cached.log_probs), ~kept)
    torch.testing.assert_close(cached.log_probs[kept], expected.log_probs[kept], rtol=2**-10, atol=0)
    teacher = online.teacher.log_probs(batch.x).gather(-1, expected.ids.clamp_min(0))
    torch.testing.assert_close(expected.log_probs[kept], teacher[kept])
    assert (expected.log_probs[kept] >= np.log(0.05)).all()


def test_a_data_limited_cache_covers_only_the_runs_prefix(small_char, built_cache, tmp_path):
    """train_fraction=0.25: the teacher runs over the first quarter only, its rows equal the
    full cache's there, a run with another fraction is refused, and no window reads past it."""
    cfg, full_path = built_cache
    data_dir = tmp_path / "data"
    shutil.copytree(small_char, data_dir, ignore=shutil.ignore_patterns("train.aug_*"))
    limited = dataclasses.replace(cfg, train_fraction=0.25, data_dir=str(data_dir))
    bin_path = build_cache(limited, show_progress=False)
    covered = TokenData(str(data_dir), 32, 4, "cpu", train_fraction=0.25).train_tokens
    record = json.load(open(cache_paths(str(data_dir), cache_module.cache_name(limited))[1]))
    assert record["made_with"]["settings"]["train_tokens"] == covered
    assert record["num_blocks"] == -(-(covered - 1) // 32)  # the full file has 4x as many
    storage = record["made_with"]["storage"]
    rows = np.fromfile(bin_path, dtype=cache_module.row_dtype(storage))
    full_rows = np.fromfile(full_path, dtype=cache_module.row_dtype(storage))
    assert np.array_equal(rows[:covered]["ids"], full_rows[:covered]["ids"])
    assert (rows[covered + 32 :]["ids"] == 0).all()  # never computed
    with pytest.raises(UserError, match="train_tokens"):
        open_cache(dataclasses.replace(limited, train_fraction=0.5), str(data_dir), "cpu")
    reader = open_cache(limited, str(data_dir), "cpu")
    data = TokenData(str(data_dir), 32, 4, "cpu", train_fraction=0.25)
    assert (reader(data.batch_at("train", np.array([0, covered - 33]))) >= -1).all()
    with pytest.raises(ValueError, match="reaches past"):
        reader(data.batch_at("train", np.array([covered])))


def test_stale_missing_or_foreign_cache_is_refused(small_char, built_cache, tmp_path):
    cfg, _ = built_cache
    with pytest.raises(UserError, match=r"augment_min_prob=0\.05 \(this run: 0\.1\)"):
        open_cache(dataclasses.replace(cfg, augment_min_prob=0.1), small_char, "cpu")
    with pytest.raises(UserError, match="block_size=32"):
        open_cache(dataclasses.replace(cfg, block_size=16), small_char, "cpu")
    with pytest.raises(UserError, match="missing"):
        open_cache(dataclasses.replace(cfg, augment_cache="nothing"), small_char, "cpu")
    # the same cache files beside a train.bin with one token changed
    other = tmp_path / "other"
    shutil.copytree(small_char, other)
    tokens = np.memmap(other / "train.bin", dtype=np.uint16, mode="r+")
    tokens[100] = (tokens[100] + 1) % 60
    tokens.flush()
    del tokens
    with pytest.raises(UserError, match="other data"):
        open_cache(cfg, str(other), "cpu")
    # a cache of the ids-only format 1 (before the rows carried log-probs) is refused by name
    bin_path, json_path = cache_paths(str(other), cache_module.cache_name(cfg))
    record = json.load(open(json_path))
    atomic_write_json(json_path, {**record, "format": "nanoGPT-objectives/augment-cache/1"})
    with pytest.raises(UserError, match="older format .*augment-cache/1"):
        open_cache(cfg, str(other), "cpu")


def test_interrupted_cache_build_resumes(small_char, built_cache, monkeypatch, tmp_path):
    cfg, reference_bin = built_cache
    cfg = dataclasses.replace(cfg, augment_cache="resumed")
    calls = {"n": 0}
    real_positives = DataAugmenter.positives

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_positives(self, *args)

    monkeypatch.setattr(DataAugmenter, "positives", interrupted)
    monkeypatch.setattr(cache_module, "PROGRESS_EVERY_S", 0.0)  # record after every pass
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, show_progress=False)
    bin_path, json_path = cache_paths(small_char, "resumed")
    record = json.load(open(json_path))
    assert record["blocks_done"] == 3 * cfg.batch_size and not record["complete"]
    with pytest.raises(UserError, match="incomplete"):
        open_cache(cfg, small_char, "cpu")

    calls["n"] = -(10**9)  # no more interruptions; count the passes the second run makes
    build_cache(cfg, show_progress=False)
    passes = calls["n"] + 10**9
    targets = os.path.getsize(os.path.join(small_char, "train.bin")) // 2 - 1
    full_blocks, rest = divmod(targets, cfg.block_size)
    all_passes = -(-full_blocks // cfg.batch_size) + (rest > 0)
    assert passes == all_passes - 3  # it continued, it did not start over
    assert open(bin_path, "rb").read() == open(reference_bin, "rb").read()
    assert json.load(open(json_path))["complete"]
    calls["n"] = -(10**9)
    build_cache(cfg, show_progress=False)  # complete and current: nothing to do
    assert calls["n"] == -(10**9)


# --- teachers -----------------------------------------------------------------------------


def test_hugging_face_teacher_from_a_local_folder(bpe_data, hf_folder, tmp_path):
    from transformers import GPT2LMHeadModel

    cfg = augment_config(
        bpe_data,
        tmp_path,
        hf_folder,
        augment_filter="perplexity",
        augment_k=4,
        augment_positions="one",
        augment_window=8,
        augment_threshold=1e9,
        batch_size=2,
        block_size=16,
    )
    student = GPT(dataclasses.replace(cfg.model_args(), vocab_size=50257))
    data = TokenData(bpe_data, 16, 2, "cpu")
    augmenter = build_augmenter(cfg, student, data, "cpu")  # the code path of teacher="gpt2"
    assert isinstance(augmenter.teacher, HFTeacher) and augmenter.teacher.vocab_size == 50257
    batch = data.train_batch(0)
    positives = augmenter(batch)
    assert positives.shape == (2, 16, 4)
    # candidates are the HF model's own top-4 after reading x[:, 0..t]
    reference = GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        logits = reference(batch.x).logits
    torch.testing.assert_close(
        augmenter.teacher.log_probs(batch.x), logits.log_softmax(-1), rtol=1e-5, atol=1e-5
    )
    chosen = select_positions(batch.starts, 16, "one", cfg.seed)
    for b in range(2):
        t = int(chosen[b, 0])
        assert set(positives[b, t].tolist()) == set(logits[b, t].topk(4).indices.tolist())
        assert (positives[b, torch.arange(16) != t] == -1).all()


def test_hub_teacher_offline_is_a_clear_error(bpe_data):
    with pytest.raises(UserError, match="ckpt:") as err:
        load_teacher("gpt2", "cpu", gpt2_tokenizer())
    assert "local folder" in str(err.value)


def test_vocabulary_mismatch_is_refused(
    small_char, cycle_data, cycle_teacher, char_teacher, hf_folder, tmp_path
):
    with pytest.raises(UserError, match="Hugging Face model"):
        load_teacher(hf_folder, "cpu", load_tokenizer(small_char))
    with pytest.raises(
        UserError,
        match=r"teacher ckpt:.*\(80 characters\) is not the one .* "
        r"trained on \(8 characters\)",
    ):
        load_teacher(cycle_teacher, "cpu", load_tokenizer(small_char), small_char)
    with pytest.raises(
        UserError,
        match=r"GPT-2 BPE \(50257 ids\)\) is not the one .* "
        r"\(80 characters\)",
    ):
        load_teacher(char_teacher, "cpu", gpt2_tokenizer())
    same_size = write_cycle_data(tmp_path / "ijk", "ijklmnop")  # 8 other characters
    with pytest.raises(UserError, match="other characters"):
        load_teacher(cycle_teacher, "cpu", load_tokenizer(same_size))
    assert isinstance(load_teacher(cycle_teacher, "cpu", load_tokenizer(cycle_data)), CheckpointTeacher)


# --- the training loop --------------------------------------------------------------------


def read_train_log(cfg):
    with open(os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


@pytest.mark.parametrize("source", ["online", "cache"])
def test_sigmoid_trains_with_augmentation(small_char, char_teacher, built_cache, tmp_path, source):
    cache_cfg, _ = built_cache
    cfg = dataclasses.replace(
        cache_cfg,
        out_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"),
        augment_source=source,
        augment_positions="0.5",
        batch_size=4,
        max_iters=8,
        eval_interval=8,
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["val/nll"])
    log = read_train_log(cfg)
    assert len(log) == 8 and all(np.isfinite(r["loss"]) for r in log)
    # extra positives reached the loss: more than the true token per position on average
    assert np.mean([r["positives"] for r in log]) > 1.1


@pytest.mark.parametrize("source", ["online", "cache"])
def test_distill_trains_on_the_teachers_probabilities(small_char, built_cache, tmp_path, source):
    """distill from the tiny teacher, online and from the cache sigmoid reads (one cache serves
    both: the same candidates, with their log-probs): the loss falls."""
    cache_cfg, _ = built_cache
    cfg = dataclasses.replace(
        cache_cfg,
        variant="distill",
        out_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"),
        augment_source=source,
        max_iters=16,
        eval_interval=16,
        learning_rate=1e-2,
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["val/nll"])
    log = read_train_log(cfg)
    losses = [r["loss"] for r in log]
    assert len(losses) == 16 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    # the teacher's share of the targets reached the loss: 1 - alpha where it kept a candidate
    assert 0.3 < np.mean([r["teacher_weight"] for r in log]) <= 0.5


def test_augment_needs_a_multi_hot_variant(small_char, char_teacher, tmp_path):
    cfg = augment_config(small_char, tmp_path, char_teacher, variant="baseline")
    with pytest.raises(UserError, match="multi-hot variant"):
        train(cfg)
    with pytest.raises(UserError, match="augment_source"):
        train(dataclasses.replace(cfg, variant="sigmoid", augment_source="disk"))


def test_demo_shows_candidates_and_scores(char_teacher, hf_folder, capsys):
    rows = run_demo(
        DemoConfig(
            teacher=char_teacher,
            text="ROMEO:\nMy [l]ord, and more",
            augment_k=6,
            augment_filter="prob",
            augment_min_prob=0.02,
            device="cpu",
        )
    )
    assert len(rows) == 6 and rows[0]["prob"] >= rows[-1]["prob"]
    assert [r["kept"] for r in rows] == [r["prob"] >= 0.02 for r in rows]
    assert all(r["window_ppl"] > 1 for r in rows)
    out = capsys.readouterr().out
    assert "true next token 'l'" in out and "window ppl" in out
    # the object API's sentences: one per kept candidate other than the true letter
    made = [line.strip() for line in out.splitlines() if line.startswith("  'ROMEO")]
    others = [r["token"] for r in rows if r["kept"] and r["token"] != "l"]
    assert others and made == [repr(f"ROMEO:\nMy {c}ord, and more") for c in sorted(others)]
    rows = run_demo(DemoConfig(teacher=hf_folder, augment_k=3, device="cpu"))
    assert len(rows) == 3
    assert "'The boy went to the' -> true next token ' park'" in capsys.readouterr().out
