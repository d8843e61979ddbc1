"""The probe's options, checked before anything is attached: one-line errors naming the key, the value
and what is allowed."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from deepscope.probe.jacobian import JACOBIAN_METHODS
from deepscope.registry import integer, unknown

__all__ = ["check_options", "check_probe_kwargs", "monitor_to_model", "parse_monitor", "positive_int"]

# the options of a Probe that can be checked before the model is known
MODEL_FREE = ("bins", "jacobian_examples", "jacobian_every", "jacobian_method")


positive_int = integer


def check_options(
    every: int = 100,
    bins: int = 50,
    jacobian_examples: int = 10,
    jacobian_every: int | None = None,
    jacobian_method: str = "auto",
    start_step: int = 0,
) -> None:
    """Raise ``ValueError`` naming the option, its value and what is allowed, for the options of :class:`Probe`
    that do not depend on the model (so that a trainer can check them before training starts)."""
    positive_int("every", every)
    positive_int("bins", bins)
    positive_int("jacobian_examples", jacobian_examples, minimum=0)
    positive_int("start_step", start_step, minimum=0)
    if jacobian_every is not None and positive_int("jacobian_every", jacobian_every) % every != 0:
        raise ValueError(f"jacobian_every={jacobian_every!r} is not allowed; give a multiple of every={every}")
    if jacobian_method not in JACOBIAN_METHODS:
        raise unknown("jacobian_method", jacobian_method, JACOBIAN_METHODS)


def check_probe_kwargs(every: int, probe_kwargs: dict[str, Any]) -> None:
    """:func:`check_options` on the ``Probe`` keyword arguments a callback was given (the model-free ones), so a
    bad option fails when the callback is made, before any training (layer names are checked on the model)."""
    check_options(every, **{k: v for k, v in probe_kwargs.items() if k in MODEL_FREE})


def parse_monitor(monitor: Any) -> tuple[Tensor | None, Tensor | None]:
    """``monitor`` as ``(x, y)`` (``y`` None when only ``x`` is given)."""
    if monitor is None:
        return None, None
    if isinstance(monitor, Tensor):
        x, y = monitor, None
    elif isinstance(monitor, tuple | list) and len(monitor) == 2 and all(isinstance(t, Tensor) for t in monitor):
        x, y = monitor
        if len(x) != len(y):
            raise ValueError(f"monitor: x has {len(x)} examples but y has {len(y)}")
    else:
        raise ValueError(f"monitor={type(monitor).__name__} is not allowed; give a tensor x or a pair (x, y)")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(f"monitor: the monitor set has no examples (shape {tuple(x.shape)}); give at least one")
    return x, y


def monitor_to_model(x: Tensor | None, y: Tensor | None, model: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The monitor set on the model's device, float inputs in its float type (a float64 model, a float32 set)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None or x is None:
        return x, y
    x = x.to(param.device, param.dtype if x.is_floating_point() else x.dtype)
    return x, (y.to(param.device) if y is not None else None)
