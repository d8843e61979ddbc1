"""Activations: the registry, their gains, Maxout and the per-neuron PReLU (the model builders are in
:mod:`deepscope.models`)."""

from deepscope.nn.activations import *  # noqa: F403  (the names of activations.__all__)
from deepscope.nn.activations import __all__  # noqa: F401
