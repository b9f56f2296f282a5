import math

import pytest

from nanoGPT.text_metrics import SMOOTHING_EPSILON, bleu, distinct_n, ngrams, self_bleu


def words(*lines: str) -> list[list[str]]:
    return [line.split() for line in lines]


def test_ngrams_and_distinct_n_by_hand():
    texts = words("the cat sat", "the cat ran")
    assert ngrams(texts[0], 2) == {("the", "cat"): 1, ("cat", "sat"): 1}
    assert ngrams(texts[0], 4) == {}
    # unigrams: the cat sat the cat ran -> 4 unique of 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 unique of 4
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # repetition inside one sample counts too: "a a a a" has 1 unique of 3 bigrams
    assert distinct_n(words("a a a a"), 2) == pytest.approx(1 / 3)
    assert distinct_n(words("a b"), 3) == 0.0


def test_self_bleu_identical_samples_is_one():
    line = "to be or not to be that is the question"
    assert self_bleu(words(line, line, line)) == pytest.approx(1.0)


def test_self_bleu_by_hand_two_samples():
    texts = words("a b c d", "a b c e")
    # each against the other: p1 = 3/4, p2 = 2/3, same length so no brevity penalty
    assert self_bleu(texts, max_n=2) == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
    # p3 = 1/2 and the zero 4-gram match is smoothed to epsilon / 1
    expected = (3 / 4 * 2 / 3 * 1 / 2 * SMOOTHING_EPSILON) ** (1 / 4)
    assert self_bleu(texts) == pytest.approx(expected)


def test_brevity_penalty_and_clipping():
    short, long = words("a b", "a b c d")
    # short vs long: full precision, penalty exp(1 - 4/2); long vs short: p1 = 2/4, p2 = 1/3
    assert bleu(short, [long], max_n=2) == pytest.approx(math.exp(-1))
    assert bleu(long, [short], max_n=2) == pytest.approx(math.sqrt(2 / 4 * 1 / 3))
    assert self_bleu([short, long], max_n=2) == pytest.approx((math.exp(-1) + math.sqrt(1 / 6)) / 2)
    # "the" appears 3 times but at most twice in any one reference: clipped to 2 of 3
    hyp = "the the the".split()
    refs = words("the cat the mat", "the end")
    # closest reference length to 3 is 2 (tie with 4 broken to the shorter): no penalty
    assert bleu(hyp, refs, max_n=1) == pytest.approx(2 / 3)


def test_errors_and_empty():
    with pytest.raises(ValueError):
        self_bleu(words("only one sample"))
    with pytest.raises(ValueError):
        bleu(["a"], [])
    assert bleu([], [["a"]]) == 0.0
