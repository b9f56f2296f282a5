"""Diversity metrics for generated text: distinct-n and self-BLEU.

A text is a sequence of tokens (words, or token ids: anything hashable). These compare the
samples one model generated with each other; they say nothing about quality, only about how
repetitive a model's samples are within and across themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

Text = Sequence[Hashable]

# Chen & Cherry (2014) smoothing method 1: a zero clipped count becomes this epsilon, so one
# missing 4-gram does not zero the whole geometric mean. It is the smoothing of NLTK's
# SmoothingFunction().method1, which the usual self-BLEU (Texygen, Zhu et al. 2018) uses.
SMOOTHING_EPSILON = 0.1


def ngrams(text: Text, n: int) -> Counter[tuple[Hashable, ...]]:
    """Counts of the n-grams of one text (empty if the text is shorter than n)."""
    return Counter(tuple(text[i : i + n]) for i in range(len(text) - n + 1))


def distinct_n(texts: Sequence[Text], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over all samples (0.0 when there are none)."""
    pooled: Counter[tuple[Hashable, ...]] = Counter()
    for text in texts:
        pooled.update(ngrams(text, n))
    total = sum(pooled.values())
    return len(pooled) / total if total else 0.0


def bleu(hypothesis: Text, references: Sequence[Text], max_n: int = 4) -> float:
    """Sentence BLEU of one hypothesis against references, uniform weights over 1..max_n.

    Clipped n-gram precision (a hypothesis n-gram counts at most as often as it appears in
    any one reference), geometric mean, brevity penalty against the reference length closest
    to the hypothesis length (the shorter on a tie). Zero clipped counts are smoothed with
    `SMOOTHING_EPSILON` (Chen & Cherry method 1); an order with no hypothesis n-grams at all
    (hypothesis shorter than n) is taken as epsilon / 1. An empty hypothesis scores 0.
    """
    if not references:
        raise ValueError("BLEU needs at least one reference")
    return _bleu_from_counts(
        _all_orders(hypothesis, max_n),
        [_all_orders(ref, max_n) for ref in references],
        len(hypothesis),
        [len(ref) for ref in references],
    )


def self_bleu(texts: Sequence[Text], max_n: int = 4) -> float:
    """Mean over samples of each one's BLEU with all the other samples as references.

    1.0 for identical samples; lower means more diverse. Needs at least two samples.
    """
    if len(texts) < 2:
        raise ValueError(f"self-BLEU needs at least 2 samples, got {len(texts)}")
    # count every text's n-grams once, not once per hypothesis it is a reference for
    counts = [_all_orders(text, max_n) for text in texts]
    lengths = [len(text) for text in texts]
    scores = [
        _bleu_from_counts(counts[i], counts[:i] + counts[i + 1 :], lengths[i], lengths[:i] + lengths[i + 1 :])
        for i in range(len(texts))
    ]
    return sum(scores) / len(scores)


NgramCounts = list[Counter[tuple[Hashable, ...]]]  # index n-1 holds the n-gram counts


def _all_orders(text: Text, max_n: int) -> NgramCounts:
    return [ngrams(text, n) for n in range(1, max_n + 1)]


def _bleu_from_counts(
    hyp_counts: NgramCounts, ref_counts: list[NgramCounts], hyp_len: int, ref_lens: list[int]
) -> float:
    if hyp_len == 0:
        return 0.0
    max_n = len(hyp_counts)
    log_precision_sum = 0.0
    for order in range(max_n):
        clipped = sum(
            min(count, max(ref[order][gram] for ref in ref_counts))
            for gram, count in hyp_counts[order].items()
        )
        total = max(sum(hyp_counts[order].values()), 1)
        log_precision_sum += math.log((clipped or SMOOTHING_EPSILON) / total)

    closest_ref_len = min(ref_lens, key=lambda r: (abs(r - hyp_len), r))
    brevity_penalty = 1.0 if hyp_len > closest_ref_len else math.exp(1 - closest_ref_len / hyp_len)
    return brevity_penalty * math.exp(log_precision_sum / max_n)
