"""Mathematics text: Maths-College (instruction + output) and open-web-math, streamed.

    python data/math/prepare.py                                  # both, GPT-2 BPE
    python data/math/prepare.py --sources=owm --owm_docs=50000 --tokenizer=sp --vocab_size=8192
    python data/math/prepare.py --input=college:c.parquet,owm:o.parquet
    python data/math/prepare.py --sources=arithmetic --tokenizer=char   # offline

Sources (Hugging Face hub, both streamed: several GB each, only the rows used are read):
  college  ajibawa-2023/Maths-College, ~970k rows; a document is its "instruction", a blank
           line, then its "output"
  owm      open-web-math/open-web-math, ~6.3M web pages; a document is its "text"
Generated here (no download):
  arithmetic  --arithmetic_docs documents of ARITHMETIC_LINES lines "a+b=c", "a-b=c" or
              "a*b=c" (operands of 1 to 4 digits, seeded by --seed): expressions whose
              operands and results a look-ahead model must learn whole (config/train_conv_math.py).
              Each document ends in a newline; --tokenizer=char (its 15 characters, in meta.pkl)
              writes the documents one after another, without a separator id.

Neither has a validation split, so val.bin is the first --val_docs documents of each source
and train.bin the following ones (up to --college_docs / --owm_docs, 0 = all). Documents are
separated by <|endoftext|>. --tokenizer=sp trains a SentencePiece model on the first
--sp_train_docs training documents of each source. --input reads local files of each source
through the same streaming `load_dataset` path: parquet with the same columns (a row is a
document), or text files (rows are lines, kept as they are; their own <|endoftext|> lines
separate documents).
"""

import random
from collections.abc import Iterator
from typing import Any

from nanoGPT.documents import (
    column_texts,
    make_tokenizer,
    record_tokenizer,
    text_batches,
    write_documents,
)
from nanoGPT.errors import UserError
from nanoGPT.prepare import (
    check_hub_reachable,
    load_hf_dataset,
    parse_data_files,
    run_prepare,
    script_dir,
    staged_dataset,
)
from nanoGPT.tokenizer import CharTokenizer, Tokenizer


def instruction_and_output(batch: dict[str, list[Any]]) -> list[str]:
    missing = [c for c in ("instruction", "output") if c not in batch]
    if missing:
        raise UserError(
            f"Maths-College data needs instruction and output columns; "
            f"{', '.join(missing)} missing (columns: {', '.join(batch)})"
        )
    return [f"{q or ''}\n\n{a or ''}" for q, a in zip(batch["instruction"], batch["output"])]


HUB_DATASETS = {"college": "ajibawa-2023/Maths-College", "owm": "open-web-math/open-web-math"}
GENERATED = ("arithmetic",)
DOCUMENTS = {
    "college": instruction_and_output,
    "owm": column_texts("text"),
    "arithmetic": column_texts("text"),
}
ARITHMETIC_LINES = 8
ARITHMETIC_ALPHABET = "0123456789+-*=\n"
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_rows(seed: int) -> Iterator[dict[str, str]]:
    """Endless documents of ARITHMETIC_LINES expressions with their results, seeded."""
    rng = random.Random(seed)
    while True:
        lines = []
        for _ in range(ARITHMETIC_LINES):
            a, b = (rng.randrange(10 ** rng.randint(1, 4)) for _ in range(2))
            op = rng.choice(list(OPERATIONS))
            lines.append(f"{a}{op}{b}={OPERATIONS[op](a, b)}")
        yield {"text": "\n".join(lines) + "\n"}


def make_math_tokenizer(kind: str, *args: Any) -> Tokenizer:
    """make_tokenizer's, or (char) the generated sources' fixed alphabet."""
    return CharTokenizer(sorted(ARITHMETIC_ALPHABET)) if kind == "char" else make_tokenizer(kind, *args)


def open_streams(names: list[str], input: str, cache: str | None, seed: int) -> tuple[dict[str, Any], bool]:
    """The row stream of each source, and whether a row is a document (not a line of text)."""
    from datasets import IterableDataset  # only when preparing: a heavy import

    streams = {
        name: IterableDataset.from_generator(arithmetic_rows, gen_kwargs={"seed": seed})
        for name in names
        if name in GENERATED
    }
    hub_names = [name for name in names if name not in GENERATED]
    if not hub_names:
        return streams, True
    hint = "--input=" + ",".join(f"{name}:FILE" for name in hub_names)
    if input:
        builder, data_files = parse_data_files(input, hub_names)
        extra = {"keep_linebreaks": True} if builder == "text" else {}
        for name in hub_names:
            streams[name] = load_hf_dataset(
                builder,
                data_files={"train": data_files[name]},
                split="train",
                streaming=True,
                cache_dir=cache,
                what_to_do="check the --input files",
                **extra,
            )
        return streams, builder != "text"
    check_hub_reachable(f"connect to the internet or pass local files with {hint}")
    for name in hub_names:
        streams[name] = load_hf_dataset(
            HUB_DATASETS[name],
            split="train",
            streaming=True,
            cache_dir=cache,
            what_to_do=f"connect to the internet (offline mode off) or pass local files with {hint}",
        )
    return streams, True


def prepare(
    out_dir: str = script_dir(__file__),
    sources: str = "college,owm",  # some of college, owm, arithmetic, comma-separated
    college_docs: int = 0,  # training documents from Maths-College (0 = all)
    owm_docs: int = 200_000,  # training documents from open-web-math (0 = all: 6.3M pages)
    val_docs: int = 1000,  # the first N documents of each source are the val split
    tokenizer: str = "gpt2",  # gpt2 | sp (SentencePiece trained on the training documents) | char
    vocab_size: int = 8192,  # sp: number of pieces
    sp_model_type: str = "bpe",  # sp: bpe | unigram
    sp_train_docs: int = 50_000,  # sp: training documents per source the tokenizer learns from
    input: str = "",  # local files instead of the hub: source:file,... (.parquet, .jsonl or text)
    cache_dir: str = "",  # Hugging Face datasets cache; "" = its default
    arithmetic_docs: int = 20_000,  # training documents of generated arithmetic (endless: > 0)
    seed: int = 0,  # arithmetic: the expressions' random seed
) -> dict[str, int]:
    names = [name for name in (part.strip() for part in sources.split(",")) if name]
    unknown = [name for name in names if name not in DOCUMENTS]
    if unknown or not names:
        raise UserError(f"--sources must name some of {', '.join(DOCUMENTS)}, got {sources!r}")
    if val_docs < 1:
        raise UserError(f"--val_docs must be at least 1, got {val_docs}")
    if "arithmetic" in names and arithmetic_docs < 1:
        raise UserError(
            f"--arithmetic_docs must be at least 1 (the generator is endless), got {arithmetic_docs}"
        )
    if tokenizer == "char" and any(name not in GENERATED for name in names):
        raise UserError(f"--tokenizer=char needs generated sources only ({', '.join(GENERATED)})")
    streams, rows_are_documents = open_streams(names, input, cache_dir or None, seed)
    train_limits = {"college": college_docs, "owm": owm_docs, "arithmetic": arithmetic_docs}

    def val_batches():
        for name in names:
            yield from text_batches(streams[name], DOCUMENTS[name], val_docs)

    def train_batches(limits: dict[str, int]):
        for name in names:
            yield from text_batches(streams[name].skip(val_docs), DOCUMENTS[name], limits[name])

    def training_documents():
        for batch in train_batches({name: sp_train_docs for name in names}):
            yield from batch

    with staged_dataset(out_dir) as folder:  # the files replace the previous set together
        tok = make_math_tokenizer(tokenizer, folder, training_documents, vocab_size, sp_model_type)
        rows_are_documents = rows_are_documents and tok.eot_id is not None
        counts = {
            "train": write_documents(folder, "train", tok, train_batches(train_limits), rows_are_documents),
            "val": write_documents(folder, "val", tok, val_batches(), rows_are_documents),
        }
        record_tokenizer(folder, tok)
    return counts


if __name__ == "__main__":
    run_prepare(prepare)
