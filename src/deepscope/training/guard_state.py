"""The guard's snapshots (model, optimizer, schedule, RNG, window: kept in memory, copied into the spare
snapshot's tensors so that a snapshot allocates nothing after the first two) and the probe's pathologies it
turns into events."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["new_pathologies", "restore_snapshot", "take_snapshot"]


def take_snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, device: torch.device,
                  to: torch.device | None, extra: dict[str, Any], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model, optimizer, schedule and RNG state (and ``extra``, kept as given) on ``to`` (None: where they are);
    tensors copied into ``into``'s (an older snapshot no longer needed) where they fit. The optimizer's parameters
    that are not the model's are kept too (``outside``: the tensors and their values)."""
    into = into or {}
    outside = _outside(model, optimizer)
    return {
        "model": _keep(model.state_dict(), into.get("model"), to),
        "outside": (outside, _keep([p.detach() for p in outside], into.get("outside", (None, None))[1], to)),
        "optimizer": _keep(optimizer.state_dict(), into.get("optimizer"), to),
        "scheduler": copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
        "rng": (torch.get_rng_state(), torch.cuda.get_rng_state_all() if device.type == "cuda" else []),
        **extra,
    }


def restore_snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, snap: dict[str, Any],
                     buffers: Any = None) -> None:
    """Put a snapshot's model, optimizer, schedule and RNG back (the snapshot stays intact: it may be used again);
    ``buffers`` (:class:`~.guard_buffers.MovingBuffers`) are told the restored running statistics are the good ones."""
    model.load_state_dict(snap["model"])
    with torch.no_grad():  # the optimizer's parameters outside the model (a learnable loss weight, a temperature)
        for p, value in zip(*snap["outside"], strict=True):
            p.copy_(value)
    optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    if scheduler is not None and snap["scheduler"] is not None:
        scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
    torch.set_rng_state(snap["rng"][0])
    if snap["rng"][1]:
        torch.cuda.set_rng_state_all(snap["rng"][1])
    if buffers is not None:
        buffers.keep()


def _outside(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters the optimizer trains that are not the model's (not in its state dict, so kept apart)."""
    own = {id(p) for p in model.parameters()}
    return [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]


def new_pathologies(rows: list[dict[str, Any]], base: dict, hit: set) -> list[tuple[str, str, float, float]]:
    """``(layer, stat, value, first value)`` of the probe rows where a layer's dead or saturated fraction rises past
    the diagnosis threshold while it started under it (each layer and statistic once; ``base`` and ``hit`` carry
    the first values and the layers reported across calls)."""
    from deepscope.diagnosis.rules.layers import DEAD_FRACTION, SATURATION_FRACTION

    limits = {"dead": DEAD_FRACTION, "saturated": SATURATION_FRACTION}
    found = []
    for r in rows:
        if r["quantity"] != "activation" or r["stat"] not in limits:
            continue
        key = (r["source"], r["layer"], r["stat"])
        first = base.setdefault(key, r["value"])
        if r["value"] >= limits[r["stat"]] > first and key not in hit:
            hit.add(key)
            found.append((r["layer"], r["stat"], r["value"], first))
    return found


def _keep(obj: Any, old: Any, to: torch.device | None) -> Any:
    """A copy of ``obj`` (a state dict: tensors in dicts and lists) on ``to`` (None: where it is), its tensors
    written into ``old``'s where shape, type and device match."""
    if isinstance(obj, Tensor):
        t = obj.detach()
        device = to if to is not None else t.device
        if isinstance(old, Tensor) and old.shape == t.shape and old.dtype == t.dtype and old.device == device:
            return old.copy_(t)
        return t.to(device, copy=True)
    if isinstance(obj, dict):
        old = old if isinstance(old, dict) else {}
        return {k: _keep(v, old.get(k), to) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        old = old if isinstance(old, list | tuple) and len(old) == len(obj) else [None] * len(obj)
        return type(obj)(_keep(v, o, to) for v, o in zip(obj, old, strict=True))
    return copy.deepcopy(obj)
