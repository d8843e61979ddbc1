"""The data of a run checked before a run is stored: every in-memory split a pair of tensors of the same length, a
training set that is not empty, and no NaN or infinite value in the inputs or the targets (which would end the run as
"diverged" with advice about the learning rate, when the cause is the data); token targets that are not all padding;
a loss of your own tried once on the model's output; a dataset option's bad value named as its spec key."""

from __future__ import annotations

import torch
from torch import Tensor

from deepscope.data import Dataset, get_dataset

__all__ = ["check_loss", "check_padding", "check_splits", "load_data"]


def check_splits(data, name: str | None = None, *, targets: bool = True, finite: bool = True) -> None:
    """ValueError, in one line naming the dataset and the split, unless each of ``data.train`` / ``valid`` / ``test``
    (a :class:`~deepscope.data.Dataset`) is None or ``(x, y)`` tensors with as many examples, the training set holds
    at least one example, and the inputs (and floating-point targets, with ``targets``: a loss of your own may mask
    missing targets given as NaN) are finite (one host read per split) -- in the training set only if ``finite``
    (``train.guard`` skips the batches that hold them and records each as an event)."""
    if not isinstance(data, Dataset):
        raise TypeError(f"dataset={type(data).__name__} is not allowed; give a deepscope.data.Dataset(name, "
                        "input_shape, num_classes, class_names, train=(x, y), valid=(x, y) or None, test=...)")
    name = name or data.name
    for split in ("train", "valid", "test"):
        pair = getattr(data, split)
        if pair is None:
            continue
        where = f"data {name!r}, {split} split"
        if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(isinstance(t, Tensor) for t in pair):
            got = ", ".join(type(t).__name__ for t in pair) if isinstance(pair, tuple | list) else type(pair).__name__
            raise ValueError(f"{where}: expected a pair of tensors (x, y), got ({got}); numpy arrays convert with "
                             "torch.from_numpy")
        x, y = pair
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
            raise ValueError(f"{where}: the inputs have shape {tuple(x.shape)} and the targets {tuple(y.shape)}; "
                             "expected one target per example (the same first dimension)")
        if split == "train" and len(x) == 0:
            raise ValueError(f"{where}: the training set is empty (0 examples); give at least one example")
        if split == "train" and not finite:
            continue
        for what, t in (("inputs", x), ("targets", y)) if targets else (("inputs", x),):
            if not t.is_floating_point() or not len(t):
                continue
            bad = ~torch.isfinite(t.reshape(len(t), -1)).all(1)
            count, first = torch.stack([bad.sum(), bad.float().argmax()]).tolist()
            if count:
                fix = ", or set train.guard = true to skip the batches that hold them" if split == "train" else ""
                raise ValueError(f"{where}: the {what} of {int(count)} example(s) hold NaN or infinite values (the "
                                 f"first is example {int(first)}); remove or impute them (one NaN makes the loss "
                                 f"NaN){fix}")


def check_padding(task, data) -> None:
    """ValueError unless the training targets of a token task (or, for a stream, the validation targets) hold at least
    one position that is not padding: a cross-entropy over no position is NaN, and the run would read as diverged."""
    split = data.train if data.train is not None else data.valid
    if getattr(task, "kind", None) not in ("tokens", "classification") or task.ignore_index is None or split is None:
        return
    if not bool((split[1] != task.ignore_index).any()):
        raise ValueError(f"data {data.name!r}: every target position is the padding label "
                         f"train.loss_options.ignore_index={task.ignore_index}; give targets with at least one token "
                         "to learn, or set ignore_index to the label your padding uses")


def load_data(spec):
    """The dataset ``spec.data`` names, with its options; an option's bad value is named as its spec key
    (``data.options.n_valid=-5 is not allowed ...``)."""
    try:
        return get_dataset(spec.data.name, **spec.data.options)
    except ValueError as e:
        message = str(e)
        if any(message.startswith(f"{key}=") for key in spec.data.options):
            raise type(e)(f"data.options.{message}") from None
        raise


def check_loss(loss_fn, model, x: Tensor, y: Tensor) -> None:
    """A loss of your own tried once, before a run is stored, on the model's output for two examples ``x`` (eval mode,
    no gradient): ValueError in one line unless ``loss_fn(output, target)`` returns a tensor with one element."""
    training, out = model.training, None
    try:
        with torch.no_grad():
            out = model.eval()(x[:2])
            value = loss_fn(out, y[:2])
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"loss_fn={getattr(loss_fn, '__name__', type(loss_fn).__name__)} fails on an output of shape "
                         f"{tuple(getattr(out, 'shape', ()))} and targets of shape {tuple(y[:2].shape)} "
                         f"({type(e).__name__}: {first}); it must take (output, target) and return a scalar") from None
    finally:
        model.train(training)
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"loss_fn={getattr(loss_fn, '__name__', type(loss_fn).__name__)} returns {shape} for 2 "
                         "examples; it must return a scalar tensor (reduce it, e.g. .mean())")
