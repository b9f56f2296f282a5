"""The convolution-compressor trunk (arch="conv"): a causal U-Net of transformer blocks.

    level 0 (T positions, C wide):     block -> skip_0 ............ skip_0 + up_0(.) -> block
    level 1 (T/f positions, 2C wide):    down_0 -> block -> skip_1 ... skip_1 + up_1(.) -> block
    ...
    level L (T/f^L positions, 2^L C):      down_{L-1} -> n_layer - 2L blocks -> up_{L-1}

Each level shortens the sequence by `conv_factor` and doubles the width (and the head
count, so head_dim stays the same). It is strictly causal:

- Down: the sequence is left-padded with f - 1 zeros and cut into groups of f, so
  compressed position j summarises tokens j*f - f + 1 .. j*f: its group *ends* at token j*f.
  Tokens after the last group's end are in no group yet; only the full-length path sees them.
- Up: a linear map gives f vectors per compressed position, one per phase r, for full
  position t = j*f + r. So t reads compressed position j = t // f, whose group ends at
  j*f <= t: never a token after t.
- Attention at every level is causal over that level's positions.

Deeper levels compose the same rule, so full position t reads level-L position t // f**L,
which ends at token (t // f**L) * f**L <= t. The skip connection from before each
compression carries what the compressed path cannot yet see.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoGPT.config import ModelConfig
from nanoGPT.layers import Block, RopeTables, make_norm


def causal_groups(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, C) -> (B, ceil(T / factor), factor * C): row j holds positions
    j*factor - factor + 1 .. j*factor (zeros before position 0), oldest first."""
    B, T, C = x.shape
    groups = math.ceil(T / factor)
    padded = F.pad(x, (0, 0, factor - 1, 0))[:, : groups * factor]
    return padded.reshape(B, groups, factor * C)


def causal_upsample(y: torch.Tensor, factor: int, length: int) -> torch.Tensor:
    """(B, T', factor * C) -> (B, length, C): full position t = j*factor + r takes phase r
    of compressed position j = t // factor."""
    B, groups, width = y.shape
    return y.reshape(B, groups * factor, width // factor)[:, :length]


class ConvCompressor(nn.Module):
    """(B, T, n_embd) embedded tokens -> (B, T, n_embd) hidden states (before the final norm)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        f, levels = config.conv_factor, config.conv_levels
        self.factor = f
        widths = [config.n_embd * 2**level for level in range(levels + 1)]
        heads = [config.n_head * 2**level for level in range(levels + 1)]
        self.down_blocks = nn.ModuleList(Block(config, widths[i], heads[i]) for i in range(levels))
        self.down_norms = nn.ModuleList(make_norm(config, widths[i]) for i in range(levels))
        # a strided convolution with kernel = stride = f is a linear map of each group of f
        self.down = nn.ModuleList(
            nn.Linear(f * widths[i], widths[i + 1], bias=config.bias) for i in range(levels)
        )
        self.bottom = nn.ModuleList(
            Block(config, widths[levels], heads[levels]) for _ in range(config.n_layer - 2 * levels)
        )
        self.up_norms = nn.ModuleList(make_norm(config, widths[i + 1]) for i in range(levels))
        # ... and its transpose one vector per phase: (2C) -> f * C
        self.up = nn.ModuleList(
            nn.Linear(widths[i + 1], f * widths[i], bias=config.bias) for i in range(levels)
        )
        self.up_blocks = nn.ModuleList(Block(config, widths[i], heads[i]) for i in range(levels))

    def forward(self, x: torch.Tensor, rope: Callable[[int], RopeTables | None]) -> torch.Tensor:
        """`rope(length)` gives the rotary tables of positions 0..length-1 of a level (or None)."""
        skips = []
        for block, norm, down in zip(self.down_blocks, self.down_norms, self.down):
            x, _ = block(x, rope=rope(x.size(1)))
            skips.append(x)
            x = down(causal_groups(norm(x), self.factor))
        for block in self.bottom:
            x, _ = block(x, rope=rope(x.size(1)))
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            x = skip + causal_upsample(self.up[i](self.up_norms[i](x)), self.factor, skip.size(1))
            x, _ = self.up_blocks[i](x, rope=rope(x.size(1)))
        return x
