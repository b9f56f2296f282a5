"""The one training loop. Every variant trains here; entry points only pick the variant.

Single process:  python train.py config/train_sigmoid_shakespeare_char.py
                 python train_baseline.py config/train_baseline_shakespeare_char.py
DDP:             torchrun --standalone --nproc_per_node=8 train_baseline.py CONFIG

`train` reads top to bottom: `setup` (data, model, optimizer, resumed state),
then `run_loop`, whose iteration is `evaluate_and_log`, `save`, `sample_and_log`, `train_step`,
`log_progress`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nanoGPT import progressive
from nanoGPT.augment import build_augmenter
from nanoGPT.checkpoint import FORMAT as CHECKPOINT_FORMAT
from nanoGPT.checkpoint import (
    check_model_settings,
    check_tokenizer,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_config_of,
    numbered_checkpoint_path,
    remove_temp_files,
    resumed_model_config,
    save_checkpoint,
    tokenizer_record,
)
from nanoGPT.config import TrainConfig, apply_config, check_writable, validate_config
from nanoGPT.data import Batch, TokenData, resolve_data_dir, vocabulary_name
from nanoGPT.errors import UserError, cli
from nanoGPT.evaluate import evaluate
from nanoGPT.guard import UpdateGuard
from nanoGPT.model import GPT, check_architecture
from nanoGPT.runlog import RunLog, finite_or_none
from nanoGPT.runtime import Runtime, close_process_group, seeded, setup_runtime
from nanoGPT.sampling import generate
from nanoGPT.tokenizer import Tokenizer, load_tokenizer
from nanoGPT.variants import check_variant


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


# --- the state the loop carries -----------------------------------------------------------


@dataclass
class RunState:
    """What the loop carries from one iteration to the next.

    The first group is saved in every checkpoint (`state_dict`), so a resumed run continues
    exactly; the second is this process's bookkeeping, started anew on resume.
    """

    iter_num: int = 0
    best_val_loss: float = float("inf")
    bad_steps: int = 0  # updates skipped for a non-finite loss, gradient or update, in all
    bad_in_a_row: int = 0
    good_since_log: int = 0  # updates whose losses loss_sum holds
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # this rank's
    wandb_id: str = ""  # the wandb run a resumed run continues

    resumed_at: int = -1  # the iteration resumed from: evaluated, sampled and saved before
    last_metrics: dict = field(default_factory=dict)
    t_last: float = 0.0  # when the last progress line was printed
    timed_iters: int = 0  # iterations since then
    last_save_time: float = 0.0
    save_due_by_time: bool = False

    def state_dict(self, loss_sums: list[float]) -> dict:
        """The checkpoint's iter_num, best_val_loss and run_state entries (`loss_sums`: every
        rank's loss_sum, in rank order)."""
        return {
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "run_state": {
                "loss_sum": loss_sums,
                "good_since_log": self.good_since_log,
                "bad_steps": self.bad_steps,
                "bad_in_a_row": self.bad_in_a_row,
                "wandb_id": self.wandb_id,
            },
        }

    def load_state_dict(self, ckpt: dict, rank: int) -> None:
        """Continue from a checkpoint (one of any age: missing run_state entries start at zero)."""
        self.iter_num, self.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        saved = ckpt.get("run_state") or {}
        self.bad_steps = saved.get("bad_steps", 0)
        self.bad_in_a_row = saved.get("bad_in_a_row", 0)
        self.good_since_log = saved.get("good_since_log", 0)
        self.wandb_id = saved.get("wandb_id", "")
        sums = saved.get("loss_sum") or [0.0]
        self.loss_sum = torch.tensor(sums[rank % len(sums)], device=self.loss_sum.device)


@dataclass
class Training:
    """What `setup` builds and the loop uses."""

    cfg: TrainConfig
    rt: Runtime
    data: TokenData
    tokenizer: Tokenizer
    token_bytes: torch.Tensor  # bytes per token id, for bits per byte
    raw_model: GPT
    model: torch.nn.Module  # raw_model, compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    guard: UpdateGuard  # undoes an update that makes a parameter non-finite
    scaler: torch.amp.GradScaler
    augmenter: Callable[[Batch], torch.Tensor] | None
    log: RunLog
    accum_steps: int  # micro-steps per iteration on this process

    @property
    def tokens_per_iter(self) -> int:
        return self.accum_steps * self.rt.world_size * self.cfg.batch_size * self.cfg.block_size


@dataclass
class Step:
    """What one iteration's update leaves for its progress line."""

    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    stats: dict


# --- setup --------------------------------------------------------------------------------


def micro_steps_per_process(gradient_accumulation_steps: int, world_size: int) -> int:
    """The micro-steps each process makes per iteration: gradient_accumulation_steps (the total
    over all processes) split evenly, rounded up. Rounding up lets any config run under any
    torchrun (a CPU config's 1 under 2 processes: 1 each); the effective batch then grows."""
    return -(-gradient_accumulation_steps // world_size)


def note_batch_growth(cfg: TrainConfig, rt: Runtime, log: RunLog) -> None:
    """One line on the master when the processes cannot split gradient_accumulation_steps evenly."""
    per_process = micro_steps_per_process(cfg.gradient_accumulation_steps, rt.world_size)
    if per_process * rt.world_size != cfg.gradient_accumulation_steps:
        log.print(
            f"note: gradient_accumulation_steps={cfg.gradient_accumulation_steps} over {rt.world_size} "
            f"processes: {per_process} micro-step(s) each, so the effective batch grows to "
            f"{per_process * rt.world_size} micro-batches per iteration"
        )


def load_data(cfg: TrainConfig, rt: Runtime) -> tuple[TokenData, Tokenizer]:
    """The token files and their tokenizer, checked against each other."""
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    data = TokenData(
        data_dir, cfg.block_size, cfg.batch_size, rt.device, cfg.seed, rt.rank, cfg.train_fraction
    )
    if not data.has_split(cfg.eval_split):
        raise UserError(f"{data.path(cfg.eval_split)} not found: no held-out {cfg.eval_split} split")
    tokenizer = load_tokenizer(data_dir)
    data.check_token_ids(tokenizer.vocab_size, vocabulary_name(tokenizer, data_dir))
    return data, tokenizer


def resume_checkpoint(cfg: TrainConfig, rt: Runtime, log: RunLog) -> tuple[str | None, dict | None]:
    """(path, checkpoint) to resume from for init_from=resume|auto, else (None, None).

    Rank 0 picks the newest valid checkpoint and every rank loads that same file.
    """
    if cfg.init_from not in ("resume", "auto"):
        return None, None
    found = None
    if rt.master:
        found = find_resume_checkpoint(cfg.out_dir, report=log.warn, set_aside=True)
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
    log.print(f"resuming from {path} (iteration {ckpt['iter_num']})")
    return path, ckpt


def move_aside_earlier_run(out_dir: str, say: Callable[[str], None] = print) -> None:
    """A fresh run in an out_dir that holds another run's checkpoints moves them into a
    subfolder: init_from=auto would otherwise resume the newer-numbered old ones."""
    if not list_checkpoints(out_dir):
        return
    aside = os.path.join(out_dir, time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(aside, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.startswith("ckpt") or name.startswith("best.pt"):
            os.replace(os.path.join(out_dir, name), os.path.join(aside, name))
    say(f"{out_dir} held the checkpoints of an earlier run; moved them to {aside}")


def nan_injected(cfg: TrainConfig, it: int) -> bool:
    """The debug_nan_at_iter testing aid: is the loss of iteration `it` to be made NaN?"""
    start = cfg.debug_nan_at_iter
    return 0 <= start <= it < start + cfg.debug_nan_steps


def create_model(cfg: TrainConfig, rt: Runtime, vocab_size: int, train_tokens: int, ckpt: dict | None = None):
    """The model (from `ckpt` when resuming) and that checkpoint. `train_tokens`, the tokens
    trained on (one epoch), is the Bayesian ELBO's N unless kl_num_tokens sets it."""
    cfg_model = cfg.model_args()
    if cfg_model.kl_num_tokens == 0:
        cfg_model = dataclasses.replace(cfg_model, kl_num_tokens=train_tokens)
    if ckpt is not None:
        saved = model_config_of(ckpt, expect_variant=cfg.variant)
        check_model_settings(saved, cfg.model_args(), every_key=cfg.init_from == "auto")
        model = GPT(resumed_model_config(saved, cfg.model_args()))
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


def restore(state: RunState, ckpt: dict, cfg: TrainConfig, rt: Runtime) -> None:
    """The loop's state and this rank's RNG streams (dropout, ...) as the checkpoint left them."""
    state.load_state_dict(ckpt, rt.rank)
    if state.bad_in_a_row > cfg.max_bad_steps:
        state.bad_in_a_row = 0  # the run stopped for bad steps and is deliberately resumed: count anew
    torch.set_rng_state(ckpt["rng"]["torch"][rt.rank % len(ckpt["rng"]["torch"])])
    if rt.device_type == "cuda" and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rt.rank % len(ckpt["rng"]["cuda"])])


def wrap_model(model: GPT, cfg: TrainConfig, rt: Runtime) -> torch.nn.Module:
    """torch.compile (compile=True) and the DDP wrapper (under torchrun)."""
    wrapped = torch.compile(model) if cfg.compile else model
    if rt.ddp:
        # progressive diverging leaves the blocks a stage does not use without a gradient
        wrapped = DDP(
            wrapped,
            device_ids=[rt.local_rank] if rt.device_type == "cuda" else None,
            find_unused_parameters=bool(model.config.progressive_group),
        )
    return wrapped


def setup(cfg: TrainConfig, rt: Runtime, log: RunLog) -> tuple[Training, RunState]:
    """Data, tokenizer, model, optimizer, the resumed state and RNG, the DDP wrap, the augmenter."""
    torch.manual_seed(cfg.seed + rt.rank)
    data, tokenizer = load_data(cfg, rt)
    if rt.master:
        log.lock_out_dir(cfg.out_dir)  # one run per out_dir; released when the run ends
        remove_temp_files(cfg.out_dir)  # left by a save that was killed
        if cfg.init_from not in ("resume", "auto") and not cfg.eval_only:
            move_aside_earlier_run(cfg.out_dir, log.print)
    resumed_from, ckpt = resume_checkpoint(cfg, rt, log)
    if ckpt is not None:
        check_tokenizer(ckpt, tokenizer, data.data_dir)
    model, ckpt = create_model(cfg, rt, tokenizer.vocab_size, data.window_tokens("train"), ckpt)
    if model.config.block_size < cfg.block_size:
        raise UserError(f"block_size {cfg.block_size} > the model's {model.config.block_size}")
    data.set_target_offset(model.config.target_offset())  # the model's: a checkpoint's when resuming
    model.variant.loss_chunk_size = cfg.loss_chunk_size  # a training setting, not the checkpoint's
    model.to(rt.device)
    optimizer = build_optimizer(model, cfg, rt.device_type)
    state = RunState(loss_sum=torch.zeros((), device=rt.device))
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        restore(state, ckpt, cfg, rt)
        ckpt = None  # free the memory
    state.resumed_at = state.iter_num if resumed_from else -1
    # extra positive targets from a teacher LM, for the multi-hot variants (None otherwise)
    augmenter = None if cfg.eval_only else build_augmenter(cfg, model, data, rt.device)
    training = Training(
        cfg=cfg,
        rt=rt,
        data=data,
        tokenizer=tokenizer,
        token_bytes=torch.as_tensor(tokenizer.token_byte_lengths(), dtype=torch.long, device=rt.device),
        raw_model=model,
        model=wrap_model(model, cfg, rt),
        optimizer=optimizer,
        guard=UpdateGuard(optimizer),
        scaler=torch.amp.GradScaler(rt.device_type, enabled=rt.ptdtype == torch.float16),
        augmenter=augmenter,
        log=log,
        accum_steps=micro_steps_per_process(cfg.gradient_accumulation_steps, rt.world_size),
    )
    if cfg.init_from in ("resume", "auto") and not cfg.eval_only:  # the log continues where the weights do
        log.keep_through(state.resumed_at)
    state.wandb_id = log.start_wandb(cfg, state.wandb_id)
    log.print(
        f"{cfg.variant}: {model.num_params() / 1e6:.2f}M parameters, "
        f"{training.tokens_per_iter} tokens/iter, device {rt.device}, {rt.ptdtype}, "
        f"{rt.world_size} process(es), data {data.data_dir}"
        + (f" (first {data.train_tokens} train tokens)" if cfg.train_fraction < 1 else "")
    )
    note_batch_growth(cfg, rt, log)
    return training, state


# --- the loop -----------------------------------------------------------------------------


def check_target_offset(cfg: TrainConfig) -> None:
    """UserError for a setting that needs next-token targets, asked of a look-ahead model: the
    augmenter's teacher predicts the next token, and a sample appends each prediction."""
    ahead = cfg.target_offset()
    for key, wanted in (("augment", cfg.augment), ("sample_interval", cfg.sample_interval)):
        if wanted and ahead != 1:
            raise UserError(
                f"{key} needs a next-token model, but predict_ahead={cfg.predict_ahead} "
                f"trains on the token {ahead} positions ahead"
            )


def train(cfg: TrainConfig) -> dict:
    """Run the training loop described by `cfg`; returns the last evaluation's metrics."""
    validate_config(cfg)  # every key's type and range, before anything starts
    check_architecture(cfg.model_args())  # the trunk's names and shapes...
    check_variant(cfg)  # ...and the objective's name
    check_target_offset(cfg)
    check_writable(cfg.out_dir, "out_dir")
    check_writable(cfg.log_dir, "log_dir")
    rt = setup_runtime(cfg)
    log = RunLog(cfg, rt.master)
    training = None
    try:
        with collective_timeouts(cfg, rt):
            training, state = setup(cfg, rt, log)
            return evaluate_once(training, state) if cfg.eval_only else run_loop(training, state)
    except (UserError, KeyboardInterrupt) as err:  # the console gets it from cli(); the log keeps it
        log.ended(f"error: {err}" if isinstance(err, UserError) else "interrupted")
        raise
    finally:
        log.close()
        if rt.ddp and dist.is_initialized():
            # the DDP model goes first, from this frame and from the finished frames of an
            # exception's traceback: its Reducer must not be the process group's last owner
            training = None
            if (raised := sys.exc_info()[2]) is not None:
                traceback.clear_frames(raised)
            close_process_group()


@contextlib.contextmanager
def collective_timeouts(cfg: TrainConfig, rt: Runtime) -> Iterator[None]:
    """A collective that waited past collective_timeout_s for another rank (stopped, frozen or
    stuck) as one UserError line: gloo raises a RuntimeError saying it timed out."""
    try:
        yield
    except RuntimeError as err:
        if not (rt.ddp and "timed out" in str(err).lower()):
            raise
        raise UserError(
            f"rank {rt.rank}: another process did not answer within collective_timeout_s="
            f"{cfg.collective_timeout_s:g} s (it stopped, froze or is stuck); rerun with init_from=auto "
            "to resume from the last checkpoint"
        ) from None


def enter_stage(training: Training, state: RunState) -> None:
    """Progressive diverging (nanoGPT/progressive.py): enter this iteration's stage before
    evaluating or stepping, so a resumed run switches where an uninterrupted one did."""
    model = training.raw_model
    before = model.stage
    model.set_progressive_stage(progressive.stage_at(model.config, state.iter_num, training.cfg.max_iters))
    if model.stage != before:
        for p in progressive.adapter_parameters(model.transformer.h):
            training.optimizer.state.pop(p, None)
        trainable = progressive.trainable_parameters(model, model.transformer.h, model.stage)
        training.log.print(
            f"iter {state.iter_num}: progressive stage {model.stage} (from {before}), "
            f"{trainable:,} trainable parameters"
        )
        record = {"stage": model.stage, "from_stage": before, "trainable_params": trainable}
        training.log.write({"iter": state.iter_num, "kind": "stage", **record})


def evaluate_once(training: Training, state: RunState) -> dict:
    """eval_only: evaluate the loaded model at its iteration and stop; nothing trains or saves."""
    enter_stage(training, state)
    report_eval(training, state)
    return state.last_metrics


def run_loop(training: Training, state: RunState) -> dict:
    """Evaluate, checkpoint and step until max_iters; the last evaluation's metrics."""
    cfg = training.cfg
    state.t_last = state.last_save_time = time.time()
    while True:
        enter_stage(training, state)
        at_end = state.iter_num >= cfg.max_iters
        stopping = state.bad_in_a_row > cfg.max_bad_steps
        fresh = state.iter_num != state.resumed_at
        evaluated = improved = False
        paused_at = time.time()
        if (state.iter_num % cfg.eval_interval == 0 or at_end) and fresh and not stopping:
            evaluated, improved = True, evaluate_and_log(training, state)
        by_interval = cfg.checkpoint_interval > 0 and state.iter_num % cfg.checkpoint_interval == 0
        due = evaluated or by_interval or state.save_due_by_time or stopping
        if fresh and (state.iter_num > 0 or at_end) and due:
            save(training, state, best=improved)
            state.last_save_time, state.save_due_by_time = time.time(), False
        if fresh and not stopping and cfg.sample_interval and state.iter_num % cfg.sample_interval == 0:
            sample_and_log(training, state)
        state.t_last += time.time() - paused_at  # ms/iter times training steps, not these
        if stopping:
            stop_for_bad_steps(training, state)
        if at_end:
            return state.last_metrics
        step = train_step(training, state)
        if state.iter_num % cfg.log_interval == 0:
            log_progress(training, state, step)


# --- evaluation and checkpoints -----------------------------------------------------------


def run_eval(training: Training) -> dict:
    """Metrics on the training split and the held-out one, and the DDP weight check."""
    cfg, rt, model = training.cfg, training.rt, training.raw_model
    results = {}
    for split in ("train", cfg.eval_split):
        metrics = evaluate(
            model,
            training.data,
            split,
            cfg.eval_iters,
            training.token_bytes,
            rt.autocast(),
            rt.world_size,
            seed=cfg.seed,
        )
        results.update({f"{split}/{k}": v for k, v in metrics.items()})
    if rt.ddp:  # ranks must hold identical weights; a non-zero spread means a sync bug
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        gathered = [torch.zeros_like(checksum) for _ in range(rt.world_size)]
        dist.all_gather(gathered, checksum)
        results["ddp/param_spread"] = (max(gathered) - min(gathered)).item()
    return results


def report_eval(training: Training, state: RunState) -> float:
    """Evaluate at this iteration, print its line and log its record; the held-out NLL."""
    cfg = training.cfg
    metrics = state.last_metrics = run_eval(training)
    val_loss = metrics[f"{cfg.eval_split}/nll"]
    training.log.print(
        f"step {state.iter_num}: train nll {metrics['train/nll']:.4f}, "
        f"{cfg.eval_split} nll {val_loss:.4f} (ppl {math.exp(val_loss):.2f}, "
        f"acc {metrics[f'{cfg.eval_split}/acc']:.3f}, "
        f"ece {metrics[f'{cfg.eval_split}/ece']:.3f})"
    )
    training.log.write({"iter": state.iter_num, "kind": "eval", **metrics})
    return val_loss


def evaluate_and_log(training: Training, state: RunState) -> bool:
    """A scheduled evaluation: report it and track the best. Did it improve?"""
    val_loss = report_eval(training, state)
    improved = val_loss < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, val_loss)
    return improved


def save(training: Training, state: RunState, best: bool) -> None:
    """Checkpoint this iteration (every rank calls it: the RNG states are gathered)."""
    cfg, rt, model = training.cfg, training.rt, training.raw_model
    mine = {
        "torch": torch.get_rng_state(),
        "loss_sum": state.loss_sum.item(),
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
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "variant": cfg.variant,
        "model_args": dataclasses.asdict(model.config),
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        **state.state_dict([g["loss_sum"] for g in gathered]),
        "rng": rng,
        "tokenizer": tokenizer_record(training.tokenizer),
    }
    save_checkpoint(
        checkpoint,
        cfg.out_dir,
        state.iter_num,
        best=best,
        keep=cfg.keep_checkpoints,
        pause_s=cfg.debug_save_pause_s,
    )


def stop_for_bad_steps(training: Training, state: RunState) -> None:
    """Too many updates in a row were skipped: log why and stop with a UserError."""
    cfg = training.cfg
    message = (
        f"{state.bad_in_a_row} updates in a row were skipped for a non-finite loss, "
        f"gradient or update (more than max_bad_steps={cfg.max_bad_steps}); stopped at "
        f"iteration {state.iter_num} with the last good state saved in "
        f"{numbered_checkpoint_path(cfg.out_dir, state.iter_num)}: lower learning_rate, "
        "lengthen warmup_iters or check the data, then rerun with init_from=auto"
    )
    training.log.write({"iter": state.iter_num, "kind": "stopped", "reason": message})
    raise UserError(message)


# --- one update ---------------------------------------------------------------------------


def train_step(training: Training, state: RunState) -> Step:
    """One update from accum_steps micro-batches, clipped; skipped if its loss or gradient is
    not finite, undone if it makes a weight non-finite (the iteration still counts: its
    batches and learning rate are used up)."""
    cfg, rt, optimizer, scaler = training.cfg, training.rt, training.optimizer, training.scaler
    lr = learning_rate(cfg, state.iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr
    step_loss = torch.zeros((), device=rt.device)
    for micro_step in range(training.accum_steps):
        batch = training.data.train_batch(state.iter_num, micro_step)
        extra_positives = training.augmenter(batch) if training.augmenter is not None else None
        last_micro = micro_step == training.accum_steps - 1
        # DDP all-reduces the gradients at the last micro-step only
        sync = contextlib.nullcontext() if last_micro or not rt.ddp else training.model.no_sync()
        with sync:
            with rt.autocast():
                loss, stats = training.model(batch.x, batch.y, extra_positives)
            if nan_injected(cfg, state.iter_num):
                loss = loss * float("nan")
            step_loss += loss.detach() / training.accum_steps
            scaler.scale(loss / training.accum_steps).backward()
    scaler.unscale_(optimizer)  # a no-op unless fp16 loss scaling is on
    params = training.raw_model.parameters()
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    step = Step(lr, step_loss, grad_norm, stats)
    if step_is_bad(training, state, step):
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        skip_update(training, state, step, "loss or gradient")
    elif not apply_update(training):
        skip_update(training, state, step, "updated weights")
    else:
        state.loss_sum += step_loss
        state.good_since_log += 1
        state.bad_in_a_row = 0
    state.iter_num += 1
    state.timed_iters += 1
    return step


def step_is_bad(training: Training, state: RunState, step: Step) -> bool:
    """Is the update to be skipped, for a non-finite loss or gradient on any rank? Also sets
    save_due_by_time from rank 0's clock (checkpoint_minutes): ranks skip and save together."""
    cfg, rt = training.cfg, training.rt
    # With fp16 loss scaling an inf gradient is the scaler's business: it skips that step
    # itself and lowers the scale.
    bad_here = ~torch.isfinite(step.loss)
    if not training.scaler.is_enabled():
        bad_here |= ~torch.isfinite(step.grad_norm)
    time_due = rt.master and 0 < cfg.checkpoint_minutes * 60 <= time.time() - state.last_save_time
    flags = torch.stack([bad_here.float(), step.loss.new_tensor(float(time_due))])
    if rt.ddp:
        dist.all_reduce(flags)
    bad, state.save_due_by_time = (flags > 0).tolist()
    return bad


def apply_update(training: Training) -> bool:
    """Step the optimizer; False, with the step undone, if it made any parameter non-finite.
    DDP ranks hold the same weights and gradients, so they all decide alike."""
    training.guard.snapshot()
    training.scaler.step(training.optimizer)
    training.scaler.update()
    training.optimizer.zero_grad(set_to_none=True)
    if training.guard.params_finite():
        return True
    training.guard.restore()
    return False


def skip_update(training: Training, state: RunState, step: Step, what: str) -> None:
    """Count and report an update skipped for non-finite `what` (its gradient is dropped)."""
    state.bad_steps += 1
    state.bad_in_a_row += 1
    training.log.print(
        f"iter {state.iter_num + 1}: update skipped for non-finite {what}: loss "
        f"{step.loss.item():.4g}, grad norm "
        f"{step.grad_norm.item():.4g} ({state.bad_in_a_row} in a row, {state.bad_steps} in all)"
    )
    training.log.write(
        {
            "iter": state.iter_num + 1,
            "kind": "bad_step",
            "non_finite": what,
            "loss": finite_or_none(step.loss.item()),
            "grad_norm": finite_or_none(step.grad_norm.item()),
            "in_a_row": state.bad_in_a_row,
            "bad_steps": state.bad_steps,
        }
    )


def log_progress(training: Training, state: RunState, step: Step) -> None:
    """The progress line and train record: mean loss since the last one, speed, MFU on CUDA."""
    cfg, rt = training.cfg, training.rt
    if rt.ddp:
        dist.all_reduce(state.loss_sum)
        state.loss_sum /= rt.world_size
    # the mean over the updates made since the last line (skipped ones have no loss)
    train_loss = state.loss_sum.item() / state.good_since_log if state.good_since_log else None
    dt = (time.time() - state.t_last) / max(1, state.timed_iters)
    tokens_per_s = training.tokens_per_iter / dt
    record = {
        "iter": state.iter_num,
        "kind": "train",
        "loss": train_loss,
        "lr": step.lr,
        "ms_per_iter": dt * 1000,
        "tokens_per_s": tokens_per_s,
        "grad_norm": finite_or_none(step.grad_norm.item()),
        "bad_steps": state.bad_steps,
        **{k: finite_or_none(v.item()) for k, v in step.stats.items()},
    }
    shown = "-" if train_loss is None else f"{train_loss:.4f}"
    line = (
        f"iter {state.iter_num}: loss {shown}, lr {step.lr:.2e}, {dt * 1000:.1f} ms/iter, "
        f"{tokens_per_s / 1000:.1f}k tok/s"
    )
    if rt.device_type == "cuda":
        flops = training.raw_model.flops_per_token() * tokens_per_s / rt.world_size
        record["mfu"] = flops / cfg.peak_flops
        line += f", mfu {record['mfu'] * 100:.1f}%"
    training.log.print(line)
    training.log.write(record)
    state.loss_sum.zero_()
    state.t_last, state.good_since_log, state.timed_iters = time.time(), 0, 0


# --- sampling and the entry point ---------------------------------------------------------


def sample_and_log(training: Training, state: RunState) -> None:
    """Every sample_interval iterations, on the master only: a sample printed and appended to
    samples.txt. It runs under `seeded`, so training's RNG stream (dropout, ...) is untouched
    and a run with samples trains the same weights as one without."""
    if not training.rt.master:
        return
    text = sample_text(training.raw_model, training.tokenizer, training.cfg, training.rt)
    training.log.print(f"sample at iter {state.iter_num}:\n{text}")
    training.log.sample(state.iter_num, text)


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
def main(variant: str | None = None, argv: list[str] | None = None) -> dict:
    """Entry point of train.py (variant=None: the config or --variant= picks it, baseline by
    default) and of train_<variant>.py (the variant is fixed: a config asking for another is
    refused)."""
    base = TrainConfig() if variant is None else TrainConfig(variant=variant)
    cfg = apply_config(base, sys.argv[1:] if argv is None else argv)
    if variant is not None and cfg.variant != variant:
        raise UserError(
            f"this entry point trains variant {variant!r}, the config asks for "
            f"{cfg.variant!r}: use train_{cfg.variant}.py or train.py"
        )
    return train(cfg)
