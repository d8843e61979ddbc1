"""What a run runs on and how it is stopped and measured: the device, Ctrl-C / SIGTERM, the loss and the task it
makes with the targets, evaluation passes, and the description of a user's own module."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from deepscope.config import SpecError
from deepscope.losses import CLASS, resolve
from deepscope.metrics import CLASSIFICATION, output_problem, task_of
from deepscope.nn.activations import spec_for_module

__all__ = ["check_output", "describe_model", "evaluate", "resolve_device", "setup_loss", "stop_on_signals"]

TASK_SAMPLE = 10_000  # targets of a stream the task is read from


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("train.device='cuda' but no CUDA device is available; choose one of: auto, cpu")
    return torch.device(name)


def setup_loss(spec, data, loss_fn: Callable | None = None):
    """``(loss function, LossInfo, Task)`` of a run: ``loss_fn`` (a callable of your own) or ``train.loss`` with
    ``train.loss_options``, and the task it makes with the data's targets (the training set's, else the validation
    set's, else a sample of the stream). A :class:`SpecError` names a loss that does not fit the targets, or a
    ``train.monitor`` that is not a metric of the task -- before any run is created."""
    t = spec.train
    key = "loss_fn" if loss_fn is not None else "train.loss"
    try:
        fn, info = resolve(loss_fn if loss_fn is not None else t.loss, None if loss_fn is not None else t.loss_options)
        split = data.train if data.train is not None else data.valid
        targets = split[1] if split is not None else data.stream.batch(0, TASK_SAMPLE)[1]
        classes = data.num_classes if info.family == CLASS else None
        task = task_of(loss_fn if loss_fn is not None else t.loss, targets, options=t.loss_options if loss_fn is None
                       else None, num_classes=classes, key=key)
    except (ValueError, TypeError) as e:
        raise SpecError(f"{e} (data.name={spec.data.name!r})") from None
    if t.monitor not in ("error", "loss", *task.metrics):
        raise SpecError(f"train.monitor={t.monitor!r} is not a metric of this {task.kind} task; choose one of: error, "
                        f"loss, {', '.join(m for m in task.metrics if m != 'error')}".rstrip(", "))
    return fn, info, task


def check_output(model: nn.Module, x: Tensor, num_classes: int, task=None, y: Tensor | None = None) -> None:
    """One forward pass of the examples ``x`` in eval mode, without gradients and with the RNG left as it was:
    ValueError, in one line, unless ``model`` returns logits of shape ``(len(x), num_classes)`` -- or, for another
    ``task`` (:class:`deepscope.metrics.Task`) with targets ``y``, the output that task needs."""
    training = model.training
    cpu_rng = torch.get_rng_state()
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"model: forward() fails on {len(x)} examples of shape {tuple(x.shape[1:])} from the data "
                         f"({type(e).__name__}: {first}); it must take inputs of that shape") from None
    finally:
        model.train(training)
        torch.set_rng_state(cpu_rng)
    if not isinstance(out, Tensor):
        raise ValueError(f"model: forward() returns a {type(out).__name__}; deepscope needs a tensor of logits of "
                         f"shape (N, {num_classes}) (return the logits alone)")
    if task is not None and task.kind != CLASSIFICATION and y is not None:
        if problem := output_problem(task, out, y, num_classes):
            raise ValueError(f"model: {problem}")
        return
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ValueError(f"model: forward() returns shape {tuple(out.shape)} for {len(x)} examples; the data has "
                         f"{num_classes} classes, so it must be ({len(x)}, {num_classes})")


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
