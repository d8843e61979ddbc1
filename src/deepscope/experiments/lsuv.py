"""lsuv: layer-sequential unit-variance initialization gives unit output variance at every depth.

LSUV (Mishkin & Matas 2016) starts from orthonormal weights and rescales each layer in turn until the
variance of its output on a data batch is within ``tol`` of 1. Orthonormal weights alone preserve norms
only in a linear net: a ReLU halves the second moment at each layer and tanh shrinks it, and raw inputs
(Shapeset pixels in [0, 1], not standardized) start at whatever variance the data has.

Measured: the variance of every Linear layer's output (the quantity LSUV normalizes) of a deep MLP on
Shapeset images, after ``deepscope.init.lsuv`` and after ``deepscope.init.apply(model, "orthogonal")``, on
the batch LSUV saw and on a held-out batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deepscope import init
from deepscope.data.shapeset import generate
from deepscope.diagnosis.checks import layer_outputs
from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.models import mlp


def linear_output_vars(model: nn.Module, x: Tensor) -> np.ndarray:
    """The variance of every ``nn.Linear``'s output on ``x``, in forward order (forward hooks)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return torch.stack(list(layer_outputs(model, x, linears, torch.var).values())).numpy()


@dataclass
class Result:
    activation: str
    method: str  # "lsuv" | "orthogonal"
    seed: int
    var_batch: np.ndarray  # per Linear layer, on the LSUV batch
    var_heldout: np.ndarray  # on a held-out batch


def measure(activation: str, method: str, seed: int, cfg: dict) -> Result:
    data = torch.Generator().manual_seed(1000 + seed)
    x, _ = generate(2 * cfg["batch_size"], data, size=cfg["image_size"])
    batch, heldout = x[: cfg["batch_size"]], x[cfg["batch_size"] :]
    g = torch.Generator().manual_seed(seed)
    model = mlp(x.shape[1:], 9, cfg["depth"], cfg["width"], activation=activation, init=None)
    if method == "lsuv":
        init.lsuv(model, batch, tol=cfg["tol"], t_max=cfg["t_max"], generator=g)
    else:
        init.apply(model, "orthogonal", generator=g)
    return Result(activation, method, seed, linear_output_vars(model, batch), linear_output_vars(model, heldout))


def run(ctx: Context) -> list[Result]:
    cfg = ctx.settings
    return [
        measure(activation, method, seed, cfg)
        for activation in cfg["activations"]
        for method in ("lsuv", "orthogonal")
        for seed in ctx.seeds
    ]


def verdict(results: list[Result], ctx: Context) -> Verdict:
    cfg = ctx.settings
    tol = cfg["tol"]
    numbers: dict[str, float] = {}
    checks: dict[str, bool] = {}
    for activation in cfg["activations"]:
        for method in ("lsuv", "orthogonal"):
            runs = [r for r in results if r.activation == activation and r.method == method]
            numbers[f"{activation}/{method}/max_var_error"] = max(np.abs(r.var_batch - 1).max() for r in runs)
            numbers[f"{activation}/{method}/max_var_error_heldout"] = max(np.abs(r.var_heldout - 1).max() for r in runs)
            numbers[f"{activation}/{method}/var_last_hidden"] = np.mean([r.var_heldout[-2] for r in runs])
        err = numbers[f"{activation}/lsuv/max_var_error"]
        held = numbers[f"{activation}/lsuv/max_var_error_heldout"]
        orth = numbers[f"{activation}/orthogonal/max_var_error_heldout"]
        checks[f"{activation} + LSUV: every layer's |Var(out) - 1| <= {err:.2g} < tol {tol}"] = err < tol
        checks[f"{activation} + LSUV: on held-out data <= {held:.3f} < 2 tol"] = held < 2 * tol
        checks[f"{activation} + orthogonal alone: some layer off by {orth:.3f} > 2 tol"] = orth > 2 * tol
    summary = f"max |Var(out) - 1| over {cfg['depth'] + 1} layers (held-out): " + "; ".join(
        f"{a} LSUV {numbers[f'{a}/lsuv/max_var_error_heldout']:.3f} vs orthogonal "
        f"{numbers[f'{a}/orthogonal/max_var_error_heldout']:.3f}"
        for a in cfg["activations"]
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[Result], ctx: Context) -> list:
    cfg, seed = ctx.settings, ctx.seeds[0]
    fig, axes = new_figure(1, len(cfg["activations"]), size=(5.0 * len(cfg["activations"]), 3.8))
    for ax, activation in zip(axes[0], cfg["activations"], strict=True):
        for method, marker in (("lsuv", "o"), ("orthogonal", "s")):
            r = next(r for r in results if (r.activation, r.method, r.seed) == (activation, method, seed))
            layers = np.arange(1, len(r.var_batch) + 1)
            ax.semilogy(layers, r.var_heldout, marker + "-", ms=3, label=f"{method} (held-out)")
            ax.semilogy(layers, r.var_batch, marker + ":", ms=2, alpha=0.6, label=f"{method} (LSUV batch)")
        ax.axhspan(1 - cfg["tol"], 1 + cfg["tol"], color="green", alpha=0.15, label=f"1 +- tol {cfg['tol']}")
        ax.set(title=f"{activation}, depth {cfg['depth']}", xlabel="Linear layer (last = output)",
               ylabel="Var(layer output)")
        ax.legend(fontsize=7)
    fig.suptitle("LSUV vs orthogonal init: output variance per layer (Mishkin & Matas 2016)")
    return [save_figure(fig, ctx.path())]


_COMMON = {"activations": ("relu", "tanh"), "tol": 0.1, "t_max": 10}

EXPERIMENT = Experiment(
    name="lsuv",
    claim="After LSUV every layer's output variance is within tol of 1 across depth; orthogonal init alone "
    "lets it drift (ReLU halves it per layer).",
    source="Mishkin & Matas 2016 (All you need is a good init, Algorithm 1)",
    profiles={
        "tiny": {**_COMMON, "depth": 4, "width": 64, "image_size": 16, "batch_size": 256},
        "quick": {**_COMMON, "depth": 20, "width": 256, "image_size": 32, "batch_size": 512, "seeds": 3},
        "paper": {**_COMMON, "depth": 30, "width": 1000, "image_size": 32, "batch_size": 512, "seeds": 3},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
