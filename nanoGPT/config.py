"""The configuration: two dataclasses and the configurator that fills them.

`ModelConfig` drives the one model class (trunk + variant head). `TrainConfig` extends it
with everything the training loop needs, so every key lives in one flat namespace, the way
nanoGPT users expect: a Python config file first, then `--key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from nanoGPT.errors import UserError

C = TypeVar("C")


@dataclass
class ModelConfig:
    # trunk (GPT-2 small by default)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257  # exact tokenizer vocabulary: padded ids would take probability mass
    dropout: float = 0.0
    bias: bool = True
    # trunk options (nanoGPT/layers.py). The defaults are GPT-2; a LLaMA-style trunk is
    # norm="rmsnorm", mlp="swiglu", pos_emb="rope", bias=False
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu (4x wide) | swiglu (silu(x W1) * (x W3), then W2; ~8/3x wide)
    pos_emb: str = "learned"  # learned (added to the input) | rope (rotary, inside attention)
    rope_theta: float = 10000.0  # rope: base of the rotation frequencies
    arch: str = "gpt"  # gpt | conv (causal convolution compressor, nanoGPT/conv_model.py)
    conv_factor: int = 4  # conv: each level shortens the sequence by this factor...
    conv_levels: int = 1  # ...and doubles the width; needs n_layer >= 2 * conv_levels + 1
    # the target of position t is token t + predict_ahead (1 = the next token); 0 = auto:
    # conv_factor ** conv_levels (arch=conv), the source's look-ahead of whole operands
    predict_ahead: int = 1
    # progressive diverging (nanoGPT/progressive.py): stage 1 shares one block per group of
    # progressive_group layers, stage 2 per half group (attention through LoRA), stage 3 none
    # (its attention through LoRA too with progressive_stage3_lora)
    progressive_group: int = 0  # 0 = off; else even and a divisor of n_layer
    progressive_stage2: float = 0.3  # stage 2 starts at this fraction of progressive_iters
    progressive_stage3: float = 0.6  # stage 3 starts at this fraction of progressive_iters
    progressive_iters: int = 0  # iterations the stage fractions refer to; 0 = max_iters
    lora_rank: int = 4  # progressive stages 2 (and 3 with LoRA): rank of the attention adapters
    lora_alpha: float = 8.0  # progressive stage 2: adapters are scaled by lora_alpha / lora_rank
    # progressive stage 3: attention keeps learning through LoRA (the source) instead of
    # training fully; False (the default) is how checkpoints without this key trained
    progressive_stage3_lora: bool = False
    # output objective, see nanoGPT/variants/
    variant: str = "baseline"
    label_smoothing: float = 0.05  # smooth
    pos_weight: float = 1.0  # sigmoid variants: weight of the positive terms of the BCE
    distill_alpha: float = 0.5  # distill: target weight of the true token; 1 - alpha on the teacher
    distill_temperature: float = 1.0  # distill: the teacher's top-k renormalised as p^(1/temperature)
    # bayes variants: std of the prior on the head (the broad one of a mixture); ~1/sqrt(n_embd)
    # gives unit-scale logits for layer-normed features. 1.0 let the posterior widen until the
    # logits' noise swamped a 2,048-piece head (config/sweep_bayes_shakespeare.py)
    prior_sigma: float = 0.1
    bayes_prior: str = "gaussian"  # bayes variants: gaussian (closed-form KL) | scale_mixture | laplace
    prior_sigma2: float = 0.0025  # scale_mixture: std of the narrow component (Blundell et al.: e^-6)
    prior_mix_weight: float = 0.5  # scale_mixture: weight pi of the prior_sigma component
    posterior_init_sigma: float = 1e-3  # bayes variants: initial posterior std
    # bayes variants: log sigma = scale * theta, so Adam moves log sigma scale x faster than lr;
    # 10 reaches sigma's equilibrium within 200 steps at lr 5e-3, 30 overshoots (the same sweep)
    posterior_sigma_scale: float = 10.0
    # bayes variants: fast (fused kernels) | pyro (PyroModule + AutoNormal + Trace_ELBO)
    bayes_backend: str = "fast"
    kl_weight: float = 1.0  # bayes variants: ELBO = E[loss] + kl_weight * KL / kl_num_tokens
    kl_num_tokens: int = 0  # N in the ELBO; 0 = number of training tokens in one epoch
    bayes_estimator: str = "weight"  # bayes variants: weight (one sample per step) | local (per token)
    bayes_samples: int = 8  # bayes variants: weight samples averaged by evaluation and sampling

    def target_offset(self) -> int:
        """How far ahead of its position each position predicts (predict_ahead, 0 resolved)."""
        return self.predict_ahead or self.conv_factor**self.conv_levels

    def model_args(self) -> ModelConfig:
        """The ModelConfig part of this (Train)Config."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})


@dataclass
class TrainConfig(ModelConfig):
    # I/O
    out_dir: str = "out"
    log_dir: str = "training_logs"  # metrics.jsonl and samples.txt go to <log_dir>/<run_name>/
    run_name: str = ""  # default: the name of out_dir
    # scratch | resume (newest valid checkpoint in out_dir) | auto (resume if there is one, else
    # scratch: rerun the same command after a crash) | gpt2 | gpt2-medium | ... | a local HF folder
    init_from: str = "scratch"
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    eval_only: bool = False
    eval_split: str = "val"  # the held-out split evaluation reports on: val or test
    sample_interval: int = 0  # 0 = never; else append a sample to samples.txt every N iters
    sample_tokens: int = 64
    sample_prompt: str = "\n"
    wandb_log: bool = False
    wandb_project: str = "nanoGPT-objectives"
    wandb_run_name: str = ""
    # checkpoints and numerical faults (README: "When things go wrong")
    checkpoint_interval: int = 0  # also checkpoint every N iterations; 0 = only at evaluations
    checkpoint_minutes: float = 0.0  # also checkpoint when N minutes passed since the last; 0 = off
    keep_checkpoints: int = 3  # numbered checkpoints kept (best.pt's is kept as well)
    max_bad_steps: int = 10  # stop after more than N updates in a row skipped for a NaN/inf
    debug_nan_at_iter: int = -1  # testing aid: the loss is NaN at this iteration (-1 = off)
    debug_nan_steps: int = 1  # testing aid: ...and at the N-1 iterations after it
    debug_save_pause_s: float = 0.0  # testing aid: pause between the steps of a checkpoint save
    # data
    dataset: str = "shakespeare_char"  # a folder under data/
    data_dir: str = ""  # any folder holding train.bin/val.bin; overrides dataset
    batch_size: int = 12  # per process, per micro-step
    train_fraction: float = 1.0  # windows come from this first fraction of train.bin (data-limited runs)
    # augmenter: a teacher LM adds extra positive next tokens (multi-hot variants only)
    augment: bool = False
    teacher: str = "gpt2"  # a hub name, a local HF folder, or ckpt:<out_dir of a run here>
    augment_k: int = 50  # candidates per position: the teacher's top k
    augment_filter: str = "perplexity"  # perplexity | prob | none
    augment_threshold: float = 100.0  # perplexity filter: keep a candidate below this
    augment_min_prob: float = 0.01  # prob filter: keep a candidate at least this likely
    augment_window: int = 64  # perplexity filter: tokens scored around the position
    augment_positions: str = "one"  # one (random position per sequence) | all | a fraction
    # 0: the candidates are the teacher's top augment_k; N: augment_k distinct tokens drawn
    # (seeded) from the teacher's N most likely, within their augment_sample_top_p nucleus
    augment_sample_top_k: int = 0
    augment_sample_top_p: float = 1.0  # with augment_sample_top_k: the nucleus drawn from
    augment_source: str = "online"  # online (teacher in the loop) | cache (train.aug_*.bin)
    augment_cache: str = ""  # cache name: <data_dir>/train.aug_<name>.bin; "" = <teacher>-<filter>
    gradient_accumulation_steps: int = 1  # total over all processes; each does ceil(total / processes)
    # optimizer (AdamW) and schedule (warmup + cosine)
    learning_rate: float = 6e-4
    max_iters: int = 5000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0 = max_iters
    min_lr: float = 6e-5
    # system
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto | float32 | bfloat16 | float16 (CUDA only). auto: bf16 on CUDA; on a CPU, bf16 where it
    # has bf16 matrix units (AMX, AVX-512 BF16) and the model is large (runtime.py), else fp32
    dtype: str = "auto"
    compile: bool = False
    backend: str = "auto"  # DDP backend: auto = nccl on CUDA, gloo on CPU
    # DDP: a collective (all-reduce, barrier, ...) that waits longer than this for another rank
    # ends the run with an error: a frozen or stuck rank stops it instead of hanging it
    collective_timeout_s: float = 300.0
    seed: int = 1337
    peak_flops: float = 989e12  # for MFU: dense bf16 peak of the accelerator (H100/H200)
    # training loss over chunks of positions, no (N, V) logits held (nanoGPT/chunked_loss.py):
    # -1 = auto (when a batch has over 2**24 logits: the GPT-2 vocabulary, never a character
    # one), 0 = never, n = n positions per chunk. Memory only: the same loss and gradients
    loss_chunk_size: int = -1


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _close_keys(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_type(key: str, value: Any, expected: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise UserError(f"config key {key} must be True or False, got {value!r}")
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"config key {key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_value(key: str, text: str, expected: Any) -> Any:
    if expected is str:
        return text
    if expected is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise UserError(f"--{key} must be True or False, got {text!r}")
    try:
        return expected(text)
    except ValueError:
        raise UserError(f"--{key} must be {expected.__name__}, got {text!r}") from None


def apply_config(config: C, argv: list[str]) -> C:
    """Return a copy of `config` updated from `argv`: config files (paths) then --key=value.

    A config file is Python; every top-level name it defines must be a config key. An unknown
    key or a value of the wrong type raises UserError naming the closest valid keys.
    """
    types_by_key = _field_types(type(config))
    valid = list(types_by_key)
    updates: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise UserError(f"config file {arg} not found (arguments are FILE or --key=value)")
            # __file__ lets a config build on another: exec(open(<sibling>).read())
            namespace: dict[str, Any] = {"__file__": os.path.abspath(arg)}
            try:
                exec(compile(open(arg).read(), arg, "exec"), namespace)
            except Exception as err:  # a user's file: report it in one line
                raise UserError(f"config file {arg} failed: {type(err).__name__}: {err}") from None
            for key, value in namespace.items():
                if key.startswith("_") or isinstance(value, types.ModuleType):
                    continue
                if key not in types_by_key:
                    raise UserError(f"unknown config key {key} in {arg}{_close_keys(key, valid)}")
                updates[key] = _check_type(key, value, types_by_key[key])
            continue
        key, sep, text = arg[2:].partition("=")
        if not sep:
            raise UserError(f"argument {arg} must look like --key=value")
        if key not in types_by_key:
            raise UserError(f"unknown config key {key}{_close_keys(key, valid)}")
        updates[key] = parse_value(key, text, types_by_key[key])
    return dataclasses.replace(config, **updates)


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Rebuild a config saved in a checkpoint, ignoring keys this version no longer has."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


# --- validation: every key's type and range, before any work -----------------------------

# Each range is "[low, high]" with ( or ) for an open end; "inf" for no bound. Checked keys of
# any config class that has them; a float must also be finite, an int fit in 64 bits.
RANGES = {
    "n_layer": "[1, 10000]",
    "n_head": "[1, inf)",
    "n_embd": "[1, 1000000]",
    "block_size": "[1, 1000000]",
    "vocab_size": "[1, 4294967296]",
    "dropout": "[0, 1)",
    "rope_theta": "(0, inf)",
    "conv_factor": "[2, 1000000]",
    "conv_levels": "[1, 5000]",
    "predict_ahead": "[0, 1000000]",
    "progressive_group": "[0, 10000]",
    "progressive_stage2": "[0, inf)",
    "progressive_stage3": "[0, inf)",
    "progressive_iters": "[0, inf)",
    "lora_rank": "[1, 1000000]",
    "lora_alpha": "[0, inf)",
    "label_smoothing": "[0, 1)",
    "pos_weight": "(0, inf)",
    "distill_alpha": "[0, 1]",
    "distill_temperature": "(0, inf)",
    "prior_sigma": "(0, inf)",
    "prior_sigma2": "(0, inf)",
    "prior_mix_weight": "(0, 1)",
    "posterior_init_sigma": "(0, inf)",
    "posterior_sigma_scale": "(0, inf)",
    "kl_weight": "[0, inf)",
    "kl_num_tokens": "[0, inf)",
    "bayes_samples": "[1, 1000000]",
    "eval_interval": "[1, inf)",
    "eval_iters": "[1, inf)",
    "log_interval": "[1, inf)",
    "sample_interval": "[0, inf)",
    "sample_tokens": "[0, 1000000]",
    "checkpoint_interval": "[0, inf)",
    "checkpoint_minutes": "[0, inf)",
    "keep_checkpoints": "[1, inf)",
    "max_bad_steps": "[0, inf)",
    "debug_nan_at_iter": "[-1, inf)",
    "debug_nan_steps": "[0, inf)",
    "debug_save_pause_s": "[0, 3600]",
    "batch_size": "[1, 1000000]",
    "train_fraction": "(0, 1]",
    "augment_k": "[1, inf)",
    "augment_threshold": "(0, inf)",
    "augment_min_prob": "(0, 1]",
    "augment_window": "[2, inf)",
    "augment_sample_top_k": "[0, inf)",
    "augment_sample_top_p": "(0, 1]",
    "gradient_accumulation_steps": "[1, 1000000]",
    "learning_rate": "[0, inf)",
    "max_iters": "[0, inf)",
    "weight_decay": "[0, inf)",
    "beta1": "[0, 1)",
    "beta2": "[0, 1)",
    "grad_clip": "[0, inf)",
    "warmup_iters": "[0, inf)",
    "lr_decay_iters": "[0, inf)",
    "min_lr": "[0, inf)",
    "seed": f"[0, {2**63})",
    "collective_timeout_s": "(0, 86400]",
    "peak_flops": "(0, inf)",
    "loss_chunk_size": "[-1, inf)",
}
# keys whose string names one of a few settings (the model's and the augmenter's own choices
# are checked where they are defined, with their registries)
CHOICES = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "backend": ("auto", "nccl", "gloo"),
    "eval_split": ("val", "test"),
}
NON_EMPTY = ("out_dir", "log_dir")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,4})?")
INT64 = 2**63


def _in_range(value: float, spec: str) -> bool:
    low, high = (float(end) for end in spec[1:-1].split(","))
    above = value >= low if spec[0] == "[" else value > low
    below = value <= high if spec[-1] == "]" else value < high
    return above and below


def _check_number(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value}")
    spec = RANGES.get(key)
    if spec is not None and not _in_range(value, spec):
        raise UserError(f"{key} must be in {spec}, got {value}")
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise UserError(f"{key}={value} does not fit in 64 bits")


def _check_string(key: str, value: str) -> None:
    if "\0" in value:
        raise UserError(f"{key} must not hold a NUL character")
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in NON_EMPTY and not value:
        raise UserError(f"{key} must not be empty")
    if key == "device" and not DEVICE_PATTERN.fullmatch(value):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")


def validate_config(config: Any) -> None:
    """UserError (one line) for the first key of `config` (a dataclass) whose type or range
    the code cannot run with: checked before anything is loaded, built or written."""
    for key, expected in _field_types(type(config)).items():
        value = getattr(config, key)
        _check_type(key, value, expected)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            _check_number(key, value)
        elif isinstance(value, str):
            _check_string(key, value)
    n_embd, n_head = getattr(config, "n_embd", 1), getattr(config, "n_head", 1)
    if n_embd % n_head:
        raise UserError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")


def _probe_write(path: str, message: str) -> None:
    """Create and delete a file in the existing folder `path`: os.access passes for root on a
    folder without write permission and says nothing of some read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{message} ({err.strerror})") from None


def check_writable(folder: str, key: str) -> None:
    """UserError unless `folder` is, or can be created as, a writable folder. A missing folder is
    judged by a probe file in its nearest existing parent, so nothing is created here: the ranks
    of a torchrun job check the same path at once, and one rank's clean-up must not pull a
    folder from under another's check."""
    target = path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f"{key}={folder}: {path} is not a folder")
    if path == target:
        _probe_write(path, f"{key}={folder} is not writable")
        return
    name_max = os.pathconf(path, "PC_NAME_MAX")  # what mkdir would refuse besides permissions
    if any(len(os.fsencode(name)) > name_max for name in os.path.relpath(target, path).split(os.sep)):
        raise UserError(f"{key}={folder} cannot be created: a folder name is over {name_max} bytes")
    _probe_write(path, f"{key}={folder} cannot be created: {path} is not writable")
