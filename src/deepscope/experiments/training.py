"""Helpers for experiments built on the trainer: train a grid of run specs, read back their curves, and measure
the trained models again (e.g. the training-set error in eval mode, which the trainer does not report).

    specs = [run_spec("my-experiment:setting-a", seed, data=..., model=..., optim=..., train=...), ...]
    runs = train_runs(ctx, specs, measure=train_set_error)
    by_setting(runs)["setting-a"][0].curve("train/loss")  -> (steps, values)

A run's name is ``"<experiment>:<setting>"``; ``by_setting`` groups the runs of each setting over the seeds.

The runs go to the experiment's store (``ctx.ensure_store()``: the one given, else ``<out_dir>/runs``).

Experiments that train by hand (to look inside the model after every update) take their steps with
``minibatch_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepscope.experiments.base import Context, new_figure, save_figure
from deepscope.store import CHECKPOINT_FILE

__all__ = [
    "TrainedRun",
    "by_setting",
    "chance_error",
    "chance_loss",
    "final_value",
    "generalization",
    "generalization_figure",
    "minibatch_step",
    "plot_generalization",
    "run_spec",
    "shapeset_data",
    "train_runs",
    "train_set_error",
]


@dataclass
class TrainedRun:
    """One trained run: its spec, how it ended, its final metrics, its logged curves and extra measurements."""

    spec: dict[str, Any]
    status: str
    step: int
    metrics: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def seed(self) -> int:
        return int(self.spec["train"]["seed"])

    @property
    def setting(self) -> str:
        """The part of the run's name after ``"<experiment>:"``."""
        return self.spec["name"].partition(":")[2]

    def curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of scalar ``name`` (empty arrays when it was never logged)."""
        return self.curves.get(name, (np.zeros(0, dtype=int), np.zeros(0)))


def run_spec(name: str, seed: int, *, data: dict, model: dict, optim: dict, train: dict,
             init: dict | None = None, schedule: dict | None = None) -> dict[str, Any]:
    """A run-spec dict (see :class:`deepscope.config.RunSpec`) with ``train.seed = seed``."""
    spec = {"name": name, "data": data, "model": model, "optim": optim, "train": {**train, "seed": seed}}
    if init is not None:
        spec["init"] = init
    if schedule is not None:
        spec["schedule"] = schedule
    return spec


def shapeset_data(cfg: dict, seed: int, preprocess: Sequence[str] = ("standardize",), **extra) -> dict[str, Any]:
    """The ``[data]`` section for Shapeset with the sizes of a profile (``size``, ``n_train``, ``n_valid``,
    ``n_test``) and the run's seed as the data seed, so every seed also draws its own images."""
    options = {key: cfg[key] for key in ("size", "n_train", "n_valid", "n_test") if key in cfg}
    return {"name": "shapeset", "options": {**options, "seed": seed}, "preprocess": list(preprocess), **extra}


def chance_loss(balanced: bool = False) -> float:
    """Cross-entropy of always predicting Shapeset's class frequencies: the loss of a net that learned nothing
    from the images (its entropy, about 2.11 nats for the authors' unbalanced classes)."""
    from deepscope.data.shapeset import class_frequencies

    p = class_frequencies(balanced)
    return float(-(p * p.log()).sum())


def chance_error(balanced: bool = False) -> float:
    """Error of always predicting Shapeset's most frequent class (5/6 for the authors' unbalanced classes)."""
    from deepscope.data.shapeset import class_frequencies

    return float(1.0 - class_frequencies(balanced).max())


def train_runs(
    ctx: Context,
    specs: Sequence[dict],
    *,
    measure: Callable[[str, Any], dict[str, float]] | None = None,
) -> list[TrainedRun]:
    """Train ``specs`` with ``ctx.sweep`` (the context's jobs and backend) into the experiment's store
    (``ctx.ensure_store()``) and return them in order, each with every scalar curve the trainer logged.

    ``measure(run_id, store)`` is called for each run that left a checkpoint; what it returns goes to
    ``TrainedRun.extra``.
    """
    from deepscope.store import Store

    root = ctx.ensure_store()
    outcomes = ctx.sweep(specs)
    runs = []
    with Store(root) as store:
        for outcome in outcomes:
            curves: dict[str, tuple[list, list]] = {}
            for row in store.scalars(outcome.run_id):
                steps, values = curves.setdefault(row["name"], ([], []))
                steps.append(row["step"])
                values.append(row["value"])
            extra = {}
            if measure is not None and (store.run_dir(outcome.run_id) / CHECKPOINT_FILE).exists():
                extra = measure(outcome.run_id, store)
            runs.append(TrainedRun(
                spec=outcome.spec, status=outcome.status, step=outcome.step, metrics=outcome.metrics,
                curves={k: (np.asarray(s), np.asarray(v, dtype=float)) for k, (s, v) in curves.items()},
                extra=extra, run_id=outcome.run_id,
            ))
    return runs


def train_set_error(run_id: str, store: Any) -> dict[str, float]:
    """Loss and error of a stored run's final model on its whole (clean, non-augmented) training set, in eval
    mode (dropout off): the trainer's ``train/error`` is measured on the fly, with dropout and augmentation on."""
    from deepscope.data import get_dataset
    from deepscope.optim import make_loss
    from deepscope.training.checkpoint import load_model
    from deepscope.training.evaluation import evaluate

    model, pre, spec = load_model(run_id, store)
    x, y = get_dataset(spec.data.name, **spec.data.options).train
    loss, error = evaluate(model, pre(x), y, make_loss(spec.train.loss))
    return {"train_set/loss": float(loss), "train_set/error": float(error)}


def by_setting(runs: Sequence[TrainedRun]) -> dict[str, list[TrainedRun]]:
    """The runs of each setting (over the seeds), settings in the order they first appear."""
    groups: dict[str, list[TrainedRun]] = {}
    for run in runs:
        groups.setdefault(run.setting, []).append(run)
    return groups


def final_value(run: TrainedRun, name: str, last: int = 1) -> float:
    """Mean of the last ``last`` logged values of ``name``; inf when the run diverged (its loss went non-finite)."""
    _, values = run.curve(name)
    if run.status == "diverged" or len(values) == 0:
        return float("inf")
    return float(np.mean(values[-last:]))


def generalization(runs: Sequence[TrainedRun]) -> dict[str, float]:
    """Mean over ``runs`` of the final training-set error (eval mode, from :func:`train_set_error`), the test
    error and the gap between them (test - train)."""
    train = float(np.mean([r.extra["train_set/error"] for r in runs]))
    test = float(np.mean([r.metrics["test/error"] for r in runs]))
    return {"train_error": train, "test_error": test, "gap": test - train}


def plot_generalization(axes, groups: dict[str, list[TrainedRun]], seed: int) -> None:
    """Two panels: final train / test error of each setting (mean over seeds), and the test-error curves of
    ``seed`` over training."""
    ax = axes[0]
    names = list(groups)
    stats = [generalization(groups[name]) for name in names]
    at = np.arange(len(names))
    ax.bar(at - 0.2, [s["train_error"] for s in stats], width=0.4, label="train (eval mode, whole set)")
    ax.bar(at + 0.2, [s["test_error"] for s in stats], width=0.4, label="test")
    for x, s in zip(at, stats, strict=True):
        ax.annotate(f"gap {s['gap']:.2f}", (x, s["test_error"]), ha="center", va="bottom", fontsize=8)
    ax.set(xticks=at, xticklabels=names, ylabel="error (mean over seeds)", ylim=(0, 1.2))
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax = axes[1]
    for name in names:
        run = next(r for r in groups[name] if r.seed == seed)
        steps, values = run.curve("test/error")
        ax.plot(steps, values, label=f"{name}: test")
        steps, values = run.curve("train/error")
        ax.plot(steps, values, ls=":", color=ax.lines[-1].get_color(), label=f"{name}: train (on the fly)")
    ax.set(xlabel="update", ylabel="error", title=f"errors during training (seed {seed})", ylim=(0, 1))
    ax.legend(fontsize=7)


def generalization_figure(results: Sequence[TrainedRun], ctx: Context, title: str, suptitle: str) -> list[Path]:
    """The figure of :func:`plot_generalization` for ``results`` (seed ``ctx.seeds[0]``), the first panel titled
    ``title``, saved at ``ctx.path()``."""
    fig, axes = new_figure(1, 2, size=(10, 3.8))
    plot_generalization(axes[0], by_setting(results), ctx.seeds[0])
    axes[0, 0].set_title(title)
    fig.suptitle(suptitle)
    return [save_figure(fig, ctx.path())]


def minibatch_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, batch_size: int,
                   generator: torch.Generator) -> Tensor:
    """One update on ``batch_size`` examples of ``(x, y)`` drawn at random (with replacement) by ``generator``;
    returns the batch's cross-entropy, detached."""
    idx = torch.randint(0, len(x), (batch_size,), generator=generator)
    loss = F.cross_entropy(model(x[idx]), y[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
