"""deepscope: make deep networks train, and see why they do or don't."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepscope")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from deepscope.nn.activations import ACTIVATIONS, Maxout, PReLU, get_activation, make_activation
from deepscope.probe import Probe

__all__ = ["ACTIVATIONS", "Maxout", "PReLU", "Probe", "__version__", "get_activation", "make_activation"]
