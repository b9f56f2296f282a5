"""What `generate` (nanoGPT/sampling.py) is made of, with Hugging Face `generate()`'s semantics.

- GenerationSettings: the options of transformers' generate() this framework has, checked once.
- process_scores: HF's logits processors in HF's order (repetition_penalty, no_repeat_ngram_size,
  then, when sampling, temperature, top_k, top_p). They act on the variant's predictive
  log-probs: every variant's predictive is normalised, whatever its head, so a step's scores are
  log-probs (what HF's beam search processes too; HF's greedy and sampling process raw logits,
  which only the repetition penalty tells apart).
- Decoder: one step of the trunk through the KV cache, which beam search reorders per beam.
- beam_search: HF's vectorised beam search (transformers >= 4.50: the same candidates, length
  penalty, early stopping and end-of-sequence handling), scored with the variant's log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoGPT.errors import UserError
from nanoGPT.model import GPT, KVCache

NEG = -1.0e9  # HF's "impossible" score: finite, so sums of it still order correctly
EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    do_sample: bool = True  # False: greedy (num_beams=1) or beam search
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 makes tokens already in the sequence less likely
    no_repeat_ngram_size: int = 0  # 0 = off; no n-gram of this size occurs twice in a sequence
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: a finished beam scores sum(log p) / length ** this
    early_stopping: bool | str = False  # beam search: True | False | "never", as in HF
    eos_token_id: int | None = None  # a sequence ends at it (and is padded with it after)
    use_cache: bool = True
    samples: int | None = None  # Bayesian variants: weight samples per token; None = as trained

    def __post_init__(self) -> None:
        checks = (
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (
                self.temperature > 0,
                f"temperature must be > 0 (do_sample=False is greedy), got {self.temperature}",
            ),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0.0 <= self.top_p <= 1.0, f"top_p must be in [0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (
                self.no_repeat_ngram_size >= 0,
                f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}",
            ),
            (self.num_beams >= 1, f"num_beams must be >= 1, got {self.num_beams}"),
            (
                isinstance(self.early_stopping, bool | str) and self.early_stopping in EARLY_STOPPING,
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise UserError(message)


# --- logits processors (transformers.generation.logits_process), on (N, V) scores ---------------


def repetition_penalty(scores: torch.Tensor, sequences: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's RepetitionPenaltyLogitsProcessor: each token present in the row (prompt included)
    has a negative score multiplied by `penalty` and a positive one divided by it."""
    seen = torch.gather(scores, 1, sequences)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, sequences, seen)


def no_repeat_ngram(scores: torch.Tensor, sequences: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """HF's NoRepeatNGramLogitsProcessor: -inf on every token that would complete an n-gram
    already in the row."""
    length = sequences.size(1)
    if length < ngram_size:
        return scores
    prefix = sequences[:, length + 1 - ngram_size :]
    windows = sequences.unfold(1, ngram_size, 1)  # (N, length - n + 1, n)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1)
    vocab = scores.size(-1)
    # a window that does not match bans a spare column past the vocabulary
    banned = torch.zeros(scores.size(0), vocab + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(matches, windows[..., -1], vocab), True)
    return scores.masked_fill(banned[:, :vocab], float("-inf"))


def top_k_filter(scores: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """HF's TopKLogitsWarper: -inf below the k-th highest score (ties with it are kept)."""
    k = min(max(top_k, min_tokens_to_keep), scores.size(-1))
    kth = torch.topk(scores, k).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """HF's TopPLogitsWarper: drop the least likely tokens while their total probability stays
    at most 1 - top_p, keeping at least `min_tokens_to_keep`."""
    ascending, order = torch.sort(scores, descending=False)
    drop = ascending.softmax(-1).cumsum(-1) <= (1 - top_p)
    drop[..., -min_tokens_to_keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def process_scores(
    scores: torch.Tensor, sequences: torch.Tensor, s: GenerationSettings, min_tokens_to_keep: int = 1
) -> torch.Tensor:
    """The processors HF's generate() builds for these settings, in its order. Temperature,
    top-k and top-p are sampling warpers: greedy and beam search ignore them, as HF does."""
    if s.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, sequences, s.repetition_penalty)
    if s.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, sequences, s.no_repeat_ngram_size)
    if s.do_sample:
        scores = scores / s.temperature
        if s.top_k:
            scores = top_k_filter(scores, s.top_k, min_tokens_to_keep)
        if s.top_p < 1.0:
            scores = top_p_filter(scores, s.top_p, min_tokens_to_keep)
    return scores


# --- the trunk, one step at a time ---------------------------------------------------------------


class Decoder:
    """Next-token log-probs of a batch of growing sequences, from the variant's predictive.

    With `use_cache` each step costs one new position while the sequences fit in the block;
    past block_size the context is cropped to the last block_size tokens and recomputed each
    step (learned positions cannot slide a cache).
    """

    def __init__(self, model: GPT, use_cache: bool = True, samples: int | None = None):
        self.model, self.use_cache, self.samples = model, use_cache, samples
        self.cache: KVCache = []
        self.fed = 0  # how many tokens of each row the cache holds

    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """(N, T) sequences -> (N, V) log-probs of each one's next token."""
        block_size = self.model.config.block_size
        if self.use_cache and idx.size(1) <= block_size:
            hidden = self.model.hidden_states(idx[:, self.fed :], kv_cache=self.cache)
            self.fed = idx.size(1)
        else:
            hidden = self.model.hidden_states(idx[:, -block_size:])
        return self.model.variant.log_probs(hidden[:, -1, :], samples=self.samples)

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i of the next step continues row rows[i] of this one."""
        self.cache[:] = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cache]


# --- beam search (transformers.generation.utils.GenerationMixin._beam_search) --------------------


@dataclass
class Beams:
    """Per batch row b: K live beams and the K best finished hypotheses so far."""

    running: torch.Tensor  # (B, K, max_len) ids, eos (or -1) past the current length
    running_scores: torch.Tensor  # (B, K) summed log-probs
    done: torch.Tensor  # (B, K, max_len) finished hypotheses, best first
    done_scores: torch.Tensor  # (B, K) their length-penalised scores; NEG in an empty slot
    done_lengths: torch.Tensor  # (B, K) their generated lengths
    is_done: torch.Tensor  # (B, K) whether a slot holds a finished hypothesis
    improvable: torch.Tensor  # (B, 1) whether a live beam may still beat a finished one


def start_beams(idx: torch.Tensor, num_beams: int, max_len: int, fill: int) -> Beams:
    B, T = idx.shape
    running = idx.new_full((B, num_beams, max_len), fill)
    running[:, :, :T] = idx[:, None, :]
    scores = torch.zeros(B, num_beams, device=idx.device)
    scores[:, 1:] = NEG  # the beams start equal: only the first one's continuations count
    return Beams(
        running=running,
        running_scores=scores,
        done=running.clone(),
        done_scores=torch.full_like(scores, NEG),
        done_lengths=torch.zeros(B, num_beams, dtype=torch.long, device=idx.device),
        is_done=torch.zeros(B, num_beams, dtype=torch.bool, device=idx.device),
        improvable=torch.ones(B, 1, dtype=torch.bool, device=idx.device),
    )


def gather_beams(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) -> (B, K', ...) along the beams `indices` (B, K') pick."""
    while indices.dim() < tensor.dim():
        indices = indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, indices, dim=1)


def top_candidates(
    scores: torch.Tensor, beams: Beams, cur: int, keep: int, do_sample: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `keep` best (or sampled) continuations of all beams, from (B, K * V) summed scores:
    their scores (B, keep), the beam each extends (B, keep) and their sequences (B, keep, max_len)."""
    if do_sample:
        picked = torch.multinomial(scores.softmax(-1), num_samples=keep)
        cand_scores, order = scores.gather(1, picked).sort(dim=-1, descending=True)
        picked = picked.gather(1, order)
    else:
        cand_scores, picked = torch.topk(scores, keep)
    vocab = scores.size(1) // beams.running.size(1)
    parents = picked // vocab
    sequences = gather_beams(beams.running, parents)
    sequences[:, :, cur] = picked % vocab
    return cand_scores, parents, sequences


def update_finished(
    beams: Beams,
    cand: torch.Tensor,
    cand_scores: torch.Tensor,
    ended: torch.Tensor,
    length: int,
    s: GenerationSettings,
) -> None:
    """Merge the candidates among the top K that just ended into the K best finished ones."""
    num_beams = beams.done.size(1)
    just_done = ended.clone()
    just_done[:, num_beams:] = False  # the other candidates only keep K beams running
    scores = cand_scores / (length**s.length_penalty)
    full = beams.is_done.all(-1, keepdim=True) & (s.early_stopping is True)
    scores = scores + NEG * (full | ~beams.improvable | ~just_done).float()
    merged_scores = torch.cat([beams.done_scores, scores], 1)
    best = torch.topk(merged_scores, num_beams).indices
    beams.done = gather_beams(torch.cat([beams.done, cand], 1), best)
    beams.done_scores = gather_beams(merged_scores, best)
    lengths = torch.cat([beams.done_lengths, torch.full_like(ended, length, dtype=torch.long)], 1)
    beams.done_lengths = gather_beams(lengths, best)
    beams.is_done = gather_beams(torch.cat([beams.is_done, just_done], 1), best)


def still_improvable(beams: Beams, length: int, max_new_tokens: int, s: GenerationSettings) -> torch.Tensor:
    """HF's early-stopping heuristic: can the best live beam, at the length it would be scored
    at, still beat the worst finished hypothesis? (early_stopping="never" with a positive
    length_penalty assumes the longest length; True and False the current one.)"""
    hypothetical = max_new_tokens if (s.early_stopping == "never" and s.length_penalty > 0) else length
    best_running = beams.running_scores[:, :1] / (hypothetical**s.length_penalty)
    worst_done = torch.where(beams.is_done, beams.done_scores.min(1, keepdim=True).values, NEG)
    return beams.improvable & (best_running > worst_done).any(-1, keepdim=True)


@torch.no_grad()
def beam_search(model: GPT, idx: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """(B, T) prompts -> (B, T + generated) best finished hypothesis of each, padded with
    eos_token_id (or -1 without one) where a shorter one ended first."""
    B, prompt_len = idx.shape
    num_beams, max_len, eos = s.num_beams, prompt_len + s.max_new_tokens, s.eos_token_id
    beams = start_beams(idx, num_beams, max_len, -1 if eos is None else eos)
    decoder = Decoder(model, s.use_cache, s.samples)
    keep = 2 * num_beams  # HF: (number of eos ids + 1, at least 2) * num_beams, so K beams stay live
    offsets = torch.arange(B, device=idx.device)[:, None] * num_beams
    for cur in range(prompt_len, max_len):
        flat = beams.running[:, :, :cur].reshape(B * num_beams, cur)
        # HF keeps at least (number of eos ids + 1) tokens when sampling beams: 2
        scores = process_scores(decoder.log_probs(flat), flat, s, min_tokens_to_keep=2)
        scores = (scores.view(B, num_beams, -1) + beams.running_scores[..., None]).view(B, -1)
        cand_scores, parents, cand = top_candidates(scores, beams, cur, keep, s.do_sample)
        ended = torch.full_like(cand_scores, cur + 1 >= max_len, dtype=torch.bool)
        if eos is not None:
            ended |= cand[:, :, cur] == eos
        # the live beams: the best K candidates that did not end
        live = cand_scores + NEG * ended.float()
        chosen = torch.topk(live, num_beams).indices
        beams.running, beams.running_scores = gather_beams(cand, chosen), gather_beams(live, chosen)
        update_finished(beams, cand, cand_scores, ended, cur + 1 - prompt_len, s)
        decoder.reorder((gather_beams(parents, chosen) + offsets).flatten())
        beams.improvable = still_improvable(beams, cur + 1 - prompt_len, s.max_new_tokens, s)
        all_full = bool(beams.is_done.all()) and s.early_stopping is True
        if not beams.improvable.any() or all_full or ended.all():
            break
    return beams.done[:, 0, : prompt_len + int(beams.done_lengths[:, 0].max())]
