"""WikiText (Salesforce/wikitext on the Hugging Face hub), GPT-2 BPE, with its own splits.

    python data/wikitext/prepare.py                              # WikiText-103, raw text
    python data/wikitext/prepare.py --config=wikitext-2-raw-v1   # the small one
    python data/wikitext/prepare.py --input=train:a.parquet,validation:b.parquet,test:c.parquet

Writes train.bin, val.bin and test.bin from the data set's train, validation and test splits.
The rows are lines of Wikipedia articles, each already ending in a newline; they are
concatenated unchanged (no <|endoftext|> between them: a row is a line, not a document), so
the .bin files decode to the raw text itself and bits per byte is measured on exactly it.
--input reads local parquet files (with a "text" column) or text files through the same
`load_dataset` path, for machines without network access.
"""

import os

from nanoGPT.errors import UserError
from nanoGPT.prepare import (
    HF_SPLIT_BINS,
    check_hub_reachable,
    load_hf_dataset,
    parse_data_files,
    run_prepare,
    script_dir,
    write_hf_dataset_gpt2,
)

HUB_DATASET = "Salesforce/wikitext"
CONFIGS = ("wikitext-103-raw-v1", "wikitext-2-raw-v1", "wikitext-103-v1", "wikitext-2-v1")
LOCAL_HINT = "--input=train:FILE,validation:FILE,test:FILE"


def prepare(
    out_dir: str = script_dir(__file__),
    config: str = "wikitext-103-raw-v1",
    input: str = "",  # local files instead of the hub: split:file,... (.parquet, .jsonl or text)
    num_proc: int = os.cpu_count() or 1,
    cache_dir: str = "",  # Hugging Face datasets cache; "" = its default
) -> dict[str, int]:
    cache = cache_dir or None
    if input:
        builder, data_files = parse_data_files(input, list(HF_SPLIT_BINS))
        # keep_linebreaks: text rows then end in "\n" like WikiText's own rows
        extra = {"keep_linebreaks": True} if builder == "text" else {}
        dataset = load_hf_dataset(
            builder, data_files=data_files, cache_dir=cache, what_to_do="check the --input files", **extra
        )
    else:
        if config not in CONFIGS:
            raise UserError(f"unknown --config={config}; choose one of {', '.join(CONFIGS)}")
        check_hub_reachable(
            f"connect to the internet or pass local files with {LOCAL_HINT} "
            "(a copy already in the cache loads with HF_DATASETS_OFFLINE=1)"
        )
        dataset = load_hf_dataset(
            HUB_DATASET,
            config,
            cache_dir=cache,
            what_to_do=f"connect to the internet (offline mode off) or pass local files with {LOCAL_HINT}",
        )
    return write_hf_dataset_gpt2(out_dir, dataset, num_proc)


if __name__ == "__main__":
    run_prepare(prepare)
