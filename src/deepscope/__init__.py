"""deepscope: make deep networks train, and see why they do or don't.

The public API is re-exported here; everything but the probe loads on first use. The verbs are functions::

    from deepscope import Probe, train, diagnose, doctor, report

(``deepscope.train`` is :func:`deepscope.trainer.train`, ``deepscope.diagnose`` is
:func:`deepscope.diagnosis.diagnose`, ``deepscope.report`` is :func:`deepscope.plots.report`: no module of
the package has the name of a function it exports.)
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepscope")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from deepscope.nn.activations import ACTIVATIONS, Maxout, PReLU, get_activation, make_activation
from deepscope.probe import Probe

_LAZY = {
    "train": "deepscope.trainer",
    "diagnose": "deepscope.diagnosis",
    "doctor": "deepscope.diagnosis",
    "report": "deepscope.plots",
    "run_experiment": "deepscope.experiments",
    "mlp": "deepscope.nn.models",
    "convnet": "deepscope.nn.models",
    "make_optimizer": "deepscope.optim",
    "make_schedule": "deepscope.optim",
    "make_loss": "deepscope.optim",
    "get_dataset": "deepscope.data",
    "Preprocessor": "deepscope.data.preprocess",
    "RunSpec": "deepscope.config",
    "load_spec": "deepscope.config",
    "Store": "deepscope.store",
    "Records": "deepscope.records",
    "Callback": "deepscope.callbacks",
    "TrainContext": "deepscope.callbacks",
    "Finding": "deepscope.diagnosis",
    "RunData": "deepscope.plots",
    "TrainerProbe": "deepscope.probe.trainer",
}


def __getattr__(name: str):
    if name == "init":
        return import_module("deepscope.init")
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepscope' has no attribute {name!r}")


__all__ = ["ACTIVATIONS", "Maxout", "PReLU", "Probe", "__version__", "get_activation", "make_activation", *_LAZY]
