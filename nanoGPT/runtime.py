"""Where and how a process trains: device, dtype, autocast, and the torchrun DDP setup."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

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
        if self.device_type == "cpu" or self.ptdtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.ptdtype)


def resolve_device(device: str) -> str:
    """The device a `device` setting names: auto = cuda when there is one, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available; use --device=cpu")
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
        dist.init_process_group(backend=backend)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if device_type == "cpu":
        dtype = "float32"  # CPU autocast is slower than fp32 for these models
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise UserError(f"dtype must be one of auto, {', '.join(dtypes)}; got {dtype!r}")
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, device_type, dtypes[dtype], rank, local_rank, world_size, ddp)
