"""Checks a run spec passes before anything is created: every parameter of every registry entry is tried.

The registries check names and keys against signatures (:mod:`deepscope.config`); a value of the right
key can still be of the wrong type or out of range (``init.std="abc"``, ``schedule.step_size=0``,
``optim.momentum=-1``) and fail only once training has started. :func:`dry_run` builds each chosen entry
(initialization scheme, optimizer, schedule, activation, augmentation) on a tiny tensor, steps it, and
turns any failure into one ``ValueError`` naming the user's key (``section.key=value``) and the reason.
:func:`check_batch_size` bounds ``train.batch_size`` by the training set and by the machine's memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from deepscope.registry import register

__all__ = ["check_augment", "check_batch_size", "dry_run"]

MEMORY_SHARE = 0.5  # a training batch may use at most this share of the machine's memory (estimated)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _culprit(call: Callable[[dict], Any], params: dict) -> str | None:
    """The key of ``params`` without which ``call`` succeeds (the bad one), if there is one."""
    import torch

    for key in params:
        try:
            with torch.random.fork_rng(devices=[]):
                call({k: v for k, v in params.items() if k != key})
        except Exception:  # noqa: BLE001 - still failing: not this key
            continue
        return key
    return None


def _try(section: str, what: str, call: Callable[[dict], Any], params: dict) -> None:
    """Run ``call(params)``; on failure raise one line naming ``section.<key>`` (the culprit, when one is)."""
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{section}.{key}={value!r} is not a finite number")
    import torch

    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random numbers stay as they were
            call(params)
    except Exception as e:  # noqa: BLE001 - any failure of a registry entry is the user's value
        key = _culprit(call, params)
        where = f"{section}.{key}={params[key]!r}" if key else \
            ", ".join(f"{section}.{k}={v!r}" for k, v in params.items()) or section
        raise ValueError(f"{where} is not accepted by {what} ({_first_line(e)})") from None


def _finite(tensors, what: str) -> None:
    import torch

    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise ValueError(f"{what} gives non-finite values")


def _init(scheme: str, params: dict) -> None:
    import torch
    from torch import nn

    from deepscope.init import SCHEMES, apply

    if scheme not in SCHEMES:
        return
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    if scheme == "lsuv":
        apply(net, "lsuv", x=torch.randn(32, 6, generator=generator), **params)
    else:
        apply(net, scheme, **params)
    _finite([p.detach() for p in net.parameters()], f"init.scheme={scheme!r}")


def _optimizer(name: str, lr: float, params: dict, schedule: tuple[str, dict] | None = None,
               total: int | None = None) -> None:
    import torch

    from deepscope.optim import make_optimizer, make_schedule, step_schedule

    w = torch.zeros(3, requires_grad=True)
    optimizer = make_optimizer(name, [w], lr, **params)
    sched = make_schedule(schedule[0], optimizer, total_updates=total, **schedule[1]) if schedule else None
    for _ in range(3):
        w.grad = torch.ones(3)
        optimizer.step()
        if sched is not None:
            step_schedule(sched, metric=0.5)
    _finite([w.detach(), torch.tensor([g["lr"] for g in optimizer.param_groups])], f"optimizer {name!r}")


_PASSED: set[str] = set()  # the registry choices already tried in this process (a sweep validates many specs)


def dry_run(spec) -> None:
    """Build and step every registry entry ``spec`` (a :class:`~deepscope.config.RunSpec`) names, on tiny tensors."""
    import json

    key = json.dumps([spec.init.model_dump(mode="json"), spec.optim.model_dump(mode="json"),
                      spec.schedule.model_dump(mode="json"), spec.train.updates, spec.model.activation,
                      spec.model.activation_kwargs], sort_keys=True, default=repr)
    if key not in _PASSED:
        _dry_run(spec)
        if len(_PASSED) < 10000:
            _PASSED.add(key)


def _dry_run(spec) -> None:
    import torch

    from deepscope.models import _activation

    _try("init", f"init scheme {spec.init.scheme!r}", lambda p: _init(spec.init.scheme, p), spec.init.params)
    _try("optim", f"optimizer {spec.optim.name!r}", lambda p: _optimizer(spec.optim.name, spec.optim.lr, p),
         spec.optim.params)
    total = spec.train.updates or 1000  # with epochs the length is known once the data are
    if spec.schedule.name != "constant" or spec.schedule.params:
        _try("schedule", f"schedule {spec.schedule.name!r}", lambda p: _optimizer(
            spec.optim.name, spec.optim.lr, spec.optim.params, (spec.schedule.name, p), total), spec.schedule.params)

    def activation(p: dict) -> None:
        act = _activation(spec.model.activation, p, (4,), (4, 1, 1), default_per="neuron")
        _finite([act(torch.linspace(-3, 3, 8).reshape(2, 4))], f"model.activation={spec.model.activation!r}")

    _try("model.activation_kwargs", f"activation {spec.model.activation!r}", activation, spec.model.activation_kwargs)


def check_augment(names: tuple[str, ...], options: dict) -> None:
    """Apply the augmentations ``names`` with ``options`` to a tiny RGB batch; one line naming the bad option."""
    import json

    import torch

    from deepscope.data import make_augment

    try:
        make_augment(list(names))
    except (ValueError, TypeError) as e:
        raise ValueError(f"data.augment={list(names)!r}: {e}") from None
    key = json.dumps([names, options], sort_keys=True, default=repr)
    if key in _PASSED:
        return
    _try("data.augment_options", f"augmentation {', '.join(names)}",
         lambda p: make_augment(list(names), **p)(torch.rand(2, 3, 8, 8)), options)
    _PASSED.add(key)


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_size(spec, data) -> None:
    """``train.batch_size`` at most the training set (in memory), and a batch's estimated memory (inputs and,
    three times over for the forward pass, backward pass and gradients, every hidden layer's outputs, in
    float32) at most MEMORY_SHARE of the machine's memory."""
    b = spec.train.batch_size
    if data.train is not None and b > len(data.train[0]):
        raise ValueError(f"train.batch_size={b} is larger than the training set of data.name={data.name!r} "
                         f"({len(data.train[0])} examples); give at most {len(data.train[0])}")
    inputs = math.prod(data.input_shape)
    m = spec.model
    hidden = m.depth * m.width * (m.maxout_k if m.activation == "maxout" else 1) if m.builder == "mlp" else \
        sum(m.channels) * math.prod(data.input_shape[1:])
    per_example = 4 * (inputs + 3 * hidden)
    memory = _memory_bytes()
    if memory is not None and b * per_example > MEMORY_SHARE * memory:
        most = int(MEMORY_SHARE * memory // per_example)
        need = b * per_example / 2**30
        if most < 1:  # not the batch: one example of this network does not fit
            size = (f"model.depth={m.depth} x model.width={m.width}" if m.builder == "mlp" else
                    f"model.channels={m.channels} on {tuple(data.input_shape)} inputs")
            raise ValueError(f"{size}: one example needs about {per_example / 2**30:.3g} GiB (layer outputs, "
                             f"float32), more than half of this machine's {memory / 2**30:.3g} GiB; make the "
                             "network smaller")
        raise ValueError(f"train.batch_size={b} needs about {need:.3g} GiB for one batch (inputs and "
                         f"layer outputs, float32), more than half of this machine's {memory / 2**30:.3g} GiB; "
                         f"give at most {most}")


register("spec_checks", {"dry_run": dry_run, "augment": check_augment})
