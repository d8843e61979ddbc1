"""Training callbacks: objects with ``on_start / on_step / on_eval / on_end``, called with a :class:`TrainContext`.

:func:`deepscope.training.loop.train` calls every callback at four events:

- ``on_start`` -- the model is built (or given), the optimizer made, nothing trained yet (``ctx.step`` is 0,
  or the checkpoint's step on resume);
- ``on_step`` -- after ``optimizer.step()``; ``ctx.loss`` is that update's loss (a 0-d tensor on the device);
- ``on_eval`` -- ``ctx.metrics`` were just computed (``"train/loss"``, ``"valid/error"``, ...);
- ``on_end`` -- training stopped (finished, diverged, interrupted or stopped early).

Subclass :class:`Callback` and override what you need. A plain function ``fn(ctx)`` is accepted too: it
is called at every event, with ``ctx.event`` saying which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - types only
    import torch

__all__ = ["EVENTS", "Callback", "TrainContext", "as_callback"]

EVENTS = ("start", "step", "eval", "end")


@dataclass(kw_only=True)
class TrainContext:
    """What a callback sees. One object, updated in place between calls; build it with keywords."""

    event: str
    step: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    loss: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    store: Any = None  # the deepscope.store.Store the run is recorded in, if any
    spec: Any = None  # the run's RunSpec
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # preprocessed, on device


class Callback:
    """Base class: every hook does nothing. ``callback(ctx)`` dispatches on ``ctx.event``."""

    def on_start(self, ctx: TrainContext) -> None:
        pass

    def on_step(self, ctx: TrainContext) -> None:
        pass

    def on_eval(self, ctx: TrainContext) -> None:
        pass

    def on_end(self, ctx: TrainContext) -> None:
        pass

    def __call__(self, ctx: TrainContext) -> None:
        getattr(self, f"on_{ctx.event}")(ctx)


class _FunctionCallback(Callback):
    """A plain function called at every event."""

    def __init__(self, fn: Callable[[TrainContext], Any]):
        self.fn = fn

    def __call__(self, ctx: TrainContext) -> None:
        self.fn(ctx)

    on_start = on_step = on_eval = on_end = __call__


def as_callback(obj: Any) -> Callback:
    """``obj`` as a :class:`Callback`: callbacks as they are, plain functions wrapped; anything else raises."""
    if isinstance(obj, Callback):
        return obj
    if callable(obj):
        return _FunctionCallback(obj)
    raise TypeError(f"callbacks: {obj!r} is not allowed; give a deepscope.Callback or a function fn(ctx)")
