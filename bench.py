"""Time training steps of each variant and compare them with the baseline in one run.

    python bench.py                                  # all variants, GPT-2 vocabulary, small trunk
    python bench.py --variants=baseline,sigmoid --n_layer=6 --n_embd=384 --device=cuda

Each variant runs in a fresh process so its peak memory is its own: RSS on the CPU (and
the growth of RSS over the process's state before the first step, i.e. what training
itself allocates), max allocated on CUDA. Times are after warm-up.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.errors import UserError, cli
from nanoGPT.model import GPT
from nanoGPT.train import build_optimizer, setup_runtime
from nanoGPT.variants import VARIANTS


@dataclass
class BenchConfig(TrainConfig):
    variants: str = ",".join(VARIANTS)
    iters: int = 10
    warmup: int = 3
    extra_positives: int = 8  # sparse extra positives per position for multi-hot variants
    child: str = ""  # internal: the variant this process measures
    # a small trunk at the GPT-2 vocabulary: where the output objective's cost shows
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 128
    batch_size: int = 8
    vocab_size: int = 50257
    kl_num_tokens: int = 1_000_000


def rss_mb() -> float:
    """Peak resident set size of this process, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(cfg: BenchConfig) -> dict:
    rt = setup_runtime(cfg)
    torch.manual_seed(cfg.seed)
    model = GPT(dataclasses.replace(cfg.model_args(), variant=cfg.child)).to(rt.device)
    optimizer = build_optimizer(model, cfg, rt.device_type)
    model = torch.compile(model) if cfg.compile else model
    shape = (cfg.batch_size, cfg.block_size)
    x = torch.randint(cfg.vocab_size, shape, device=rt.device)
    y = torch.randint(cfg.vocab_size, shape, device=rt.device)
    extra = None
    if VARIANTS[cfg.child].uses_extra_positives and cfg.extra_positives:
        extra = torch.randint(-1, cfg.vocab_size, (*shape, cfg.extra_positives), device=rt.device)
    rss_before = rss_mb()
    if rt.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with rt.autocast():
            loss, _ = model(x, y, extra)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(cfg.warmup):
        step()
    if rt.device_type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(cfg.iters):
        step()
    if rt.device_type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / cfg.iters
    result = {"variant": cfg.child, "ms_per_iter": dt * 1000,
              "tokens_per_s": cfg.batch_size * cfg.block_size / dt}
    if rt.device_type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mem_mb"] = rss_mb()
        result["train_mem_mb"] = rss_mb() - rss_before
    return result


def table(results: list[dict]) -> str:
    base = next(r for r in results if r["variant"] == "baseline") if any(
        r["variant"] == "baseline" for r in results) else results[0]
    mem_key = "train_mem_mb" if "train_mem_mb" in base else "peak_mem_mb"
    lines = [f"| variant | ms/iter | tokens/s | peak mem MB | {mem_key.replace('_mb', '')} MB "
             "| time x | memory x |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['peak_mem_mb']:.0f} | {r[mem_key]:.0f} | "
            f"{r['ms_per_iter'] / base['ms_per_iter']:.2f} | {r[mem_key] / base[mem_key]:.2f} |")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    cfg = apply_config(BenchConfig(), argv)
    if cfg.child:
        print(json.dumps(measure(cfg)))
        return []
    variants = [v for v in cfg.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    print(f"bench: {cfg.n_layer} layers, {cfg.n_embd} wide, vocab {cfg.vocab_size}, "
          f"batch {cfg.batch_size}x{cfg.block_size}, {cfg.iters} timed iters after {cfg.warmup}")
    results = []
    for variant in variants:
        proc = subprocess.run([sys.executable, __file__, *argv, f"--child={variant}"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"{variant} failed: {proc.stderr.strip().splitlines()[-1:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {variant}: {results[-1]['ms_per_iter']:.1f} ms/iter", flush=True)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
