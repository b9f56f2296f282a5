"""The GPT model: a GPT-2 trunk that returns hidden states, and the variant's output head.

The trunk is the whole of GPT-2 except the output layer: token + learned position
embeddings, pre-LayerNorm blocks (causal self-attention, GELU MLP), a final LayerNorm.
What turns hidden states into a loss and a distribution is the variant's job
(nanoGPT/variants/), so that every objective trains on the same trunk.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.variants import build_variant

# A KV cache is one (keys, values) pair per layer, each (B, n_head, T_past, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
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
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, past=None):
        attn_out, present = self.attn(self.ln_1(x), past)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(nn.Module):
    """Trunk + variant head. `forward` returns (loss, stats) given targets, else hidden states."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.variant = build_variant(config)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.variant.reset_parameters()
        if self.variant.ties_embedding:
            self.transformer.wte.weight = self.variant.lm_head.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(
        self, idx: torch.Tensor, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, n_embd). With `kv_cache` (a list, filled in place),
        idx holds only the new tokens and positions continue after the cached ones."""
        B, T = idx.shape
        start = kv_cache[0][0].size(2) if kv_cache else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens > block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        cached = bool(kv_cache)
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, kv_cache[i] if cached else None)
            if kv_cache is not None:
                if cached:
                    kv_cache[i] = present
                else:
                    kv_cache.append(present)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, extra_positives=None):
        hidden = self.hidden_states(idx)
        if targets is None:
            return hidden
        return self.variant.loss(hidden, targets, extra_positives)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N plus attention."""
        cfg = self.config
        attention = 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
        return 6 * self.num_params() + attention

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: ModelConfig) -> GPT:
        """OpenAI GPT-2 weights through `transformers` (hub name or local folder).

        The architecture (layers, heads, width, block size, vocabulary) comes from the
        checkpoint; dropout and the variant come from `config`.
        """
        try:
            from transformers import GPT2LMHeadModel
            hf_model = GPT2LMHeadModel.from_pretrained(name_or_path)
        except OSError as err:
            raise UserError(
                f"could not load GPT-2 weights {name_or_path!r} ({str(err).splitlines()[0][:120]}); "
                "connect to the Hugging Face hub or pass init_from=<local folder with "
                "config.json and model.safetensors>"
            ) from None
        hf = hf_model.config
        import dataclasses
        config = dataclasses.replace(
            config, n_layer=hf.n_layer, n_head=hf.n_head, n_embd=hf.n_embd,
            block_size=hf.n_positions, vocab_size=hf.vocab_size, bias=True,
        )
        model = cls(config)
        ours = model.state_dict()
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for key, value in hf_model.state_dict().items():
                if not key.startswith("transformer.") or key not in ours:
                    continue  # lm_head is tied to wte; attention-mask buffers are not weights
                if key.endswith(conv1d):
                    value = value.t()  # HF's Conv1D stores (in, out)
                ours[key].copy_(value)
            model.variant.init_head_from(model.transformer.wte.weight)
        return model
