"""orthogonal-isometry: the input-output Jacobian's singular values with orthogonal weights.

A deep net is "dynamically isometric" when all singular values of its input-output Jacobian
J = dh_L / dx are close to 1, so every direction of the gradient passes through unchanged (Saxe et al.
2013; Pennington et al. 2017). A product of orthogonal matrices is orthogonal; with tanh near its linear
regime (small pre-activations, gain 1) the diagonal derivative factors stay close to 1 and the singular
values concentrate. With Gaussian weights of the same variance they spread over orders of magnitude that
grow with depth; ReLU's 0/1 derivatives zero out directions, so no gain makes a deep ReLU net isometric.

Measured: J of the hidden stack of a fresh MLP (float64, ``torch.autograd.functional.jacobian``) at a
few inputs x ~ N(0, input_var), for several depths; the spread is log10 of the ratio of the 90th to the
10th percentile of the singular values, "near 1" the fraction within [1/2, 2].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.models import mlp

# name -> (activation, init scheme, scheme kwargs)
SETTINGS = {
    "tanh_orthogonal": ("tanh", "orthogonal", {"gain": 1.0}),
    "tanh_gaussian": ("tanh", "lecun_normal", {"gain": 1.0}),
    "relu_orthogonal": ("relu", "orthogonal", {"gain": math.sqrt(2.0)}),
}


def jacobian_singular_values(model: nn.Sequential, inputs: Tensor) -> Tensor:
    """Singular values of d(hidden stack)/dx at each row of ``inputs``, concatenated (float64)."""
    stack = nn.Sequential(*[block for name, block in model.named_children() if name.startswith("hidden")])
    stack = stack.double()
    svs = [
        torch.linalg.svdvals(torch.autograd.functional.jacobian(stack, x.double(), vectorize=True)) for x in inputs
    ]
    return torch.cat(svs)


def spread(sv: Tensor) -> float:
    """log10(p90 / p10) of the singular values (inf when p10 is 0)."""
    p10, p90 = torch.quantile(sv, torch.tensor([0.1, 0.9], dtype=sv.dtype)).tolist()
    return math.log10(p90 / p10) if p10 > 0 else math.inf


@dataclass
class Result:
    setting: str
    depth: int
    seed: int
    sv: Tensor


def measure(setting: str, depth: int, seed: int, cfg: dict) -> Result:
    activation, scheme, kwargs = SETTINGS[setting]
    g = torch.Generator().manual_seed(seed)
    width = cfg["width"]
    model = mlp(width, 10, depth, width, activation=activation, init=scheme, init_kwargs={**kwargs, "generator": g})
    inputs = torch.randn(cfg["inputs"], width, generator=g) * math.sqrt(cfg["input_var"])
    return Result(setting, depth, seed, jacobian_singular_values(model, inputs))


def run(ctx: Context) -> list[Result]:
    cfg = ctx.settings
    return [
        measure(setting, depth, seed, cfg) for setting in SETTINGS for depth in cfg["depths"] for seed in ctx.seeds
    ]


def _pooled(results: list[Result], setting: str, depth: int) -> Tensor:
    return torch.cat([r.sv for r in results if r.setting == setting and r.depth == depth])


def verdict(results: list[Result], ctx: Context) -> Verdict:
    depth = max(ctx.settings["depths"])
    numbers: dict[str, float] = {}
    for setting in SETTINGS:
        sv = _pooled(results, setting, depth)
        numbers[f"{setting}/spread"] = min(spread(sv), 300.0)  # log10(p90/p10); capped so it stays finite
        numbers[f"{setting}/near_1"] = ((sv >= 0.5) & (sv <= 2.0)).double().mean().item()
        numbers[f"{setting}/sv_median"] = sv.median().item()
        numbers[f"{setting}/sv_max"] = sv.max().item()
    orth, gauss, relu = (numbers[f"{s}/spread"] for s in SETTINGS)
    near = numbers["tanh_orthogonal/near_1"]
    checks = {
        f"tanh + orthogonal, depth {depth}: spread log10(p90/p10) = {orth:.3f} < 0.3": orth < 0.3,
        f"tanh + orthogonal: {near:.0%} of singular values in [1/2, 2] (>= 90%)": near >= 0.9,
        f"tanh + Gaussian: spread {gauss:.3g} > 1 (a factor 10)": gauss > 1.0,
        f"ReLU + orthogonal: spread {relu:.3g} > 1": relu > 1.0,
    }
    summary = (
        f"depth {depth}, log10(p90/p10) of the Jacobian's singular values: tanh+orthogonal {orth:.3f} "
        f"({near:.0%} in [1/2, 2], median {numbers['tanh_orthogonal/sv_median']:.2f}); tanh+Gaussian {gauss:.3g}; "
        f"ReLU+orthogonal {relu:.3g}"
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(results: list[Result], ctx: Context) -> list:
    depths = list(ctx.settings["depths"])
    fig, axes = new_figure(1, 2, size=(10.5, 3.9))
    for setting in SETTINGS:
        spreads = [min(spread(_pooled(results, setting, d)), 300.0) for d in depths]
        axes[0, 0].semilogy(depths, np.maximum(spreads, 1e-3), "o-", label=setting)
        sv = _pooled(results, setting, depths[-1]).clamp_min(1e-20).log10().numpy()
        axes[0, 1].hist(sv, bins=60, range=(-20, 2), histtype="step", density=True, label=setting)
    axes[0, 0].set(xscale="log", title="spread log10(p90 / p10) vs depth", xlabel="depth")
    axes[0, 0].set_xticks(depths, [str(d) for d in depths])
    axes[0, 0].minorticks_off()
    axes[0, 1].set(title=f"log10 singular values, depth {depths[-1]} (floored at 1e-20)", xlabel="log10 sv")
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.suptitle("Dynamical isometry: input-output Jacobian spectrum (Saxe 2013, Pennington 2017)")
    return [save_figure(fig, ctx.path())]


_COMMON = {"input_var": 0.001}  # pre-activations ~1e-3: tanh near its linear regime

EXPERIMENT = Experiment(
    name="orthogonal-isometry",
    claim="With orthogonal weights and tanh near its linear regime the singular values of a deep net's "
    "input-output Jacobian concentrate near 1; Gaussian weights spread them over orders of magnitude, and "
    "ReLU cannot be made isometric.",
    source="Saxe et al. 2013 (exact solutions of deep linear nets); Pennington et al. 2017 (dynamical isometry)",
    profiles={
        "tiny": {**_COMMON, "width": 32, "depths": (2, 4), "inputs": 2},
        "quick": {**_COMMON, "width": 128, "depths": (2, 4, 8, 16, 32), "inputs": 4, "seeds": 2},
        "paper": {**_COMMON, "width": 400, "depths": (2, 4, 8, 16, 32, 64, 128), "inputs": 8, "seeds": 3},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
