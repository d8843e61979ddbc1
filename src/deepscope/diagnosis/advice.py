"""What a run's spec says, so that diagnosis advice can be specific: the activation, its fitting init, the lr.

Shared by the rule modules (:mod:`~deepscope.diagnosis.rules`, :mod:`~deepscope.diagnosis.rules.training`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["activation_name", "fitting_init", "spec_value"]

# initialization that fits an activation (Glorot & Bengio 2010; He et al. 2015; Klambauer et al. 2017)
_FITTING_INIT = {
    "sigmoid": "normalized (Glorot) initialization",
    "tanh": "normalized (Glorot) initialization",
    "softsign": "normalized (Glorot) initialization",
    "relu": "He initialization (std = sqrt(2 / fan_in))",
    "leaky_relu": "He initialization (std = sqrt(2 / fan_in))",
    "prelu": "He initialization (std = sqrt(2 / fan_in))",
    "elu": "He initialization (std = sqrt(2 / fan_in))",
    "gelu": "He initialization (std = sqrt(2 / fan_in))",
    "silu": "He initialization (std = sqrt(2 / fan_in))",
    "selu": "LeCun normal initialization (std = sqrt(1 / fan_in))",
}



def spec_value(spec: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in a (nested) spec dict or pydantic model."""
    if spec is None:
        return None
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if isinstance(spec, Mapping):
        if key in spec and not isinstance(spec[key], Mapping):
            return spec[key]
        for value in spec.values():
            found = spec_value(value, key)
            if found is not None:
                return found
    return None


def activation_name(spec: Any) -> str | None:
    name = spec_value(spec, "activation")
    return name if isinstance(name, str) else None


def fitting_init(activation: str | None, used: str | None = None) -> str:
    """The initialization that fits ``activation``, as advice; ``used``: the run's ``init.scheme``, said when it is
    that one already (the advice then points past the initialization)."""
    if activation in _FITTING_INIT:
        from deepscope.nn.activations import ACTIVATIONS

        scheme = ACTIVATIONS[activation].init  # the registry's pairing: the spec switch to set
        if used == scheme:
            return (f"{_FITTING_INIT[activation]}, the initialization that fits {activation} (init.scheme={scheme!r}, "
                    "which this run already uses: look at the other remedies)")
        return f"{_FITTING_INIT[activation]}, the initialization that fits {activation} (init.scheme={scheme!r})"
    return "the initialization that fits the activation (normalized/Glorot for tanh and softsign, He for ReLU)"


