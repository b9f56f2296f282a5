"""TinyStories (roneneldan/TinyStories on the Hugging Face hub) with its own train/validation.

    python data/tinystories/prepare.py                                   # GPT-2 BPE
    python data/tinystories/prepare.py --tokenizer=sp --vocab_size=4096  # SentencePiece
    python data/tinystories/prepare.py --input=train:a.parquet,validation:b.parquet

Writes train.bin and val.bin from the data set's train and validation splits, one story per
row with <|endoftext|> after each. --tokenizer=sp trains a SentencePiece model (BPE, or
--sp_model_type=unigram) on the first --sp_train_docs training stories and saves it as
tokenizer.model beside the .bin files, named in meta.pkl (the folder config/
train_baseline_tinystories_llama.py trains on). --input reads local files through the same
`load_dataset` path: parquet with a "text" column (a row is a story), or text files such as
the raw TinyStories-train.txt (rows are lines, kept as they are; its own <|endoftext|> lines
separate the stories).
"""

from nanoGPT.documents import (
    column_texts,
    make_tokenizer,
    record_tokenizer,
    text_batches,
    write_documents,
)
from nanoGPT.prepare import (
    check_hub_reachable,
    load_hf_dataset,
    parse_data_files,
    run_prepare,
    script_dir,
    staged_dataset,
)

HUB_DATASET = "roneneldan/TinyStories"
SPLITS = {"train": "train", "validation": "val"}  # hub split -> .bin name
LOCAL_HINT = "--input=train:FILE,validation:FILE"


def prepare(
    out_dir: str = script_dir(__file__),
    tokenizer: str = "gpt2",  # gpt2 | sp (SentencePiece trained on the training stories)
    vocab_size: int = 4096,  # sp: number of pieces
    sp_model_type: str = "bpe",  # sp: bpe | unigram
    sp_train_docs: int = 200_000,  # sp: train the tokenizer on this many training stories
    max_docs: int = 0,  # stories per split (0 = all): a quick smaller data set
    input: str = "",  # local files instead of the hub: split:file,... (.parquet, .jsonl or text)
    cache_dir: str = "",  # Hugging Face datasets cache; "" = its default
) -> dict[str, int]:
    cache = cache_dir or None
    rows_are_stories = True
    if input:
        builder, data_files = parse_data_files(input, list(SPLITS))
        rows_are_stories = builder != "text"
        extra = {"keep_linebreaks": True} if builder == "text" else {}
        dataset = load_hf_dataset(
            builder, data_files=data_files, cache_dir=cache, what_to_do="check the --input files", **extra
        )
    else:
        check_hub_reachable(
            f"connect to the internet or pass local files with {LOCAL_HINT} "
            "(a copy already in the cache loads with HF_DATASETS_OFFLINE=1)"
        )
        dataset = load_hf_dataset(
            HUB_DATASET,
            cache_dir=cache,
            what_to_do=f"connect to the internet (offline mode off) or pass local files with {LOCAL_HINT}",
        )
    texts = column_texts("text")

    def training_stories():
        for batch in text_batches(dataset["train"], texts, sp_train_docs):
            yield from batch

    with staged_dataset(out_dir) as folder:  # the files replace the previous set together
        tok = make_tokenizer(tokenizer, folder, training_stories, vocab_size, sp_model_type)
        counts = {
            bin_name: write_documents(
                folder, bin_name, tok, text_batches(dataset[split], texts, max_docs), rows_are_stories
            )
            for split, bin_name in SPLITS.items()
        }
        record_tokenizer(folder, tok)
    return counts


if __name__ == "__main__":
    run_prepare(prepare)
