"""The gradient norm the guard watches: every gradient's part of it in one call, the large ones sampled.

After ``loss.backward()`` the guard computes, in one ``torch._foreach_norm`` call, the 2-norm of each small gradient
(fewer than ``SAMPLE_MIN`` elements) and of one block of each large one: ``fraction`` of its rows (its first
dimension; 1/64 by default) from the middle, whole rows, so every column is read (a ``narrow`` view: no copy). The
block's squared norm, scaled by ``elements / read``, stands for the gradient's. These norms go to the host with the
loss in the guard's one read per update. The block is the same at every update, so the estimate moves with the true
norm: a spike that scales whole layers' gradients (a poisoned example, a learning-rate burst, an exploding layer)
moves it alike, and a NaN, which the backward pass spreads over the gradients of every layer below where it appears,
reaches the blocks there. What the sample can miss: a spike confined to a few rows of one large gradient (a few
units) outside its block; the loss, read exactly, still sees the example that caused it. Embedding weights
(``whole``) are read whole: only the rows of the batch's tokens are non-zero, so a block would see a different share
of them at every update.

Why sample: the norm costs memory traffic and torch calls. On the 5 x 1000 MLP of ``benchmarks/guard.py`` at batch
10 (a ~13 ms SGD update), reading every gradient once more took ~1 ms; a strided sample that touched every row took
~0.3 ms (one memory page per row); the blocks and the call ~0.2 ms, then ~0.1 ms once each block was one ``narrow``
and the small gradients went in without a ``cat``. Each torch call made just after the backward pass costs ~5-30 us
there (the caches are full of gradients), which is why the norms are taken in one call and not in a hook per
parameter, and why :meth:`GradNorm.compute` makes as few calls as it can. ``fraction=1`` gives the exact norm; the
guard's events report the exact norm (a pass over the gradients, on a flagged update only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SAMPLE_MIN", "GradNorm"]

SAMPLE_MIN = 1 << 16  # gradients with at least this many elements are sampled (256 KB in float32)
_SMALL, _WHOLE, _SPARSE = object(), object(), object()  # read whole: small, large (an embedding), its values


class GradNorm:
    """The norms of the parts of the gradients read (:meth:`compute`) and the total norm they give (:meth:`total`).

    ``whole``: parameters whose gradients are always read whole -- an embedding's, whose rows are non-zero only for
    the tokens of the batch, so that a block would see a different share of it at every update."""

    def __init__(self, params: list[Tensor], fraction: float = 1 / 64, whole: set[int] = frozenset()):
        self.params, self.fraction, self.whole = params, fraction, whole
        self._plans: list[tuple[torch.Size | None, object]] = [(None, None)] * len(params)
        self._one_device = True  # every parameter on one device: one _foreach_norm call (checked at each plan)
        self.sampled = False  # whether some gradient was read in part (its norm estimated)
        self.weights: list[float] = []  # per norm of the last compute(): its squared value's factor in the total
        self._device_weights: Tensor | None = None  # the weights on the device (device_total), for _device_key
        self._device_key: tuple | None = None

    def compute(self) -> list[Tensor]:
        """The norms of the parts read (float32, 0-d; empty when no parameter has a gradient): one per gradient,
        of a block of whole rows for the large ones, all in one ``torch._foreach_norm`` call.

        Few torch calls: made just after the backward pass, each costs several microseconds (see the module's
        documentation), so a block is one ``narrow`` of the gradient and the small gradients go in as they are."""
        views, weights = [], []
        for i, (p, (shape, plan)) in enumerate(zip(self.params, self._plans, strict=True)):
            g = p.grad
            if g is None:
                continue
            if shape != g.shape or g.layout != torch.strided:  # planned at the first gradient (a lazy module has
                plan = self._replan(i, p, g)                   # no shape before it); a sparse one each time
            if plan is _SMALL or plan is _WHOLE:
                views.append(g)
                weights.append(1.0)
            elif plan is _SPARSE:  # nn.Embedding(sparse=True): its values, whole
                views.append(g.coalesce().values())
                weights.append(1.0)
            else:
                first, rows, weight = plan
                views.append(g.narrow(0, first, rows))
                weights.append(weight)
        self.weights = weights
        if not self._one_device and len({v.device for v in views}) > 1:  # several devices: one norm at a time
            return [torch.linalg.vector_norm(v, dtype=torch.float32).to(views[0].device) for v in views]
        return list(torch._foreach_norm(views, 2, dtype=torch.float32)) if views else []

    def _replan(self, i: int, p: Tensor, g: Tensor) -> object:
        if g.layout != torch.strided:
            plan = _SPARSE
        elif id(p) in self.whole:
            plan = _WHOLE
        else:
            plan = _plan(g, self.fraction)  # None: read whole
            plan = plan if plan is not None else _SMALL if g.numel() < SAMPLE_MIN else _WHOLE
        self._plans[i] = g.shape, plan
        self.sampled = self.sampled or isinstance(plan, tuple)
        self._one_device = len({q.device for q in self.params}) == 1
        return plan

    def total(self, values: list[float]) -> float:
        """The total gradient norm from the values of the last :meth:`compute`."""
        return math.sqrt(sum(w * v * v for w, v in zip(self.weights, values, strict=True)))

    def device_total(self, values: Tensor) -> Tensor:
        """:meth:`total` on the device (before the values are averaged over ranks); the weights are copied to the
        device once, and again only when they change (a parameter without a gradient, a new shape)."""
        if self._device_weights is None or self._device_key != (self.weights, values.device, values.dtype):
            self._device_key = (list(self.weights), values.device, values.dtype)
            self._device_weights = torch.tensor(self.weights, device=values.device, dtype=values.dtype)
        return (self._device_weights * values.square()).sum().sqrt()


def _plan(p: Tensor, fraction: float) -> tuple[int, int, float] | None:
    """``(first, rows, weight)`` of the block read of a gradient ``p`` (``rows`` whole rows of its first dimension
    from row ``first``, about ``fraction`` of its elements, from the middle), or None when it is read whole."""
    n = p.numel()
    if fraction >= 1 or n < SAMPLE_MIN:
        return None
    total = p.shape[0] if p.dim() else 1
    rows = min(total, max(1, math.ceil(total * fraction)))
    return (total - rows) // 2, rows, total / rows
