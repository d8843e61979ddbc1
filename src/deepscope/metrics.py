"""The task a loss and its targets make, the metrics that fit it, and the baseline ("chance") they are judged by.

:func:`task_of` derives a :class:`Task` from the loss and the targets: ``classification`` (class labels ``(N,)``),
``tokens`` (labels per position ``(N, T)``), ``binary`` (one 0/1 target per example), ``multilabel`` (``(N, K)``
0/1 targets) or ``regression`` (real values); a loss that does not fit the targets is a ValueError naming the key
and the losses that fit. Every metric is a plain function of ``(output, target)`` reducing on the device:

============== ======================================================= ========================
task           metrics (store names)                                    baseline ("chance")
============== ======================================================= ========================
classification ``error``: top-1 error rate                              the prior: predict the most frequent class
tokens         ``error``: top-1 error over the non-padding positions    the most frequent token
binary         ``error``: error of the decision output > 0.5           the majority label
multilabel     ``error``: per-label error; ``exact_match``: the share   the majority label per output
               of examples with every label right
regression     ``rmse``: root mean squared error; ``r2``: 1 - SSE/SST  predict the mean (R^2 = 0)
============== ======================================================= ========================

For the trainer, :func:`batch_sums` gives additive sums of one batch (errors, counts, squared errors ...) that
accumulate over batches on the device, and :func:`reduce_sums` turns them into the metrics; :func:`evaluate` does both
over a whole split. :func:`baseline` is the loss and metrics of the best constant prediction of the task -- what a model
that learned nothing from the inputs reaches -- which the diagnosis compares a run with.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.losses import BINARY, CLASS, FAMILIES, LOSSES, REGRESSION, describe, match_shape
from deepscope.registry import unknown

__all__ = ["BINARY_TASK", "CLASSIFICATION", "HIGHER_IS_BETTER", "METRIC_TITLES", "MULTILABEL", "REGRESSION_TASK",
           "TASKS", "TOKENS", "Task", "baseline", "batch_sums", "beats_baseline", "class_entropy", "binary_error",
           "constant_output", "error_rate", "error_rate_of", "evaluate", "exact_match", "label_entropy", "label_error",
           "majority_error", "majority_exact_match", "majority_label_error", "mean_rmse",
           "prior_error", "prior_loss", "r2", "reduce_sums", "rmse", "task_of", "token_error"]

CLASSIFICATION, TOKENS, BINARY_TASK, MULTILABEL, REGRESSION_TASK = (
    "classification", "tokens", "binary", "multilabel", "regression")
TASKS = (CLASSIFICATION, TOKENS, BINARY_TASK, MULTILABEL, REGRESSION_TASK)
HIGHER_IS_BETTER = frozenset({"r2", "exact_match"})  # every other metric (and the loss) is better lower
METRIC_TITLES = {"error": "error", "exact_match": "exact match", "rmse": "RMSE", "r2": "R²", "loss": "loss"}
_FITS = {CLASSIFICATION: CLASS, TOKENS: CLASS, BINARY_TASK: BINARY, MULTILABEL: BINARY, REGRESSION_TASK: REGRESSION}


@dataclass(frozen=True)
class Task:
    """What a run learns: ``kind`` (one of :data:`TASKS`), the label the loss ignores (token padding) and the
    decision threshold of a binary output (0 on logits, 0.5 on probabilities)."""

    kind: str
    ignore_index: int | None = None  # tokens; class labels (N,) only when some equal the loss's ignore_index
    threshold: float = 0.0

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names :func:`evaluate` returns besides ``loss`` (the first is the task's error measure)."""
        return {MULTILABEL: ("error", "exact_match"), REGRESSION_TASK: ("rmse", "r2")}.get(self.kind, ("error",))

    @property
    def primary(self) -> str:
        """The task's error measure (``error``, or ``rmse`` for regression): what ``train.monitor="error"`` watches."""
        return self.metrics[0]

    @property
    def labels(self) -> bool:
        """Whether predictions are decisions (an error rate), not values."""
        return self.kind != REGRESSION_TASK

    def title(self, metric: str) -> str:
        """How a table or a figure names ``metric`` for this task."""
        if metric == "error":
            return {TOKENS: "token error", BINARY_TASK: "error (threshold 0.5)", MULTILABEL: "per-label error"
                    }.get(self.kind, "error")
        return METRIC_TITLES.get(metric, metric)


def fitting_losses(kind: str) -> list[str]:
    """The registry's losses that fit a task kind."""
    return [name for name, family in FAMILIES.items() if family == _FITS[kind]]


def _describe_targets(y: Tensor) -> str:
    kind = "integer" if not (y.is_floating_point() or y.dtype == torch.bool) else str(y.dtype).removeprefix("torch.")
    return f"{kind} targets of shape (N{''.join(f', {n}' for n in y.shape[1:])})"


def _natural_kind(y: Tensor) -> str:
    """The task targets make alone: integer labels classify (tokens when 2-D), 0/1 values are binary (multi-label
    when 2-D), other real values regress."""
    if not (y.is_floating_point() or y.dtype == torch.bool):
        return TOKENS if y.ndim == 2 else CLASSIFICATION
    if y.numel() and bool(((y == 0) | (y == 1)).all()):
        return MULTILABEL if y.ndim == 2 and y.shape[1] > 1 else BINARY_TASK
    return REGRESSION_TASK


def task_of(loss: str | Callable | None, targets: Tensor, *, options: dict[str, Any] | None = None,
            num_classes: int | None = None, key: str = "train.loss") -> Task:
    """The :class:`Task` of ``loss`` (a name of :data:`~deepscope.losses.LOSSES`, a callable, or None: the targets
    decide) on ``targets``; a ValueError naming ``key`` when the loss does not fit them (one host read)."""
    y = torch.as_tensor(targets)
    info = describe(loss, options) if loss is not None else None
    family = info.family if info is not None else None
    shown = loss if isinstance(loss, str) else info.name if info is not None else None

    def refuse(why: str) -> ValueError:
        natural = _natural_kind(y) if y.ndim else CLASSIFICATION
        return unknown(key, shown, fitting_losses(natural), what=f"{key}={shown!r} does not fit the targets "
                       f"({_describe_targets(y)}): {why}; for these targets ({natural})")

    if y.ndim == 0:
        raise ValueError("the targets are a single number; give one target per example (shape (N, ...))")
    if family is None:
        kind = _natural_kind(y)
        return Task(kind, -100 if kind == TOKENS else None)
    if family == CLASS:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise refuse(f"{shown} needs integer class labels")
        if y.ndim > 2:
            raise refuse(f"{shown} takes labels (N,) or token labels (N, T)")
        ignore = info.ignore_index
        valid = y[y != ignore] if ignore is not None else y
        if valid.numel():
            low, high = torch.stack([valid.min(), valid.max()]).tolist()
            if low < 0 or (num_classes is not None and high >= num_classes):
                raise refuse(f"labels go from {low} to {high}, outside 0..{(num_classes or high + 1) - 1}")
        return Task(TOKENS if y.ndim == 2 else CLASSIFICATION, ignore if y.ndim == 2 or len(valid) < len(y) else None)
    if family == BINARY:
        if not (y.is_floating_point() or y.dtype == torch.bool):
            raise refuse(f"{shown} needs 0/1 targets as floats (one per output); integer class labels take "
                         "cross_entropy")
        if y.numel() and not bool(((y >= 0) & (y <= 1)).all()):
            raise refuse(f"{shown} needs targets in [0, 1]")
        if y.ndim > 2:
            raise refuse(f"{shown} takes targets (N,) for a binary task or (N, K) for K labels")
        threshold = 0.5 if info.output == "probabilities" else 0.0
        return Task(MULTILABEL if y.ndim == 2 and y.shape[1] > 1 else BINARY_TASK, threshold=threshold)
    if not (y.is_floating_point() or y.dtype == torch.bool):
        raise refuse(f"{shown} regresses real values, and these look like class labels")
    return Task(REGRESSION_TASK)


# --- metrics: plain functions of (output, target), reduced on the device -----------------------------------------


def error_rate(output: Tensor, target: Tensor) -> Tensor:
    """Top-1 error: the fraction of examples whose largest score is not the target class."""
    return (output.argmax(-1) != target).float().mean()


def token_error(output: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Top-1 error over the positions whose target is not ``ignore_index``."""
    keep = target != ignore_index
    return ((output.argmax(-1) != target) & keep).sum() / keep.sum().clamp_min(1)


def binary_error(output: Tensor, target: Tensor, threshold: float = 0.0) -> Tensor:
    """The fraction of wrong decisions ``output > threshold`` (0 on logits: probability 0.5) against targets > 0.5."""
    return ((match_shape(output, target) > threshold) != (target > 0.5)).float().mean()


label_error = binary_error  # multi-label: the same fraction, over every (example, label)


def exact_match(output: Tensor, target: Tensor, threshold: float = 0.0) -> Tensor:
    """The fraction of examples with every label right (subset accuracy)."""
    right = (match_shape(output, target) > threshold) == (target > 0.5)
    return right.reshape(len(target), -1).all(1).float().mean()


def rmse(output: Tensor, target: Tensor) -> Tensor:
    """Root mean squared error over every value: sqrt(mean (z - y)^2)."""
    return (match_shape(output, target).double() - target.double()).square().mean().sqrt()


def r2(output: Tensor, target: Tensor) -> Tensor:
    """Coefficient of determination, averaged over the outputs: 1 - sum (y - z)^2 / sum (y - mean y)^2.
    0 for predicting the mean, 1 for a perfect fit, below 0 for worse than the mean. An output whose targets do not
    vary scores 1 if predicted exactly, else 0 (as scikit-learn's ``r2_score``); a NaN value gives NaN."""
    y = target.double().reshape(len(target), -1)
    z = match_shape(output, target).double().reshape(len(target), -1)
    sse, sst = (y - z).square().sum(0), (y - y.mean(0)).square().sum(0)
    fit = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), (sse == 0).double())
    return fit.where(~(sse + sst).isnan(), sse + sst).mean()


def error_rate_of(metrics: dict[str, float], split: str = "valid") -> float:
    """A run's error in [0, 1] whatever its task: its ``split/error``, or for a regression 1 - R^2 (the share of the
    variance it leaves unexplained, 1 when it predicts no better than the mean); NaN when it has neither."""
    r2_value = metrics.get(f"{split}/r2")
    return min(1.0, 1.0 - r2_value) if r2_value is not None else metrics.get(f"{split}/error", float("nan"))


# --- additive sums: the metrics over many batches, accumulated on the device ----------------------------------


def batch_sums(task: Task, output: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Sums over one batch that add up across batches; :func:`reduce_sums` makes the metrics of their total."""
    output = output.detach()
    if task.kind in (CLASSIFICATION, TOKENS) and task.ignore_index is None:
        return {"wrong": (output.argmax(-1) != target).sum(), "count": target.numel()}  # one op: the hot path
    if task.kind in (CLASSIFICATION, TOKENS):  # labels equal to ignore_index (padding, unlabelled) left out
        keep = target != task.ignore_index
        return {"wrong": ((output.argmax(-1) != target) & keep).sum(), "count": keep.sum()}
    if task.kind in (BINARY_TASK, MULTILABEL):
        wrong = (match_shape(output, target) > task.threshold) != (target > 0.5)
        sums = {"wrong": wrong.sum(), "count": wrong.numel()}
        if task.kind == MULTILABEL:
            sums["exact"] = (~wrong).reshape(len(target), -1).all(1).sum()
            sums["rows"] = len(target)
        return sums
    y = target.double().reshape(len(target), -1)
    z = match_shape(output, target).double().reshape(len(target), -1)
    return {"sse": (y - z).square().sum(0), "sum": y.sum(0), "sumsq": y.square().sum(0), "count": len(y)}


def add_sums(total: dict[str, Any] | None, sums: dict[str, Any]) -> dict[str, Any]:
    """``total + sums`` key by key, in place where ``total`` holds tensors (``total`` None or empty: ``sums``).
    Counts are Python ints where the batch fixes them (no host read), tensors where the data do (token padding)."""
    if not total:
        return dict(sums)
    for k, v in sums.items():
        total[k] += v  # tensors in place, ints rebound
    return total


def _at_least_1(count: Any) -> Any:
    return count.clamp_min(1) if isinstance(count, Tensor) else max(count, 1)


def reduce_sums(task: Task, sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """The metrics of :attr:`Task.metrics` from summed :func:`batch_sums`, as 0-d tensors on the device."""
    if task.kind != REGRESSION_TASK:
        out = {"error": sums["wrong"] / _at_least_1(sums["count"])}
        if task.kind == MULTILABEL:
            out["exact_match"] = sums["exact"] / _at_least_1(sums["rows"])
        return out
    n = _at_least_1(sums["count"])
    sst = sums["sumsq"] - sums["sum"].square() / n
    sse = sums["sse"]
    return {"rmse": (sse.sum() / (n * sse.numel())).sqrt(),
            "r2": torch.where(sst > 1e-12 * sums["sumsq"].clamp_min(1e-300), 1 - sse / sst.clamp_min(1e-300),
                              (sse == 0).double()).where(~(sse + sst).isnan(), sse + sst).mean()}  # NaN stays NaN


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], task: Task,
             batch_size: int = 1000) -> dict[str, Tensor]:
    """``loss`` (mean over the examples) and the task's metrics of ``model`` on ``(x, y)`` in eval mode, as 0-d
    tensors on the model's device (no host read)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    total = None
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = model(xb)
            loss_sum += loss_fn(out, yb) * len(xb)
            total = add_sums(total, batch_sums(task, out, yb))
    finally:
        model.train(was_training)
    return {"loss": loss_sum / max(len(x), 1), **reduce_sums(task, total)} if total else {}


# --- baselines: what a model that learned nothing from the inputs reaches -----------------------------------------


def _labels(targets: Tensor, ignore_index: int | None) -> Tensor:
    y = torch.as_tensor(targets).reshape(-1).long()
    return y[y != ignore_index] if ignore_index is not None else y


def _frequencies(targets: Tensor, ignore_index: int | None = None, classes: int = 0) -> Tensor:
    y = _labels(targets, ignore_index)
    counts = torch.bincount(y.clamp_min(0), minlength=classes).double()
    return counts / counts.sum().clamp_min(1)


def majority_error(frequencies: Tensor) -> float:
    """The error of always predicting the most frequent class, from the class frequencies p: 1 - max p."""
    p = torch.as_tensor(frequencies).double()
    return float(1.0 - p.max() / p.sum()) if p.numel() and float(p.sum()) > 0 else 0.0


def class_entropy(frequencies: Tensor) -> float:
    """The cross-entropy of predicting the class frequencies p: their entropy -sum p log p."""
    p = torch.as_tensor(frequencies).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def prior_error(labels: Tensor, ignore_index: int | None = None) -> float:
    """The error of always predicting the most frequent class of ``labels`` (positions equal to ``ignore_index``
    left out): 1 - the largest class frequency."""
    return majority_error(_frequencies(labels, ignore_index))


def prior_loss(labels: Tensor, ignore_index: int | None = None) -> float:
    """The cross-entropy of predicting the class frequencies of ``labels``: their entropy -sum p log p, the loss of
    a model that learned nothing from the inputs."""
    return class_entropy(_frequencies(labels, ignore_index))


def _label_means(targets: Tensor) -> Tensor:
    y = torch.as_tensor(targets).double()
    return y.reshape(len(y), -1).mean(0)


def majority_label_error(targets: Tensor) -> float:
    """The per-label error of predicting each label's majority value: mean over labels of min(p, 1 - p)."""
    p = _label_means(targets)
    return float(torch.minimum(p, 1 - p).mean())


def majority_exact_match(targets: Tensor) -> float:
    """The exact match of predicting the majority value of every label for every example."""
    y = torch.as_tensor(targets).double().reshape(len(targets), -1) > 0.5
    majority = _label_means(targets) > 0.5
    return float((y == majority).all(1).double().mean())


def label_entropy(targets: Tensor) -> float:
    """The binary cross-entropy of predicting each label's frequency p: mean over labels of
    -(p log p + (1 - p) log(1 - p))."""
    p = _label_means(targets)
    h = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
    return float(h.mean())


def mean_rmse(targets: Tensor) -> float:
    """The RMSE of predicting each output's mean: the targets' standard deviation (pooled over the outputs)."""
    y = torch.as_tensor(targets).double().reshape(len(targets), -1)
    return float((y - y.mean(0)).square().mean().sqrt())


def constant_output(task: Task, targets: Tensor, loss: str | Callable | None = None,
                    num_classes: int | None = None) -> Tensor:
    """The best prediction that ignores the inputs, in the form ``loss`` expects, one row per example of
    ``targets``: the log class frequencies (logits or log-probabilities), the logit (or probability) of each label's
    frequency, or each output's mean (its median for ``l1``, whichever of the two is better for ``huber``)."""
    y = torch.as_tensor(targets)
    info = describe(loss) if loss is not None else None
    if task.kind in (CLASSIFICATION, TOKENS):
        p = _frequencies(y, task.ignore_index, num_classes or 0)
        row = p.clamp_min(1e-12).log()
        row = (row - row.logsumexp(0)).float()
        return row.expand(*y.shape, len(row)).clone()
    if task.kind in (BINARY_TASK, MULTILABEL):
        p = _label_means(y).clamp(1e-7, 1 - 1e-7)
        row = (p if info is not None and info.output == "probabilities" else p.log() - (1 - p).log()).float()
        return row.reshape(y.shape[1:]).expand(y.shape).clone()
    flat = y.double().reshape(len(y), -1)
    mean, median = flat.mean(0), flat.quantile(0.5, dim=0)
    name = info.name if info is not None else None
    if name == "l1":
        row = median
    elif name == "huber" and loss is not None:
        fn = loss if callable(loss) else LOSSES[loss]
        at = [fn(r.float().expand(flat.shape).reshape(y.shape), y.float()) for r in (mean, median)]
        row = mean if bool(at[0] <= at[1]) else median
    else:
        row = mean
    return row.float().reshape(y.shape[1:]).expand(y.shape).clone()


def baseline(task: Task, targets: Tensor, loss: str | Callable | None = None,
             num_classes: int | None = None) -> dict[str, float]:
    """The loss (when ``loss`` is given) and the metrics of :func:`constant_output` on ``targets``: the chance level
    of the task. For classification the prior's error and cross-entropy (the entropy of the class frequencies), for
    binary and multi-label the majority label per output, for regression the mean (RMSE = the targets' standard
    deviation, R^2 = 0)."""
    y = torch.as_tensor(targets)
    out = constant_output(task, y, loss, num_classes)
    values = reduce_sums(task, batch_sums(task, out, y))
    if loss is not None:  # a loss of your own refusing this form (it wants probabilities): no chance-level loss
        with suppress(RuntimeError, ValueError):
            values["loss"] = (LOSSES[loss] if isinstance(loss, str) else loss)(out, y)
    return dict(zip(values, torch.stack([v.double() for v in values.values()]).tolist(), strict=True))


TRAINS_MARGIN = 0.2  # "clearly past the baseline": 20 % below the chance error, or R^2 >= 0.2


def beats_baseline(task: Task, metrics: dict[str, float], chance: dict[str, float], split: str = "valid",
                   margin: float = TRAINS_MARGIN) -> bool:
    """Whether a run trains: its ``split`` error is at most (1 - ``margin``) x the baseline's (``chance``, from
    :func:`baseline`), or for a regression its R^2 is at least ``margin`` (the mean scores 0)."""
    if task.kind == REGRESSION_TASK:
        r2_value = metrics.get(f"{split}/r2", float("nan"))
        return r2_value == r2_value and r2_value >= margin
    error = metrics.get(f"{split}/error", float("nan"))
    return error == error and error <= (1 - margin) * chance.get("error", 1.0)
