"""Generation through the variant's normalised predictive distribution, with a KV cache."""

from __future__ import annotations

import torch

from nanoGPT.model import GPT


def apply_filters(
    log_probs: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Temperature, top-k and top-p on (B, V) log-probs, each row on its own.
    Returns logits whose softmax is the distribution to sample from."""
    logits = log_probs / max(temperature, 1e-8)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token once the tokens ranked above it already hold top_p of the mass
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def banned_by_ngrams(sequences: torch.Tensor, ngram_size: int) -> list[set[int]]:
    """Per row, the tokens that would repeat an n-gram already in the row."""
    banned: list[set[int]] = []
    for row in sequences.tolist():
        prefix = tuple(row[len(row) - ngram_size + 1 :]) if ngram_size > 1 else ()
        seen = set()
        for i in range(len(row) - ngram_size + 1):
            if tuple(row[i : i + ngram_size - 1]) == prefix:
                seen.add(row[i + ngram_size - 1])
        banned.append(seen)
    return banned


def compile_for_generation(model: GPT) -> GPT:
    """`model` with its trunk compiled for `generate`, which calls `hidden_states` (not
    `forward`, what torch.compile(model) would compile). Dynamic shapes: the prompt step and
    every one-token step, with a cache one longer each time, share one graph instead of
    recompiling per length."""
    model.hidden_states = torch.compile(model.hidden_states, dynamic=True)
    return model


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    no_repeat_ngram_size: int = 0,
    samples: int | None = None,
) -> torch.Tensor:
    """Continue each row of `idx` (B, T) by `max_new_tokens` tokens.

    The KV cache makes each new token cost one position while the sequence fits in the
    block; past block_size the context is cropped to the last block_size tokens and
    recomputed each step (learned positions cannot slide a cache).
    """
    block_size = model.config.block_size
    cache: list = []
    fed = 0  # how many tokens of idx the cache holds
    for _ in range(max_new_tokens):
        if idx.size(1) <= block_size:
            hidden = model.hidden_states(idx[:, fed:], kv_cache=cache)
            fed = idx.size(1)
        else:
            hidden = model.hidden_states(idx[:, -block_size:])
        log_probs = model.variant.log_probs(hidden[:, -1, :], samples=samples)
        if no_repeat_ngram_size > 0:
            for row, banned in enumerate(banned_by_ngrams(idx, no_repeat_ngram_size)):
                if banned:
                    log_probs[row, list(banned)] = float("-inf")
        if greedy:
            next_ids = log_probs.argmax(-1, keepdim=True)
        else:
            logits = apply_filters(log_probs, temperature, top_k, top_p)
            next_ids = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
        idx = torch.cat([idx, next_ids], dim=1)
    return idx
