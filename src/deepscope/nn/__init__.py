"""Activations and model builders."""

from deepscope.nn.activations import (
    ACTIVATIONS,
    ActivationSpec,
    Maxout,
    PReLU,
    Softsign,
    get_activation,
    make_activation,
    spec_for_module,
)

__all__ = [
    "ACTIVATIONS",
    "ActivationSpec",
    "Maxout",
    "PReLU",
    "Softsign",
    "get_activation",
    "make_activation",
    "spec_for_module",
]
