"""deepscope: make deep networks train, and see why they do or don't.

The public verbs are functions and the nouns classes, imported here from the module that defines them::

    from deepscope import Probe, train, diagnose, doctor, repair, report

Heavy libraries (matplotlib, jinja2, kornia, typer) load inside the functions that use them, so
``import deepscope`` costs about what ``import torch`` costs.
"""

import sys as _sys
from importlib.metadata import PackageNotFoundError, version


def _interrupted_quietly(kind, value, tb, _default=_sys.excepthook):
    """Ctrl-C while the command line starts (importing torch, say): one line, not a traceback."""
    if issubclass(kind, KeyboardInterrupt):
        print("deepscope: interrupted", file=_sys.stderr)
    else:
        _default(kind, value, tb)


# The command line's own process only (`deepscope ...`, `python -m deepscope.cli`): it must be set before torch is
# imported below, so it cannot wait for deepscope.cli. A program that imports deepscope keeps its own hook.
if _sys.argv and (_sys.argv[0] == "-m" or _sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("deepscope",
                                                                                                  "deepscope.exe")):
    _sys.excepthook = _interrupted_quietly

try:
    __version__ = version("deepscope")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from deepscope.config import RunSpec, load_spec
from deepscope.data import get_dataset
from deepscope.data.preprocess import Preprocessor
from deepscope.diagnosis import Finding, diagnose
from deepscope.experiments import run_experiment
from deepscope.models import convnet, mlp
from deepscope.nn.activations import ACTIVATIONS, Maxout, PReLU, get_activation, make_activation
from deepscope.optim import make_loss, make_optimizer, make_schedule
from deepscope.plots.html import RunData
from deepscope.probe import Probe
from deepscope.probe.sinks import MLflowSink, StoreSink, TensorBoardSink, WandbSink
from deepscope.records import Records
from deepscope.store import Store
from deepscope.training.callbacks import Callback, TrainContext
from deepscope.training.loop import train
from deepscope.training.probe import TrainerProbe
from deepscope.workflows.doctor import doctor
from deepscope.workflows.repair import repair
from deepscope.workflows.report import report

__all__ = ["ACTIVATIONS", "Callback", "Finding", "MLflowSink", "Maxout", "PReLU", "Preprocessor", "Probe", "Records",
           "RunData", "RunSpec", "Store", "StoreSink", "TensorBoardSink", "TrainContext", "TrainerProbe", "WandbSink",
           "__version__", "convnet", "diagnose", "doctor", "get_activation", "get_dataset", "load_spec",
           "make_activation", "make_loss", "make_optimizer", "make_schedule", "mlp", "repair", "report",
           "run_experiment", "train"]
