"""Run the probes of a task on an extractor's features; the probe metrics of a checkpoint for
the comparison report, and the randomly initialised trunk that is their floor.

Result keys are "<task>/<head>/<pooling>" (accuracy, or a retrieval metric), plus
"<task>/zero_shot_sum" and "<task>/zero_shot_mean" (a checkpoint's own predictive picks the
choice with the highest summed, or per-token mean, log-probability) and "<task>/chance"."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from nanoGPT.config import ModelConfig
from nanoGPT.model import GPT
from nanoGPT.probe.features import Extractor, GPTFeatures
from nanoGPT.probe.heads import accuracy, retrieval_metrics, train_classifier, train_ranker
from nanoGPT.probe.plays import embedded_tasks
from nanoGPT.probe.tasks import ChoiceTask, ClassificationTask, RetrievalTask, Task

HEADS = ("logreg", "mlp")


def probe_classification(
    extractor: Extractor,
    task: ClassificationTask,
    heads: Sequence[str] = HEADS,
    poolings: Sequence[str] | None = None,
    class_weights: bool = False,
) -> dict[str, float]:
    train, test = extractor.features(task.train_texts), extractor.features(task.test_texts)
    labels = torch.tensor(task.train_labels)
    results = {}
    for pooling in poolings or extractor.poolings:
        for head in heads:
            predict = train_classifier(train[pooling], labels, len(task.classes), head, class_weights)
            results[f"{task.name}/{head}/{pooling}"] = accuracy(predict(test[pooling]), task.test_labels)
    counts = torch.bincount(torch.tensor(task.test_labels), minlength=len(task.classes))
    results[f"{task.name}/chance"] = (counts.max() / counts.sum()).item()  # the majority class
    return results


def zero_shot(log_prob: torch.Tensor, count: torch.Tensor, answers: torch.Tensor) -> dict[str, float]:
    """Accuracy of picking the choice of highest summed log-probability, and of highest mean
    log-probability per token (lm-evaluation-harness's acc and a token-length acc_norm)."""
    return {
        "zero_shot_sum": accuracy(log_prob.argmax(-1), answers),
        "zero_shot_mean": accuracy((log_prob / count.clamp_min(1)).argmax(-1), answers),
    }


def probe_choice(
    extractor: Extractor, task: ChoiceTask, poolings: Sequence[str] | None = None
) -> dict[str, float]:
    train, test = extractor.choices(task.train), extractor.choices(task.test)
    train_answers = torch.tensor([item.answer for item in task.train])
    test_answers = torch.tensor([item.answer for item in task.test])
    results = {}
    for pooling in poolings or extractor.poolings:
        predict = train_ranker(train.features[pooling], train_answers)
        results[f"{task.name}/ranker/{pooling}"] = accuracy(predict(test.features[pooling]), test_answers)
    if test.log_prob is not None:
        scores = zero_shot(test.log_prob, test.count, test_answers)
        results.update({f"{task.name}/{k}": v for k, v in scores.items()})
    results[f"{task.name}/chance"] = 1 / len(task.test[0].choices)
    return results


def probe_retrieval(
    extractor: Extractor, task: RetrievalTask, poolings: Sequence[str] | None = None
) -> dict[str, float]:
    """Cosine similarity of features centred on the mean over queries and documents (hidden
    states share a large common direction that would otherwise make every pair similar)."""
    queries, documents = extractor.features(task.queries), extractor.features(task.documents)
    results = {}
    for pooling in poolings or extractor.poolings:
        centre = torch.cat([queries[pooling], documents[pooling]]).mean(0)
        metrics = retrieval_metrics(queries[pooling] - centre, documents[pooling] - centre, task.relevant)
        results.update({f"{task.name}/{name}/{pooling}": value for name, value in metrics.items()})
    results[f"{task.name}/chance"] = 1 / len(task.documents)  # recall@1 of a random ranking
    return results


def run_probe(
    extractor: Extractor, task: Task, heads: Sequence[str] = HEADS, class_weights: bool = False
) -> dict[str, float]:
    if isinstance(task, ClassificationTask):
        return probe_classification(extractor, task, heads, class_weights=class_weights)
    if isinstance(task, ChoiceTask):
        return probe_choice(extractor, task)
    return probe_retrieval(extractor, task)


# what the comparison report keeps: one pooling per task (mean pooling for what a passage is
# about, the last position for which line follows), key in results.json -> probe result key
REPORT_KEYS = {
    "probe_genre": "genre/logreg/mean",
    "probe_genre_mlp": "genre/mlp/mean",
    "probe_next_line": "next_line/ranker/last",
    "zero_shot_sum": "next_line/zero_shot_sum",
    "zero_shot_mean": "next_line/zero_shot_mean",
    "retrieval_r1": "continuation/recall@1/mean",
    "retrieval_mrr": "continuation/mrr/mean",
}


def report_probes(extractor: GPTFeatures, examples: int) -> dict[str, float]:
    """The embedded tasks' probes the comparison reports (REPORT_KEYS), `examples` items per
    split: the features of each text computed once."""
    genre, next_line, continuation = embedded_tasks(examples)
    results = probe_classification(extractor, genre, poolings=("mean",))
    results |= probe_choice(extractor, next_line, poolings=("last",))
    results |= probe_retrieval(extractor, continuation, poolings=("mean",))
    return {key: results[name] for key, name in REPORT_KEYS.items()}


def chance_levels(examples: int) -> dict[str, float]:
    """What guessing scores on each reported probe (the majority class for the genre)."""
    genre, next_line, continuation = embedded_tasks(examples)
    counts = torch.bincount(torch.tensor(genre.test_labels))
    choice = 1 / len(next_line.test[0].choices)
    recall = 1 / len(continuation.documents)
    mrr = sum(1 / r for r in range(1, len(continuation.documents) + 1)) / len(continuation.documents)
    genre_chance = (counts.max() / counts.sum()).item()
    return {
        "probe_genre": genre_chance, "probe_genre_mlp": genre_chance, "probe_next_line": choice,
        "zero_shot_sum": choice, "zero_shot_mean": choice, "retrieval_r1": recall, "retrieval_mrr": mrr,
    }  # fmt: skip


def random_trunk(config: ModelConfig, seed: int = 0) -> GPT:
    """The architecture of `config` (the baseline head) freshly initialised: the probes' floor."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT(dataclasses.replace(config, variant="baseline")).eval()
