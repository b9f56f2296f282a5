"""The one training loop. Every variant trains here; entry points only pick the variant.

Single process:  python train_baseline.py config/train_baseline_shakespeare_char.py
DDP:             torchrun --standalone --nproc_per_node=8 train_baseline.py CONFIG
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nanoGPT.checkpoint import FORMAT as CHECKPOINT_FORMAT
from nanoGPT.checkpoint import atomic_torch_save, checkpoint_path, load_checkpoint, model_config_of
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.data import TokenData, resolve_data_dir
from nanoGPT.errors import UserError, cli
from nanoGPT.evaluate import evaluate
from nanoGPT.model import GPT
from nanoGPT.sampling import generate
from nanoGPT.tokenizer import load_tokenizer


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


def setup_runtime(cfg: TrainConfig) -> Runtime:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device=cuda but CUDA is not available; use --device=cpu")
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank = local_rank = 0
    world_size = 1
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        backend = cfg.backend if cfg.backend != "auto" else (
            "nccl" if device.startswith("cuda") else "gloo")
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


def learning_rate(cfg: TrainConfig, it: int) -> float:
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def build_optimizer(model: GPT, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only, never on parameters marked `no_weight_decay`
    (norms, biases, and variational parameters whose regulariser is the KL)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not getattr(p, "no_weight_decay", False) else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
        fused=device_type == "cuda" or None,
    )


class RunLog:
    """Progress lines on stdout, JSON lines in training_logs/<run>/metrics.jsonl, optional wandb."""

    def __init__(self, cfg: TrainConfig, active: bool):
        self.active = active
        self.dir = os.path.join(cfg.log_dir, cfg.run_name or os.path.basename(os.path.abspath(cfg.out_dir)))
        self.wandb = None
        if not active:
            return
        os.makedirs(self.dir, exist_ok=True)
        if cfg.wandb_log:
            import wandb  # reads WANDB_API_KEY / WANDB_MODE from the environment only
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or None,
                                    config=dataclasses.asdict(cfg))

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                           step=record["iter"])

    def sample(self, it: int, text: str) -> None:
        if self.active:
            with open(os.path.join(self.dir, "samples.txt"), "a") as f:
                f.write(f"--- iter {it} ---\n{text}\n")

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def create_model(cfg: TrainConfig, rt: Runtime, vocab_size: int, train_tokens: int):
    """The model and, when resuming, the checkpoint it came from."""
    cfg_model = cfg.model_args()
    if cfg_model.kl_num_tokens == 0:
        cfg_model = dataclasses.replace(cfg_model, kl_num_tokens=train_tokens)
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(checkpoint_path(cfg.out_dir), map_location=rt.device)
        saved = model_config_of(ckpt, expect_variant=cfg.variant)
        model = GPT(dataclasses.replace(saved, dropout=cfg.dropout))
        model.load_state_dict(ckpt["model"])
        return model, ckpt
    if cfg.init_from == "scratch":
        cfg_model = dataclasses.replace(cfg_model, vocab_size=vocab_size)
        return GPT(cfg_model), None
    model = GPT.from_pretrained(cfg.init_from, cfg_model)  # gpt2, gpt2-medium, ... or a folder
    if model.config.vocab_size != vocab_size:
        raise UserError(f"{cfg.init_from} has a vocabulary of {model.config.vocab_size} tokens, "
                        f"the data has {vocab_size}: prepare the data with the GPT-2 tokenizer")
    return model, None


def train(cfg: TrainConfig) -> dict:
    """Run the training loop described by `cfg`; returns the last evaluation's metrics."""
    rt = setup_runtime(cfg)
    try:
        return _train(cfg, rt)
    finally:
        if rt.ddp and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rt: Runtime) -> dict:
    if cfg.gradient_accumulation_steps % rt.world_size:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a "
                        f"multiple of the number of processes ({rt.world_size})")
    if cfg.eval_split not in ("val", "test"):
        raise UserError(f"eval_split must be val or test, got {cfg.eval_split!r}")
    accum_steps = cfg.gradient_accumulation_steps // rt.world_size
    torch.manual_seed(cfg.seed + rt.rank)
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    data = TokenData(data_dir, cfg.block_size, cfg.batch_size, rt.device, cfg.seed, rt.rank)
    if not data.has_split(cfg.eval_split):
        raise UserError(f"{data.path(cfg.eval_split)} not found: no held-out {cfg.eval_split} split")
    tokenizer = load_tokenizer(data_dir)
    token_bytes = torch.as_tensor(tokenizer.token_byte_lengths(), dtype=torch.long, device=rt.device)

    model, ckpt = create_model(cfg, rt, tokenizer.vocab_size, data.num_tokens("train"))
    if model.config.block_size < cfg.block_size:
        raise UserError(f"block_size {cfg.block_size} > the model's {model.config.block_size}")
    model.to(rt.device)
    optimizer = build_optimizer(model, cfg, rt.device_type)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.ptdtype == torch.float16)
    iter_num, best_val_loss = 0, float("inf")
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"][rt.rank % len(ckpt["rng"]["torch"])])
        if rt.device_type == "cuda" and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rt.rank % len(ckpt["rng"]["cuda"])])
        ckpt = None  # free the memory
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)

    log = RunLog(cfg, rt.master)
    tokens_per_iter = accum_steps * rt.world_size * cfg.batch_size * cfg.block_size
    if rt.master:
        print(f"{cfg.variant}: {raw_model.num_params() / 1e6:.2f}M parameters, "
              f"{tokens_per_iter} tokens/iter, device {rt.device}, {rt.ptdtype}, "
              f"{rt.world_size} process(es), data {data_dir}")

    def run_eval() -> dict:
        results = {}
        for split in ("train", cfg.eval_split):
            metrics = evaluate(raw_model, data, split, cfg.eval_iters, token_bytes, rt.autocast(),
                               rt.world_size, seed=cfg.seed)
            results.update({f"{split}/{k}": v for k, v in metrics.items()})
        if rt.ddp:  # ranks must hold identical weights; a non-zero spread means a sync bug
            checksum = torch.stack([p.detach().double().sum() for p in raw_model.parameters()]).sum()
            gathered = [torch.zeros_like(checksum) for _ in range(rt.world_size)]
            dist.all_gather(gathered, checksum)
            results["ddp/param_spread"] = (max(gathered) - min(gathered)).item()
        return results

    def save(path: str) -> None:
        rng = {"torch": [torch.get_rng_state()], "cuda": []}
        if rt.device_type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state()]
        if rt.ddp:  # each rank's dropout stream, so every rank resumes its own
            gathered: list = [None] * rt.world_size
            dist.all_gather_object(gathered, rng)
            rng = {k: [r[k][0] for r in gathered if r[k]] for k in rng}
        if rt.master:
            atomic_torch_save({
                "format": CHECKPOINT_FORMAT, "variant": cfg.variant,
                "model_args": dataclasses.asdict(raw_model.config),
                "config": dataclasses.asdict(cfg), "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(), "iter_num": iter_num,
                "best_val_loss": best_val_loss, "rng": rng,
            }, path)

    last_metrics: dict = {}
    resumed_at = iter_num if cfg.init_from == "resume" else -1
    t_last, iters_since_log = time.time(), 0
    loss_sum = torch.zeros((), device=rt.device)
    while True:
        at_end = iter_num >= cfg.max_iters
        if (iter_num % cfg.eval_interval == 0 or at_end) and iter_num != resumed_at:
            last_metrics = run_eval()
            val_loss = last_metrics[f"{cfg.eval_split}/nll"]
            if rt.master:
                print(f"step {iter_num}: train nll {last_metrics['train/nll']:.4f}, "
                      f"{cfg.eval_split} nll {val_loss:.4f} (ppl {math.exp(val_loss):.2f}, "
                      f"acc {last_metrics[f'{cfg.eval_split}/acc']:.3f}, "
                      f"ece {last_metrics[f'{cfg.eval_split}/ece']:.3f})")
            log.write({"iter": iter_num, "kind": "eval", **last_metrics})
            if cfg.eval_only:
                break
            improved = val_loss < best_val_loss
            best_val_loss = min(best_val_loss, val_loss)
            if iter_num > 0 or at_end:
                save(checkpoint_path(cfg.out_dir, "last"))
                if improved:
                    save(checkpoint_path(cfg.out_dir, "best"))
            if cfg.sample_interval and iter_num % cfg.sample_interval == 0 and rt.master:
                log.sample(iter_num, sample_text(raw_model, tokenizer, cfg, rt))
        if at_end:
            break

        lr = learning_rate(cfg, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro_step in range(accum_steps):
            batch = data.train_batch(iter_num, micro_step)
            last_micro = micro_step == accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or not rt.ddp else model.no_sync()
            with sync:
                with rt.autocast():
                    loss, stats = model(batch.x, batch.y)
                loss_sum += loss.detach() / accum_steps
                scaler.scale(loss / accum_steps).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        iters_since_log += 1

        if iter_num % cfg.log_interval == 0:
            if rt.ddp:
                dist.all_reduce(loss_sum)
                loss_sum /= rt.world_size
            train_loss = loss_sum.item() / iters_since_log
            dt = (time.time() - t_last) / iters_since_log
            tokens_per_s = tokens_per_iter / dt
            record = {"iter": iter_num, "kind": "train", "loss": train_loss, "lr": lr,
                      "ms_per_iter": dt * 1000, "tokens_per_s": tokens_per_s,
                      **{k: v.item() for k, v in stats.items()}}
            line = f"iter {iter_num}: loss {train_loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, " \
                   f"{tokens_per_s / 1000:.1f}k tok/s"
            if rt.device_type == "cuda":
                record["mfu"] = raw_model.flops_per_token() * tokens_per_s / rt.world_size / cfg.peak_flops
                line += f", mfu {record['mfu'] * 100:.1f}%"
            if rt.master:
                print(line, flush=True)
            log.write(record)
            loss_sum.zero_()
            t_last, iters_since_log = time.time(), 0
    log.close()
    return last_metrics


def sample_text(model: GPT, tokenizer, cfg: TrainConfig, rt: Runtime) -> str:
    """A short sample from a fixed prompt and seed, so samples.txt shows text improving."""
    ids = tokenizer.encode(cfg.sample_prompt)[-cfg.block_size:] or [0]
    idx = torch.tensor([ids], dtype=torch.long, device=rt.device)
    devices = [rt.device] if rt.device_type == "cuda" else []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        with rt.autocast():
            out = generate(model, idx, cfg.sample_tokens, temperature=0.8, top_k=200)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


@cli
def main(variant: str, argv: list[str] | None = None) -> dict:
    """Entry point of train_<variant>.py: the variant is fixed, everything else configurable."""
    cfg = apply_config(TrainConfig(variant=variant), sys.argv[1:] if argv is None else argv)
    if cfg.variant != variant:
        raise UserError(f"this entry point trains variant {variant!r}, the config asks for "
                        f"{cfg.variant!r}: use train_{cfg.variant}.py")
    return train(cfg)
