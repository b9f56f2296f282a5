"""Where and how a process trains: device, dtype, autocast, and the torchrun DDP setup."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from nanoGPT.config import TrainConfig
from nanoGPT.errors import UserError


@dataclass
class Runtime:
    """Where and how this process runs."""

    device: str
    device_type: str
    ptdtype: torch.dtype
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    ddp: bool = False
    master: bool = field(init=False)

    def __post_init__(self) -> None:
        self.master = self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.ptdtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.ptdtype)


def resolve_device(device: str) -> str:
    """The device a `device` setting names: auto = cuda when there is one, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available; use --device=cpu")
    index = device.partition(":")[2]
    if device.startswith("cuda") and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"device={device} but there are {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu"):
    """Run the block under torch.manual_seed(seed) and restore the global RNG after it, so a
    side computation (sampling, a Bayesian teacher) neither varies nor disturbs training."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def setup_runtime(cfg: TrainConfig) -> Runtime:
    device = resolve_device(cfg.device)
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank = local_rank = 0
    world_size = 1
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        # a rank that stops answering (frozen, stuck) ends the run after this, not after 30 min
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=cfg.collective_timeout_s))
    ptdtype = resolve_dtype(device, cfg.dtype)
    if not device.startswith("cuda"):
        ptdtype = torch.float32  # training: CPU autocast is slower than fp32 for these models
    return _runtime(device, ptdtype, rank, local_rank, world_size, ddp)


def inference_runtime(device: str, dtype: str) -> Runtime:
    """The Runtime of one process that only runs a model (sampling): `dtype` as given, on the
    CPU too when asked for (auto stays fp32 there: bf16 autocast made KV-cached GPT-2 124M
    sampling slower on this Xeon, 0.65x at batch 1 and 0.26x at batch 8)."""
    device = resolve_device(device)
    return _runtime(device, resolve_dtype(device, dtype))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(device: str, dtype: str) -> torch.dtype:
    """The torch dtype a `dtype` setting names: auto = bf16 on a CUDA device that has it,
    else fp32."""
    if dtype == "auto":
        return (
            torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
        )
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def _runtime(
    device: str,
    ptdtype: torch.dtype,
    rank: int = 0,
    local_rank: int = 0,
    world_size: int = 1,
    ddp: bool = False,
) -> Runtime:
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, device_type, ptdtype, rank, local_rank, world_size, ddp)
