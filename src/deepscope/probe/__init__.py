"""The Probe: Glorot & Bengio's (2010) instruments, recorded inside any PyTorch training loop.

``probe.py`` arms the probe and runs its two passes; ``layers.py`` finds what to record, ``hooks.py`` takes
it, ``stats.py`` reduces it on the device, ``jacobian.py`` adds the layer-to-layer Jacobians, ``sinks.py``
turns it into rows and sends them on, ``compat.py`` knows the wrappers (DDP, ``torch.compile``).
"""

from deepscope.probe.options import check_options
from deepscope.probe.probe import Probe
from deepscope.probe.sinks import StoreSink, TensorBoardSink

__all__ = ["Probe", "StoreSink", "TensorBoardSink", "check_options"]
