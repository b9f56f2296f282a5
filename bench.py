"""Time training steps of each variant and compare them with the baseline in one run.

    python bench.py                                  # all variants, GPT-2 vocabulary, small trunk
    python bench.py --iters=4 --warmup=1             # the whole table, ~6 min on 2 CPU cores
    python bench.py --tiny=True                      # every row at a test's size, in seconds
    python bench.py --variants=baseline,sigmoid --n_layer=6 --n_embd=384 --device=cuda
    python bench.py --archs=llama,conv,progressive --variants=baseline   # trunks, see ARCHS

Any ModelConfig key works on the command line (--arch=conv --conv_factor=2, --mlp=swiglu...).
--archs compares named trunks (ARCHS), each against a GPT-2 trunk of about its parameter
count: the same width with the number of layers whose trunk parameters come closest.

Each run is a fresh process; times are after warm-up, memory is that of one more (untimed)
step: the peak of tensor memory, on the CPU through torch.profiler (nanoGPT/benchmark.py),
and the step's own part of it, above the weights and optimizer state. With --repeats the
rounds interleave the runs and each run reports its median. A second table puts pairs of
runs side by side as ratios (x = B / A, both from this run):
  - every variant unchunked (loss_chunk_size=0) -> chunked (the default, -1 auto), and the
    baseline at the GPT-2 vocabulary (V=50257) whatever --vocab_size says;
  - every variant, GPT-2 124M, fp32 -> bf16 (--bf16=auto: only where the device multiplies
    bf16 in hardware: CUDA, or a CPU with AMX / AVX-512 BF16; elsewhere bf16 matmuls are
    emulated, ~100x slower, and --bf16=on is for a check at --tiny size);
  - the character default, fp32 -> dtype=auto (the same run where auto means fp32).
On CUDA both tables add MFU (model FLOPs against --peak_flops). The children run one
thread unless OMP_NUM_THREADS says otherwise (issue 15's figures are one thread).
    python bench.py --augmenter=True   # + sigmoid with online / cached augmentation, filter speed
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from nanoGPT.augment import build_augmenter
from nanoGPT.benchmark import filter_speed, prepare_augmenter_bench, resident_tensors, step_memory
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError, cli
from nanoGPT.model import GPT
from nanoGPT.runtime import DTYPES, cpu_has_bf16_matmul, resolve_device, resolve_dtype, setup_runtime
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
# the comparison rows' models beside the bench's own trunk
GPT2_VOCAB = ["--vocab_size=50257"]
GPT2_124M = ["--n_layer=12", "--n_head=12", "--n_embd=768", "--vocab_size=50257"]
GPT2_124M += ["--block_size=256", "--batch_size=4"]  # the batch issue 15 measured bf16 at
CHAR_DEFAULT = ["--n_layer=4", "--n_head=4", "--n_embd=128", "--vocab_size=65", "--bias=False"]
CHAR_DEFAULT += ["--block_size=64", "--batch_size=12"]  # config/train_baseline_shakespeare_char.py
# --tiny=True: every run at a test's size, applied after each row's own model (its depth and
# vocabulary stay, so the rows stay distinct runs)
TINY = ["--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=2", "--iters=1", "--warmup=1"]
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


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
    compare: bool = True  # the second table: unchunked -> chunked, fp32 -> bf16, ... (docstring)
    bf16: str = "auto"  # its fp32 -> bf16 rows: auto (where bf16 matmuls are in hardware) | on | off
    tiny: bool = False  # every run at a test's size (TINY): checks that each row runs, in seconds
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


def random_batch(cfg: BenchConfig, device: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Random inputs, targets and (for the variants that take them) extra targets."""
    shape = (cfg.batch_size, cfg.block_size)
    x = torch.randint(cfg.vocab_size, shape, device=device)
    y = torch.randint(cfg.vocab_size, shape, device=device)
    extra = None
    if VARIANTS[cfg.child].uses_extra_positives and cfg.extra_positives:
        extra = torch.randint(-1, cfg.vocab_size, (*shape, cfg.extra_positives), device=device)
        if VARIANTS[cfg.child].uses_teacher_probs:  # distill: the candidates' teacher log-probs too
            extra = ExtraTargets(extra, torch.randn(extra.shape, device=device).log_softmax(-1))
    return x, y, extra


def shape_name(cfg: BenchConfig) -> str:
    return f"{cfg.n_layer}x{cfg.n_embd} V={cfg.vocab_size}, batch {cfg.batch_size}x{cfg.block_size}"


def measure(cfg: BenchConfig) -> dict:
    model_cfg = dataclasses.replace(cfg.model_args(), variant=cfg.child)
    rt = setup_runtime(cfg, model_cfg)  # dtype=auto judges this model, not the data folder's
    torch.manual_seed(cfg.seed)
    raw_model = GPT(model_cfg).to(rt.device)
    raw_model.variant.loss_chunk_size = cfg.loss_chunk_size
    optimizer = build_optimizer(raw_model, cfg, rt.device_type)
    model = torch.compile(raw_model) if cfg.compile else raw_model
    x, y, extra = random_batch(cfg, rt.device)
    augmenter = data = None
    if cfg.augment:  # real batches; the extra positives come from the augmenter every step
        data = TokenData(cfg.data_dir, cfg.block_size, cfg.batch_size, rt.device, cfg.seed)
        augmenter = build_augmenter(cfg, model, data, rt.device)
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

    for _ in range(max(cfg.warmup, 1)):  # the first step allocates the optimizer state: not the
        step()  # memory of a step
    memory = step_memory(step, resident_tensors(raw_model, optimizer), rt.device_type)
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
        "model": shape_name(cfg),
        "dtype": DTYPE_NAMES[rt.ptdtype],
        "loss_chunk_size": cfg.loss_chunk_size,
        "ms_per_iter": dt * 1000,
        "tokens_per_s": cfg.batch_size * cfg.block_size / dt,
        **memory,
        "rss_mb": rss_mb(),  # the whole process's peak, torch libraries included
        "threads": torch.get_num_threads(),
    }
    if rt.device_type == "cuda":
        result["mfu"] = raw_model.flops_per_token() * result["tokens_per_s"] / cfg.peak_flops
    return result


def table(results: list[dict]) -> str:
    """Markdown rows, with time and peak memory as ratios against the baseline of this run."""
    base = next((r for r in results if r["variant"] == "baseline"), results[0])
    mfu = "mfu" in base
    lines = [
        "| variant | dtype | ms/iter | tokens/s | peak MB | step MB | time x | memory x |" + " MFU |" * mfu,
        "|---|---|---|---|---|---|---|---|" + "---|" * mfu,
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r.get('dtype', '')} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['peak_mem_mb']:.0f} | {r.get('step_mem_mb', 0):.0f} | "
            f"{r['ms_per_iter'] / base['ms_per_iter']:.2f} | {r['peak_mem_mb'] / base['peak_mem_mb']:.2f} |"
            + (f" {r.get('mfu', 0) * 100:.1f}% |" if mfu else "")
        )
    return "\n".join(lines)


class Comparison(NamedTuple):
    row: str  # the variant, or the model the row is about
    name: str  # what changes from A to B
    variant: str
    a: tuple  # run_key of A
    b: tuple  # run_key of B


def run_key(cfg: BenchConfig, variant: str, args: list[str]) -> tuple:
    """(variant, the settings that differ from cfg's) of one child run: its dtype resolved
    (auto spelled out) and --tiny applied, so that the same run asked for by two rows (auto
    that means fp32 and fp32, the GPT-2 vocabulary that is the bench's) is measured once."""
    run_cfg = apply_config(cfg, [*args, *(TINY if cfg.tiny else [])])
    with warnings.catch_warnings():  # the child warns of emulated bf16, once is enough
        warnings.simplefilter("ignore")
        ptdtype = resolve_dtype(resolve_device(run_cfg.device), run_cfg.dtype, run_cfg.model_args())
    run_cfg = dataclasses.replace(run_cfg, dtype=DTYPE_NAMES[ptdtype])
    changed = [f.name for f in fields(run_cfg) if getattr(run_cfg, f.name) != getattr(cfg, f.name)]
    return variant, tuple(f"--{name}={getattr(run_cfg, name)}" for name in changed)


def bf16_in_hardware(cfg: BenchConfig) -> bool:
    """--bf16: are the fp32 -> bf16 rows measured?"""
    if cfg.bf16 not in ("auto", "on", "off"):
        raise UserError(f"bf16 must be auto, on or off; got {cfg.bf16!r}")
    if cfg.bf16 != "auto":
        return cfg.bf16 == "on"
    if resolve_device(cfg.device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16_matmul()


def comparisons(cfg: BenchConfig, variants: list[str]) -> list[Comparison]:
    """The pairs of the second table (module docstring), as run keys."""
    unchunked, fp32, bf16 = ["--loss_chunk_size=0"], ["--dtype=float32"], ["--dtype=bfloat16"]
    pairs = []  # (row, name, variant, A's arguments, B's arguments)
    for variant in variants:
        pairs.append((variant, "unchunked -> chunked", variant, unchunked, []))
    pairs.append(
        ("GPT-2 vocabulary", "unchunked -> chunked", "baseline", [*GPT2_VOCAB, *unchunked], GPT2_VOCAB)
    )
    if bf16_in_hardware(cfg):
        for variant in variants:
            pairs.append((variant, "fp32 -> bf16", variant, fp32, bf16))
        pairs.append(("GPT-2 124M", "fp32 -> bf16", "baseline", [*GPT2_124M, *fp32], [*GPT2_124M, *bf16]))
    else:
        print("  no fp32 -> bf16 rows: this device has no bf16 matrix units (--bf16=on forces them)")
    char = (
        "char default",
        "fp32 -> auto",
        "baseline",
        [*CHAR_DEFAULT, *fp32],
        [*CHAR_DEFAULT, "--dtype=auto"],
    )
    rows = {}  # by (A, B): the GPT-2 vocabulary row is the baseline's where V is already 50257
    for row, name, variant, a, b in [*pairs, char]:
        keys = run_key(cfg, variant, a), run_key(cfg, variant, b)
        rows.setdefault(keys, Comparison(row, name, variant, *keys))
    return list(rows.values())


def comparison_table(rows: list[Comparison], measured: dict[tuple, dict]) -> str:
    """Markdown rows: A -> B of each pair, and B / A."""
    mfu = any("mfu" in r for r in measured.values())
    lines = [
        "| row | A -> B | model | dtype | ms/iter | time x | peak MB | memory x | step MB | step x |"
        + " MFU |" * mfu,
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * mfu,
    ]
    for row in rows:
        a, b = measured[row.a], measured[row.b]
        cells = [row.row, row.name, b["model"], f"{a['dtype']} -> {b['dtype']}"]
        for key, digits in (("ms_per_iter", 1), ("peak_mem_mb", 0), ("step_mem_mb", 0)):
            cells += [f"{a[key]:.{digits}f} -> {b[key]:.{digits}f}", f"{b[key] / max(a[key], 1e-9):.2f}"]
        if mfu:
            cells.append(f"{a.get('mfu', 0) * 100:.1f}% -> {b.get('mfu', 0) * 100:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_child(argv: list[str], variant: str) -> dict:
    """measure() in a fresh process, so that its peak memory is its own."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, __file__, *argv, f"--child={variant}"], capture_output=True, text=True, env=env
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
    keys = []  # (variant, extra arguments) of every run, the arch's and its GPT-2 reference's
    for name in names:
        for variant in variants:
            keys += [(variant, tuple(ARCHS[name])), (variant, (f"--n_layer={layers[name]}",))]
    medians = measure_keys(keys, argv, cfg.repeats)
    results = []
    for name in names:
        for variant in variants:
            result = dict(medians[variant, tuple(ARCHS[name])])
            reference = medians[variant, (f"--n_layer={layers[name]}",)]
            result.update(
                arch=name,
                trunk_params=trunk_params(apply_config(cfg, ARCHS[name])),
                ref_layers=layers[name],
                ref_ms_per_iter=reference["ms_per_iter"],
                ref_mem_mb=reference["peak_mem_mb"],
            )
            print(
                f"  {name}/{variant}: {result['ms_per_iter']:.1f} ms/iter, GPT-2 with "
                f"{layers[name]} layers {reference['ms_per_iter']:.1f}",
                flush=True,
            )
            results.append(result)
    lines = [
        "| arch | variant | trunk params M | ms/iter | peak MB | GPT-2 layers "
        "(same size) | its ms/iter | its peak MB | time x | memory x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['arch']} | {r['variant']} | {r['trunk_params'] / 1e6:.2f} | "
            f"{r['ms_per_iter']:.1f} | {r['peak_mem_mb']:.0f} | {r['ref_layers']} | "
            f"{r['ref_ms_per_iter']:.1f} | {r['ref_mem_mb']:.0f} | "
            f"{r['ms_per_iter'] / r['ref_ms_per_iter']:.2f} | "
            f"{r['peak_mem_mb'] / max(r['ref_mem_mb'], 1):.2f} |"
        )
    print("\n".join(lines))
    return results


def augmenter_keys(cfg: BenchConfig, work_dir: str) -> list[tuple]:
    """The runs of sigmoid with augmentation: online at every position / one, and cached."""
    augment = prepare_augmenter_bench(cfg, work_dir)
    online = [*augment, "--augment_source=online"]
    return [
        ("sigmoid", (*online, "--label=sigmoid+aug online, every position")),
        ("sigmoid", (*online, "--augment_positions=one", "--label=sigmoid+aug online, one position")),
        ("sigmoid", (*augment, "--augment_source=cache", "--label=sigmoid+aug cache")),
    ]


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
        + (" (--tiny: every run at a test's size)" if cfg.tiny else "")
    )
    if cfg.archs:
        return compare_archs(cfg, argv, variants)
    keys = [run_key(cfg, variant, []) for variant in variants]
    pairs = comparisons(cfg, variants) if cfg.compare else []
    speed = None
    with tempfile.TemporaryDirectory() as work_dir:
        keys += augmenter_keys(cfg, work_dir) if cfg.augmenter else []
        measured = measure_keys([*keys, *(k for pair in pairs for k in (pair.a, pair.b))], argv, cfg.repeats)
        speed = filter_speed(cfg, work_dir) if cfg.augmenter else None
    results = [measured[key] for key in keys]
    print(table(results))
    if pairs:
        print("\n" + comparison_table(pairs, measured))
        results += [
            {"row": p.row, "comparison": p.name, "a": measured[p.a], "b": measured[p.b]} for p in pairs
        ]
    if speed:
        print(
            f"perplexity filter, {speed['candidates']} candidates: batched {speed['batched_s']:.2f} s, "
            f"one forward pass per candidate {speed['reference_s']:.2f} s: {speed['speedup']:.1f}x; "
            f"max relative difference {speed['max_rel_diff']:.1e}, same kept: {speed['same_kept']}"
        )
        results.append({"perplexity_filter": speed})
    return results


def measure_keys(keys: list[tuple], argv: list[str], repeats: int = 1) -> dict[tuple, dict]:
    """Each distinct (variant, extra arguments) run measured by measure_all, by its key."""
    keys = list(dict.fromkeys(keys))
    return dict(zip(keys, measure_all([(variant, list(extra)) for variant, extra in keys], argv, repeats)))


def measure_all(runs: list[tuple[str, list[str]]], argv: list[str], repeats: int = 1) -> list[dict]:
    """Each (variant, extra arguments) run measured `repeats` times in fresh processes, the
    rounds interleaved so that a load spike on a shared machine hits every run rather than
    one; each run's median (by ms/iter)."""
    measured = [[] for _ in runs]
    for round_index in range(repeats):
        for (variant, extra_argv), results in zip(runs, measured):
            results.append(run_child([*argv, *extra_argv], variant))
            r = results[-1]
            print(
                f"  {r['variant']}, {r.get('model')}, {r.get('dtype')}, loss_chunk_size "
                f"{r.get('loss_chunk_size')} (round {round_index + 1}/{repeats}): "
                f"{r['ms_per_iter']:.1f} ms/iter",
                flush=True,
            )
    return [sorted(results, key=lambda r: r["ms_per_iter"])[len(results) // 2] for results in measured]


if __name__ == "__main__":
    main()
