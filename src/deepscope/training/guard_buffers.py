"""The buffers a training forward pass moves (BatchNorm's running mean, variance and batch count, or any buffer a
module of your own updates in ``forward``), put back when the guard skips the update they came with.

A skip leaves the optimizer alone, but the offending batch already went through the model before ``guard.step``
saw its loss: in training mode a BatchNorm layer folded that batch's mean and variance into its running statistics.
A NaN example makes them NaN for good (the model's eval-mode output is then NaN though every weight is finite); an
input scaled by 1e3 multiplies the running variance by up to 1e5 for the next ~100 updates. So the guard keeps a copy
of the buffers as they were before the update's forward passes (all the micro-batches of an accumulated update) and
writes it back on a skip.

Which buffers: those the forward passes before the first ``guard.step`` changed (compared once against a copy taken
when the guard was made; the version counter cannot tell, the native BatchNorm kernel leaves it unchanged). Constant
buffers (positional encodings, masks) are never copied again; a model without such buffers costs nothing after the
first update, and one with them one ``torch._foreach_copy_`` call per applied update (a few KB for a CNN's
BatchNorm layers). A buffer a module changes only now and then (not in the first update) is not watched. A
GradScaler's own overflow step (not an event) leaves the buffers as its forward pass left them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

__all__ = ["MovingBuffers", "applied_step"]


class MovingBuffers:
    """The buffers of ``model`` that its forward passes move, and their values before the current update."""

    def __init__(self, model: nn.Module):
        self._candidates = [b for b in model.buffers() if not is_lazy(b)]
        self._before: list[Tensor] | None = [b.detach().clone() for b in self._candidates]  # until the first step
        self.moving: list[Tensor] = []
        self._copies: list[Tensor] = []

    def _find(self) -> None:
        """At the first update: the buffers that changed since the guard opened are the moving ones."""
        if self._before is None:
            return
        moved = [(b, old) for b, old in zip(self._candidates, self._before, strict=True)
                 if b.shape == old.shape and b.dtype == old.dtype and not torch.equal(b, old)]
        self.moving, self._copies = [b for b, _ in moved], [old for _, old in moved]
        self._before = self._candidates = None  # type: ignore[assignment]

    def keep(self) -> None:
        """The update went through (or the state was restored): the buffers as they are now are the ones to go back
        to if the next update is skipped."""
        self._find()
        if self.moving:
            torch._foreach_copy_(self._copies, self.moving)

    def undo(self) -> None:
        """The update is skipped: the buffers back to their values before its forward passes."""
        self._find()
        if self.moving:
            torch._foreach_copy_(self.moving, self._copies)


def applied_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[Callable[..., Any], MovingBuffers]:
    """The optimizer step the guard calls for an applied update -- ``optimizer.step`` as it is when the guard is
    made, then the moving buffers kept (:meth:`MovingBuffers.keep`) -- and those buffers. The step also marks the
    optimizer stepped the way torch's wrap of ``optimizer.step`` does for a schedule made later: a schedule the loop
    makes after the guard and steps itself would warn, wrongly, that it was stepped before the optimizer."""
    step, buffers = optimizer.step, MovingBuffers(model)

    def run(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        optimizer._opt_called = True  # type: ignore[attr-defined]  # what torch's schedule wrapper notes
        buffers.keep()
        return out

    return run, buffers
