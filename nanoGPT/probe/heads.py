"""Probe heads, in torch: logistic regression and a one-hidden-layer MLP for classes, a linear
scorer trained with a margin ranking loss for multiple choice, and cosine-similarity retrieval
metrics. Features are standardised on the training set; every fit is seeded and full-batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS = 100
LR = 3e-2
WEIGHT_DECAY = 1e-3
HIDDEN = 128
MARGIN = 1.0
Predict = Callable[[torch.Tensor], torch.Tensor]


def standardiser(train: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> (x - mean) / std with the training features' statistics (over every axis but the last)."""
    flat = train.reshape(-1, train.size(-1)).float()
    mean, std = flat.mean(0), flat.std(0, unbiased=False).clamp_min(1e-6)
    return lambda x: (x.float() - mean) / std


def fit(module: nn.Module, loss_of: Callable[[], torch.Tensor], steps: int = STEPS) -> None:
    """Full-batch AdamW on `loss_of()` for `steps` steps."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()


def class_weights_of(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies, scaled to average 1 over the examples (a missing class: 0)."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    weights = torch.where(counts > 0, len(labels) / (n_classes * counts.clamp_min(1)), torch.zeros(()))
    return weights


def train_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    head: str = "logreg",
    class_weights: bool = False,
    seed: int = 0,
) -> Predict:
    """A classifier on (N, d) features: head "logreg" (linear) or "mlp" (one hidden ReLU layer);
    returns features -> predicted class ids."""
    torch.manual_seed(seed)
    scale = standardiser(features)
    d = features.size(-1)
    layers = (
        [nn.Linear(d, n_classes)]
        if head == "logreg"
        else [nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_classes)]
    )
    model = nn.Sequential(*layers)
    x = scale(features)
    weight = class_weights_of(labels, n_classes) if class_weights else None
    with torch.enable_grad():
        fit(model, lambda: F.cross_entropy(model(x), labels, weight=weight))
    return lambda test: model(scale(test)).argmax(-1)


def margin_ranking_loss(scores: torch.Tensor, answers: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """(N, C) scores, (N,) correct indices -> mean over items and wrong choices of
    max(0, margin - (score_correct - score_wrong))."""
    correct = scores.gather(1, answers[:, None])
    hinge = (margin - (correct - scores)).clamp_min(0)
    wrong = torch.ones_like(scores, dtype=torch.bool).scatter(1, answers[:, None], False)
    return hinge[wrong].mean()


def train_ranker(features: torch.Tensor, answers: torch.Tensor, seed: int = 0) -> Predict:
    """A linear scorer of (N, C, d) choice features, trained with the margin ranking loss;
    returns (N, C, d) features -> the chosen index of each item."""
    torch.manual_seed(seed)
    scale = standardiser(features)
    scorer = nn.Linear(features.size(-1), 1)
    x = scale(features)
    with torch.enable_grad():
        fit(scorer, lambda: margin_ranking_loss(scorer(x).squeeze(-1), answers))
    return lambda test: scorer(scale(test)).squeeze(-1).argmax(-1)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> float:
    return (predicted == torch.as_tensor(labels)).float().mean().item()


def retrieval_metrics(
    queries: torch.Tensor,
    documents: torch.Tensor,
    relevant: Sequence[set[int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Cosine similarity of every query to every document: recall@k (a relevant document among
    the k most similar) and MRR (1 / rank of the first relevant one), averaged over queries.
    Ranks count the documents scored strictly higher, so ties favour the relevant one."""
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(documents.float(), dim=-1).T
    ranks = []
    for i, wanted in enumerate(relevant):
        best = max(sims[i, j].item() for j in wanted)
        ranks.append(1 + int((sims[i] > best).sum()))
    ranks_t = torch.tensor(ranks, dtype=torch.float)
    metrics = {f"recall@{k}": (ranks_t <= k).float().mean().item() for k in ks}
    metrics["mrr"] = (1 / ranks_t).mean().item()
    return metrics
