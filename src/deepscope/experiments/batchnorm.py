"""batchnorm: batch normalization lets a net train at a learning rate that breaks it without, and makes a
sigmoid net that is stuck at chance train.

Ioffe & Szegedy 2015 (sections 3.3, 4.1, 4.2): normalizing each unit's pre-activation over the mini-batch,
then scaling and shifting it (gamma, beta), keeps the layers' inputs in a stable range, "enables higher learning
rates" (their BN-x5 / BN-x30 Inception runs) and lets saturating nonlinearities train: Inception with sigmoids
never beat chance without BN and reached 69.8% with it. Their MNIST toy: 3 hidden layers of 100 sigmoid units,
batch 60. Varma & Das, ch. 7, section 7.7: "In a non-normalized network, a large learning rate can lead to oscillations
and cause the loss function increase rather than decrease. Batch Normalization helps prevents these problems".

Measured on Shapeset, plain SGD:
- the MNIST toy's net (3 x 100 sigmoid units, Glorot & Bengio's "standard" init, batch 60) with and without BN
  before the sigmoid, at the same learning rate;
- a 5 x 100 ReLU net (He init) at a base learning rate and at 5x that rate, with and without BN.
"Trains" means the training loss ends 0.15 nats below the chance loss (the entropy of the class frequencies,
what a net that ignores its input reaches); "stuck" means it stays within 0.03 nats of it.
"""

from __future__ import annotations

import math

import numpy as np

from deepscope.data.shapeset import class_frequencies
from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import (
    TrainedRun,
    by_setting,
    final_value,
    run_spec,
    shapeset_data,
    train_runs,
)
from deepscope.metrics import class_entropy, majority_error

TRAINS, STUCK = 0.15, 0.03  # nats below the chance loss


def _settings(cfg: dict) -> dict[str, dict]:
    """setting -> (model section, learning rate)."""
    sig = {"depth": cfg["sigmoid_depth"], "width": cfg["width"], "activation": "sigmoid"}
    relu = {"depth": cfg["relu_depth"], "width": cfg["width"], "activation": "relu"}
    base, high = cfg["relu_lr"], cfg["relu_lr"] * cfg["lr_factor"]
    return {
        "sigmoid": ({**sig}, "standard", cfg["sigmoid_lr"]),
        "sigmoid+bn": ({**sig, "norm": "batch"}, "standard", cfg["sigmoid_lr"]),
        "relu@base": ({**relu}, "he_normal", base),
        "relu+bn@base": ({**relu, "norm": "batch"}, "he_normal", base),
        "relu@high": ({**relu}, "he_normal", high),
        "relu+bn@high": ({**relu, "norm": "batch"}, "he_normal", high),
    }


def grid(ctx: Context) -> list[dict]:
    cfg = ctx.settings
    return [
        run_spec(
            f"batchnorm:{setting}", seed, data=shapeset_data(cfg, seed), model=model, init={"scheme": init},
            optim={"name": "sgd", "lr": lr},
            train={"updates": cfg["updates"], "batch_size": cfg["batch_size"], "eval_every": cfg["eval_every"]},
        )
        for seed in ctx.seeds for setting, (model, init, lr) in _settings(cfg).items()
    ]


def run(ctx: Context) -> list[TrainedRun]:
    return train_runs(ctx, grid(ctx))


def verdict(results: list[TrainedRun], ctx: Context) -> Verdict:
    cfg, groups = ctx.settings, by_setting(results)
    chance = class_entropy(class_frequencies())
    loss = {s: float(np.mean([final_value(r, "train/loss", last=3) for r in runs])) for s, runs in groups.items()}
    error = {s: float(np.mean([r.metrics.get("test/error", math.nan) if r.status != "diverged" else math.nan
                               for r in runs])) for s, runs in groups.items()}
    diverged = {s: float(np.mean([r.status == "diverged" for r in runs])) for s, runs in groups.items()}
    numbers = {"chance_loss": chance, "chance_error": majority_error(class_frequencies())}
    for s in groups:
        numbers.update({f"{s}/final_loss": loss[s], f"{s}/test_error": error[s], f"{s}/diverged_fraction": diverged[s]})
    base, high = cfg["relu_lr"], cfg["relu_lr"] * cfg["lr_factor"]
    ok = chance - TRAINS
    checks = {
        f"sigmoid {cfg['sigmoid_depth']}x{cfg['width']} without BN stays at chance (loss {loss['sigmoid']:.3f} >= "
        f"{chance:.3f} - {STUCK})": chance - STUCK <= loss["sigmoid"],
        f"the same sigmoid net with BN trains (loss {loss['sigmoid+bn']:.3f} <= {ok:.3f}; test error "
        f"{error['sigmoid+bn']:.1%} vs {error['sigmoid']:.1%})": loss["sigmoid+bn"] <= ok,
        f"ReLU without BN trains at lr {base:g} (loss {loss['relu@base']:.3f} <= {ok:.3f})": loss["relu@base"] <= ok,
        f"ReLU without BN fails at {cfg['lr_factor']:g}x the rate, lr {high:g} (diverged in "
        f"{diverged['relu@high']:.0%} of the seeds; loss {loss['relu@high']:.3g} >= {chance:.3f} - {STUCK})":
            loss["relu@high"] >= chance - STUCK,
        f"ReLU with BN trains at lr {high:g} (loss {loss['relu+bn@high']:.3f} <= {ok:.3f})": loss["relu+bn@high"] <= ok,
    }
    summary = (
        f"training loss after {cfg['updates']} updates (chance {chance:.3f}): sigmoid {loss['sigmoid']:.3f} -> "
        f"{loss['sigmoid+bn']:.3f} with BN; ReLU at lr {base:g} {loss['relu@base']:.3f}, at lr {high:g} "
        f"{loss['relu@high']:.3g} -> {loss['relu+bn@high']:.3f} with BN"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[TrainedRun], ctx: Context) -> list:
    cfg, seed, groups = ctx.settings, ctx.seeds[0], by_setting(results)
    fig, axes = new_figure(1, 2, size=(10, 3.8))
    chance = class_entropy(class_frequencies())
    panels = {0: ("sigmoid", "sigmoid+bn"), 1: ("relu@base", "relu+bn@base", "relu@high", "relu+bn@high")}
    for col, settings in panels.items():
        ax = axes[0, col]
        for setting in settings:
            run = next(r for r in groups[setting] if r.seed == seed)
            steps, values = run.curve("train/loss")
            finite = np.isfinite(values)
            style = {"color": "C3" if "@high" in setting else "C0", "ls": "-" if "+bn" in setting else "--"}
            ax.plot(steps[finite], values[finite], label=setting, **style)
            if run.status == "diverged":  # marked where the loss became non-finite
                ax.plot(steps[~finite][:1], [1.25 * math.log(9)], "x", ms=9, mew=2, color=style["color"],
                        label=f"{setting}: diverged")
        ax.axhline(chance, color="grey", ls=":", label="chance loss")
        ax.set_ylim(0, 1.3 * math.log(9))
        ax.set(xlabel="update", ylabel="training loss (window mean)")
        ax.legend(fontsize=7)
    axes[0, 0].set_title(f"{cfg['sigmoid_depth']}x{cfg['width']} sigmoid, lr {cfg['sigmoid_lr']:g}")
    axes[0, 1].set_title(f"{cfg['relu_depth']}x{cfg['width']} ReLU, lr {cfg['relu_lr']:g} (base) and "
                         f"{cfg['relu_lr'] * cfg['lr_factor']:g} (high)")
    fig.suptitle(f"Batch normalization (Ioffe & Szegedy 2015; seed {seed})")
    return [save_figure(fig, ctx.path())]


_COMMON = {"sigmoid_depth": 3, "relu_depth": 5, "width": 100, "batch_size": 60, "sigmoid_lr": 0.5, "relu_lr": 0.2,
           "lr_factor": 5.0}

EXPERIMENT = Experiment(
    name="batchnorm",
    claim="With batch norm a net trains at 5x a learning rate at which it diverges without, and a sigmoid net "
    "(3 x 100 units, batch 60) that stays at chance without BN trains with it.",
    source="Ioffe & Szegedy 2015 (sections 3.3, 4.1, 4.2); Varma & Das, ch. 7, section 7.7; Kekulawala (blog); "
    "Glorot & Bengio (2010)",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 256, "n_valid": 64, "n_test": 64, "width": 16, "relu_depth": 2,
                 "updates": 40, "eval_every": 10},
        "quick": {**_COMMON, "size": 16, "n_train": 4000, "n_valid": 500, "n_test": 500, "updates": 1200,
                  "eval_every": 100, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 50000, "n_valid": 5000, "n_test": 5000, "updates": 50000,
                  "eval_every": 1000, "seeds": 3},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
