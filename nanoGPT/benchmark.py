"""What bench.py measures inside a run: a training step's peak memory, and with
--augmenter=True the cost of multi-hot targets.

Peak memory of a step (`step_memory`): on CUDA the allocator's own peak. On the CPU there is
none, and the process's peak RSS is a poor stand-in: it counts the torch libraries, and
glibc keeps freed pages, so a smaller step does not show as a smaller peak. So one step runs
under torch.profiler with profile_memory, which records every CPU tensor allocation and free
with the running total: its largest total is the step's peak above the tensors alive before
it (weights, optimizer state), the figure CUDA's max_memory_allocated gives. That step is
not timed (the profiler slows it).

For --augmenter=True it makes a small real GPT-2-BPE data folder from the embedded plays, a
teacher checkpoint of the bench's own trunk (one training iteration: its weights do not
matter for timing), and the candidate cache; then bench.py times sigmoid training steps
that read their extra positives online (prob filter) and from the cache, and this module
times the batched perplexity filter against the one-candidate-at-a-time reference on the
same candidates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from nanoGPT.augment.augmenter import DataAugmenter, to_device
from nanoGPT.augment.cache import build_cache
from nanoGPT.augment.reference import reference_window_perplexity
from nanoGPT.augment.settings import AugmentSettings, select_positions
from nanoGPT.augment.teachers import load_teacher
from nanoGPT.config import TrainConfig
from nanoGPT.data import TokenData
from nanoGPT.prepare import shakespeare_splits, write_text_dataset
from nanoGPT.runtime import setup_runtime
from nanoGPT.tokenizer import gpt2_tokenizer, load_tokenizer
from nanoGPT.train import train


def tensor_mb(tensors: Iterable[torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def resident_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors alive between steps: weights and optimizer state (gradients are set to None)."""
    state = [v for per_param in optimizer.state.values() for v in per_param.values() if torch.is_tensor(v)]
    return [*model.parameters(), *state]


def profiled_peak_mb(run: Callable[[], None]) -> float:
    """The most CPU tensor memory `run` held at once beyond what was allocated before it, MB:
    the largest running total of the profiler's memory events (frees of older tensors are
    not seen, so a step that frees them reads high, never low)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0) / 2**20


def step_memory(step: Callable[[], None], resident: list[torch.Tensor], device_type: str) -> dict:
    """Run one (untimed) training step and return its memory: `step_mem_mb`, the peak above
    the tensors alive before it, and `peak_mem_mb`, that plus those tensors."""
    if device_type != "cuda":
        step_mb = profiled_peak_mb(step)
        return {"step_mem_mb": step_mb, "peak_mem_mb": tensor_mb(resident) + step_mb}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"step_mem_mb": (peak - before) / 2**20, "peak_mem_mb": peak / 2**20}


def prepare_augmenter_bench(cfg: TrainConfig, work_dir: str, train_chars: int = 60_000) -> list[str]:
    """Data, teacher and cache in `work_dir`; returns the config overrides a child run needs."""
    data_dir = os.path.join(work_dir, "data")
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        _, splits = shakespeare_splits()
        write_text_dataset(
            data_dir,
            gpt2_tokenizer(),
            {"train": splits["train"][:train_chars], "val": splits["val"][:20_000]},
        )
    teacher_dir = os.path.join(work_dir, "teacher")

    if not os.path.exists(os.path.join(teacher_dir, "ckpt.pt")):
        train(
            dataclasses.replace(
                cfg,
                variant="baseline",
                data_dir=data_dir,
                out_dir=teacher_dir,
                log_dir=os.path.join(work_dir, "logs"),
                max_iters=1,
                eval_iters=1,
                augment=False,
                init_from="scratch",
            )
        )
    augment = [
        "--augment=True",
        f"--teacher=ckpt:{teacher_dir}",
        "--augment_filter=prob",
        "--augment_min_prob=0.001",
        "--augment_positions=all",
        f"--data_dir={data_dir}",
    ]
    build_cache(
        dataclasses.replace(
            cfg,
            variant="sigmoid",
            data_dir=data_dir,
            augment=True,
            teacher=f"ckpt:{teacher_dir}",
            augment_filter="prob",
            augment_min_prob=0.001,
            augment_positions="all",
        ),
        show_progress=False,
    )
    return augment


def filter_speed(cfg: TrainConfig, work_dir: str, rows: int = 2) -> dict:
    """Seconds for the perplexity filter's windows of one batch, on the bench's device: batched
    vs one candidate per forward pass (each after one warm-up call), and the largest relative
    difference of their perplexities."""

    device = setup_runtime(cfg).device
    data_dir = os.path.join(work_dir, "data")
    tokenizer = load_tokenizer(data_dir)
    teacher = load_teacher(f"ckpt:{os.path.join(work_dir, 'teacher')}", device, tokenizer)
    settings = dataclasses.replace(AugmentSettings.from_config(cfg), filter="perplexity", positions="one")
    augmenter = DataAugmenter(teacher, settings, seed=cfg.seed)
    batch = TokenData(data_dir, cfg.block_size, rows, device, cfg.seed).train_batch(0)
    positions = select_positions(batch.starts, cfg.block_size, "one", cfg.seed)
    full_rows = torch.cat([batch.x, batch.y[:, -1:]], dim=1).tolist()

    def timed(compute):
        compute()  # warm-up: first calls pay for allocations and, on CUDA, kernel selection
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = compute()
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - t0

    with teacher.context():
        candidates = torch.topk(teacher.log_probs(batch.x), settings.k, dim=-1).indices
        candidates = candidates.gather(
            1, to_device(positions, batch.x.device)[:, :, None].expand(-1, -1, settings.k)
        )
        batched, t_batched = timed(
            lambda: augmenter.window_nll(batch.x, batch.y, positions, candidates).exp().cpu()
        )
        reference, t_reference = timed(
            lambda: [
                [
                    [
                        reference_window_perplexity(
                            teacher, full_rows[b], int(positions[b, i]), int(c), settings.window
                        )
                        for c in candidates[b, i].tolist()
                    ]
                    for i in range(positions.shape[1])
                ]
                for b in range(rows)
            ]
        )
    reference = torch.tensor(reference)
    return {
        "candidates": int(np.prod(candidates.shape)),
        "batched_s": t_batched,
        "reference_s": t_reference,
        "speedup": t_reference / t_batched,
        "max_rel_diff": float(((batched - reference).abs() / reference).max()),
        "same_kept": bool(torch.equal(batched < settings.threshold, reference < settings.threshold)),
    }
