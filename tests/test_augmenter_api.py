"""The augmenter as a library object (the source project's API): DataAugmenter(), its
tokenizer, augment() -> (B, V) multi-hot, substitutions(); and candidates drawn by seeded
top-k / top-p sampling, online, from a cache and through the object."""

import dataclasses

import numpy as np
import pytest
import torch

from nanoGPT.augment.augmenter import DataAugmenter
from nanoGPT.augment.cache import build_cache, open_cache
from nanoGPT.augment.reference import reference_window_perplexity
from nanoGPT.augment.teachers import (
    ModelTeacher,
    hashed_gumbel,
    load_teacher,
    sampled_candidates,
    top_candidates,
)
from nanoGPT.checkpoint import checkpoint_path, load_model
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.tokenizer import load_tokenizer
from tests.test_augmentation import SoftmaxTeacher, augment_config, train_teacher, write_cycle_data
from tests.test_hub import cache_as_hub_download, online  # noqa: F401 (a fixture)

SENTENCES = ["The boy went to the park to play.", "She sat on a bench"]


@pytest.fixture(scope="module")
def gpt2_augmenter(hf_gpt2_folder) -> DataAugmenter:
    return DataAugmenter(hf_gpt2_folder, device="cpu", k=6)


@pytest.fixture(scope="module")
def cycle(tmp_path_factory) -> tuple[str, str]:
    """'abcdefgh' repeated, and a teacher trained on it (near-certain of every next letter)."""
    data = write_cycle_data(tmp_path_factory.mktemp("cycle"), "abcdefgh")
    run = tmp_path_factory.mktemp("cycle_teacher")
    return data, train_teacher(data, run, block_size=16, max_iters=30, eval_interval=30, learning_rate=2e-2)


def reference_logits(folder: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    with torch.no_grad():
        return GPT2LMHeadModel.from_pretrained(folder).eval()(ids).logits


def true_ids(row: torch.Tensor) -> set[int]:
    return set(row.nonzero()[:, 0].tolist())


def test_augment_marks_the_original_token_and_the_teachers_top_k(gpt2_augmenter, hf_gpt2_folder):
    augmenter = gpt2_augmenter
    encoded = augmenter.tokenizer(SENTENCES, return_tensors="pt", padding=True).to("cpu")
    ids, mask = encoded["input_ids"], encoded.attention_mask
    assert mask[1].tolist() == [1] * 5 + [0] * (ids.size(1) - 5)  # padded on the right
    multi_hot, index = augmenter.augment(ids, target_indices=[5, 4], do_filter=False, attention_mask=mask)
    assert multi_hot.shape == (2, 50257) and multi_hot.dtype == torch.bool
    assert index.tolist() == [5, 4]
    logits = reference_logits(hf_gpt2_folder, ids)
    for b, i in enumerate([5, 4]):
        original = int(ids[b, i])
        top = set(logits[b, i - 1].topk(6).indices.tolist())  # proposed after reading tokens 0..i-1
        assert true_ids(multi_hot[b]) == top | {original}
    # the padding after the second sentence changes nothing
    alone = augmenter.tokenizer(SENTENCES[1:], return_tensors="pt")["input_ids"]
    assert torch.equal(augmenter.augment(alone, 4, do_filter=False)[0][0], multi_hot[1])
    texts = augmenter.substitutions(ids, index, multi_hot, mask)
    assert len(texts[1]) == multi_hot[1].sum() - 1
    words = [augmenter.tokenizer.decode([t]) for t in sorted(true_ids(multi_hot[1]) - {int(ids[1, 4])})]
    assert texts[1] == [f"She sat on a{word}" for word in words]


@pytest.mark.parametrize("window", [4, 64])
def test_the_filter_keeps_what_the_window_perplexity_of_the_unpadded_sentence_allows(gpt2_augmenter, window):
    """Windows shorter and longer than the sentences; the second one padded: its windows
    are those of the sentence alone (reference_window_perplexity, one candidate at a time)."""
    encoded = gpt2_augmenter.tokenizer(SENTENCES, return_tensors="pt", padding=True)
    ids, mask = encoded.input_ids, encoded.attention_mask
    augmenter = DataAugmenter(gpt2_augmenter.teacher, gpt2_augmenter.settings, window=window)
    targets = [7, 4]
    everything, _ = augmenter.augment(ids, targets, do_filter=False, attention_mask=mask)
    rows = [ids[b, : int(mask[b].sum())].tolist() for b in range(2)]
    ppl = {
        (b, c): reference_window_perplexity(augmenter.teacher, rows[b], i - 1, c, window)
        for b, i in enumerate(targets)
        for c in true_ids(everything[b]) - {rows[b][i]}
    }
    positions = np.array(targets)[:, None] - 1
    proposal = augmenter.propose(ids[:, :-1], ids[:, 1:], positions, True, ends=mask.sum(1).numpy())
    for (b, c), value in ppl.items():
        slot = proposal.ids[b, 0].tolist().index(c)
        assert float(proposal.perplexity[b, 0, slot]) == pytest.approx(value, rel=1e-4)
    threshold = float(np.median(list(ppl.values())))
    strict = DataAugmenter(augmenter.teacher, augmenter.settings, threshold=threshold)
    kept, _ = strict.augment(ids, targets, attention_mask=mask)
    for b, i in enumerate(targets):
        expected = {c for (row, c), value in ppl.items() if row == b and value < threshold}
        assert true_ids(kept[b]) == expected | {rows[b][i]}
    assert 0 < sum(kept.sum(1)) - 2 < len(ppl)


def test_sampled_candidates_are_drawn_from_the_top_k_and_repeat_under_a_seed(hf_gpt2_folder, gpt2_augmenter):
    teacher = gpt2_augmenter.teacher
    encoded = gpt2_augmenter.tokenizer(
        ["The boy went to the park", "One two three four five"], return_tensors="pt", padding=True
    )
    ids, mask = encoded.input_ids, encoded.attention_mask

    def drawn(seed: int, **options) -> list[set[int]]:
        augmenter = DataAugmenter(teacher, seed=seed, k=3, sample_top_k=12, **options)
        multi_hot, _ = augmenter.augment(ids, [5, 4], do_filter=False, attention_mask=mask)
        return [true_ids(row) - {int(ids[b, i])} for b, (row, i) in enumerate(zip(multi_hot, [5, 4]))]

    logits = reference_logits(hf_gpt2_folder, ids)
    first = drawn(seed=1)
    for b, i in enumerate([5, 4]):
        assert len(first[b]) >= 2 and first[b] <= set(logits[b, i - 1].topk(12).indices.tolist())
    assert drawn(seed=1) == first
    assert any(drawn(seed=s) != first for s in (2, 3, 4))
    # a nucleus of one token: the most likely alone
    assert drawn(seed=1, sample_top_p=1e-6) == [
        {int(logits[b, i - 1].argmax())} - {int(ids[b, i])} for b, i in [(0, 5), (1, 4)]
    ]


def test_sampling_follows_the_teachers_distribution():
    """Gumbel-top-1 with hashed noise over 20000 keys draws each token as often as it is likely,
    and top-k draws k distinct tokens, most likely first."""
    log_p = torch.tensor([0.6, 0.3, 0.1]).log()
    keys = torch.arange(20_000)
    noise = hashed_gumbel(5, keys, torch.arange(3).expand(len(keys), 3))
    counts = torch.bincount((log_p + noise).argmax(1), minlength=3).float() / len(keys)
    torch.testing.assert_close(counts, log_p.exp(), atol=0.015, rtol=0)
    teacher = SoftmaxTeacher(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)))
    hidden = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    log_probs, ids = sampled_candidates(teacher, hidden, 4, 10, 1.0, torch.arange(40), seed=3)
    top_log_probs, top_ids = top_candidates(teacher, hidden, 10)
    assert all(len(set(row.tolist())) == 4 for row in ids)
    assert all(set(a.tolist()) <= set(b.tolist()) for a, b in zip(ids, top_ids))
    assert (log_probs.diff(dim=1) <= 0).all() and not torch.equal(ids, top_ids[:, :4])


def test_a_self_trained_checkpoint_and_a_loaded_model_teach(cycle):
    cycle_data, cycle_teacher = cycle
    augmenter = DataAugmenter(cycle_teacher, device="cpu", k=2, filter="none")
    encoded = augmenter.tokenizer(["abcdefgh", "cdef"], return_tensors="pt", padding=True)
    multi_hot, index = augmenter.augment(encoded.input_ids, [3, 2], attention_mask=encoded.attention_mask)
    tokenizer = load_tokenizer(cycle_data)
    # the cycle teacher is near-certain of the next letter: the original is its first guess
    assert multi_hot.shape == (2, 8) and multi_hot.sum(1).tolist() == [2, 2]
    assert multi_hot[0, tokenizer.encode("d")[0]] and multi_hot[1, tokenizer.encode("e")[0]]
    texts = augmenter.substitutions(encoded.input_ids, index, multi_hot, encoded.attention_mask)
    assert [len(t) for t in texts] == [1, 1] and texts[0][0][:3] + texts[0][0][4:] == "abcefgh"
    model, _ = load_model(checkpoint_path(cycle_teacher[len("ckpt:") :]), "cpu")
    loaded = DataAugmenter(model, device="cpu", k=2, filter="none", tokenizer=tokenizer)
    assert isinstance(loaded.teacher, ModelTeacher)
    assert torch.equal(
        loaded.augment(encoded.input_ids, [3, 2], attention_mask=encoded.attention_mask)[0], multi_hot
    )


def test_sampled_candidates_from_a_cache_equal_online(cycle, tmp_path):
    cycle_data, cycle_teacher = cycle
    cfg = augment_config(
        cycle_data,
        tmp_path,
        cycle_teacher,
        augment_filter="none",
        augment_k=2,
        augment_sample_top_k=5,
        block_size=16,
        batch_size=8,
    )
    build_cache(cfg, show_progress=False)
    batch = TokenData(cycle_data, 16, 4, "cpu").batch_at("train", np.array([0, 16, 160, 320]))
    cached = open_cache(cfg, cycle_data, "cpu")(batch)
    teacher = load_teacher(cycle_teacher, "cpu", load_tokenizer(cycle_data))
    from_teacher = DataAugmenter(teacher, seed=cfg.seed, k=2, filter="none", sample_top_k=5, positions="all")(
        batch
    )
    assert torch.equal(cached.sort(-1).values, from_teacher.sort(-1).values)
    with pytest.raises(UserError, match="other settings: seed"):
        open_cache(dataclasses.replace(cfg, seed=cfg.seed + 1), cycle_data, "cpu")


@pytest.mark.usefixtures("online")
def test_gpt2_by_default_from_the_local_cache_or_one_clear_line(monkeypatch, hf_gpt2_folder):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="'gpt2' is not in the local Hugging Face cache") as err:
        DataAugmenter()
    assert "\n" not in str(err.value)
    cache_as_hub_download(hf_gpt2_folder, huggingface_hub.constants.HF_HUB_CACHE, "gpt2")
    augmenter = DataAugmenter(device="cpu")
    assert augmenter.settings.k == 50 and augmenter.settings.filter == "perplexity"
    ids = augmenter.tokenizer(SENTENCES[:1], return_tensors="pt").input_ids
    multi_hot, index = augmenter.augment(ids, target_indices=[5], do_filter=True)
    assert multi_hot.shape == (1, 50257) and multi_hot[0, ids[0, 5]]


def test_user_errors_are_one_line(gpt2_augmenter):
    augmenter = gpt2_augmenter
    encoded = augmenter.tokenizer(SENTENCES, return_tensors="pt", padding=True)
    ids, mask = encoded.input_ids, encoded.attention_mask
    cases = [
        (lambda: augmenter.augment(ids, [0, 1]), "target index 0 of sentence 0 must be in"),
        (lambda: augmenter.augment(ids, [5, 5], attention_mask=mask), "target index 5 of sentence 1"),
        (lambda: augmenter.augment(ids, [1, 2, 3]), "3 entries for 2 sentences"),
        (lambda: augmenter.augment(ids, 1, attention_mask=mask.flip(1)), "pad sentences on the right"),
        (lambda: augmenter.tokenizer(SENTENCES, return_tensors="pt"), "padding=True"),
        (lambda: DataAugmenter(augmenter.teacher, kk=3), "unknown augmenter setting kk"),
        (lambda: DataAugmenter(augmenter.teacher, k=5, sample_top_k=4), "augment_sample_top_k must be"),
        (lambda: DataAugmenter(augmenter.teacher, sample_top_p=0), "augment_sample_top_p must be in"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
