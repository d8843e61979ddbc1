"""What the trainer prints: the progress bar (refreshed at most a few times a second) and the evaluation lines."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["eval_line", "new_progress", "refresh"]


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
