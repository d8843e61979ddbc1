"""Deprecated: the training-curve rules moved to :mod:`deepscope.diagnosis.rules.training` (this alias goes in the
next release)."""

import warnings

from deepscope.diagnosis.rules.training import *  # noqa: F403
from deepscope.diagnosis.rules.training import __all__  # noqa: F401

warnings.warn("deepscope.diagnosis.rules_training moved to deepscope.diagnosis.rules.training", DeprecationWarning,
              stacklevel=2)
