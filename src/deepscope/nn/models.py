"""Deprecated: the model builders moved to :mod:`deepscope.models` (this alias goes in the next release)."""

import warnings

from deepscope.models import build_model, convnet, mlp

warnings.warn("deepscope.nn.models moved to deepscope.models", DeprecationWarning, stacklevel=2)

__all__ = ["build_model", "convnet", "mlp"]
