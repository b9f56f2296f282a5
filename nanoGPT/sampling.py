"""Generation through the variant's normalised predictive distribution, with a KV cache.

`generate` takes the options of Hugging Face's generate() (greedy or sampling, temperature,
top_k, top_p, repetition_penalty, no_repeat_ngram_size, beam search with length_penalty and
early_stopping, an end-of-sequence id) with their semantics; nanoGPT/generation.py holds the
processors, the cached decoding step and beam search.
"""

from __future__ import annotations

import torch

from nanoGPT.errors import UserError
from nanoGPT.generation import Decoder, GenerationSettings, beam_search, process_scores
from nanoGPT.model import GPT


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
    *,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue each row of `idx` (B, T) by up to `max_new_tokens` tokens: sampled, or with
    `greedy` (HF's do_sample=False) the most likely one, or with num_beams > 1 beam search.

    A row that produces `eos_token_id` ends there and is padded with it; generation stops
    when every row has ended, so the result may be shorter than T + max_new_tokens.
    """
    ahead = model.config.target_offset()
    if ahead != 1:  # each step would append the token predicted `ahead` positions later
        raise UserError(
            f"this model predicts the token {ahead} positions ahead (predict_ahead), not the "
            "next one: it cannot generate text"
        )
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos_token_id,
        use_cache=use_cache,
        samples=samples,
    )
    if max_new_tokens == 0:
        return idx
    if num_beams > 1:
        return beam_search(model, idx, settings)
    return sample_or_greedy(model, idx, settings)


def sample_or_greedy(model: GPT, idx: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """HF's _sample: one token per row and step, sampled from the processed scores or their argmax."""
    decoder = Decoder(model, s.use_cache, s.samples)
    unfinished = torch.ones(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(s.max_new_tokens):
        scores = process_scores(decoder.log_probs(idx), idx, s)
        if s.do_sample:
            next_ids = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_ids = scores.argmax(-1)
        if s.eos_token_id is not None:
            next_ids = torch.where(unfinished, next_ids, s.eos_token_id)
            unfinished &= next_ids != s.eos_token_id
        idx = torch.cat([idx, next_ids[:, None]], dim=1)
        if not unfinished.any():
            break
    return idx
