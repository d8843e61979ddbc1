"""zero-init-symmetry: identical units stay identical under gradient descent.

With all weights zero (or all equal), every unit of a hidden layer computes the same output and receives
the same gradient, so SGD moves them in lock step: however long it trains, a layer is worth one unit
(Jen (2020); Varma & Das, ch. 7, section 7.5, "break symmetry"). Random initialization (Glorot) breaks the tie.

Measured: a sigmoid MLP trained with plain SGD on Shapeset images; for each hidden layer the largest
difference between two units' incoming weights (and biases), ``max_i,j ||w_i - w_j||_inf``, and how far
the weights moved (so "identical" cannot come from not learning at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deepscope.data.shapeset import generate
from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.training import minibatch_step
from deepscope.models import mlp
from deepscope.optim import make_optimizer

SYMMETRIC = ("zeros", "constant")


def unit_spread(layer: nn.Linear) -> Tensor:
    """max over pairs of units (i, j) of max_k |W[i, k] - W[j, k]|, the bias taken as one more input."""
    w = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach()
    return (w.amax(dim=0) - w.amin(dim=0)).max()


def distinct_units(layer: nn.Linear, tol: float = 1e-6) -> int:
    """How many units differ (by more than ``tol`` in some incoming weight) from every earlier unit."""
    w = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach()
    close = torch.cdist(w, w, p=float("inf")) <= tol
    return int((~close.tril(diagonal=-1).any(dim=1)).sum())


def _hidden_linears(model: nn.Sequential) -> list[nn.Linear]:
    return [block.linear for name, block in model.named_children() if name.startswith("hidden")]


@dataclass
class Trained:
    scheme: str
    seed: int
    spread: Tensor  # (records, layers)
    loss: Tensor  # (steps,)
    moved: list[float]  # per layer, max |W - W0|
    distinct: list[int]  # per layer
    weight: Tensor  # hidden1 incoming weights after training (units, inputs)


def train_one(scheme: str, seed: int, x: Tensor, y: Tensor, cfg: dict) -> Trained:
    init_kwargs = {"zeros": {}, "constant": {"value": cfg["constant"]}}.get(
        scheme, {"generator": torch.Generator().manual_seed(seed)}
    )
    model = mlp(x.shape[1], 9, cfg["depth"], cfg["width"], activation="sigmoid", init=scheme, init_kwargs=init_kwargs)
    linears = _hidden_linears(model)
    start = [layer.weight.detach().clone() for layer in linears]
    opt = make_optimizer("sgd", model, cfg["lr"])
    order = torch.Generator().manual_seed(seed)
    spreads, losses = [], []
    for step in range(cfg["steps"]):
        losses.append(minibatch_step(model, opt, x, y, cfg["batch_size"], order))
        if step % cfg["record_every"] == 0 or step == cfg["steps"] - 1:
            spreads.append(torch.stack([unit_spread(layer) for layer in linears]))
    moved = [(layer.weight.detach() - w0).abs().max().item() for layer, w0 in zip(linears, start, strict=True)]
    return Trained(
        scheme, seed, torch.stack(spreads), torch.stack(losses), moved,
        [distinct_units(layer) for layer in linears], linears[0].weight.detach().clone(),
    )


def run(ctx: Context) -> list[Trained]:
    cfg = ctx.settings
    out = []
    for seed in ctx.seeds:
        x, y = generate(cfg["n_train"], torch.Generator().manual_seed(1000 + seed), size=cfg["image_size"])
        x = x.flatten(1)
        out += [train_one(scheme, seed, x, y, cfg) for scheme in cfg["schemes"]]
    return out


def verdict(results: list[Trained], ctx: Context) -> Verdict:
    cfg = ctx.settings
    numbers: dict[str, float] = {}
    checks: dict[str, bool] = {}
    for scheme in cfg["schemes"]:
        runs = [r for r in results if r.scheme == scheme]
        final = torch.stack([r.spread[-1] for r in runs])  # (seeds, layers)
        # symmetric schemes: the worst seed; random ones: the least-spread seed
        spread = final.max().item() if scheme in SYMMETRIC else final.min().item()
        moved = min(min(r.moved) for r in runs)
        distinct = max(max(r.distinct) for r in runs) if scheme in SYMMETRIC else min(min(r.distinct) for r in runs)
        numbers[f"{scheme}/unit_spread"] = spread
        numbers[f"{scheme}/moved"] = moved
        numbers[f"{scheme}/distinct_units"] = distinct
        last = cfg["record_every"]  # the loss averaged over the last few steps
        numbers[f"{scheme}/final_loss"] = torch.stack([r.loss[-last:].mean() for r in runs]).mean().item()
        if scheme in SYMMETRIC:
            steps = cfg["steps"]
            checks[f"{scheme}: units identical after {steps} SGD steps (max difference {spread:.2g} <= 1e-6)"] = (
                spread <= 1e-6
            )
            checks[f"{scheme}: yet the weights moved (by {moved:.2g} > 1e-5)"] = moved > 1e-5
        else:
            checks[f"{scheme}: units differ (max difference {spread:.3g} > 0.01; {distinct} distinct units)"] = (
                spread > 0.01
            )
    sym = ", ".join(f"{s} {numbers[f'{s}/distinct_units']:g}" for s in cfg["schemes"])
    summary = f"distinct units per hidden layer of {cfg['width']} after {cfg['steps']} SGD steps: {sym}"
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[Trained], ctx: Context) -> list:
    cfg, seed = ctx.settings, ctx.seeds[0]
    runs = {r.scheme: r for r in results if r.seed == seed}
    schemes = list(cfg["schemes"])
    fig, axes = new_figure(2, len(schemes), size=(4.4 * len(schemes), 7.2))
    steps = list(range(0, cfg["steps"], cfg["record_every"]))
    if steps[-1] != cfg["steps"] - 1:
        steps.append(cfg["steps"] - 1)
    for scheme, r in runs.items():
        for layer in range(r.spread.shape[1]):
            axes[0, 0].plot(steps, r.spread[:, layer].clamp_min(1e-12).numpy(), label=f"{scheme} hidden{layer + 1}")
        axes[0, 1].plot(r.loss.numpy(), lw=0.6, label=scheme)
    axes[0, 0].set(yscale="log", title="max difference between units", xlabel="SGD step", ylabel="(floored at 1e-12)")
    axes[0, 1].set(title="training loss", xlabel="SGD step", ylabel="cross-entropy")
    layers = np.arange(1, cfg["depth"] + 1)
    for i, scheme in enumerate(schemes):
        axes[0, 2].bar(layers + (i - 1) * 0.25, runs[scheme].distinct, width=0.25, label=scheme)
    axes[0, 2].set(title=f"distinct units (of {cfg['width']}) after training", xlabel="hidden layer", xticks=layers)
    for ax in axes[0]:
        ax.legend(fontsize=7)
    for ax, scheme in zip(axes[1], schemes, strict=True):
        w = runs[scheme].weight[:, : min(48, runs[scheme].weight.shape[1])]
        im = ax.imshow(w.numpy(), aspect="auto", cmap="coolwarm", interpolation="nearest")
        fig.colorbar(im, ax=ax)
        ax.set(title=f"{scheme}: hidden1 weights after training", xlabel="input", ylabel="unit")
    fig.suptitle("Zero / constant init: units stay identical under SGD (Jen (2020))")
    return [save_figure(fig, ctx.path())]


_COMMON = {"schemes": ("zeros", "constant", "glorot_uniform"), "constant": 0.01, "lr": 0.5, "batch_size": 32}

EXPERIMENT = Experiment(
    name="zero-init-symmetry",
    claim="With zero or constant weights the units of a layer get identical updates and stay identical under "
    "SGD; random (Glorot) initialization breaks the symmetry.",
    source="Jen (2020) (weight initialization: the symmetry problem); Varma & Das, ch. 7, section 7.5",
    profiles={
        "tiny": {**_COMMON, "depth": 2, "width": 16, "image_size": 8, "n_train": 256, "steps": 60, "record_every": 5},
        "quick": {**_COMMON, "depth": 2, "width": 64, "image_size": 16, "n_train": 2000, "steps": 500,
                  "record_every": 10, "seeds": 2},
        "paper": {**_COMMON, "depth": 3, "width": 256, "image_size": 32, "n_train": 10000, "steps": 3000,
                  "record_every": 50, "seeds": 3},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
