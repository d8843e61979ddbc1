"""Activations and model builders."""

from deepscope.nn import activations
from deepscope.nn.activations import *  # noqa: F403  (the names of activations.__all__)
from deepscope.nn.models import convnet, mlp

__all__ = ["convnet", "mlp"]
__all__ += activations.__all__
