"""Features for the probes, from a checkpoint of this framework (any variant, any trunk: the
trunk's hidden states, mean-pooled over the tokens and at the last one) or from a Hugging Face
encoder ([CLS] and mean-pooled last hidden states). For multiple choice the checkpoint's pass
over context + choice also gives the choice's log-probability under the variant's own
normalised predictive (`log_probs`), for zero-shot scoring the lm-evaluation-harness way.

A sequence longer than the model's block keeps its last block_size tokens (the end is what
"last" pools and what the choice is scored on). A model trained to predict further ahead
(predict_ahead, the conv trunk's look-ahead) scores each choice token from the output that
predicts it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nanoGPT.model import GPT
from nanoGPT.probe.tasks import Choice
from nanoGPT.tokenizer import Tokenizer

BATCH_TOKENS = 16384  # tokens (padding included) per forward pass


@dataclass
class Pass:
    """What one pass over sequences gives: pooled hidden states and, when asked for, the summed
    log-probability of the tokens from each sequence's `score_from` on, and how many there were."""

    features: dict[str, torch.Tensor]  # pooling -> (N, d)
    log_prob: torch.Tensor | None = None  # (N,)
    count: torch.Tensor | None = None  # (N,)


def batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length (little padding), each group within batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = [[]]
    for i in order:
        if groups[-1] and (len(groups[-1]) + 1) * lengths[i] > batch_tokens:
            groups.append([])
        groups[-1].append(i)
    return [g for g in groups if g]


def pooled(hidden: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, T, d) right-padded hidden states -> mean over each row's tokens and its last one."""
    mask = (torch.arange(hidden.size(1), device=hidden.device)[None] < lengths[:, None]).to(hidden.dtype)
    mean = (hidden * mask[..., None]).sum(1) / lengths[:, None]
    last = hidden[torch.arange(hidden.size(0), device=hidden.device), lengths - 1]
    return {"mean": mean.float(), "last": last.float()}


class GPTFeatures:
    """Hidden states and choice log-probabilities of a GPT of this framework."""

    poolings = ("mean", "last")
    scores_choices = True

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        device: str = "cpu",
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        batch_tokens: int = BATCH_TOKENS,
    ):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.autocast, self.batch_tokens = autocast, batch_tokens

    @torch.no_grad()
    def run(self, sequences: list[list[int]], score_from: list[int] | None = None) -> Pass:
        block = self.model.config.block_size
        cut = [max(0, len(s) - block) for s in sequences]
        sequences = [s[c:] for s, c in zip(sequences, cut)]
        ahead = self.model.config.target_offset()  # output t predicts token t + ahead (1: the next)
        starts = [max(ahead, f - c) for f, c in zip(score_from, cut)] if score_from else None
        n, d = len(sequences), self.model.config.n_embd
        out = Pass({p: torch.zeros(n, d) for p in self.poolings})
        if starts is not None:
            out.log_prob, out.count = torch.zeros(n), torch.zeros(n)
        for group in batches([len(s) for s in sequences], self.batch_tokens):
            self._run_batch(
                [sequences[i] for i in group], [starts[i] for i in group] if starts else None, group, out
            )
        return out

    def _run_batch(
        self, seqs: list[list[int]], starts: list[int] | None, group: list[int], out: Pass
    ) -> None:
        lengths = torch.tensor([len(s) for s in seqs], device=self.device)
        idx = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long, device=self.device)
        for row, s in enumerate(seqs):
            idx[row, : len(s)] = torch.tensor(s)
        with self.autocast():
            hidden = self.model.hidden_states(idx)
        for pooling, value in pooled(hidden, lengths).items():
            out.features[pooling][group] = value.cpu()
        if starts is None:
            return
        # output t predicts token t + ahead: score outputs start - ahead .. length - 1 - ahead
        ahead = self.model.config.target_offset()
        positions = torch.arange(idx.size(1) - ahead, device=self.device)[None]
        begin = torch.tensor(starts, device=self.device)[:, None] - ahead
        scored = (positions >= begin) & (positions < lengths[:, None] - ahead)
        log_probs = self.model.variant.log_probs(hidden[:, : idx.size(1) - ahead][scored]).float()
        token_lp = log_probs.gather(-1, idx[:, ahead:][scored][:, None]).squeeze(-1)
        rows = torch.arange(len(seqs), device=self.device)[:, None].expand_as(scored)[scored]
        out.log_prob[group] = torch.zeros(len(seqs), device=self.device).index_add(0, rows, token_lp).cpu()
        out.count[group] = scored.sum(1).float().cpu()

    def features(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.run(self.tokenizer.encode_batch(list(texts))).features

    def choices(self, items: Sequence[Choice]) -> Pass:
        """One pass over every context + choice: features (N, C, d) and the choices' summed
        log-probabilities (N, C) and token counts (N, C)."""
        contexts = self.tokenizer.encode_batch([item.context for item in items])
        n_choices = len(items[0].choices)
        choices = self.tokenizer.encode_batch([c for item in items for c in item.choices])
        sequences, starts = [], []
        for i, context in enumerate(contexts):
            for choice in choices[i * n_choices : (i + 1) * n_choices]:
                sequences.append(context + choice)
                starts.append(len(context))
        out = self.run(sequences, starts)
        shape = (len(items), n_choices)
        return Pass(
            {p: f.view(*shape, -1) for p, f in out.features.items()},
            out.log_prob.view(shape),
            out.count.view(shape),
        )


class EncoderFeatures:
    """[CLS] (the first position) and mean-pooled last hidden states of a Hugging Face encoder
    (DistilBERT, BERT...), through transformers."""

    poolings = ("cls", "mean")
    scores_choices = False

    def __init__(self, model, tokenizer, device: str = "cpu", batch_size: int = 64, max_length: int = 256):
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def features(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {p: [] for p in self.poolings}
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)  # fmt: skip
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].to(hidden.dtype)[..., None]
            parts["cls"].append(hidden[:, 0].float().cpu())
            parts["mean"].append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu())
        return {p: torch.cat(v) for p, v in parts.items()}

    def choices(self, items: Sequence[Choice]) -> Pass:
        texts = [item.context + choice for item in items for choice in item.choices]
        shape = (len(items), len(items[0].choices))
        return Pass({p: f.view(*shape, -1) for p, f in self.features(texts).items()})


Extractor = GPTFeatures | EncoderFeatures
