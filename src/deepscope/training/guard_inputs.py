"""What :class:`~deepscope.training.guard.Guard` accepts besides its options: the parts it is given (schedule, loss,
sinks, probe, snapshot device) and, at every update, the loss and gradient norm. A bad one is a TypeError or
ValueError naming the argument, the value given and what is allowed -- at construction where it can be told then,
not at the first spike hours into a run."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.parameter import is_lazy

from deepscope.probe.options import check_loss_fn

__all__ = ["check_parts", "scalar", "steps_scheduler"]


def check_parts(optimizer: Any, scheduler: Any, loss_fn: Any, sinks: Any, probe: Any, snapshot_device: Any,
                step_scheduler: Any) -> tuple[list[Any], torch.device | None]:
    """Check the guard's parts; returns the sinks as a list and the snapshot device."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TypeError("Guard: optimizer=LBFGS is not supported: it evaluates the loss several times per step "
                        "through a closure, and the guard checks one loss per update; give an optimizer whose "
                        "step() needs no closure (SGD, Adam, AdamW, RMSprop, Adagrad, ...)")
    if any(is_lazy(p) for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("Guard: the optimizer holds uninitialized parameters (a lazy module: nn.LazyLinear, "
                         "nn.LazyConv2d, ...), which the guard cannot snapshot; run the model on one batch before "
                         "making the guard")
    if isinstance(scheduler, type):
        raise TypeError(f"Guard: scheduler=the class {scheduler.__name__} is not allowed; give a schedule built on the "
                        f"optimizer, e.g. {scheduler.__name__}(optimizer, ...), or None")
    if scheduler is not None and (isinstance(scheduler, torch.optim.Optimizer) or not all(
            callable(getattr(scheduler, a, None)) for a in ("step", "state_dict", "load_state_dict"))):
        raise TypeError(f"Guard: scheduler={type(scheduler).__name__} is not allowed; give a learning-rate schedule "
                        "(torch.optim.lr_scheduler: step, state_dict, load_state_dict) or None")
    if scheduler is not None and _inner(getattr(scheduler, "optimizer", optimizer)) is not _inner(optimizer):
        raise ValueError(f"Guard: scheduler={type(scheduler).__name__} drives another optimizer "
                         f"({type(scheduler.optimizer).__name__}); give the schedule built on the guard's optimizer "
                         f"({type(optimizer).__name__}), or None")
    check_loss_fn(loss_fn)  # the probe's check: callable or None
    if not isinstance(sinks, Iterable) or isinstance(sinks, str | bytes):
        raise TypeError(f"Guard: sinks={type(sinks).__name__} is not allowed; give a list of sinks")
    sinks = list(sinks)
    if bad := [s for s in sinks if not callable(getattr(s, "write", None))]:
        raise TypeError(f"Guard: sinks item {bad[0]!r} is not allowed; give objects with write(stats_rows, "
                        "histogram_rows) (the probe's sinks)")
    if probe is not None and not isinstance(getattr(probe, "records", None), list):
        raise TypeError(f"Guard: probe={type(probe).__name__} is not allowed; give a deepscope.Probe or None")
    if not isinstance(step_scheduler, bool):
        raise ValueError(f"Guard: step_scheduler={step_scheduler!r} is not allowed; give True or False")
    if snapshot_device is None:
        return sinks, None
    try:
        if not isinstance(snapshot_device, str | torch.device):
            raise TypeError
        return sinks, torch.device(snapshot_device)
    except (TypeError, RuntimeError):
        raise ValueError(f"Guard: snapshot_device={snapshot_device!r} is not allowed; give a torch device such as "
                         "'cpu' or 'cuda:0', or None (where the parameters are)") from None


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside optimizer wrappers (accelerate's ``AcceleratedOptimizer``: ``.optimizer``)."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def steps_scheduler(scheduler: Any, step_scheduler: bool) -> bool:
    """Whether the guard steps ``scheduler`` after each applied update: not a ``ReduceLROnPlateau``, which needs
    the user's metric (``scheduler.step(metric)``, typically once per evaluation); it is still rolled back."""
    return step_scheduler and scheduler is not None and \
        not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def scalar(name: str, value: Any, device: torch.device | None = None) -> Tensor:
    """``value`` (a one-element tensor or a real number, or for the loss a model output holding one under "loss")
    as a 0-d float32 tensor, or an error naming ``name``."""
    if isinstance(value, Tensor):  # first: the loss of every update goes through here
        if value.numel() != 1:
            what = "the batch's mean loss" if name == "loss" else "the total gradient norm"
            raise ValueError(f"guard.step: {name} has shape {tuple(value.shape)}; give one number ({what}, a tensor "
                             "of one element)")
        t = value.detach()
        t = t if t.dim() == 0 else t.reshape(())
        return t if t.dtype == torch.float32 else t.float()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), device=device)
    if name == "loss" and isinstance(value, Mapping) and "loss" in value:  # a model output (Hugging Face) with its loss
        return scalar(name, value["loss"], device)
    shown = repr(value) if len(repr(value)) <= 60 else type(value).__name__  # not a whole tuple of tensors
    raise TypeError(f"guard.step: {name}={shown} is not allowed; give a tensor of one element or a number"
                    + (" (of a model's output: its loss, e.g. output[0] or output['loss'])" if name == "loss" else ""))
