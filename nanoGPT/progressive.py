"""Progressive diverging: the depth is trained in three stages (progressive_group = G > 0).

    stage 1  layers are in groups of G; each group runs G times through one block (the
             group's first), which trains fully.
    stage 2  each group's block is copied into its two half groups (G/2 layers each). The
             copy's attention is frozen and learns through LoRA adapters (rank lora_rank,
             scale lora_alpha / lora_rank); its MLP and norms train fully.
    stage 3  the adapters are merged, every layer gets a copy of its half group's block, and
             every block trains fully: an ordinary GPT. With progressive_stage3_lora (the
             source's stage 3) the attention of every layer stays frozen and learns through
             its own adapters (B at zero again after the merge); MLPs and norms train fully.

Every layer's block (and adapter) exists from the start and is in the optimizer from the
start; a block a stage does not use gets no gradient, and AdamW leaves parameters without a
gradient untouched (no update, no weight decay, no moment). The switches copy weights in
place, so the optimizer keeps every tensor it holds, and they keep the function: the copy
equals its source and the new adapters start at zero (1 -> 2); merging W + s*B@A into W
changes nothing (2 -> 3). At each switch the training loop drops the adapters' optimizer
moments (a merged adapter restarts at B = 0) and logs the trainable parameter count.

The stage is a buffer of the model, so checkpoints carry it; the training loop moves to the
stage of each iteration (stage_at) before evaluating or stepping, so a run resumed from any
checkpoint makes the same switches at the same iterations as one that never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError

STAGES = (1, 2, 3)


def check_config(config: ModelConfig) -> None:
    group = config.progressive_group
    if not group:
        return
    if group < 2 or group % 2 or config.n_layer % group:
        raise UserError(
            f"progressive_group={group} must be even and divide n_layer="
            f"{config.n_layer} (0 turns progressive diverging off)"
        )
    if config.arch != "gpt":
        raise UserError(f"progressive diverging needs arch=gpt, not {config.arch!r}")
    if not 0.0 <= config.progressive_stage2 <= config.progressive_stage3:
        raise UserError(
            f"need 0 <= progressive_stage2 ({config.progressive_stage2}) <= "
            f"progressive_stage3 ({config.progressive_stage3})"
        )
    if config.lora_rank < 1:
        raise UserError(f"lora_rank must be at least 1, got {config.lora_rank}")


def stage_at(config: ModelConfig, iter_num: int, max_iters: int) -> int:
    """The stage iteration `iter_num` trains in: boundaries are fractions of
    progressive_iters (0 = max_iters)."""
    total = config.progressive_iters or max_iters
    if iter_num >= stage_start(config.progressive_stage3, total):
        return 3
    if iter_num >= stage_start(config.progressive_stage2, total):
        return 2
    return 1


def stage_start(fraction: float, total: int) -> int:
    """The first iteration at `fraction` of `total`, rounded so float error cannot move it
    (0.3 * 10 is 3.0000000000000004: stage 2 of 10 iterations starts at 3, not 4)."""
    return math.ceil(round(fraction * total, 6))


def block_index(stage: int, layer: int, group: int) -> int:
    """The block layer `layer` runs through in `stage`: the first of its (half) group."""
    size = {1: group, 2: group // 2, 3: 1}[stage]
    return layer // size * size


def layer_blocks(blocks: Sequence[nn.Module], group: int, stage: int) -> list[nn.Module]:
    """The block of each layer, in order (a block repeats while layers share it)."""
    return [blocks[block_index(stage, i, group)] for i in range(len(blocks))]


def lora_active(config: ModelConfig, stage: int, layer: int) -> bool:
    """Does `layer`'s attention learn through its adapters (its base weights frozen) in `stage`?"""
    if stage == 3:
        return config.progressive_stage3_lora
    return stage == 2 and block_index(2, layer, config.progressive_group) == layer


def _copy_block(dst: nn.Module, src: nn.Module) -> None:
    # the adapters are not copied: each copy starts from its own random A and B = 0, so the
    # copy computes what its source did
    for (name, p_dst), p_src in zip(dst.named_parameters(), src.parameters()):
        if "lora_b" in name:
            p_dst.zero_()
        elif "lora" not in name:
            p_dst.copy_(p_src)


def set_lora_flags(blocks: Sequence[nn.Module], config: ModelConfig, stage: int) -> None:
    for i, block in enumerate(blocks):
        block.attn.lora_active = lora_active(config, stage, i)


@torch.no_grad()
def advance(blocks: Sequence[nn.Module], config: ModelConfig, current: int, target: int) -> None:
    """Make the switches from stage `current` up to stage `target`, in place."""
    group = config.progressive_group
    for stage in range(current + 1, target + 1):
        if stage == 3:
            for i in sorted({block_index(2, j, group) for j in range(len(blocks))}):
                blocks[i].attn.merge_lora()
        for i in range(len(blocks)):
            src = block_index(stage - 1, i, group)
            if block_index(stage, i, group) == i and src != i:
                _copy_block(blocks[i], blocks[src])
    set_lora_flags(blocks, config, max(current, target))


def trainable_parameters(model: nn.Module, blocks: Sequence[nn.Module], stage: int) -> int:
    """How many of `model`'s parameters `stage` trains: those outside the blocks, and in the
    blocks the layers run through, all but the frozen base attention of an adapted block."""
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    total = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in in_blocks)
    used = {id(block): block for block in layer_blocks(blocks, model.config.progressive_group, stage)}
    for block in used.values():
        adapted = block.attn.lora_active
        for name, p in block.named_parameters():
            is_lora = "lora" in name
            frozen = adapted and name.startswith("attn.") and not is_lora
            if p.requires_grad and not frozen and (adapted or not is_lora):
                total += p.numel()
    return total


def adapter_parameters(blocks: Sequence[nn.Module]) -> list[nn.Parameter]:
    """Every LoRA adapter tensor: their optimizer moments are dropped at a switch, since a
    merged adapter restarts from B = 0 and its old moments would redo the merged update."""
    return [p for block in blocks for name, p in block.named_parameters() if "lora" in name]
