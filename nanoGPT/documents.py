"""Document data sets (data/tinystories, data/math): rows of `datasets` splits -> .bin files.

A row is a document; documents are separated by <|endoftext|> (the tokenizer's eot_id),
appended after each. Rows of a local *text* file are lines instead: they are concatenated
unchanged, and the file's own `<|endoftext|>` lines (TinyStories' raw text format) become
the separator id, since both tokenizers here encode that string as their special id.

The tokenizer is GPT-2 BPE, or a SentencePiece model trained on the first documents of the
training split (saved beside the .bin files and recorded in meta.pkl). Rows are encoded in
batches (both tokenizers have threaded batch encoders) and written as they arrive, so a
streamed hub data set never has to fit in memory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from nanoGPT.atomic import destination
from nanoGPT.errors import UserError
from nanoGPT.prepare import save_tokenizer, write_meta, write_split
from nanoGPT.tokenizer import META_FILE, SentencePieceTokenizer, Tokenizer, gpt2_tokenizer

TOKENIZERS = ("gpt2", "sp")
BATCH_ROWS = 1000

RowTexts = Callable[[dict[str, list[Any]]], list[str]]  # a batch of rows -> their documents


def column_texts(column: str) -> RowTexts:
    """Documents from one text column."""

    def texts(batch: dict[str, list[Any]]) -> list[str]:
        if column not in batch:
            raise UserError(f"the data has no {column!r} column (columns: {', '.join(batch)})")
        return [text or "" for text in batch[column]]

    return texts


def text_batches(rows: Any, to_texts: RowTexts, limit: int = 0) -> Iterator[list[str]]:
    """Batches of documents from a Dataset or IterableDataset, the first `limit` rows (0 = all)."""
    if limit:
        rows = rows.take(limit)
    for batch in rows.iter(batch_size=BATCH_ROWS):
        yield to_texts(batch)


def make_tokenizer(
    kind: str,
    out_dir: str,
    training_texts: Callable[[], Iterable[str]],
    vocab_size: int,
    model_type: str = "bpe",
) -> Tokenizer:
    """GPT-2 BPE, or ("sp") a SentencePiece model trained on `training_texts()`."""
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind != "sp":
        raise UserError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {kind!r}")
    print(f"training a {vocab_size}-piece SentencePiece {model_type} model", flush=True)
    tokenizer = SentencePieceTokenizer.train(training_texts(), out_dir, vocab_size, model_type)
    print(f"{destination(tokenizer.model_path)}: {tokenizer.vocab_size} pieces")
    return tokenizer


def encode_batches(
    tokenizer: Tokenizer, batches: Iterable[list[str]], separate: bool = True
) -> Iterator[np.ndarray]:
    """Token ids of each batch of documents, <|endoftext|> after each one when `separate`."""
    for texts in batches:
        encoded = tokenizer.encode_batch(texts)
        if separate:
            encoded = [ids + [tokenizer.eot_id] for ids in encoded]
        yield np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64)


def write_documents(
    out_dir: str, split: str, tokenizer: Tokenizer, batches: Iterable[list[str]], separate: bool = True
) -> int:
    """Encode the documents and write out_dir/<split>.bin; returns the token count."""
    os.makedirs(out_dir, exist_ok=True)
    return write_split(out_dir, split, encode_batches(tokenizer, batches, separate))


def record_tokenizer(out_dir: str, tokenizer: Tokenizer) -> None:
    """meta.pkl naming the SentencePiece model, or nanoGPT's "no meta.pkl" for GPT-2 BPE."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        meta_path = os.path.join(out_dir, META_FILE)
        write_meta(meta_path, tokenizer.to_meta())
        print(f"{destination(meta_path)}: SentencePiece, {tokenizer.vocab_size} ids")
    else:
        save_tokenizer(out_dir, tokenizer)
