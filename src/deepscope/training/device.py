"""What a run runs on and how it is stopped: the device (``auto``: CUDA when there is one) and Ctrl-C / SIGTERM."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch

from deepscope.config import SpecError
from deepscope.registry import unknown

__all__ = ["resolve_device", "stop_on_signals"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError(unknown("train.device", "cuda", ["auto", "cpu"],
                                what="train.device='cuda' but no CUDA device is available")) from None
    return torch.device(name)


@contextmanager
def stop_on_signals(flag: dict):
    """While active, a first Ctrl-C (SIGINT) or SIGTERM sets ``flag["stop"]``: the loop stops after the
    current update and saves a checkpoint. A second one raises KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
