"""What a run runs on and how it is stopped and measured: the device, Ctrl-C / SIGTERM, evaluation passes,
and the description of a user's own module."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from deepscope.config import SpecError
from deepscope.nn.activations import spec_for_module

__all__ = ["describe_model", "evaluate", "resolve_device", "stop_on_signals"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("train.device='cuda' but no CUDA device is available; choose one of: auto, cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable,
             batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Mean loss and error fraction of ``model`` on ``(x, y)``, as 0-d tensors on the model's device."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    wrong = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model(xb)
        loss_sum += loss_fn(logits, yb) * len(xb)
        wrong += (logits.argmax(1) != yb).sum()
    model.train(was_training)
    return loss_sum / len(x), wrong / len(x)


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


# --- the trainer ------------------------------------------------------------------------------------------


def describe_model(model: nn.Module) -> dict[str, str]:
    """A user's module as a spec section: its class, and its activation when it uses exactly one."""
    names = {s.name for m in model.modules() if (s := spec_for_module(m)) is not None}
    return {"class": type(model).__name__, **({"activation": names.pop()} if len(names) == 1 else {})}
