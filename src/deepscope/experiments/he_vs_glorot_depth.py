"""he-vs-glorot-depth: a very deep ReLU net stalls with Glorot's init and trains with He's.

He et al. 2015 (Delving deep into rectifiers, section 2.2, fig 3): Glorot's init keeps Var(W) = 2 / (n_in + n_out),
about 1 / n, which suits tanh; a ReLU zeroes half of its input, so each layer halves the second moment of the
signal (forward) and of the gradient (backward) and after L layers both are scaled by 2^-L. With
std = sqrt(2 / fan_in) (He) the scale is kept. Their 30-layer ReLU net "completely stalls" with Glorot's init and
converges with theirs; at 22 layers both converge, He's earlier.

Measured: narrow ReLU MLPs of a shallower and a deeper depth, He-normal vs Glorot-normal weights, SGD with
momentum on Shapeset. "Stalled" means the training loss stays at the chance loss (the entropy of the class
frequencies: what a net that ignores its input reaches); "escape" is the first update at which the loss is
0.05 below it. Also shown: the activation std of every layer at initialization (the 2^-L/2 decay).

The quick profile (width 64, 1500 updates, lr 0.02) compares 20 and 30 layers: at 22 layers Glorot's net left
the plateau within 1500 updates for only 2 of 3 seeds tried (at lr 0.03), at 20 layers for every seed tried
(around update 450-650 at lr 0.02). At lr 0.03 one 30-layer He net of four diverged. The paper profile uses He's
22 and 30 layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from deepscope.data.shapeset import class_frequencies
from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.small_init_vanishing import layer_activations
from deepscope.experiments.training import (
    TrainedRun,
    by_setting,
    final_value,
    run_spec,
    shapeset_data,
    train_runs,
)
from deepscope.metrics import class_entropy
from deepscope.models import mlp

INITS = ("he_normal", "glorot_normal")
ESCAPE_MARGIN = 0.05  # nats below the chance loss that count as having left the plateau


@dataclass
class Results:
    runs: list[TrainedRun]
    init_std: dict[str, np.ndarray]  # init -> activation std of each hidden layer at initialization (deepest net)


def grid(ctx: Context) -> list[dict]:
    cfg = ctx.settings
    return [
        run_spec(
            f"he-vs-glorot-depth:{init}@d{depth}", seed, data=shapeset_data(cfg, seed),
            model={"depth": depth, "width": cfg["width"], "activation": "relu"}, init={"scheme": init},
            optim={"name": "momentum", "lr": cfg["lr"]},
            train={"updates": cfg["updates"], "batch_size": cfg["batch_size"], "eval_every": cfg["eval_every"]},
        )
        for seed in ctx.seeds for depth in cfg["depths"] for init in INITS
    ]


def init_activation_std(init: str, depth: int, width: int, in_features: int, seed: int) -> np.ndarray:
    """Std of each hidden layer's ReLU output at initialization, for N(0, 1) inputs."""
    generator = torch.Generator().manual_seed(seed)
    model = mlp(in_features, 9, depth, width, activation="relu", init=init, init_kwargs={"generator": generator})
    x = torch.randn(512, in_features, generator=generator)
    return np.array([h.std().item() for h in layer_activations(model, x)])


def run(ctx: Context) -> Results:
    cfg = ctx.settings
    init_std = {init: init_activation_std(init, max(cfg["depths"]), cfg["width"], cfg["size"] ** 2, ctx.seeds[0])
                for init in INITS}
    return Results(train_runs(ctx, grid(ctx)), init_std)


def escape_update(run: TrainedRun, chance: float) -> float:
    """First update whose training loss (window mean) is ESCAPE_MARGIN below ``chance``; inf if none."""
    steps, values = run.curve("train/loss")
    hit = np.nonzero(values <= chance - ESCAPE_MARGIN)[0]
    return float(steps[hit[0]]) if len(hit) else math.inf


def _update(step: float) -> str:
    return f"update {step:.0f}" if math.isfinite(step) else "never"


def verdict(results: Results, ctx: Context) -> Verdict:
    cfg, groups = ctx.settings, by_setting(results.runs)
    chance = class_entropy(class_frequencies())
    shallow, deep = min(cfg["depths"]), max(cfg["depths"])
    numbers: dict[str, float] = {"chance_loss": chance}
    loss, escape = {}, {}
    for init in INITS:
        for depth in cfg["depths"]:
            runs = groups[f"{init}@d{depth}"]
            loss[init, depth] = float(np.mean([final_value(r, "train/loss", last=3) for r in runs]))
            escape[init, depth] = float(np.mean([escape_update(r, chance) for r in runs]))
            numbers[f"{init}/d{depth}/final_loss"] = loss[init, depth]
            numbers[f"{init}/d{depth}/escape_update"] = escape[init, depth]
        numbers[f"{init}/init_std_last_layer"] = float(results.init_std[init][-1])
    he, gl = "he_normal", "glorot_normal"
    trains = chance - 0.15
    checks = {
        f"{deep} layers, Glorot: stalls at the chance loss (final {loss[gl, deep]:.3f} >= {chance:.3f} - 0.03)":
            chance - 0.03 <= loss[gl, deep] < math.inf,
        f"{deep} layers, He: trains (final {loss[he, deep]:.3f} <= chance - 0.15 = {trains:.3f})":
            loss[he, deep] <= trains,
        f"{shallow} layers: both train (final He {loss[he, shallow]:.3f}, Glorot {loss[gl, shallow]:.3f} "
        f"<= {trains:.3f})": max(loss[he, shallow], loss[gl, shallow]) <= trains,
        f"{shallow} layers: He leaves the plateau earlier ({_update(escape[he, shallow])}; Glorot "
        f"{_update(escape[gl, shallow])})": escape[he, shallow] < escape[gl, shallow],
    }
    summary = (
        f"training loss after {cfg['updates']} updates (chance {chance:.3f}): {deep} layers He {loss[he, deep]:.3f} "
        f"vs Glorot {loss[gl, deep]:.3f}; {shallow} layers He {loss[he, shallow]:.3f} (leaves the plateau: "
        f"{_update(escape[he, shallow])}) vs Glorot {loss[gl, shallow]:.3f} ({_update(escape[gl, shallow])})"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: Results, ctx: Context) -> list:
    cfg, seed, groups = ctx.settings, ctx.seeds[0], by_setting(results.runs)
    depths = sorted(cfg["depths"])
    fig, axes = new_figure(1, len(depths) + 1, size=(4.4 * (len(depths) + 1), 3.8))
    chance = class_entropy(class_frequencies())
    for ax, depth in zip(axes[0], depths, strict=False):
        for init in INITS:
            for run in groups[f"{init}@d{depth}"]:
                steps, values = run.curve("train/loss")
                ax.plot(steps, values, color="C0" if init == "he_normal" else "C3", alpha=1.0 if run.seed == seed
                        else 0.35, label=init if run.seed == seed else None)
        ax.axhline(chance, color="grey", ls=":", label="chance loss")
        ax.set(title=f"{depth} ReLU layers of {cfg['width']}", xlabel="update", ylabel="training loss (window mean)")
        ax.legend(fontsize=8)
    ax = axes[0, -1]
    for init in INITS:
        std = results.init_std[init]
        ax.semilogy(np.arange(1, len(std) + 1), std, "o-", ms=3, label=init, color="C0" if init == "he_normal"
                    else "C3")
    ax.set(title="activation std at initialization", xlabel="hidden layer", ylabel="std (N(0,1) inputs)")
    ax.legend(fontsize=8)
    fig.suptitle("Deep ReLU nets: He vs Glorot initialization (He et al. 2015)")
    return [save_figure(fig, ctx.path())]


_COMMON = {"batch_size": 64, "lr": 0.02}

EXPERIMENT = Experiment(
    name="he-vs-glorot-depth",
    claim="A very deep (30-layer) ReLU net stalls with Glorot's init and trains with He's; a shallower one trains "
    "with both, He's earlier.",
    source="He et al. 2015, section 2.2 and fig 3 (22 vs 30 layers); Kekulawala (blog); Géron (2017), ch. 11 "
    "(He initialization)",
    profiles={
        "tiny": {**_COMMON, "size": 8, "n_train": 256, "n_valid": 64, "n_test": 64, "depths": [4, 6], "width": 8,
                 "updates": 40, "eval_every": 10},
        "quick": {**_COMMON, "size": 16, "n_train": 4000, "n_valid": 500, "n_test": 500, "depths": [20, 30],
                  "width": 64, "updates": 1500, "eval_every": 50, "seeds": 2},
        "paper": {**_COMMON, "size": 32, "n_train": 50000, "n_valid": 5000, "n_test": 5000, "depths": [22, 30],
                  "width": 256, "updates": 20000, "eval_every": 500, "lr": 0.01, "seeds": 3},
    },
    grid=grid,
    run=run,
    verdict=verdict,
    figure=figure,
)
