"""The three kinds of probe task: classify a text, pick the choice that continues a context,
find the document that answers a query. Train and test never share text; `split` says how."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Choice:
    """A multiple-choice item: which of `choices` continues `context` (`answer` is its index)."""

    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass
class ClassificationTask:
    name: str
    classes: tuple[str, ...]
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    split: str  # how train and test were kept apart


@dataclass
class ChoiceTask:
    name: str
    train: list[Choice]
    test: list[Choice]
    split: str


@dataclass
class RetrievalTask:
    """Query i is answered by the documents in relevant[i] (indices into documents)."""

    name: str
    queries: list[str]
    documents: list[str]
    relevant: list[set[int]] = field(default_factory=list)
    split: str = ""


Task = ClassificationTask | ChoiceTask | RetrievalTask
