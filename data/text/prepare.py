"""Any local UTF-8 text file(s) -> train.bin / val.bin (and meta.pkl for characters).

    python data/text/prepare.py --input=notes.txt,more.txt --tokenizer=char --out_dir=data/notes
    python data/text/prepare.py --input=book.txt --tokenizer=gpt2 --val_fraction=0.05

The files are concatenated in the order given (a newline is added after a file that does not
end in one); val is the last `val_fraction` of the text, cut at a line start.
"""

from nanoGPT.errors import UserError
from nanoGPT.prepare import run_prepare, script_dir, split_text, write_text_dataset
from nanoGPT.tokenizer import CharTokenizer, Tokenizer, gpt2_tokenizer

TOKENIZERS = ("char", "gpt2")


def read_text_files(paths: list[str]) -> str:
    texts = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise UserError(f"input file {path} not found") from None
        except UnicodeDecodeError as err:
            raise UserError(
                f"{path} is not UTF-8 text (byte {err.start}: {err.object[err.start : err.start + 1]!r})"
            ) from None
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
        texts.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(texts)


def prepare(
    input: str = "",  # comma-separated text files
    tokenizer: str = "char",  # char | gpt2
    val_fraction: float = 0.1,
    out_dir: str = script_dir(__file__),
) -> dict[str, int]:
    paths = [path for path in (part.strip() for part in input.split(",")) if path]
    if not paths:
        raise UserError("no input: pass --input=FILE[,FILE...]")
    if tokenizer not in TOKENIZERS:
        raise UserError(f"unknown --tokenizer={tokenizer}; choose one of {', '.join(TOKENIZERS)}")
    text = read_text_files(paths)
    if not text.strip():
        raise UserError(f"the input ({', '.join(paths)}) holds no text")
    train, val = split_text(text, val_fraction)
    print(f"{len(paths)} file(s): {len(text):,} characters")
    chosen: Tokenizer = CharTokenizer.from_text(text) if tokenizer == "char" else gpt2_tokenizer()
    return write_text_dataset(out_dir, chosen, {"train": train, "val": val})


if __name__ == "__main__":
    run_prepare(prepare)
