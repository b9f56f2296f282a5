"""Time training steps of each variant and compare them with the baseline in one run.

    python bench.py                                  # all variants, GPT-2 vocabulary, small trunk
    python bench.py --variants=baseline,sigmoid --n_layer=6 --n_embd=384 --device=cuda
    python bench.py --archs=llama,conv,progressive --variants=baseline   # trunks, see ARCHS

Any ModelConfig key works on the command line (--arch=conv --conv_factor=2, --mlp=swiglu...).
--archs compares named trunks (ARCHS), each against a GPT-2 trunk of about its parameter
count: the same width with the number of layers whose trunk parameters come closest.

Each variant runs in a fresh process so its peak memory is its own: peak RSS on the CPU,
max allocated on CUDA. Times are after warm-up.
    python bench.py --augmenter=True   # + sigmoid with online / cached augmentation, filter speed
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from nanoGPT.augment import build_augmenter
from nanoGPT.benchmark import filter_speed, prepare_augmenter_bench
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError, cli
from nanoGPT.model import GPT
from nanoGPT.runtime import setup_runtime
from nanoGPT.train import build_optimizer
from nanoGPT.variants import VARIANTS
from nanoGPT.variants.base import ExtraTargets

# the trunks --archs compares: config overrides on top of the bench's own trunk
ARCHS = {
    "gpt": [],
    "llama": ["--norm=rmsnorm", "--mlp=swiglu", "--pos_emb=rope", "--bias=False"],
    "conv": ["--arch=conv"],
    "conv2": ["--arch=conv", "--conv_factor=2", "--conv_levels=2", "--n_layer=5"],
    "progressive": ["--progressive_group=2"],  # measured in stage 1: pairs share a block
}


@dataclass
class BenchConfig(TrainConfig):
    variants: str = ",".join(VARIANTS)
    archs: str = ""  # e.g. llama,conv: compare these trunks (ARCHS) with GPT-2 trunks
    repeats: int = 1  # measure each run this many times, rounds interleaved; report medians
    iters: int = 10
    warmup: int = 3
    extra_positives: int = 8  # sparse extra positives per position for multi-hot variants
    augmenter: bool = False  # also time sigmoid with online and cached augmentation, and the
    # batched perplexity filter against one forward pass per candidate
    label: str = ""  # internal: the row name of this measurement
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
        if VARIANTS[cfg.child].uses_teacher_probs:  # distill: the candidates' teacher log-probs too
            extra = ExtraTargets(extra, torch.randn(extra.shape, device=rt.device).log_softmax(-1))
    augmenter = data = None
    if cfg.augment:  # real batches; the extra positives come from the augmenter every step
        data = TokenData(cfg.data_dir, cfg.block_size, cfg.batch_size, rt.device, cfg.seed)
        augmenter = build_augmenter(cfg, model, data, rt.device)
    if rt.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = iter(range(10**9))

    def step() -> None:
        nonlocal x, y, extra
        if augmenter is not None:
            batch = data.train_batch(next(steps))
            x, y, extra = batch.x, batch.y, augmenter(batch)
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
    result = {
        "variant": cfg.label or cfg.child,
        "ms_per_iter": dt * 1000,
        "tokens_per_s": cfg.batch_size * cfg.block_size / dt,
    }
    if rt.device_type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mem_mb"] = rss_mb()
    return result


def table(results: list[dict]) -> str:
    """Markdown rows, with time and peak memory as ratios against the baseline of this run."""
    base = next((r for r in results if r["variant"] == "baseline"), results[0])
    lines = [
        "| variant | ms/iter | tokens/s | peak mem MB | time x | memory x |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['peak_mem_mb']:.0f} | {r['ms_per_iter'] / base['ms_per_iter']:.2f} | "
            f"{r['peak_mem_mb'] / base['peak_mem_mb']:.2f} |"
        )
    return "\n".join(lines)


def run_child(argv: list[str], variant: str) -> dict:
    """measure() in a fresh process, so that its peak memory is its own."""
    proc = subprocess.run(
        [sys.executable, __file__, *argv, f"--child={variant}"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise UserError(f"{variant} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trunk_params(cfg: BenchConfig) -> int:
    """Parameters of the trunk alone: without the token and position embeddings (the head
    is tied to the former), which do not depend on the architecture."""
    model = GPT(cfg.model_args())
    embeddings = sum(m.weight.numel() for name, m in model.transformer.items() if name in ("wte", "wpe"))
    return sum(p.numel() for p in model.parameters()) - embeddings


def matching_gpt_layers(cfg: BenchConfig) -> int:
    """The number of GPT-2 layers (same width) whose trunk is closest to cfg's in size."""
    gpt = dataclasses.replace(
        cfg, arch="gpt", progressive_group=0, norm="layernorm", mlp="gelu", pos_emb="learned", bias=True
    )
    one, two = (trunk_params(dataclasses.replace(gpt, n_layer=n)) for n in (1, 2))
    return max(1, round((trunk_params(cfg) - (2 * one - two)) / (two - one)))


def compare_archs(cfg: BenchConfig, argv: list[str], variants: list[str]) -> list[dict]:
    names = [a for a in cfg.archs.split(",") if a]
    unknown = [a for a in names if a not in ARCHS]
    if unknown:
        raise UserError(f"unknown arch(s) {', '.join(unknown)}; choose from {', '.join(ARCHS)}")
    layers = {name: matching_gpt_layers(apply_config(cfg, ARCHS[name])) for name in names}
    keys = []  # (extra arguments, variant) of every run, the arch's and its GPT-2 reference's
    for name in names:
        for variant in variants:
            keys += [(tuple(ARCHS[name]), variant), ((f"--n_layer={layers[name]}",), variant)]
    keys = list(dict.fromkeys(keys))
    medians = dict(zip(keys, measure_all([(v, list(extra)) for extra, v in keys], argv, cfg.repeats)))
    results = []
    for name in names:
        for variant in variants:
            result = dict(medians[tuple(ARCHS[name]), variant])
            reference = medians[(f"--n_layer={layers[name]}",), variant]
            result.update(
                arch=name,
                trunk_params=trunk_params(apply_config(cfg, ARCHS[name])),
                ref_layers=layers[name],
                ref_ms_per_iter=reference["ms_per_iter"],
                ref_mem_mb=reference.get("train_mem_mb", reference["peak_mem_mb"]),
            )
            print(
                f"  {name}/{variant}: {result['ms_per_iter']:.1f} ms/iter, GPT-2 with "
                f"{layers[name]} layers {reference['ms_per_iter']:.1f}",
                flush=True,
            )
            results.append(result)
    lines = [
        "| arch | variant | trunk params M | ms/iter | train mem MB | GPT-2 layers "
        "(same size) | its ms/iter | its mem MB | time x | memory x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mem = r.get("train_mem_mb", r["peak_mem_mb"])
        lines.append(
            f"| {r['arch']} | {r['variant']} | {r['trunk_params'] / 1e6:.2f} | "
            f"{r['ms_per_iter']:.1f} | {mem:.0f} | {r['ref_layers']} | "
            f"{r['ref_ms_per_iter']:.1f} | {r['ref_mem_mb']:.0f} | "
            f"{r['ms_per_iter'] / r['ref_ms_per_iter']:.2f} | {mem / max(r['ref_mem_mb'], 1):.2f} |"
        )
    print("\n".join(lines))
    return results


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
    print(
        f"bench: {cfg.n_layer} layers, {cfg.n_embd} wide, vocab {cfg.vocab_size}, "
        f"batch {cfg.batch_size}x{cfg.block_size}, {cfg.iters} timed iters after {cfg.warmup}"
    )
    if cfg.archs:
        return compare_archs(cfg, argv, variants)
    runs = [(variant, []) for variant in variants]
    speed = None
    if cfg.augmenter:
        with tempfile.TemporaryDirectory() as work_dir:
            augment = prepare_augmenter_bench(cfg, work_dir)
            online = [*augment, "--augment_source=online"]
            runs += [
                ("sigmoid", [*online, "--label=sigmoid+aug online, every position"]),
                ("sigmoid", [*online, "--augment_positions=one", "--label=sigmoid+aug online, one position"]),
                ("sigmoid", [*augment, "--augment_source=cache", "--label=sigmoid+aug cache"]),
            ]
            results = measure_all(runs, argv, cfg.repeats)
            speed = filter_speed(cfg, work_dir)
    else:
        results = measure_all(runs, argv, cfg.repeats)
    print(table(results))
    if speed:
        print(
            f"perplexity filter, {speed['candidates']} candidates: batched {speed['batched_s']:.2f} s, "
            f"one forward pass per candidate {speed['reference_s']:.2f} s: {speed['speedup']:.1f}x; "
            f"max relative difference {speed['max_rel_diff']:.1e}, same kept: {speed['same_kept']}"
        )
        results.append({"perplexity_filter": speed})
    return results


def measure_all(runs: list[tuple[str, list[str]]], argv: list[str], repeats: int = 1) -> list[dict]:
    """Each (variant, extra arguments) run measured `repeats` times in fresh processes, the
    rounds interleaved so that a load spike on a shared machine hits every run rather than
    one; each run's median (by ms/iter)."""
    measured = [[] for _ in runs]
    for round_index in range(repeats):
        for (variant, extra_argv), results in zip(runs, measured):
            results.append(run_child([*argv, *extra_argv], variant))
            print(
                f"  {results[-1]['variant']} (round {round_index + 1}/{repeats}): "
                f"{results[-1]['ms_per_iter']:.1f} ms/iter",
                flush=True,
            )
    return [sorted(results, key=lambda r: r["ms_per_iter"])[len(results) // 2] for results in measured]


if __name__ == "__main__":
    main()
