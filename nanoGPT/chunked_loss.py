"""The output head and its loss computed over chunks of positions, for every variant.

At the GPT-2 vocabulary a batch's (N, V) float32 logits, and the loss's (N, V) gradient, are
most of a small model's training memory. Here the head runs on `chunk` positions at a time:
each chunk's logits, loss and gradient are computed and freed before the next chunk, and only
the gradients of the hidden rows (N, C) and of the head's tensors (V, C) are kept until
backward. The gradients are taken in the forward pass (torch.autograd.grad per chunk), so
backward only scales them by the incoming gradient: no second head matmul, as a
checkpoint-style recomputation would cost.

A variant supplies `chunk_loss(rows, hidden_rows, head)`: the loss summed over those positions
(a scalar) and statistics summed over them, computed from `head`, the tensors of this step's
head (its weight and bias; a Bayesian head's one weight sample), which are the same for every
chunk. Everything that is not a sum over positions (a KL term) stays outside. For a linear
head (logits = F.linear(hidden, *head).float(), every variant but the local Bayesian
estimator) it also supplies `logits_loss(rows, logits)`, and the matmul is done here: autograd
gives d loss / d logits only, and the weight's gradient is accumulated in place (addmm_), so
no (V, C) temporary is made per chunk (_LinearGradients; any other head: _Gradients).

Measured (CPU, profiler; bench.py's trunk: 4 x 256, batch 8 x 128, V = 50257), the tensor
memory of a training step, unchunked -> chunked: 459 -> 215 MB for baseline, smooth, sigmoid,
distill and the controls; CPU time equal within the noise. The Bayesian heads hold their
(V, C) weight sample through the chunks as well, and chunk at half the size
(Variant.auto_chunk_elements): forward + backward 508 -> 222 MB (0.44x) and no slower (peak
RSS, which glibc's heap keeps high for chunks under 32 MB, 1343 -> 1282 MB; 1190 MB with the
2**24 chunks). With AdamW in the step, on the CPU its for-loop implementation's temporaries
over their three (V, C) parameters are the chunked step's peak, 307 MB (222 MB with fused=True).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Sums = dict[str, torch.Tensor]
ChunkLoss = Callable[[slice, torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, Sums]]
LogitsLoss = Callable[[slice, torch.Tensor], tuple[torch.Tensor, Sums]]

# loss_chunk_size=-1 (auto): at most this many logits (positions x vocabulary) per chunk, and no
# chunking at all when the whole batch's logits fit in one (N * V <= 2**24). 2**24 float32
# logits are 64 MB per (chunk, V) buffer: a small fraction of the (N, V) buffers a GPT-2
# batch holds unchunked (12 x 1024 positions: 2.5 GB each), and large enough that a chunk's
# fixed costs are small: one pass over the (V, C) weight gradient (the addmm_ that accumulates
# it), about C / (2 * positions per chunk) of the elementwise passes the loss makes over the
# chunk's logits, a few percent at 2**24 / 50257 = 333 positions. Smaller chunks hold less
# tensor memory but not less process memory on the CPU: at bench.py's size (batch 8 x 128),
# 128 or 166 positions per chunk took the step's tensors from 215 to 165 MB, but the buffers,
# under glibc's 32 MB mmap threshold, stayed in the heap: peak RSS 835-850 MB against 748 MB
# with the 256 positions auto picks (980 MB unchunked). On a GPU, smaller chunks would cost
# more kernel launches. At a character vocabulary (V = 65) one chunk holds 258k positions,
# more than any batch: those models never chunk.
AUTO_CHUNK_ELEMENTS = 2**24


def chunk_positions(
    setting: int, num_positions: int, vocab_size: int, auto_elements: int = AUTO_CHUNK_ELEMENTS
) -> int:
    """Positions per chunk for `loss_chunk_size` = setting (-1 auto, 0 never, n > 0 n
    positions); num_positions means one chunk, the unchunked path. Auto puts at most
    `auto_elements` logits in a chunk (a variant's Variant.auto_chunk_elements) and splits
    into chunks of equal size (the last one a little shorter), so no chunk is a small
    remainder."""
    if setting == 0 or num_positions == 0:
        return num_positions
    if setting > 0:
        return min(setting, num_positions)
    limit = max(1, auto_elements // vocab_size)
    num_chunks = -(-num_positions // limit)
    return -(-num_positions // num_chunks)


def _accumulate(
    total: torch.Tensor | None, sums: Sums, value: torch.Tensor, chunk_sums: Sums
) -> torch.Tensor:
    """Adds one chunk's detached loss and statistics to the running sums; the new total."""
    for key, stat in chunk_sums.items():
        sums[key] = sums[key] + stat.detach() if key in sums else stat.detach()
    return value.detach() if total is None else total + value.detach()


class _Gradients:
    """Any head: each chunk's gradients by torch.autograd.grad through chunk_loss, the head's
    added up over the chunks (one (V, C) temporary per chunk)."""

    def __init__(self, chunk_loss: ChunkLoss, hidden: torch.Tensor, head: tuple[torch.Tensor, ...]):
        self.chunk_loss, self.hidden = chunk_loss, hidden
        # detached once for every chunk, so autocast casts each head tensor once per step
        self.leaves = tuple(t.detach().requires_grad_(t.requires_grad) for t in head)
        self.grads: list[torch.Tensor | None] = [None] * (1 + len(head))
        if hidden.requires_grad:
            self.grads[0] = torch.zeros_like(hidden)
        self.owned = {0}  # the sums this object allocated, which may change in place

    def chunk(self, rows: slice) -> tuple[torch.Tensor, Sums]:
        with torch.enable_grad():
            rows_in = self.hidden[rows].detach().requires_grad_(self.hidden.requires_grad)
            value, chunk_sums = self.chunk_loss(rows, rows_in, self.leaves)
            inputs = (rows_in, *self.leaves)
            found = iter(
                torch.autograd.grad(value, [t for t in inputs if t.requires_grad], allow_unused=True)
            )
        grads = [next(found) if t.requires_grad else None for t in inputs]
        if grads[0] is not None:
            self.grads[0][rows] = grads[0]
        for i, grad in enumerate(grads[1:], start=1):
            if grad is None:
                continue
            if self.grads[i] is None:  # autograd's own tensor: not changed in place
                self.grads[i] = grad
            elif i in self.owned:
                self.grads[i].add_(grad)
            else:
                self.grads[i] = self.grads[i] + grad
                self.owned.add(i)
        return value, chunk_sums


class _LinearGradients:
    """A linear head, logits = F.linear(hidden, weight, bias).float(): the matmul is done here
    and only d loss / d logits comes from autograd, so the weight's gradient is accumulated in
    place (addmm_), with no (V, C) temporary per chunk. Matmuls in the dtype F.linear would use
    (autocast's)."""

    def __init__(self, logits_loss: LogitsLoss, hidden: torch.Tensor, head: tuple[torch.Tensor, ...]):
        self.logits_loss, self.hidden = logits_loss, hidden
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head[0].dtype
        self.head = tuple(t.to(dtype) for t in head)  # cast once per step, as autocast would
        self.grads = [torch.zeros_like(t) if t.requires_grad else None for t in (hidden, *head)]
        self.owned = set(range(len(self.grads)))

    def chunk(self, rows: slice) -> tuple[torch.Tensor, Sums]:
        weight = self.head[0]
        rows_in = self.hidden[rows].to(weight.dtype)
        with torch.autocast(rows_in.device.type, enabled=False):
            logits = F.linear(rows_in, *self.head).float()
        with torch.enable_grad():
            logits.requires_grad_()
            value, chunk_sums = self.logits_loss(rows, logits)
            (grad,) = torch.autograd.grad(value, logits)
        grad_hidden, grad_weight, *grad_bias = self.grads
        low = grad.to(weight.dtype)
        if grad_hidden is not None:
            grad_hidden[rows] = low @ weight
        if grad_weight is not None and grad_weight.dtype == low.dtype:
            grad_weight.addmm_(low.t(), rows_in)
        elif grad_weight is not None:
            grad_weight += low.t() @ rows_in
        if grad_bias and grad_bias[0] is not None:
            grad_bias[0] += grad.sum(0)
        return value, chunk_sums


class _ChunkedLossSum(torch.autograd.Function):
    """sum over chunks of the loss of hidden[rows] through head; `sums` receives the summed
    statistics. Forward takes each chunk's gradients right away (`make`: _Gradients or
    _LinearGradients); backward scales them."""

    @staticmethod
    def forward(ctx, make: Callable, chunks: list[slice], sums: Sums, hidden, *head):
        gradients = make(hidden, head)
        total = None
        for rows in chunks:
            total = _accumulate(total, sums, *gradients.chunk(rows))
        ctx.grads, ctx.owned = gradients.grads, gradients.owned
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the chunked loss frees its gradients after one backward (retain_graph)")
        # in place where the buffer is this node's alone: it is handed to autograd once
        scaled = [
            None if g is None else g.mul_(grad_total) if i in ctx.owned else g * grad_total
            for i, g in enumerate(grads)
        ]
        return None, None, None, *scaled


@torch.compiler.disable  # torch.compile cannot trace autograd.grad inside a forward
def _chunked(
    chunk_loss: ChunkLoss, hidden: torch.Tensor, head: tuple, chunk: int, logits_loss: LogitsLoss | None
) -> tuple[torch.Tensor, Sums]:
    chunks = [slice(i, i + chunk) for i in range(0, hidden.size(0), chunk)]
    sums: Sums = {}
    if torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, *head)):
        if logits_loss is None:
            make = functools.partial(_Gradients, chunk_loss)
        else:
            make = functools.partial(_LinearGradients, logits_loss)
        return _ChunkedLossSum.apply(make, chunks, sums, hidden, *head), sums
    total = None
    for rows in chunks:  # nothing to differentiate: just the sums
        total = _accumulate(total, sums, *chunk_loss(rows, hidden[rows], head))
    return total, sums


def chunked_loss_sum(
    chunk_loss: ChunkLoss,
    hidden: torch.Tensor,
    head: tuple[torch.Tensor, ...],
    chunk: int,
    logits_loss: LogitsLoss | None = None,
) -> tuple[torch.Tensor, Sums]:
    """(loss summed over all N rows of `hidden` (N, C), statistics summed over them), computed
    `chunk` rows at a time; with chunk >= N, chunk_loss on all rows with plain autograd (the
    unchunked path, as fast as before and traced by torch.compile). `logits_loss(rows,
    logits)`, given when chunk_loss is that of logits = F.linear(hidden, *head).float(), lets
    the head's gradient be accumulated in place (_LinearGradients)."""
    if chunk >= hidden.size(0):
        return chunk_loss(slice(0, hidden.size(0)), hidden, head)
    return _chunked(chunk_loss, hidden, head, chunk, logits_loss)
