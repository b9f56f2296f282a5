"""The one training loop. Every variant trains here; entry points only pick the variant.

Single process:  python train_baseline.py config/train_baseline_shakespeare_char.py
DDP:             torchrun --standalone --nproc_per_node=8 train_baseline.py CONFIG
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nanoGPT.augment import build_augmenter
from nanoGPT.checkpoint import FORMAT as CHECKPOINT_FORMAT
from nanoGPT.checkpoint import (
    check_tokenizer,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_config_of,
    numbered_checkpoint_path,
    remove_temp_files,
    save_checkpoint,
    tokenizer_record,
    warn,
)
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.data import TokenData, resolve_data_dir, vocabulary_name
from nanoGPT.errors import UserError, cli
from nanoGPT.evaluate import evaluate
from nanoGPT.model import GPT
from nanoGPT.progressive import stage_at
from nanoGPT.runlog import RunLog, finite_or_none
from nanoGPT.runtime import Runtime, seeded, setup_runtime
from nanoGPT.sampling import generate
from nanoGPT.tokenizer import load_tokenizer


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
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        fused=device_type == "cuda" or None,
    )


def resume_checkpoint(cfg: TrainConfig, rt: Runtime) -> tuple[str | None, dict | None]:
    """(path, checkpoint) to resume from for init_from=resume|auto, else (None, None).

    Rank 0 picks the newest valid checkpoint and every rank loads that same file.
    """
    if cfg.init_from not in ("resume", "auto"):
        return None, None
    found = None
    if rt.master:
        found = find_resume_checkpoint(cfg.out_dir, report=warn, set_aside=True)
    path = found[0] if found else None
    if rt.ddp:
        chosen = [path]
        dist.broadcast_object_list(chosen, src=0)
        path = chosen[0]
    if path is None:
        if cfg.init_from == "resume":
            raise UserError(
                f"init_from=resume: checkpoint not found (no valid one in "
                f"{cfg.out_dir}; init_from=auto starts from scratch when there is none)"
            )
        return None, None
    ckpt = found[1] if found else load_checkpoint(path)
    if rt.master:
        print(f"resuming from {path} (iteration {ckpt['iter_num']})")
    return path, ckpt


def move_aside_earlier_run(out_dir: str) -> None:
    """A fresh run in an out_dir that holds another run's checkpoints moves them into a
    subfolder: init_from=auto would otherwise resume the newer-numbered old ones."""
    if not list_checkpoints(out_dir):
        return
    aside = os.path.join(out_dir, time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(aside, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.startswith("ckpt") or name.startswith("best.pt"):
            os.replace(os.path.join(out_dir, name), os.path.join(aside, name))
    print(f"{out_dir} held the checkpoints of an earlier run; moved them to {aside}")


def nan_injected(cfg: TrainConfig, it: int) -> bool:
    """The debug_nan_at_iter testing aid: is the loss of iteration `it` to be made NaN?"""
    start = cfg.debug_nan_at_iter
    return 0 <= start <= it < start + cfg.debug_nan_steps


def create_model(cfg: TrainConfig, rt: Runtime, vocab_size: int, train_tokens: int, ckpt: dict | None = None):
    """The model (from `ckpt` when resuming) and that checkpoint."""
    cfg_model = cfg.model_args()
    if cfg_model.kl_num_tokens == 0:
        cfg_model = dataclasses.replace(cfg_model, kl_num_tokens=train_tokens)
    if ckpt is not None:
        saved = model_config_of(ckpt, expect_variant=cfg.variant)
        model = GPT(dataclasses.replace(saved, dropout=cfg.dropout))
        model.load_state_dict(ckpt["model"])
        return model, ckpt
    if cfg.init_from in ("scratch", "auto"):
        cfg_model = dataclasses.replace(cfg_model, vocab_size=vocab_size)
        return GPT(cfg_model), None
    model = GPT.from_pretrained(cfg.init_from, cfg_model)  # gpt2, gpt2-medium, ... or a folder
    if model.config.vocab_size != vocab_size:
        raise UserError(
            f"{cfg.init_from} has a vocabulary of {model.config.vocab_size} tokens, "
            f"the data has {vocab_size}: prepare the data with the GPT-2 tokenizer"
        )
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
        raise UserError(
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a "
            f"multiple of the number of processes ({rt.world_size})"
        )
    if cfg.eval_split not in ("val", "test"):
        raise UserError(f"eval_split must be val or test, got {cfg.eval_split!r}")
    for key in ("checkpoint_interval", "checkpoint_minutes", "max_bad_steps"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.keep_checkpoints < 1:
        raise UserError(f"keep_checkpoints must be at least 1, got {cfg.keep_checkpoints}")
    accum_steps = cfg.gradient_accumulation_steps // rt.world_size
    torch.manual_seed(cfg.seed + rt.rank)
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    data = TokenData(data_dir, cfg.block_size, cfg.batch_size, rt.device, cfg.seed, rt.rank)
    if not data.has_split(cfg.eval_split):
        raise UserError(f"{data.path(cfg.eval_split)} not found: no held-out {cfg.eval_split} split")
    tokenizer = load_tokenizer(data_dir)
    data.check_token_ids(tokenizer.vocab_size, vocabulary_name(tokenizer, data_dir))
    token_bytes = torch.as_tensor(tokenizer.token_byte_lengths(), dtype=torch.long, device=rt.device)

    if rt.master:
        remove_temp_files(cfg.out_dir)  # left by a save that was killed
        if cfg.init_from not in ("resume", "auto") and not cfg.eval_only:
            move_aside_earlier_run(cfg.out_dir)
    resumed_from, ckpt = resume_checkpoint(cfg, rt)
    if ckpt is not None:
        check_tokenizer(ckpt, tokenizer, data_dir)
    model, ckpt = create_model(cfg, rt, tokenizer.vocab_size, data.num_tokens("train"), ckpt)
    if model.config.block_size < cfg.block_size:
        raise UserError(f"block_size {cfg.block_size} > the model's {model.config.block_size}")
    model.to(rt.device)
    optimizer = build_optimizer(model, cfg, rt.device_type)
    scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.ptdtype == torch.float16)
    iter_num, best_val_loss = 0, float("inf")
    run_state: dict = {}  # the loss accumulator and bad-step counts, for an exact resume
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"][rt.rank % len(ckpt["rng"]["torch"])])
        if rt.device_type == "cuda" and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rt.rank % len(ckpt["rng"]["cuda"])])
        run_state = ckpt.get("run_state", {})
        ckpt = None  # free the memory
    bad_steps = run_state.get("bad_steps", 0)
    bad_in_a_row = run_state.get("bad_in_a_row", 0)
    if bad_in_a_row > cfg.max_bad_steps:
        bad_in_a_row = 0  # the run stopped for bad steps and is deliberately resumed: count anew
    good_since_log = run_state.get("good_since_log", 0)
    saved_sums = run_state.get("loss_sum") or [0.0]
    loss_sum = torch.tensor(saved_sums[rt.rank % len(saved_sums)], device=rt.device)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        # progressive diverging leaves the blocks a stage does not use without a gradient
        model = DDP(
            model,
            device_ids=[rt.local_rank] if rt.device_type == "cuda" else None,
            find_unused_parameters=bool(raw_model.config.progressive_group),
        )

    # extra positive targets from a teacher LM, for the multi-hot variants (None otherwise)
    augmenter = build_augmenter(cfg, raw_model, data, rt.device)
    log = RunLog(cfg, rt.master)
    if cfg.init_from in ("resume", "auto"):  # the log continues from where the weights do
        log.keep_through(iter_num if resumed_from else -1)
    tokens_per_iter = accum_steps * rt.world_size * cfg.batch_size * cfg.block_size
    if rt.master:
        print(
            f"{cfg.variant}: {raw_model.num_params() / 1e6:.2f}M parameters, "
            f"{tokens_per_iter} tokens/iter, device {rt.device}, {rt.ptdtype}, "
            f"{rt.world_size} process(es), data {data_dir}"
        )

    def run_eval() -> dict:
        results = {}
        for split in ("train", cfg.eval_split):
            metrics = evaluate(
                raw_model,
                data,
                split,
                cfg.eval_iters,
                token_bytes,
                rt.autocast(),
                rt.world_size,
                seed=cfg.seed,
            )
            results.update({f"{split}/{k}": v for k, v in metrics.items()})
        if rt.ddp:  # ranks must hold identical weights; a non-zero spread means a sync bug
            checksum = torch.stack([p.detach().double().sum() for p in raw_model.parameters()]).sum()
            gathered = [torch.zeros_like(checksum) for _ in range(rt.world_size)]
            dist.all_gather(gathered, checksum)
            results["ddp/param_spread"] = (max(gathered) - min(gathered)).item()
        return results

    def save(best: bool) -> None:
        """Checkpoint this iteration (every rank calls it: the RNG states are gathered)."""
        mine = {
            "torch": torch.get_rng_state(),
            "loss_sum": loss_sum.item(),
            "cuda": torch.cuda.get_rng_state() if rt.device_type == "cuda" else None,
        }
        gathered: list = [mine]
        if rt.ddp:  # each rank's dropout stream and loss sum, so every rank resumes its own
            gathered = [None] * rt.world_size
            dist.all_gather_object(gathered, mine)
        if not rt.master:
            return
        rng = {
            "torch": [g["torch"] for g in gathered],
            "cuda": [g["cuda"] for g in gathered if g["cuda"] is not None],
        }
        run_state = {
            "loss_sum": [g["loss_sum"] for g in gathered],
            "good_since_log": good_since_log,
            "bad_steps": bad_steps,
            "bad_in_a_row": bad_in_a_row,
        }
        save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "variant": cfg.variant,
                "model_args": dataclasses.asdict(raw_model.config),
                "config": dataclasses.asdict(cfg),
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iter_num": iter_num,
                "best_val_loss": best_val_loss,
                "rng": rng,
                "run_state": run_state,
                "tokenizer": tokenizer_record(tokenizer),
            },
            cfg.out_dir,
            iter_num,
            best=best,
            keep=cfg.keep_checkpoints,
            pause_s=cfg.debug_save_pause_s,
        )

    last_metrics: dict = {}
    # the checkpoint's iteration was evaluated, sampled and saved before; not again
    resumed_at = iter_num if resumed_from else -1
    t_last = last_save_time = time.time()
    timed_iters = 0
    save_due_by_time = False
    while True:
        # progressive diverging (nanoGPT/progressive.py): enter this iteration's stage before
        # evaluating or stepping, so a resumed run switches where an uninterrupted one did
        raw_model.set_progressive_stage(stage_at(raw_model.config, iter_num, cfg.max_iters))
        at_end = iter_num >= cfg.max_iters
        stopping = bad_in_a_row > cfg.max_bad_steps
        fresh = iter_num != resumed_at or cfg.eval_only
        evaluated = improved = False
        if (iter_num % cfg.eval_interval == 0 or at_end) and fresh and not stopping:
            last_metrics = run_eval()
            val_loss = last_metrics[f"{cfg.eval_split}/nll"]
            if rt.master:
                print(
                    f"step {iter_num}: train nll {last_metrics['train/nll']:.4f}, "
                    f"{cfg.eval_split} nll {val_loss:.4f} (ppl {math.exp(val_loss):.2f}, "
                    f"acc {last_metrics[f'{cfg.eval_split}/acc']:.3f}, "
                    f"ece {last_metrics[f'{cfg.eval_split}/ece']:.3f})"
                )
            log.write({"iter": iter_num, "kind": "eval", **last_metrics})
            if cfg.eval_only:
                break
            evaluated, improved = True, val_loss < best_val_loss
            best_val_loss = min(best_val_loss, val_loss)
            if cfg.sample_interval and iter_num % cfg.sample_interval == 0 and rt.master:
                log.sample(iter_num, sample_text(raw_model, tokenizer, cfg, rt))
        by_interval = cfg.checkpoint_interval > 0 and iter_num % cfg.checkpoint_interval == 0
        if fresh and (iter_num > 0 or at_end) and (evaluated or by_interval or save_due_by_time or stopping):
            save(best=improved)
            last_save_time, save_due_by_time = time.time(), False
        if stopping:
            message = (
                f"{bad_in_a_row} updates in a row were skipped for a non-finite loss or "
                f"gradient (more than max_bad_steps={cfg.max_bad_steps}); stopped at "
                f"iteration {iter_num} with the last good state saved in "
                f"{numbered_checkpoint_path(cfg.out_dir, iter_num)}: lower learning_rate, "
                "lengthen warmup_iters or check the data, then rerun with init_from=auto"
            )
            log.write({"iter": iter_num, "kind": "stopped", "reason": message})
            log.close()
            raise UserError(message)
        if at_end:
            break

        lr = learning_rate(cfg, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=rt.device)
        for micro_step in range(accum_steps):
            batch = data.train_batch(iter_num, micro_step)
            extra_positives = augmenter(batch) if augmenter is not None else None
            last_micro = micro_step == accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or not rt.ddp else model.no_sync()
            with sync:
                with rt.autocast():
                    loss, stats = model(batch.x, batch.y, extra_positives)
                if nan_injected(cfg, iter_num):
                    loss = loss * float("nan")
                step_loss += loss.detach() / accum_steps
                scaler.scale(loss / accum_steps).backward()
        scaler.unscale_(optimizer)  # a no-op unless fp16 loss scaling is on
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in raw_model.parameters() if p.grad is not None]
            )
        # A non-finite loss or gradient skips the update. With fp16 loss scaling an inf
        # gradient is the scaler's business: it skips that step itself and lowers the scale.
        bad_here = ~torch.isfinite(step_loss)
        if not scaler.is_enabled():
            bad_here |= ~torch.isfinite(grad_norm)
        time_due = rt.master and 0 < cfg.checkpoint_minutes * 60 <= time.time() - last_save_time
        flags = torch.stack([bad_here.float(), step_loss.new_tensor(float(time_due))])
        if rt.ddp:  # all ranks skip together, and save together (rank 0's clock decides)
            dist.all_reduce(flags)
        bad, save_due_by_time = (flags > 0).tolist()
        if bad:  # the iteration still counts: its batch and learning rate are used up
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            bad_steps += 1
            bad_in_a_row += 1
            if rt.master:
                print(
                    f"iter {iter_num + 1}: update skipped: loss {step_loss.item():.4g}, grad norm "
                    f"{grad_norm.item():.4g} ({bad_in_a_row} in a row, {bad_steps} in all)",
                    flush=True,
                )
            log.write(
                {
                    "iter": iter_num + 1,
                    "kind": "bad_step",
                    "loss": finite_or_none(step_loss.item()),
                    "grad_norm": finite_or_none(grad_norm.item()),
                    "in_a_row": bad_in_a_row,
                    "bad_steps": bad_steps,
                }
            )
        else:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += step_loss
            good_since_log += 1
            bad_in_a_row = 0
        iter_num += 1
        timed_iters += 1

        if iter_num % cfg.log_interval == 0:
            if rt.ddp:
                dist.all_reduce(loss_sum)
                loss_sum /= rt.world_size
            # the mean over the updates made since the last line (skipped ones have no loss)
            train_loss = loss_sum.item() / good_since_log if good_since_log else None
            dt = (time.time() - t_last) / max(1, timed_iters)
            tokens_per_s = tokens_per_iter / dt
            record = {
                "iter": iter_num,
                "kind": "train",
                "loss": train_loss,
                "lr": lr,
                "ms_per_iter": dt * 1000,
                "tokens_per_s": tokens_per_s,
                "grad_norm": finite_or_none(grad_norm.item()),
                "bad_steps": bad_steps,
                **{k: finite_or_none(v.item()) for k, v in stats.items()},
            }
            shown = "-" if train_loss is None else f"{train_loss:.4f}"
            line = (
                f"iter {iter_num}: loss {shown}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                f"{tokens_per_s / 1000:.1f}k tok/s"
            )
            if rt.device_type == "cuda":
                record["mfu"] = raw_model.flops_per_token() * tokens_per_s / rt.world_size / cfg.peak_flops
                line += f", mfu {record['mfu'] * 100:.1f}%"
            if rt.master:
                print(line, flush=True)
            log.write(record)
            loss_sum.zero_()
            t_last, good_since_log, timed_iters = time.time(), 0, 0
    log.close()
    return last_metrics


def sample_text(model: GPT, tokenizer, cfg: TrainConfig, rt: Runtime) -> str:
    """A short sample from a fixed prompt and seed, so samples.txt shows text improving."""
    ids = tokenizer.encode(cfg.sample_prompt)[-cfg.block_size :] or [0]
    idx = torch.tensor([ids], dtype=torch.long, device=rt.device)
    was_training = model.training
    model.eval()
    with seeded(cfg.seed, rt.device), rt.autocast():
        out = generate(model, idx, cfg.sample_tokens, temperature=0.8, top_k=200)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


@cli
def main(variant: str, argv: list[str] | None = None) -> dict:
    """Entry point of train_<variant>.py: the variant is fixed, everything else configurable."""
    cfg = apply_config(TrainConfig(variant=variant), sys.argv[1:] if argv is None else argv)
    if cfg.variant != variant:
        raise UserError(
            f"this entry point trains variant {variant!r}, the config asks for "
            f"{cfg.variant!r}: use train_{cfg.variant}.py"
        )
    return train(cfg)
