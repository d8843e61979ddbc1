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
from deepscope.nn.models import convnet, mlp

__all__ = [
    "ACTIVATIONS",
    "ActivationSpec",
    "Maxout",
    "PReLU",
    "Softsign",
    "convnet",
    "get_activation",
    "make_activation",
    "mlp",
    "spec_for_module",
]
