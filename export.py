"""Export a checkpoint to a Hugging Face `transformers` folder (save_pretrained), with its tokenizer.

python export.py --out_dir=out/baseline-owt --export_dir=hf/baseline-owt
from transformers import AutoModelForCausalLM  # then: AutoModelForCausalLM.from_pretrained('hf/baseline-owt')

Softmax heads (baseline, smooth, baseline_untied, distill) on a GPT-2 trunk (the default) or a
LLaMA-style one (norm=rmsnorm, mlp=swiglu, pos_emb=rope) export; anything else is refused in
one line (nanoGPT/export.py says why). GPT-2 BPE and character vocabularies export as
transformers tokenizers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from nanoGPT.checkpoint import checkpoint_path, checkpoint_tokenizer, load_model, repair_pointers
from nanoGPT.config import apply_config
from nanoGPT.errors import UserError, cli
from nanoGPT.export import export


@dataclass
class ExportConfig:
    out_dir: str = "out"  # the run whose checkpoint to export
    ckpt: str = "last"  # last | best
    export_dir: str = ""  # where to write the transformers folder; default <out_dir>/hf
    data_dir: str = ""  # the data folder whose tokenizer to save; default the checkpoint's own


def run(cfg: ExportConfig) -> list[str]:
    folder = cfg.export_dir or os.path.join(cfg.out_dir, "hf")
    if os.path.isfile(folder):
        raise UserError(f"export_dir {folder} is a file")
    repair_pointers(cfg.out_dir)
    model, ckpt = load_model(checkpoint_path(cfg.out_dir, cfg.ckpt), "cpu")
    tokenizer = checkpoint_tokenizer(ckpt, cfg.data_dir)
    lines = export(model, tokenizer, folder)
    return [f"exported {cfg.out_dir} ({cfg.ckpt}, variant {model.config.variant}) to {folder}", *lines]


@cli
def main(argv: list[str] | None = None) -> list[str]:
    cfg = apply_config(ExportConfig(), sys.argv[1:] if argv is None else argv)
    lines = run(cfg)
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
