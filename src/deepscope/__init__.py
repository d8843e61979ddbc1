"""deepscope: make deep networks train, and see why they do or don't.

The public API is re-exported here; everything but the probe loads on first use. The verbs are functions::

    from deepscope import Probe, train, diagnose, doctor, report

(``deepscope.train`` is :func:`deepscope.trainer.train`, ``deepscope.diagnose`` is
:func:`deepscope.diagnosis.diagnose`, ``deepscope.report`` is :func:`deepscope.plots.report`: no module of
the package has the name of a function it exports.)
"""

import sys as _sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version


def _interrupted_quietly(kind, value, tb, _default=_sys.excepthook):
    """Ctrl-C while the command line starts (importing torch, say): one line, not a traceback."""
    if issubclass(kind, KeyboardInterrupt):
        print("deepscope: interrupted", file=_sys.stderr)
    else:
        _default(kind, value, tb)


# only for the command line (`deepscope ...`, or `python -m deepscope.cli` while it is located), not for importers
if _sys.argv and (_sys.argv[0] == "-m" or _sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("deepscope",
                                                                                                  "deepscope.exe")):
    _sys.excepthook = _interrupted_quietly

try:
    __version__ = version("deepscope")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from deepscope.nn.activations import ACTIVATIONS, Maxout, PReLU, get_activation, make_activation  # noqa: E402
from deepscope.probe import Probe  # noqa: E402

_LAZY = {
    "train": "deepscope.trainer",
    "Guard": "deepscope.training.guard",
    "diagnose": "deepscope.diagnosis",
    "doctor": "deepscope.diagnosis",
    "repair": "deepscope.diagnosis",
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
    "StoreSink": "deepscope.probe.sinks",
    "TensorBoardSink": "deepscope.probe.sinks",
    "WandbSink": "deepscope.probe.sinks",
    "MLflowSink": "deepscope.probe.sinks",
}


def __getattr__(name: str):
    if name == "init":
        return import_module("deepscope.init")
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepscope' has no attribute {name!r}")


__all__ = ["ACTIVATIONS", "Maxout", "PReLU", "Probe", "__version__", "get_activation", "make_activation", *_LAZY]
