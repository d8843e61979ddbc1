"""Optimizers, learning-rate schedules, gradient clipping and losses, by name (``torch.optim`` underneath).

The update equations and defaults are those of Varma & Das, ch. 7, section 7.3 ("Improvements to the Parameter
Update Equation"); each registry entry states its equation in the text's notation (``g(n)`` the
gradient at step ``n``, ``eta`` the learning rate) and where ``torch.optim`` writes it differently.

Registries: :data:`OPTIMIZERS`, :data:`SCHEDULES`, :data:`LOSSES`; an unknown name raises a ``ValueError``
that lists the valid ones. :data:`SCHEDULE_STEPS_ON` says whether a schedule is stepped after every
update or after every evaluation; :func:`step_schedule` does the right call.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import lr_scheduler

from deepscope.registry import lookup, register

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_STEPS_ON",
    "OptimizerSpec",
    "clip_gradients",
    "cross_entropy",
    "get_optimizer",
    "make_loss",
    "make_optimizer",
    "make_schedule",
    "quadratic",
    "schedule_steps_on",
    "step_schedule",
]

Schedule = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


# --- optimizers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: the ``torch.optim`` class, the texts' defaults that override torch's, the update.

    ``update`` is the equation in the text's notation; ``note`` says how ``torch.optim`` differs from it.
    """

    name: str
    cls: type[torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    update: str = ""
    note: str = ""

    def allowed(self) -> list[str]:
        """The keyword arguments the torch class accepts besides ``params`` and ``lr``."""
        names = inspect.signature(self.cls).parameters
        return [n for n in names if n not in ("self", "params", "lr")]

    def __call__(self, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        return self.cls(params, lr=lr, **{**self.defaults, **kwargs})


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec(
            "sgd", torch.optim.SGD, {},
            update="w(n+1) = w(n) - eta g(n)",
            note="plain (stochastic) gradient descent, Varma & Das, ch. 7, section 7.1",
        ),
        OptimizerSpec(
            "momentum", torch.optim.SGD, {"momentum": 0.9},
            update="v(n) = rho v(n-1) - eta g(n); w(n+1) = w(n) + v(n)   (eq. 7.1, rho = 0.9)",
            note="torch keeps b(n) = rho b(n-1) + g(n) and steps w -= eta b(n): the same iterates while "
            "eta is constant (v = -eta b); under a schedule torch applies the current eta to the whole "
            "velocity, the text only to the new gradient",
        ),
        OptimizerSpec(
            "nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True},
            update="v(n) = rho v(n-1) - eta g(w(n) + rho v(n-1)); w(n+1) = w(n) + v(n)   (section 7.3.2, rho = 0.9)",
            note="torch stores the look-ahead point u(n) = w(n) + rho v(n-1) as the parameter (Sutskever et al. "
            "2013): b(n) = rho b(n-1) + g(u(n)), u(n+1) = u(n) - eta (g(u(n)) + rho b(n)); the same "
            "trajectory in the variables u, with v = -eta b",
        ),
        OptimizerSpec(
            "adagrad", torch.optim.Adagrad, {"eps": 1e-7},
            update="w(n+1) = w(n) - eta g(n) / sqrt(sum_{i<=n} g(i)^2 + eps)   (eq. 7.4, eps = 1e-7)",
            note="torch adds eps outside the root, sqrt(sum g^2) + eps (torch's default eps is 1e-10; the "
            "text's 1e-7 is used); the text suggests eta = 0.01",
        ),
        OptimizerSpec(
            "rmsprop", torch.optim.RMSprop, {"alpha": 0.9},
            update="E(n) = rho E(n-1) + (1 - rho) g(n)^2; w(n+1) = w(n) - eta g(n) / sqrt(E(n) + eps)   "
            "(eq. 7.5, rho = 0.9)",
            note="the text's rho is torch's alpha (torch's default is 0.99; the text's 0.9 is used); torch adds "
            "eps = 1e-8 outside the root, sqrt(E) + eps",
        ),
        OptimizerSpec(
            "adam", torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-8},
            update="m(n) = b1 m(n-1) + (1 - b1) g(n); s(n) = b2 s(n-1) + (1 - b2) g(n)^2; "
            "w(n+1) = w(n) - eta m(n)/(1 - b1^n) / (sqrt(s(n)/(1 - b2^n)) + eps)   "
            "(section 7.3.5, b1 = 0.9, b2 = 0.999, eps = 1e-8)",
            note="the text's Lambda, Delta are m, s and its (beta, alpha) are torch's betas; the text puts eps "
            "inside the root, torch (and Kingma & Ba 2015) outside",
        ),
        OptimizerSpec(
            "adamw", torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-8},
            update="w(n+1) = w(n) - eta lambda w(n) - eta m_hat(n) / (sqrt(s_hat(n)) + eps)   "
            "(Loshchilov & Hutter 2019; lambda = weight_decay = 0.01)",
            note="Adam with weight decay decoupled from the gradient (a later method than the texts cover)",
        ),
    ]
}


def get_optimizer(name: str) -> OptimizerSpec:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    return lookup(OPTIMIZERS, "optimizer", name)


def make_optimizer(name: str, params: Iterable | nn.Module, lr: float, **kwargs) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params`` (parameters, parameter groups, or a module).

    ``kwargs`` go to the ``torch.optim`` class and override the texts' defaults, e.g.
    ``make_optimizer("rmsprop", model, 1e-3, alpha=0.99)``; an argument the class does not take is an error.
    """
    spec = get_optimizer(name)
    if not lr > 0:
        raise ValueError(f"optimizer {name!r}: lr={lr!r} must be > 0")
    allowed = spec.allowed()
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(
            f"optimizer {name!r} ({spec.cls.__name__}) got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )
    if isinstance(params, nn.Module):
        params = params.parameters()
    return spec(params, lr, **kwargs)


# --- learning-rate schedules ------------------------------------------------------------------------
# Every schedule is stepped once per optimizer update, except reduce_on_plateau, which is stepped once
# per evaluation with the validation accuracy (see SCHEDULE_STEPS_ON and step_schedule).


def _need_total(name: str, total_updates: int | None) -> int:
    if isinstance(total_updates, bool) or not isinstance(total_updates, int) or total_updates < 1:
        raise ValueError(f"schedule {name!r} needs total_updates (an int >= 1); got total_updates={total_updates!r}")
    return total_updates


def constant(optimizer: torch.optim.Optimizer, total_updates: int | None = None) -> lr_scheduler.LambdaLR:
    """eta(t) = eta0."""
    return lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)


def step(optimizer: torch.optim.Optimizer, total_updates: int | None = None, *, step_size: int,
         gamma: float = 0.1) -> lr_scheduler.StepLR:
    """eta(t) = eta0 gamma^floor(t / step_size): annealing by the number of updates (Varma & Das, ch. 7, 7.2)."""
    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def exponential(optimizer: torch.optim.Optimizer, total_updates: int | None = None, *,
                gamma: float) -> lr_scheduler.ExponentialLR:
    """eta(t) = eta0 gamma^t (Varma & Das, ch. 7, section 7.2)."""
    return lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def cosine(optimizer: torch.optim.Optimizer, total_updates: int | None = None, *,
           eta_min: float = 0.0) -> lr_scheduler.CosineAnnealingLR:
    """eta(t) = eta_min + (eta0 - eta_min) (1 + cos(pi t / T)) / 2, T = total_updates (Loshchilov & Hutter 2017).

    Past ``T`` torch's cosine rises again; size ``total_updates`` to the whole run.
    """
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=_need_total("cosine", total_updates), eta_min=eta_min)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_updates: int | None = None, *,
                  warmup_updates: int | None = None, eta_min: float = 0.0) -> lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to ``eta_min`` (as in karpathy's nanoGPT).

    eta(t) = eta0 (t + 1) / (W + 1) for t < W, then eta_min + (eta0 - eta_min) (1 + cos(pi r)) / 2 with
    r = (t - W) / (T - W), held at eta_min after T. W = warmup_updates (default T // 10), T = total_updates.
    """
    total = _need_total("warmup_cosine", total_updates)
    warmup = total // 10 if warmup_updates is None else warmup_updates
    if not 0 <= warmup < total:
        raise ValueError(f"schedule 'warmup_cosine': warmup_updates={warmup!r} must be in [0, total_updates={total})")

    def factor(base_lr: float) -> Callable[[int], float]:
        def f(t: int) -> float:
            if t < warmup:
                return (t + 1) / (warmup + 1)
            r = min(1.0, (t - warmup) / (total - warmup))
            lr = eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * r))
            return lr / base_lr if base_lr else 0.0

        return f

    return lr_scheduler.LambdaLR(optimizer, [factor(g["lr"]) for g in optimizer.param_groups])


def reduce_on_plateau(optimizer: torch.optim.Optimizer, total_updates: int | None = None, *, factor: float = 0.1,
                      patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                      min_lr: float = 0.0, eps: float = 1e-8) -> lr_scheduler.ReduceLROnPlateau:
    """Multiply eta by ``factor`` when the validation accuracy stops improving (Varma & Das, ch. 7, section 7.2).

    Stepped once per evaluation with the validation accuracy (mode "max"). An evaluation improves when
    accuracy > best (1 + threshold) (threshold_mode "rel"); eta is reduced at the (patience + 1)-th
    consecutive evaluation without improvement, then ``cooldown`` evaluations are ignored.
    """
    return lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=factor, patience=patience, threshold=threshold,
        threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps,
    )


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step": step,
    "exponential": exponential,
    "cosine": cosine,
    "warmup_cosine": warmup_cosine,
    "reduce_on_plateau": reduce_on_plateau,
}

SCHEDULE_STEPS_ON: dict[str, str] = {name: "update" for name in SCHEDULES} | {"reduce_on_plateau": "eval"}
"""When each schedule is stepped: ``"update"`` after every optimizer step, ``"eval"`` after every evaluation."""


def make_schedule(name: str, optimizer: torch.optim.Optimizer, total_updates: int | None = None,
                  **kwargs) -> Schedule:
    """Build schedule ``name`` on ``optimizer``; ``kwargs`` are the schedule's own (see its function)."""
    fn = lookup(SCHEDULES, "schedule", name)
    params = inspect.signature(fn).parameters
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(
            f"schedule {name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    missing = [n for n in allowed if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ValueError(f"schedule {name!r} needs {', '.join(missing)}; allowed: {', '.join(allowed)}")
    return fn(optimizer, total_updates, **kwargs)


def schedule_steps_on(schedule: Schedule) -> str:
    """``"eval"`` for a schedule stepped on the validation accuracy, ``"update"`` for the others."""
    return "eval" if isinstance(schedule, lr_scheduler.ReduceLROnPlateau) else "update"


def step_schedule(schedule: Schedule, metric: float | Tensor | None = None) -> None:
    """Advance ``schedule`` by one step; ``metric`` is the validation accuracy reduce_on_plateau needs.

    Call it after every update for "update" schedules (``metric`` is ignored) and after every evaluation
    for "eval" ones (see :func:`schedule_steps_on`).
    """
    if isinstance(schedule, lr_scheduler.ReduceLROnPlateau):
        if metric is None:
            raise ValueError(
                "schedule 'reduce_on_plateau' steps on the validation accuracy: call "
                "step_schedule(schedule, metric=valid_accuracy) after each evaluation"
            )
        schedule.step(metric)
    else:
        schedule.step()


# --- gradient clipping ------------------------------------------------------------------------------


def clip_gradients(parameters: Iterable[Tensor] | Tensor, max_norm: float | None = None,
                   max_value: float | None = None) -> Tensor:
    """Clip gradients in place by total 2-norm and/or by value; return the total norm before clipping.

    ``max_norm``: scale all gradients by max_norm / (norm + 1e-6) when their joint 2-norm exceeds it
    (Pascanu et al. 2013); ``max_value``: clamp every element to [-max_value, max_value]. With both, the norm
    is clipped first. The returned norm is a tensor on the gradients' device (no host synchronisation).
    """
    for key, value in (("max_norm", max_norm), ("max_value", max_value)):
        if value is not None and not value > 0:
            raise ValueError(f"clip_gradients: {key}={value!r} must be > 0 (or None for no clipping)")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is not None:
        total = nn.utils.clip_grad_norm_(params, max_norm)
    else:
        total = nn.utils.get_total_norm(grads)
    if max_value is not None:
        nn.utils.clip_grad_value_(params, max_value)
    return total


# --- losses -----------------------------------------------------------------------------------------


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -log softmax(logits)[target]: the conditional log-likelihood cost."""
    return F.cross_entropy(logits, targets)


def quadratic(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of sum_k (softmax(logits)_k - onehot(target)_k)^2 (Glorot & Bengio 2010, section 4.1).

    The quadratic cost on the softmax outputs that Glorot & Bengio compare with the log-likelihood cost
    (their Figure 5: it has plateaus).
    """
    probs = logits.softmax(dim=-1)
    onehot = F.one_hot(targets, probs.shape[-1]).to(probs.dtype)
    return (probs - onehot).square().sum(dim=-1).mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": cross_entropy,
    "quadratic": quadratic,
}


def make_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``name`` as a function ``(logits, integer targets) -> scalar tensor``."""
    return lookup(LOSSES, "loss", name)

register("optimizers", OPTIMIZERS)
register("schedules", SCHEDULES)
register("losses", LOSSES)
