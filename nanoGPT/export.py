"""Export to `transformers`: a checkpoint whose predictive is a softmax of its head's logits, on a
GPT-2 or LLaMA-style trunk, as a folder AutoModelForCausalLM.from_pretrained loads, with its
tokenizer where transformers has one for it.

  trunk                                             transformers model
  norm=layernorm, mlp=gelu,   pos_emb=learned       GPT2LMHeadModel (bias=False: zero biases)
  norm=rmsnorm,   mlp=swiglu, pos_emb=rope          LlamaForCausalLM (attention_bias, mlp_bias = bias)

A causal-LM head in transformers is logits = W h, softmaxed by whoever samples: the baseline,
smooth, baseline_untied and distill heads are exactly that. A sigmoid or Bayesian predictive is
not (normalised sigmoids, a mixture over weight samples), nor is baseline_bias's (a bias on the
logits, which neither GPT-2 nor LLaMA heads have): those are refused in one line.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from nanoGPT.errors import UserError
from nanoGPT.layers import swiglu_hidden
from nanoGPT.model import GPT
from nanoGPT.tokenizer import GPT2_EOT, Tokenizer, _gpt2_data_files
from nanoGPT.variants import Variant
from nanoGPT.variants.baseline import Baseline
from nanoGPT.variants.distill import Distill

GPT2_TRUNK = ("layernorm", "gelu", "learned")
LLAMA_TRUNK = ("rmsnorm", "swiglu", "rope")


def head_problem(variant: Variant) -> str | None:
    """Why the head is not a transformers causal-LM head (softmax(W h)), or None. The baseline
    family and distill predict log_softmax(lm_head(h)); another variant says so with its
    `softmax_head` class attribute."""
    if not (variant.softmax_head or isinstance(variant, Baseline | Distill)):
        return "its predictive is not a softmax of the head's logits"
    if variant.lm_head.bias is not None:
        return "its head adds a bias to the logits, which GPT-2 and LLaMA heads lack"
    return None


def check_exportable(model: GPT) -> str:
    """The transformers architecture of `model` ("gpt2" | "llama"), or a one-line UserError."""
    cfg = model.config
    problem = head_problem(model.variant)
    if problem:
        raise UserError(f"variant {cfg.variant!r} cannot be exported to transformers: {problem}")
    if cfg.arch != "gpt":
        raise UserError(f"arch={cfg.arch} has no transformers equivalent: only arch=gpt exports")
    if cfg.target_offset() != 1:
        raise UserError(
            f"this model predicts the token {cfg.target_offset()} positions ahead (predict_ahead): "
            "a transformers causal LM predicts the next one"
        )
    trunk = (cfg.norm, cfg.mlp, cfg.pos_emb)
    if trunk == GPT2_TRUNK:
        return "gpt2"
    if trunk == LLAMA_TRUNK:
        return "llama"
    raise UserError(
        f"norm={cfg.norm}, mlp={cfg.mlp}, pos_emb={cfg.pos_emb} has no transformers model: export needs "
        "GPT-2's layernorm, gelu, learned or LLaMA's rmsnorm, swiglu, rope"
    )


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("export needs transformers (pip install -e '.[hf]')") from None
    return transformers


def _weight_and_bias(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a Linear or LayerNorm, a zero bias where it has none (bias=False)."""
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight.size(0))
    return layer.weight, bias


def attention_projection(attn: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of an attention projection as it computes: W + (alpha / rank) B A while
    its LoRA adapters are active (progressive diverging), so a checkpoint of any stage exports
    (layer_blocks() repeats a block that layers share)."""
    weight, bias = _weight_and_bias(getattr(attn, name))
    if attn.lora_active:
        lora_a, lora_b = getattr(attn, f"{name}_lora_a"), getattr(attn, f"{name}_lora_b")
        weight = weight + attn.lora_scale * lora_b @ lora_a
    return weight, bias


def gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict: the same names, Conv1D weights (in, out), zero biases
    where the trunk has none (bias=False)."""
    state: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.transformer.wte.weight,
        "transformer.wpe.weight": model.transformer.wpe.weight,
        "lm_head.weight": model.variant.lm_head.weight,
    }
    state["transformer.ln_f.weight"], state["transformer.ln_f.bias"] = _weight_and_bias(
        model.transformer.ln_f
    )
    for i, block in enumerate(model.layer_blocks()):
        prefix = f"transformer.h.{i}"
        for name, norm in (("ln_1", block.ln_1), ("ln_2", block.ln_2)):
            state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"] = _weight_and_bias(norm)
        for name, (weight, bias) in (
            ("attn.c_attn", attention_projection(block.attn, "c_attn")),
            ("attn.c_proj", attention_projection(block.attn, "c_proj")),
            ("mlp.c_fc", _weight_and_bias(block.mlp.c_fc)),
            ("mlp.c_proj", _weight_and_bias(block.mlp.c_proj)),
        ):
            state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"] = weight.t(), bias
    return state


def llama_state(model: GPT) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's state dict. Our c_attn stacks q, k, v and our c_fc the gate and up
    projections; the rotation pairs dimension i with i + head_dim/2 in both (rotate_half)."""
    bias = model.config.bias
    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": model.transformer.wte.weight,
        "model.norm.weight": model.transformer.ln_f.weight,
        "lm_head.weight": model.variant.lm_head.weight,
    }
    for i, block in enumerate(model.layer_blocks()):
        prefix = f"model.layers.{i}"
        state[f"{prefix}.input_layernorm.weight"] = block.ln_1.weight
        state[f"{prefix}.post_attention_layernorm.weight"] = block.ln_2.weight
        qkv, out = attention_projection(block.attn, "c_attn"), attention_projection(block.attn, "c_proj")
        gate_up, down = _weight_and_bias(block.mlp.c_fc), _weight_and_bias(block.mlp.c_proj)
        parts = {
            "self_attn.q_proj": (qkv, 0, 3),
            "self_attn.k_proj": (qkv, 1, 3),
            "self_attn.v_proj": (qkv, 2, 3),
            "self_attn.o_proj": (out, 0, 1),
            "mlp.gate_proj": (gate_up, 0, 2),
            "mlp.up_proj": (gate_up, 1, 2),
            "mlp.down_proj": (down, 0, 1),
        }
        for name, ((weight, layer_bias), index, count) in parts.items():
            state[f"{prefix}.{name}.weight"] = weight.chunk(count, dim=0)[index]
            if bias:
                state[f"{prefix}.{name}.bias"] = layer_bias.chunk(count, dim=0)[index]
    return state


def hf_config(model: GPT, kind: str, eos_id: int | None) -> Any:
    transformers, cfg = _transformers(), model.config
    shared = dict(
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=model.variant.ties_embedding,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    if kind == "gpt2":
        return transformers.GPT2Config(
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            n_positions=cfg.block_size,
            activation_function="gelu_new",  # GELU's tanh approximation, as layers.MLP
            layer_norm_epsilon=1e-5,
            **shared,
        )
    return transformers.LlamaConfig(
        hidden_size=cfg.n_embd,
        intermediate_size=swiglu_hidden(cfg.n_embd),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=1e-5,  # layers.RMSNorm's
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=cfg.bias,
        mlp_bias=cfg.bias,
        hidden_act="silu",
        **shared,
    )


def to_transformers(model: GPT, eos_id: int | None = None) -> Any:
    """The transformers causal LM that computes `model`'s logits (float32, eval mode)."""
    kind = check_exportable(model)
    transformers = _transformers()
    config = hf_config(model, kind, eos_id)
    model_class = transformers.GPT2LMHeadModel if kind == "gpt2" else transformers.LlamaForCausalLM
    hf_model = model_class(config).eval()
    state = gpt2_state(model) if kind == "gpt2" else llama_state(model)
    state = {key: value.detach().float().contiguous().clone() for key, value in state.items()}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # tied: lm_head is the embedding
        raise RuntimeError(f"export mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf_model


def hf_tokenizer(tokenizer: Tokenizer) -> tuple[Any | None, str]:
    """The transformers tokenizer of `tokenizer`'s ids, or None, and a line saying what was saved."""
    if tokenizer.kind == "gpt2":
        return gpt2_fast_tokenizer(), "tokenizer: GPT-2 BPE (GPT2TokenizerFast)"
    if tokenizer.kind == "char":
        return char_tokenizer(tokenizer), f"tokenizer: {tokenizer.vocab_size} characters (one id each)"
    return None, (
        f"tokenizer: not saved ({tokenizer.kind} has no transformers export here; "
        "ship its tokenizer.model beside the folder)"
    )


def gpt2_fast_tokenizer() -> Any:
    """GPT2TokenizerFast from the two files tiktoken's GPT-2 encoding is built from here
    (offline): byte-level BPE, as GPT-2's own tokenizer.json."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    merges_file, vocab_file = _gpt2_data_files()
    rust = RustTokenizer(models.BPE.from_file(vocab_file, merges_file))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    return _transformers().GPT2TokenizerFast(
        tokenizer_object=rust, bos_token=GPT2_EOT, eos_token=GPT2_EOT, unk_token=GPT2_EOT
    )


def char_tokenizer(tokenizer: Tokenizer) -> Any:
    """A character vocabulary as a tokenizers WordLevel model: every character one token,
    decoded by concatenation."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    vocab = {ch: i for i, ch in tokenizer.itos.items()}
    rust = RustTokenizer(models.WordLevel(vocab, unk_token=tokenizer.itos[0]))
    rust.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    rust.decoder = decoders.Fuse()
    return _transformers().PreTrainedTokenizerFast(tokenizer_object=rust, clean_up_tokenization_spaces=False)


def export(model: GPT, tokenizer: Tokenizer | None, folder: str) -> list[str]:
    """Save `model` (and its tokenizer) with save_pretrained into `folder`; the lines saying
    what was written."""
    hf_model = to_transformers(model, tokenizer.eot_id if tokenizer else None)
    os.makedirs(folder, exist_ok=True)
    hf_model.save_pretrained(folder)
    lines = [
        f"model: {type(hf_model).__name__}, {sum(p.numel() for p in hf_model.parameters()):,} parameters"
    ]
    if tokenizer is not None:
        fast, line = hf_tokenizer(tokenizer)
        if fast is not None:
            fast.save_pretrained(folder)
        lines.append(line)
    return lines
