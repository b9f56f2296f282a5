"""Probe tasks from Hugging Face data sets (through `datasets`, when the hub can be reached or
the set is cached) and from local files.

Hub tasks, each split as its data set publishes it (train and test never share a row):
  ag_news    news topic, 4 classes (train / test)
  emotion    dair-ai/emotion, 6 classes (train / test)
  hellaswag  Rowan/hellaswag, which of 4 endings continues a context (train / validation)
  scifact    BeIR/scifact, retrieve the abstracts that answer a claim (the test qrels)

Local files: --input=train:FILE,test:FILE (parquet, .json/.jsonl rows, or csv). Rows with a
`choices` column (a list) are multiple choice (`context`, `choices`, `label`); others are
classification (`text`, `label`; string labels are numbered in sorted order).
"""

from __future__ import annotations

import os
import random
from typing import Any

from nanoGPT.errors import UserError
from nanoGPT.prepare import check_hub_reachable, load_hf_dataset
from nanoGPT.probe.tasks import Choice, ChoiceTask, ClassificationTask, RetrievalTask, Task

OFFLINE_HINT = "probe the embedded tasks (tasks=embedded) or local files (--input=train:FILE,test:FILE)"
# name -> (data set, config, train split, test split)
HUB_CLASSIFICATION = {
    "ag_news": ("ag_news", None, "train", "test"),
    "emotion": ("dair-ai/emotion", None, "train", "test"),
}
HUB_TASKS = (*HUB_CLASSIFICATION, "hellaswag", "scifact")
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def hub_split(name: str, config: str | None, split: str, limit: int, seed: int) -> Any:
    """A split of a hub data set, its rows shuffled (seeded) and cut to `limit` (0 = all)."""
    check_hub_reachable(OFFLINE_HINT)
    rows = load_hf_dataset(name, config, split=split, what_to_do=OFFLINE_HINT)
    if limit and len(rows) > limit:
        rows = rows.shuffle(seed=seed).select(range(limit))
    return rows


def class_names(rows: Any, labels: list[Any]) -> tuple[str, ...]:
    feature = rows.features.get("label")
    if hasattr(feature, "names"):
        return tuple(feature.names)
    return tuple(str(label) for label in sorted(set(labels)))


def hub_classification(task: str, limit: int, seed: int) -> ClassificationTask:
    name, config, train_split, test_split = HUB_CLASSIFICATION[task]
    train = hub_split(name, config, train_split, limit, seed)
    test = hub_split(name, config, test_split, limit, seed)
    return ClassificationTask(
        task, class_names(train, train["label"]), train["text"], train["label"], test["text"],
        test["label"], split=f"the data set's own {train_split} and {test_split} splits",
    )  # fmt: skip


def hellaswag_items(rows: Any) -> list[Choice]:
    return [Choice(row["ctx"], tuple(" " + e for e in row["endings"]), int(row["label"])) for row in rows]


def hub_hellaswag(limit: int, seed: int) -> ChoiceTask:
    train = hub_split("Rowan/hellaswag", None, "train", limit, seed)
    test = hub_split("Rowan/hellaswag", None, "validation", limit, seed)
    return ChoiceTask(
        "hellaswag", hellaswag_items(train), hellaswag_items(test),
        split="the data set's train and validation splits (test has no labels)",
    )  # fmt: skip


def hub_scifact(limit: int, seed: int) -> RetrievalTask:
    """Claims of the test qrels (at most `limit`) against the whole corpus of abstracts."""
    corpus = hub_split("BeIR/scifact", "corpus", "corpus", 0, seed)
    queries = hub_split("BeIR/scifact", "queries", "queries", 0, seed)
    qrels = hub_split("BeIR/scifact-qrels", None, "test", 0, seed)
    doc_index = {str(doc_id): i for i, doc_id in enumerate(corpus["_id"])}
    relevant: dict[str, set[int]] = {}
    for row in qrels:
        if row["score"] > 0 and str(row["corpus-id"]) in doc_index:
            relevant.setdefault(str(row["query-id"]), set()).add(doc_index[str(row["corpus-id"])])
    claims = {str(q): text for q, text in zip(queries["_id"], queries["text"]) if str(q) in relevant}
    chosen = sorted(claims)
    if limit and len(chosen) > limit:
        chosen = sorted(random.Random(seed).sample(chosen, limit))
    documents = [f"{title}. {text}" for title, text in zip(corpus["title"], corpus["text"])]
    return RetrievalTask(
        "scifact", [claims[q] for q in chosen], documents, [relevant[q] for q in chosen],
        split="test claims against the corpus (nothing is trained)",
    )  # fmt: skip


def hub_task(task: str, limit: int, seed: int = 0) -> Task:
    if task in HUB_CLASSIFICATION:
        return hub_classification(task, limit, seed)
    if task == "hellaswag":
        return hub_hellaswag(limit, seed)
    if task == "scifact":
        return hub_scifact(limit, seed)
    raise UserError(f"unknown probe task {task!r}; choose embedded, {', '.join(HUB_TASKS)}")


def parse_input(spec: str) -> dict[str, str]:
    """'train:a.csv,test:b.csv' -> {"train": "a.csv", "test": "b.csv"}, checked."""
    files = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        split, sep, path = item.partition(":")
        if not sep or split not in ("train", "test"):
            raise UserError(f"--input item {item!r} must be train:FILE or test:FILE")
        if not os.path.isfile(path):
            raise UserError(f"--input file {path} not found")
        if os.path.splitext(path)[1].lower() not in BUILDERS:
            raise UserError(f"--input file {path} must be .parquet, .json, .jsonl or .csv")
        files[split] = path
    if set(files) != {"train", "test"}:
        raise UserError("--input needs a train and a test file: --input=train:FILE,test:FILE")
    return files


def local_rows(path: str) -> Any:
    builder = BUILDERS[os.path.splitext(path)[1].lower()]
    return load_hf_dataset(builder, data_files=path, split="train", what_to_do="check the --input file")


def local_task(spec: str, limit: int = 0, seed: int = 0) -> Task:
    files = parse_input(spec)
    rows = {split: local_rows(path) for split, path in files.items()}
    for split, data in rows.items():
        if limit and len(data) > limit:
            rows[split] = data.shuffle(seed=seed).select(range(limit))
    columns = set(rows["train"].column_names)
    split = f"the files given: train {files['train']}, test {files['test']}"
    if "choices" in columns:
        return ChoiceTask("input", *(choice_items(rows[s]) for s in ("train", "test")), split=split)
    missing = {"text", "label"} - columns
    if missing:
        raise UserError(
            f"{files['train']} has no {', '.join(sorted(missing))} column (columns: {', '.join(columns)})"
        )
    names = sorted(set(rows["train"]["label"]) | set(rows["test"]["label"]), key=str)
    ids = {label: i for i, label in enumerate(names)}
    return ClassificationTask(
        "input", tuple(str(n) for n in names),
        rows["train"]["text"], [ids[x] for x in rows["train"]["label"]],
        rows["test"]["text"], [ids[x] for x in rows["test"]["label"]], split=split,
    )  # fmt: skip


def choice_items(rows: Any) -> list[Choice]:
    items = [Choice(row["context"], tuple(row["choices"]), int(row["label"])) for row in rows]
    if len({len(item.choices) for item in items}) > 1:
        raise UserError("--input rows must all have the same number of choices")
    return items
