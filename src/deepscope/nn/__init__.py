"""Activations and model builders (``mlp``, ``convnet`` and ``build_model`` load on first use: the builders
apply :mod:`deepscope.init`, which itself reads the activation registry)."""

from importlib import import_module

from deepscope.nn import activations
from deepscope.nn.activations import *  # noqa: F403  (the names of activations.__all__)

_MODELS = ("build_model", "convnet", "mlp")
__all__ = [*_MODELS, *activations.__all__]


def __getattr__(name: str):
    if name in _MODELS:
        return getattr(import_module("deepscope.nn.models"), name)
    raise AttributeError(f"module 'deepscope.nn' has no attribute {name!r}")
