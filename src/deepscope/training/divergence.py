"""When a run diverges -- a non-finite loss, or one that explodes while finite -- and the advice then."""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

from deepscope.config import RunSpec

__all__ = ["EXPLOSION", "divergence_message", "exploded", "first_bad"]

EXPLOSION = 10.0  # a training loss above EXPLOSION x max(its first value, ln K) stops the run as diverged


# schemes that do not scale the weights to the layer's fan-in/fan-out
_UNSCALED_INITS = ("standard", "normal", "uniform", "zeros", "constant")


def first_bad(window: Tensor, step: int) -> tuple[int, float] | None:
    """(update, loss) of the first non-finite loss of ``window``, the losses up to update ``step``; None when they
    are all finite (one host read)."""
    if math.isfinite(window.sum().item()):
        return None
    i = int((~window.isfinite()).nonzero()[0, 0])
    return step - len(window) + i + 1, float(window[i])


def exploded(window: Tensor, start_loss: float, num_classes: int) -> tuple[float, float] | None:
    """The explosion rule: ``(mean, reference)`` when the mean of ``window`` is above EXPLOSION x ``reference`` =
    max(the first update's loss, ln K), a loss that grows without bound while staying finite; else None."""
    reference = max(start_loss, math.log(max(num_classes, 2)))
    mean = float(window.mean())
    return (mean, reference) if mean > EXPLOSION * reference else None


def divergence_message(spec: RunSpec, update: int, value: float, checkpoint: Path | None, saved_step: int,
                       what: str = "") -> str:
    """What happened (``what``, by default a non-finite loss) and what to try, leaving out what the spec does."""
    tries = [f"a lower learning rate (optim.lr={spec.optim.lr:g} now, e.g. --set optim.lr={spec.optim.lr / 10:g})"]
    if spec.train.clip_norm is None and spec.train.clip_value is None:
        tries.append("gradient clipping (--set train.clip_norm=1.0)")
    if spec.init.scheme in _UNSCALED_INITS:
        tries.append("a normalized initialization (--set init.scheme=glorot_uniform)")
    kept = f" The last good checkpoint (update {saved_step}) is kept: {checkpoint}." if checkpoint else ""
    what = what or f"The loss is {value} at update {update}: the run diverged."
    return (f"{what} Try {', '.join(tries[:-1])}"
            f"{' or ' if len(tries) > 1 else ''}{tries[-1]}.{kept}")
