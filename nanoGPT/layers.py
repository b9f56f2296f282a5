"""The layers the trunks are built from: norms, MLPs, causal attention, the transformer block.

GPT-2 is the default: LayerNorm, a GELU MLP, learned positions (added by the model to the
input). The LLaMA-style options of the same ModelConfig swap in RMSNorm (norm="rmsnorm"),
a SwiGLU MLP (mlp="swiglu") and rotary position embeddings (pos_emb="rope"); with
bias=False no layer has a bias. Attention is scaled by head_dim ** -0.5 in every case.

Each layer takes its width (and head count) explicitly, so the convolution compressor can
build blocks wider than n_embd at its compressed levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoGPT.config import ModelConfig

KVPair = tuple[torch.Tensor, torch.Tensor]
RopeTables = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (T, head_dim // 2)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=config.bias)


class MLP(nn.Module):
    """GPT-2's MLP: GELU between two linear maps, 4x wide."""

    def __init__(self, config: ModelConfig, dim: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=config.bias)
        self.c_proj = nn.Linear(4 * dim, dim, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


def swiglu_hidden(dim: int) -> int:
    """LLaMA's hidden width: 2/3 of 4 * dim (three matrices cost what GELU's two do), rounded
    up to a multiple of 32."""
    return 32 * math.ceil(8 * dim / 3 / 32)


class SwiGLU(nn.Module):
    """silu(x W1) * (x W3), then W2. W1 and W3 are one matrix (`c_fc`, W1 the first half)
    so both come from a single matmul."""

    def __init__(self, config: ModelConfig, dim: int):
        super().__init__()
        self.hidden = swiglu_hidden(dim)
        self.c_fc = nn.Linear(dim, 2 * self.hidden, bias=config.bias)
        self.c_proj = nn.Linear(self.hidden, dim, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


def make_mlp(config: ModelConfig, dim: int) -> nn.Module:
    return SwiGLU(config, dim) if config.mlp == "swiglu" else MLP(config, dim)


class Rotary(nn.Module):
    """Rotary position embedding tables: angle(t, i) = t * theta ** (-2i / head_dim).

    The tables are buffers (not saved in checkpoints: they follow from the config).
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def tables(self, start: int, length: int) -> RopeTables:
        """(cos, sin) of positions start .. start + length - 1."""
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rotary(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate (..., T, head_dim) by position: the pair (x[i], x[i + head_dim/2]) turns by
    angle(t, i), so q.k of two rotated vectors depends on their positions' difference only."""
    cos, sin = rope
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; optional rotary positions, KV cache and LoRA.

    The LoRA adapters exist only for progressive diverging (progressive_group > 0). While
    `lora_active` is set, the base projections are used detached (frozen) and only the
    low-rank adapters learn: W x + (alpha / rank) * B A x, B starting at zero.
    """

    def __init__(self, config: ModelConfig, dim: int | None = None, n_head: int | None = None):
        super().__init__()
        dim = dim or config.n_embd
        self.n_head = n_head or config.n_head
        assert dim % self.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(dim, 3 * dim, bias=config.bias)
        self.c_proj = nn.Linear(dim, dim, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.lora_active = False
        if config.progressive_group:
            self.lora_scale = config.lora_alpha / config.lora_rank
            rank = config.lora_rank
            self.c_attn_lora_a = nn.Parameter(torch.empty(rank, dim))
            self.c_attn_lora_b = nn.Parameter(torch.zeros(3 * dim, rank))
            self.c_proj_lora_a = nn.Parameter(torch.empty(rank, dim))
            self.c_proj_lora_b = nn.Parameter(torch.zeros(dim, rank))
            for a in (self.c_attn_lora_a, self.c_proj_lora_a):
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's own init

    def _project(self, layer: nn.Linear, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.lora_active:
            return layer(x)
        bias = None if layer.bias is None else layer.bias.detach()
        lora_a, lora_b = getattr(self, f"{name}_lora_a"), getattr(self, f"{name}_lora_b")
        return (
            F.linear(x, layer.weight.detach(), bias) + F.linear(F.linear(x, lora_a), lora_b) * self.lora_scale
        )

    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold the adapters into the base weights (and zero them): the function is kept."""
        for name in ("c_attn", "c_proj"):
            layer = getattr(self, name)
            lora_b = getattr(self, f"{name}_lora_b")
            layer.weight += self.lora_scale * lora_b @ getattr(self, f"{name}_lora_a")
            lora_b.zero_()

    def forward(
        self, x: torch.Tensor, past: KVPair | None = None, rope: RopeTables | None = None
    ) -> tuple[torch.Tensor, KVPair]:
        B, T, C = x.shape
        q, k, v = self._project(self.c_attn, x, "c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:  # the tables hold the absolute positions of these T tokens
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        mask, is_causal = None, True
        if past is not None and past[0].size(2) > 0:
            is_causal = False
            if T > 1:  # queries at the end of a longer key sequence: mask by absolute position
                t_all = k.size(2)
                mask = torch.ones(T, t_all, dtype=torch.bool, device=x.device).tril(t_all - T)
        # SDPA scales by head_dim ** -0.5
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self._project(self.c_proj, y, "c_proj")), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, dim: int | None = None, n_head: int | None = None):
        super().__init__()
        dim = dim or config.n_embd
        self.ln_1 = make_norm(config, dim)
        self.attn = CausalSelfAttention(config, dim, n_head)
        self.ln_2 = make_norm(config, dim)
        self.mlp = make_mlp(config, dim)

    def forward(
        self, x: torch.Tensor, past: KVPair | None = None, rope: RopeTables | None = None
    ) -> tuple[torch.Tensor, KVPair]:
        attn_out, present = self.attn(self.ln_1(x), past, rope)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present
