"""learning-rate: the learning rate decides whether and how fast SGD converges, and annealing it helps.

Varma & Das, ch. 7, section 7.2 (figs 7.2, 7.6, 7.7): "A very high Learning Rate can cause the Loss Function to start to
increase after a few iterations, while a moderately high rate causes the Loss to plateau at a high value after
an initial rapid decrease. A very low Learning Rate on the other hand can be identified by a slow decrease in the
Loss Function"; annealing, "reducing the Learning Rate as the system approaches the minimum", by the number of
updates (step decay) or smoothly (cosine, Loshchilov & Hutter 2017), gets closer to the minimum.

Measured: a ReLU MLP (He init) trained with plain SGD on Shapeset at a very low, a good, a high and a very high
constant rate, and at the high rate annealed by steps and by a cosine; the final loss on the whole training set
(eval mode), averaged over the seeds (a run that diverged counts as an infinite loss).
"""

from __future__ import annotations

import math

import numpy as np

from deepscope.data.shapeset import class_frequencies
from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import (
    TrainedRun,
    by_setting,
    run_spec,
    shapeset_data,
    train_runs,
    train_set_error,
)
from deepscope.metrics import class_entropy

CONSTANT = ("too_low", "good", "high", "too_high")  # settings trained at a constant rate cfg["lr"][setting]
ANNEALED = ("high+step", "high+cosine")  # the "high" rate, annealed


def _schedule(setting: str, cfg: dict) -> dict | None:
    if setting == "high+step":  # three plateaus: eta, 0.3 eta, 0.09 eta
        return {"name": "step", "step_size": max(1, cfg["updates"] // 3), "gamma": 0.3}
    if setting == "high+cosine":
        return {"name": "cosine"}
    return None


def grid(ctx: Context) -> list[dict]:
    cfg = ctx.settings
    specs = []
    for seed in ctx.seeds:
        for setting in CONSTANT + ANNEALED:
            lr = cfg["lr"][setting.partition("+")[0]]
            specs.append(run_spec(
                f"learning-rate:{setting}", seed, data=shapeset_data(cfg, seed),
                model={"depth": cfg["depth"], "width": cfg["width"], "activation": "relu"},
                init={"scheme": "he_normal"}, optim={"name": "sgd", "lr": lr}, schedule=_schedule(setting, cfg),
                train={"updates": cfg["updates"], "batch_size": cfg["batch_size"], "eval_every": cfg["eval_every"]},
            ))
    return specs


def run(ctx: Context) -> list[TrainedRun]:
    return train_runs(ctx, grid(ctx), measure=train_set_error)


def final_loss(run: TrainedRun) -> float:
    """Loss of the final model on the whole training set; inf when the run diverged."""
    if run.status == "diverged" or "train_set/loss" not in run.extra:
        return math.inf
    return run.extra["train_set/loss"]


def verdict(results: list[TrainedRun], ctx: Context) -> Verdict:
    cfg, groups = ctx.settings, by_setting(results)
    loss = {s: float(np.mean([final_loss(r) for r in groups[s]])) for s in groups}
    numbers = {f"{s}/final_loss": v for s, v in loss.items()}
    numbers.update({f"{s}/lr": cfg["lr"][s] for s in CONSTANT})
    diverged = float(np.mean([r.status == "diverged" for r in groups["too_high"]]))
    numbers["too_high/diverged_fraction"] = diverged
    numbers["chance_loss"] = chance = class_entropy(class_frequencies())
    lr = cfg["lr"]
    best_constant = min(CONSTANT, key=loss.get)
    checks = {
        f"too low (lr {lr['too_low']:g}): loss {loss['too_low']:.3f} after {cfg['updates']} updates, "
        f">= 0.2 above the good rate's {loss['good']:.3f} (slow decrease)": loss["too_low"] >= loss["good"] + 0.2,
        f"too high (lr {lr['too_high']:g}): diverged in {diverged:.0%} of the seeds, final loss "
        f"{loss['too_high']:.3g} >= the chance loss {chance:.3f}": loss["too_high"] >= chance,
        f"good (lr {lr['good']:g}) has the lowest loss of the constant rates ({loss['good']:.3f}; best: "
        f"{best_constant})": best_constant == "good",
        f"step annealing from lr {lr['high']:g}: loss {loss['high+step']:.3f} < constant {loss['high']:.3f}":
            loss["high+step"] < loss["high"],
        f"cosine annealing from lr {lr['high']:g}: loss {loss['high+cosine']:.3f} < constant {loss['high']:.3f}":
            loss["high+cosine"] < loss["high"],
    }
    summary = (
        "final training loss: " + ", ".join(f"lr {lr[s]:g} {loss[s]:.3g}" for s in CONSTANT)
        + f"; lr {lr['high']:g} annealed: step {loss['high+step']:.3f}, cosine {loss['high+cosine']:.3f}"
    )
    return Verdict.from_checks(checks, numbers, summary)


def _plot_loss(ax, run: TrainedRun, label: str) -> None:
    steps, values = run.curve("train/loss")
    finite = np.isfinite(values)
    color = None
    if finite.any():
        color = ax.plot(steps[finite], values[finite], label=label)[0].get_color()
    if run.status == "diverged":  # marked where the loss became non-finite (or, exploding but finite, last recorded)
        where = steps[~finite][:1] if (~finite).any() else steps[-1:]
        ax.plot(where, [ax.get_ylim()[1] * 0.95] * len(where), "x", color=color, ms=9, mew=2,
                label=f"{label}: diverged")


def figure(results: list[TrainedRun], ctx: Context) -> list:
    cfg, seed = ctx.settings, ctx.seeds[0]
    runs = {r.setting: r for r in results if r.seed == seed}
    fig, axes = new_figure(1, 3, size=(13.5, 3.8))
    ax = axes[0, 0]
    ax.set_ylim(0, 1.3 * math.log(9))
    for setting in ("good", "too_low", "high", "too_high"):
        _plot_loss(ax, runs[setting], f"{setting.replace('_', ' ')} (lr {cfg['lr'][setting]:g})")
    ax.set(title="constant learning rates (fig 7.6)", xlabel="update", ylabel="training loss (window mean)")
    ax = axes[0, 1]
    for setting in ("high",) + ANNEALED:
        _plot_loss(ax, runs[setting], setting if setting != "high" else f"constant {cfg['lr']['high']:g}")
    ax.set(title="annealing the high rate (fig 7.7)", xlabel="update", ylabel="training loss (window mean)")
    ax = axes[0, 2]
    for setting in ("high",) + ANNEALED:
        steps, lrs = runs[setting].curve("lr")
        ax.step(steps, lrs, where="post", label=setting)
    ax.set(title="learning rate", xlabel="update", ylabel="lr")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    fig.suptitle("Learning rate: too low / good / too high, and annealing "
                 f"(Varma & Das, ch. 7, section 7.2; seed {seed})")
    return [save_figure(fig, ctx.path())]


_COMMON = {"lr": {"too_low": 0.001, "good": 0.1, "high": 0.3, "too_high": 2.0}, "depth": 2, "batch_size": 32}

EXPERIMENT = Experiment(
    name="learning-rate",
    claim="Too low a learning rate decreases the loss slowly, too high a rate diverges, a good one gets lowest; "
    "annealing a high rate (step or cosine) reaches a lower loss than keeping it constant.",
    source="Varma & Das, ch. 7, section 7.2 (figs 7.2, 7.6, 7.7); Loshchilov & Hutter 2017 (cosine)",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 256, "n_valid": 64, "n_test": 64, "width": 16, "updates": 60,
                 "eval_every": 10},
        "quick": {**_COMMON, "size": 16, "n_train": 4000, "n_valid": 500, "n_test": 500, "width": 128,
                  "updates": 1500, "eval_every": 100, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 50000, "n_valid": 5000, "n_test": 5000, "width": 1000,
                  "depth": 5, "updates": 50000, "eval_every": 1000, "seeds": 3},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
