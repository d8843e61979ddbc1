"""deepscope where people already train: Lightning and Hugging Face callbacks, experiment-tracker sinks,
and runs read back from a TensorBoard log directory.

Each framework lives in its own module and is imported only when used (``deepscope[lightning]``,
``[transformers]``, ``[wandb]``, ``[mlflow]``, ``[tensorboard]`` extras):

- :mod:`deepscope.integrations.lightning`: ``DeepscopeCallback`` for ``lightning.pytorch.Trainer``;
- :mod:`deepscope.integrations.transformers`: ``DeepscopeCallback`` for ``transformers.Trainer``;
- :mod:`deepscope.integrations.trackers`: ``read_tensorboard(log_dir)``, the probe's rows from event files;
- sinks ``TensorBoardSink``, ``WandbSink``, ``MLflowSink`` (from :mod:`deepscope.probe.sinks`).
"""

from deepscope.probe.sinks import MLflowSink, TensorBoardSink, WandbSink

__all__ = ["MLflowSink", "TensorBoardSink", "WandbSink"]
