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


def refresh(progress, step: int, losses: Tensor, n: int, wrong: Tensor, seen: int, lr: float, speed: float) -> None:
    if n == 0:
        return
    loss, wrong_ = torch.stack([losses[:n].mean(), wrong.float()]).tolist()
    progress.update(progress.task_ids[0], completed=step, loss=f"{loss:.4f}", acc=f"{1 - wrong_ / seen:.1%}",
                    lr=f"{lr:.3g}", speed=f"{speed:,.0f} upd/s", refresh=True)


def eval_line(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"update {step}/{total}"]
    for key in ("train/loss", "valid/error", "test/error"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}" if key.endswith("loss") else f"{key} {metrics[key]:.2%}")
    return "  ".join(parts)
