"""The GPT model: a trunk that returns hidden states, and the variant's output head.

The default trunk is the whole of GPT-2 except the output layer: token + learned position
embeddings, pre-LayerNorm blocks (causal self-attention, GELU MLP), a final LayerNorm.
ModelConfig switches in the LLaMA-style layers (RMSNorm, SwiGLU, rotary positions, no
biases; nanoGPT/layers.py), the convolution-compressor trunk (arch="conv",
nanoGPT/conv_model.py) and progressive diverging of the depth (nanoGPT/progressive.py).
What turns hidden states into a loss and a distribution is the variant's job
(nanoGPT/variants/), so that every objective trains on every trunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from nanoGPT import progressive
from nanoGPT.config import ModelConfig
from nanoGPT.conv_model import ConvCompressor
from nanoGPT.errors import UserError
from nanoGPT.hub import load_pretrained
from nanoGPT.layers import MLP, Block, CausalSelfAttention, Rotary, make_norm  # noqa: F401
from nanoGPT.variants import build_variant

# A KV cache is one (keys, values) pair per layer, each (B, n_head, T_past, head_dim).
# The conv trunk keeps the token ids seen so far in it instead (it recomputes, see below).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]

NORMS, MLPS, POS_EMBS, ARCHS = (
    ("layernorm", "rmsnorm"),
    ("gelu", "swiglu"),
    ("learned", "rope"),
    ("gpt", "conv"),
)


def check_architecture(config: ModelConfig) -> None:
    """UserError (one line) for a trunk configuration that cannot be built."""
    for key, allowed in (("norm", NORMS), ("mlp", MLPS), ("pos_emb", POS_EMBS), ("arch", ARCHS)):
        if getattr(config, key) not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {getattr(config, key)!r}")
    if config.n_embd % config.n_head:
        raise UserError(f"n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
    if config.pos_emb == "rope" and (config.n_embd // config.n_head) % 2:
        raise UserError(f"pos_emb=rope needs an even head size, not {config.n_embd // config.n_head}")
    if config.arch == "conv":
        if config.conv_factor < 2 or config.conv_levels < 1:
            raise UserError(
                f"arch=conv needs conv_factor >= 2 and conv_levels >= 1, got "
                f"{config.conv_factor} and {config.conv_levels}"
            )
        if config.n_layer < 2 * config.conv_levels + 1:
            raise UserError(
                f"arch=conv with conv_levels={config.conv_levels} needs n_layer >= "
                f"{2 * config.conv_levels + 1} (a block before and after each level, "
                f"at least one at the bottom), got {config.n_layer}"
            )
    if config.predict_ahead == 0 and config.arch != "conv":
        raise UserError(
            "predict_ahead=0 (auto: conv_factor ** conv_levels tokens ahead) needs arch=conv; "
            "give the number of tokens ahead"
        )
    progressive.check_config(config)


class GPT(nn.Module):
    """Trunk + variant head. `forward` returns (loss, stats) given targets, else hidden states."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_architecture(config)
        self.config = config
        modules: dict[str, nn.Module] = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules["drop"] = nn.Dropout(config.dropout)
        if config.arch == "conv":
            modules["conv"] = ConvCompressor(config)
        else:
            modules["h"] = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        modules["ln_f"] = make_norm(config, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        if config.pos_emb == "rope":
            self.rotary = Rotary(config.n_embd // config.n_head, config.block_size, config.rope_theta)
        # the conv trunk recomputes the whole sequence for each new token (see hidden_states)
        self.supports_kv_cache = config.arch == "gpt"
        self.stage = 3  # progressive diverging: every layer its own block unless it is on
        if config.progressive_group:
            self.stage = 1
            # a buffer, so checkpoints carry the stage; self.stage mirrors it as a Python int
            self.register_buffer("progressive_stage", torch.tensor(1))
            self.register_load_state_dict_post_hook(GPT._stage_from_buffer)
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

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, n_embd). With `kv_cache` (a list, filled in place),
        idx holds only the new tokens and positions continue after the cached ones."""
        if self.config.arch == "conv":
            return self._conv_hidden_states(idx, kv_cache)
        B, T = idx.shape
        start = kv_cache[0][0].size(2) if kv_cache else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens > block_size {self.config.block_size}")
        x = self._embed(idx, start)
        rope = self.rotary.tables(start, T) if self.config.pos_emb == "rope" else None
        cached = bool(kv_cache)
        for i, block in enumerate(self.layer_blocks()):
            x, present = block(x, kv_cache[i] if cached else None, rope)
            if kv_cache is not None:
                if cached:
                    kv_cache[i] = present
                else:
                    kv_cache.append(present)
        return self.transformer.ln_f(x)

    def _embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = self.transformer.wte(idx)
        if self.config.pos_emb == "learned":
            pos = torch.arange(start, start + idx.size(1), dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)
        return self.transformer.drop(x)

    def _conv_hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        # Compressed positions summarise groups of tokens, so a new token would need partial
        # groups cached; instead the "cache" holds the token ids so far and every call
        # recomputes the whole sequence, returning the new positions. Same API, same results.
        new = idx.size(1)
        if kv_cache:
            idx = torch.cat([kv_cache[0][0], idx], dim=1)
        if kv_cache is not None:
            kv_cache[:] = [(idx, idx)]
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {idx.size(1)} tokens > block_size {self.config.block_size}")

        def level_rope(length: int):  # each level counts its own positions from 0
            return self.rotary.tables(0, length) if self.config.pos_emb == "rope" else None

        x = self.transformer.conv(self._embed(idx), level_rope)
        return self.transformer.ln_f(x[:, -new:])

    def layer_blocks(self) -> list[nn.Module]:
        """The block each layer runs through at the current progressive stage."""
        if not self.config.progressive_group:
            return list(self.transformer.h)
        return progressive.layer_blocks(self.transformer.h, self.config.progressive_group, self.stage)

    def set_progressive_stage(self, stage: int) -> None:
        """Advance progressive diverging to `stage` (copying blocks, see nanoGPT/progressive.py).
        Stages only advance: asking for an earlier one than the current changes nothing."""
        if not self.config.progressive_group or stage <= self.stage:
            return
        progressive.advance(self.transformer.h, self.config, self.stage, stage)
        self.stage = stage
        self.progressive_stage.fill_(stage)

    @staticmethod
    def _stage_from_buffer(module: GPT, incompatible_keys) -> None:
        module.stage = int(module.progressive_stage)
        progressive.set_lora_flags(module.transformer.h, module.config, module.stage)

    def forward(self, idx, targets=None, extra_positives=None):
        hidden = self.hidden_states(idx)
        if targets is None:
            return hidden
        return self.variant.loss(hidden, targets, extra_positives)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
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
        hf_model = load_pretrained(
            "GPT2LMHeadModel",
            name_or_path,
            "connect to the Hugging Face hub, or pass init_from=<local folder with config.json and "
            "model.safetensors, saved with save_pretrained>",
        )
        hf = hf_model.config
        import dataclasses

        config = dataclasses.replace(
            config,
            n_layer=hf.n_layer,
            n_head=hf.n_head,
            n_embd=hf.n_embd,
            block_size=hf.n_positions,
            vocab_size=hf.vocab_size,
            bias=True,
            norm="layernorm",
            mlp="gelu",
            pos_emb="learned",
            arch="gpt",
            progressive_group=0,
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
