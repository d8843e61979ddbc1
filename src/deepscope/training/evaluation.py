"""Evaluation passes: mean loss and error of a model on a split, without gradients, in eval mode."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["evaluate", "run_metrics"]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable,
             batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Mean loss and error fraction of ``model`` on ``(x, y)``, as 0-d tensors on the model's device."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    wrong = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model(xb)
        loss_sum += loss_fn(logits, yb) * len(xb)
        wrong += (logits.argmax(1) != yb).sum()
    model.train(was_training)
    return loss_sum / len(x), wrong / len(x)


def run_metrics(model: nn.Module, eval_sets: dict[str, tuple[Tensor, Tensor]], loss_fn: Callable, batch_size: int,
                losses: Tensor, wrong: Tensor, seen: int) -> dict[str, float]:
    """An evaluation of a run: the training loss and error since the last one (``losses`` of each update, ``wrong``
    of ``seen`` examples; left out when there was no update) and the loss and error of each split of
    ``eval_sets``, read from the device at once."""
    values = {"train/loss": losses.mean(), "train/error": wrong / max(seen, 1)}
    for split, (x, y) in eval_sets.items():
        values[f"{split}/loss"], values[f"{split}/error"] = evaluate(model, x, y, loss_fn, batch_size)
    names = list(values)
    metrics = dict(zip(names, torch.stack([values[k].float() for k in names]).tolist(), strict=True))
    if len(losses) == 0:
        metrics.pop("train/loss"), metrics.pop("train/error")
    return metrics
