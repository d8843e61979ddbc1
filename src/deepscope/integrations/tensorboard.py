"""Deprecated: the TensorBoard reader moved to :mod:`deepscope.integrations.trackers` (this alias goes in the next
release)."""

import warnings

from deepscope.integrations.trackers import *  # noqa: F403
from deepscope.integrations.trackers import __all__  # noqa: F401

warnings.warn("deepscope.integrations.tensorboard moved to deepscope.integrations.trackers", DeprecationWarning,
              stacklevel=2)
