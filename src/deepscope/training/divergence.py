"""What the trainer prints and watches: the progress bar, the evaluation lines, when a run diverges (a non-finite
loss, or one that explodes while finite) and the advice then."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from deepscope.config import RunSpec

__all__ = ["EXPLOSION", "divergence_message", "eval_line", "exploded", "first_bad", "new_progress", "refresh"]

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



def new_progress(console, total: int, done: int, name: str, quiet: bool):
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  lr {task.fields[lr]}  {task.fields[speed]}"),
        TimeRemainingColumn(), console=console, auto_refresh=False, disable=quiet, transient=False,
    )
    progress.add_task(escape(name), total=total, completed=done, loss="-", acc="-", lr="-", speed="")
    return progress


def refresh(progress, step: int, losses: Tensor, n: int, sums: dict, lr: float, speed: float) -> None:
    """One host read: the mean loss and, for a task with labels, the accuracy since the last evaluation (``sums``
    of :func:`deepscope.metrics.batch_sums`)."""
    if n == 0:
        return
    parts = [losses[:n].mean()]
    if "wrong" in sums:
        parts += [torch.as_tensor(sums["wrong"]).float().to(losses.device),
                  torch.as_tensor(sums["count"]).float().to(losses.device)]
    loss, *counts = torch.stack(parts).tolist()
    acc = f"{1 - counts[0] / max(counts[1], 1):.1%}" if counts else "-"
    progress.update(progress.task_ids[0], completed=step, loss=f"{loss:.4f}", acc=acc,
                    lr=f"{lr:.3g}", speed=f"{speed:,.0f} upd/s", refresh=True)


def eval_line(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"update {step}/{total}"]
    for key in ("train/loss", "valid/error", "valid/exact_match", "valid/rmse", "valid/r2", "test/error",
                "test/exact_match", "test/rmse", "test/r2"):
        if key in metrics:
            rate = key.endswith(("error", "exact_match"))
            parts.append(f"{key} {metrics[key]:.2%}" if rate else f"{key} {metrics[key]:.4f}")
    return "  ".join(parts)
