"""Probe what a model's hidden states know: linear and MLP probes, a margin-ranking scorer for
multiple choice, cosine retrieval, and zero-shot multiple choice under a variant's own predictive.

python probe.py --out_dir=out/baseline-shakespeare-char                  # the embedded tasks
python probe.py --out_dir=out/x --init_from=random                       # the same, untrained trunk
python probe.py --init_from=distilbert-base-uncased --tasks=ag_news,emotion --max_examples=2000
python probe.py --init_from=gpt2 --tasks=hellaswag,scifact
python probe.py --out_dir=out/x --input=train:train.csv,test:test.csv --class_weights=True

Features: a checkpoint's trunk (any variant, any trunk), mean-pooled and at the last position;
GPT-2 the same way; any other Hugging Face model as an encoder ([CLS] and mean). Hub models and
data sets load from the hub or the local cache, else fail in one line.

Embedded tasks (offline, nanoGPT/probe/plays.py): genre (which kind of play; train and test
split BY PLAY), next_line (which of 4 lines follows; split BY POSITION: train from the first 90%
of the corpus, test from the held-out 10%), continuation (retrieve the passage that continues a
passage, held-out text). Every result line says how its task's train and test were kept apart.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from nanoGPT.atomic import atomic_write_json
from nanoGPT.config import apply_config
from nanoGPT.errors import UserError, cli
from nanoGPT.probe.evaluate import HEADS, run_probe
from nanoGPT.probe.features import BATCH_TOKENS
from nanoGPT.probe.load import load_extractor, select_tasks
from nanoGPT.runtime import inference_runtime


@dataclass
class ProbeConfig:
    init_from: str = (
        "resume"  # resume (out_dir's checkpoint) | random (its architecture, untrained) | HF name/folder
    )
    out_dir: str = "out"
    ckpt: str = "last"  # last | best
    tasks: str = "embedded"  # comma-separated: embedded, genre, next_line, continuation, ag_news, emotion,
    # hellaswag, scifact
    input: str = ""  # local files instead of tasks: train:FILE,test:FILE (parquet, json/jsonl, csv)
    examples: int = 300  # embedded tasks: items per split
    max_examples: int = 2000  # hub and local tasks: rows per split (0 = all)
    heads: str = "logreg,mlp"  # classification heads
    class_weights: bool = False  # classification: weight classes by inverse frequency
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    batch_tokens: int = BATCH_TOKENS
    out: str = ""  # also write the results here (JSON)


def probe(cfg: ProbeConfig) -> dict[str, dict]:
    heads = [h.strip() for h in cfg.heads.split(",") if h.strip()]
    if not heads or set(heads) - set(HEADS):
        raise UserError(f"heads must be a comma-separated subset of {', '.join(HEADS)}, got {cfg.heads!r}")
    tasks = select_tasks(cfg.tasks, cfg.input, cfg.examples, cfg.max_examples, cfg.seed)
    rt = inference_runtime(cfg.device, cfg.dtype)
    extractor = load_extractor(cfg.init_from, cfg.out_dir, cfg.ckpt, rt, cfg.batch_tokens)
    torch.manual_seed(cfg.seed)
    results = {}
    for task in tasks:
        scores = run_probe(extractor, task, heads, cfg.class_weights)
        results[task.name] = {"split": task.split, "results": scores}
        print(f"{task.name} (train/test split {task.split})")
        for key, value in scores.items():
            print(f"  {key}: {value:.4f}")
    if cfg.out:
        atomic_write_json(cfg.out, results)
    return results


@cli
def main(argv: list[str] | None = None) -> dict[str, dict]:
    cfg = apply_config(ProbeConfig(), sys.argv[1:] if argv is None else argv)
    return probe(cfg)


if __name__ == "__main__":
    main()
