"""optimizers-2d: the six update rules of Varma & Das, ch. 7 on two 2-parameter landscapes.

A narrow steep valley f(x, y) = 0.05 x^2 + 5 y^2 (curvatures 0.1 and 10): plain gradient descent
zig-zags across the steep axis and crawls along the shallow one (Varma & Das, ch. 7, fig. 7.3); momentum and
Nesterov build up speed along the floor (section 7.3.1). A saddle f(x, y) = x^2 - y^2 + y^4 / 4 (saddle
at 0, minima at y = +-sqrt(2)), started next to the saddle: gradient descent slows to a crawl there
(figs. 7.4, 7.5) because the gradient along y is tiny; methods that divide by the gradient's magnitude
(Adagrad, RMSprop, Adam) take full-size steps and escape sooner (momentum too, fig. 7.8).

Each optimizer is ``deepscope.optim.make_optimizer(name, [w], lr)`` on one 2-element tensor, same lr
and number of steps for all of them within a landscape. Seeds jitter the starting points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deepscope.experiments.base import Context, Experiment, Verdict, new_figure, save_figure
from deepscope.optim import make_optimizer

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
ADAPTIVE = ("adagrad", "rmsprop", "adam")


def valley(w: Tensor) -> Tensor:
    """0.05 x^2 + 5 y^2: a narrow valley, steep across (y), shallow along (x); condition number 100."""
    return 0.05 * w[..., 0] ** 2 + 5.0 * w[..., 1] ** 2


def saddle(w: Tensor) -> Tensor:
    """x^2 - y^2 + y^4 / 4: a saddle at the origin, minima f = -1 at (0, +-sqrt(2))."""
    return w[..., 0] ** 2 - w[..., 1] ** 2 + 0.25 * w[..., 1] ** 4


LANDSCAPES = {"valley": valley, "saddle": saddle}


def descend(f, optimizer: str, lr: float, start: tuple[float, float], steps: int) -> Tensor:
    """The trajectory ``(steps + 1, 2)`` of ``optimizer`` minimizing ``f`` from ``start`` (float64)."""
    w = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer(optimizer, [w], lr)
    path = torch.empty(steps + 1, 2, dtype=torch.float64)
    path[0] = w.detach()
    for i in range(steps):
        opt.zero_grad()
        f(w).backward()
        opt.step()
        path[i + 1] = w.detach()
    return path


def escape_step(path: Tensor, threshold: float = 1.0) -> int | None:
    """The first step at which |y| >= threshold (the saddle left behind), or None."""
    hits = (path[:, 1].abs() >= threshold).nonzero()
    return int(hits[0, 0]) if len(hits) else None


@dataclass
class Results:
    paths: dict[tuple[str, str, int], Tensor]  # (landscape, optimizer, seed) -> trajectory


def _starts(seed: int, cfg: dict) -> dict[str, tuple[float, float]]:
    g = torch.Generator().manual_seed(seed)
    jitter = torch.randn(3, generator=g, dtype=torch.float64).tolist()
    vx, vy = cfg["valley_start"]
    sx, sy = cfg["saddle_start"]
    return {
        "valley": (vx + 0.5 * jitter[0], vy + 0.1 * jitter[1]),
        "saddle": (sx, sy * float(np.exp(0.5 * jitter[2]))),
    }


def run(ctx: Context) -> Results:
    cfg = ctx.settings
    paths = {}
    for seed in ctx.seeds:
        starts = _starts(seed, cfg)
        for land, f in LANDSCAPES.items():
            for opt in OPTIMIZERS:
                paths[land, opt, seed] = descend(f, opt, cfg[f"{land}_lr"], starts[land], cfg[f"{land}_steps"])
    return Results(paths)


def verdict(res: Results, ctx: Context) -> Verdict:
    cfg, seeds = ctx.settings, ctx.seeds
    numbers: dict[str, float] = {}
    for opt in OPTIMIZERS:
        numbers[f"valley/{opt}/final_loss"] = float(
            np.mean([valley(res.paths["valley", opt, s][-1]).item() for s in seeds])
        )
    never = cfg["saddle_steps"] + 1  # a run that never escapes counts as steps + 1
    for opt in OPTIMIZERS:
        steps = [escape_step(res.paths["saddle", opt, s]) for s in seeds]
        numbers[f"saddle/{opt}/escape_step"] = float(np.mean([never if k is None else k for k in steps]))
    sgd_loss, sgd_escape = numbers["valley/sgd/final_loss"], numbers["saddle/sgd/escape_step"]
    checks = {}
    for opt in ("momentum", "nesterov"):
        loss = numbers[f"valley/{opt}/final_loss"]
        checks[f"valley: {opt} loss {loss:.3g} < sgd loss {sgd_loss:.3g} after {cfg['valley_steps']} steps"] = (
            loss < sgd_loss
        )
    for opt in ADAPTIVE:
        step = numbers[f"saddle/{opt}/escape_step"]
        checks[f"saddle: {opt} leaves it (|y| >= 1) at step {step:.0f} < sgd {sgd_escape:.0f}"] = (
            step < min(sgd_escape, never)
        )
    summary = (
        f"valley (lr {cfg['valley_lr']}): final loss sgd {sgd_loss:.3g}, momentum "
        f"{numbers['valley/momentum/final_loss']:.3g}, nesterov {numbers['valley/nesterov/final_loss']:.3g}; "
        f"saddle (lr {cfg['saddle_lr']}): escape step sgd {sgd_escape:.0f}, "
        + ", ".join(f"{opt} {numbers[f'saddle/{opt}/escape_step']:.0f}" for opt in ADAPTIVE)
    )
    return Verdict.from_checks(checks, numbers, summary)


def figure(res: Results, ctx: Context) -> list:
    cfg, seed = ctx.settings, ctx.seeds[0]
    fig, axes = new_figure(2, 2, size=(10.5, 8.0))
    colors = dict(zip(OPTIMIZERS, ("k", "tab:blue", "tab:cyan", "tab:green", "tab:orange", "tab:red"), strict=True))
    for col, (land, f) in enumerate(LANDSCAPES.items()):
        ax = axes[0, col]
        paths = {opt: res.paths[land, opt, seed].numpy() for opt in OPTIMIZERS}
        pts = np.concatenate([p for p in paths.values() if np.isfinite(p).all()])
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.15 * (hi - lo) + 0.2
        xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200)
        ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200)
        grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys), -1))
        ax.contour(xs, ys, f(grid).numpy(), levels=30, cmap="Greys", linewidths=0.6)
        for opt, p in paths.items():
            ax.plot(p[:, 0], p[:, 1], ".-", ms=2, lw=0.9, color=colors[opt], label=opt)
        ax.plot(*paths["sgd"][0], "k*", ms=10)
        ax.set(title=f"{land}: {f.__doc__.split(':')[0]}, lr {cfg[f'{land}_lr']}", xlabel="x", ylabel="y")
        ax.legend(fontsize=7)
    ax = axes[1, 0]
    for opt in OPTIMIZERS:
        ax.semilogy(valley(res.paths["valley", opt, seed]).numpy(), color=colors[opt], label=opt)
    ax.set(title="valley: loss per step", xlabel="step", ylabel="f(x, y)")
    ax = axes[1, 1]
    for opt in OPTIMIZERS:
        ax.semilogy(res.paths["saddle", opt, seed][:, 1].abs().numpy(), color=colors[opt], label=opt)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set(title="saddle: |y| per step (escaped at |y| >= 1)", xlabel="step", ylabel="|y|")
    fig.suptitle("Optimizers on a narrow valley and a saddle (Varma & Das, ch. 7, figs 7.3-7.5, 7.8)")
    return [save_figure(fig, ctx.path())]


_COMMON = {"valley_lr": 0.13, "valley_start": (-9.0, 1.5), "saddle_lr": 0.05, "saddle_start": (1.5, 1e-5)}

EXPERIMENT = Experiment(
    name="optimizers-2d",
    claim="In a narrow steep valley momentum and Nesterov reach a lower loss than plain gradient descent in "
    "the same steps at the same learning rate; near a saddle point Adagrad, RMSprop and Adam escape sooner.",
    source="Varma & Das, ch. 7 (section 7.1 figs 7.3-7.5; section 7.3 fig 7.8 and eqs 7.1-7.5)",
    profiles={
        "tiny": {**_COMMON, "valley_steps": 30, "saddle_steps": 60, "seeds": 1},
        "quick": {**_COMMON, "valley_steps": 100, "saddle_steps": 300, "seeds": 3},
        "paper": {**_COMMON, "valley_steps": 200, "saddle_steps": 1000, "seeds": 10},
    },
    run=run,
    verdict=verdict,
    figure=figure,
)
