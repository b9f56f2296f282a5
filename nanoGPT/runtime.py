"""Where and how a process trains: device, dtype, autocast, and the torchrun DDP setup.

dtype: bf16 autocast runs on CUDA and on the CPU alike (training, evaluation, sampling); the
variants' logits and losses stay fp32 (they cast the head's output with .float()). `auto`
picks bf16 on a CUDA device that has it, and on a CPU only where it multiplies bf16
matrices in hardware and the model is large enough to gain (AUTO_CPU_BF16_MIN_WEIGHTS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from nanoGPT.config import ModelConfig, TrainConfig
from nanoGPT.data import resolve_data_dir
from nanoGPT.errors import UserError
from nanoGPT.tokenizer import META_FILE, load_tokenizer


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


def setup_runtime(cfg: TrainConfig, model: ModelConfig | None = None) -> Runtime:
    """The Runtime of a training (or evaluating) process; `model`, the model it will run, lets
    dtype=auto judge its size (default: cfg's, with the vocabulary of cfg's data)."""
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
    if model is None and cfg.dtype == "auto" and device == "cpu" and cpu_has_bf16_matmul():
        model = planned_model(cfg)  # only here does the size decide (it reads the data's meta.pkl)
    ptdtype = resolve_dtype(device, cfg.dtype, model)
    return _runtime(device, ptdtype, rank, local_rank, world_size, ddp)


def close_process_group() -> None:
    """End torch.distributed, once nothing else (the DDP model above all) holds the group.

    torch 2.13 with gloo can deadlock here otherwise: the group's destructor joins its worker
    threads, and a worker still freeing a collective's tensors needs the GIL. Destroyed by the
    DDP Reducer's last reference, the group is torn down with the GIL held, and the run hangs
    at exit (2 to 4 runs in 6 under load here; CI hit it). torch's binding of the Python group
    releases the GIL while it destroys one, so the last reference is taken here and dropped
    after destroy_process_group."""
    world = dist.group.WORLD
    dist.destroy_process_group()
    del world  # the group's destructor runs now, with the GIL released


def inference_runtime(device: str, dtype: str) -> Runtime:
    """The Runtime of one process that only runs a model (sampling): `dtype` as given, on the
    CPU too when asked for. auto stays fp32 on the CPU whatever the model's size: bf16
    autocast made KV-cached GPT-2 124M sampling slower on a Xeon with AMX, 0.65x at batch 1
    and 0.26x at batch 8 (one token a step: too little work per matmul to gain)."""
    device = resolve_device(device)
    return _runtime(device, resolve_dtype(device, dtype))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# bf16 autocast against fp32 on a Xeon with AMX and AVX-512 BF16, one thread, forward +
# backward + AdamW step of this project's model (issue 15), by matmul_weights_per_token:
#   0.79M (4 x 128 character model, batch 32 x 64):  0.87x (slower: casts outweigh the matmuls)
#   16.0M (4 x 256, V = 50257, batch 8 x 128):        1.09x
#   124M  (GPT-2 124M, batch 4 x 256):                1.84x
# Interpolated in log size, break-even is near 5M; auto takes bf16 from twice that, so a model
# near the break-even is never made slower.
AUTO_CPU_BF16_MIN_WEIGHTS = 10_000_000


def cpu_has_bf16_matmul() -> bool:
    """Does this CPU multiply bf16 matrices in hardware (AMX-BF16 or AVX-512 BF16, as
    torch.cpu.get_capabilities() reads them from cpuid)? Without them oneDNN falls back to a
    reference kernel: a bf16 matmul ran ~100x slower than fp32 on an AVX2-only EPYC."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def describe_machine(device: str) -> str:
    """Where a result was computed, for a report: other kernels (AVX2 or AVX-512, another GPU)
    sum floats in another order, training amplifies the difference, and the same command on
    another machine gives other digits (the default comparison: another draw of every seed)."""
    device = resolve_device(device)
    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name(torch.device(device))
    else:
        cpu = torch.cpu.get_capabilities().get("cpu_name") or platform.machine()
        hardware = f"{cpu} ({torch.backends.cpu.get_cpu_capability()} kernels, {os.cpu_count()} cores)"
    return f"{hardware}, torch {torch.__version__}"


def matmul_weights_per_token(model: ModelConfig) -> int:
    """The weights a token is multiplied by (a training step's matmul FLOPs per token / 6):
    12 d^2 a layer (attention 4, MLP 8) and the V x d head, from the config alone."""
    return 12 * model.n_layer * model.n_embd**2 + model.vocab_size * model.n_embd


def planned_model(cfg: TrainConfig) -> ModelConfig:
    """cfg's model with the vocabulary its data will give it (a char or SentencePiece meta.pkl;
    none: GPT-2 BPE, cfg's): train.py replaces cfg's vocab_size with the data's."""
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    if not os.path.exists(os.path.join(data_dir, META_FILE)):
        return cfg.model_args()
    try:
        vocab_size = load_tokenizer(data_dir).vocab_size
    except UserError:  # reported where the data is loaded; the size estimate keeps cfg's
        return cfg.model_args()
    return dataclasses.replace(cfg.model_args(), vocab_size=vocab_size)


def resolve_dtype(device: str, dtype: str, model: ModelConfig | None = None) -> torch.dtype:
    """The torch dtype a `dtype` setting names. auto: bf16 on a CUDA device that has it; on
    a CPU, bf16 for a `model` of AUTO_CPU_BF16_MIN_WEIGHTS or more where the CPU has bf16
    matrix units; else fp32. float16 is refused on the CPU (no gain, and its loss scaling is
    made for CUDA): bfloat16 is the CPU's half precision."""
    cuda = device.startswith("cuda")
    if dtype == "auto":
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        large = model is not None and matmul_weights_per_token(model) >= AUTO_CPU_BF16_MIN_WEIGHTS
        return torch.bfloat16 if large and cpu_has_bf16_matmul() else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    if dtype == "float16" and not cuda:
        raise UserError("dtype=float16 needs a CUDA device; on the CPU use bfloat16 (or auto)")
    if dtype == "bfloat16" and not cuda and not cpu_has_bf16_matmul():
        warnings.warn(
            "dtype=bfloat16: this CPU has no bf16 matrix units (AMX, AVX-512 BF16); "
            "its bf16 matmuls can be ~100x slower than float32",
            stacklevel=2,
        )
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
