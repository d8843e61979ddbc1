"""The data of a run checked before a run is stored: every in-memory split a pair of tensors of the same length, a
training set that is not empty, and no NaN or infinite value in the inputs or the targets (which would end the run as
"diverged" with advice about the learning rate, when the cause is the data)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_splits"]


def check_splits(data, name: str | None = None, *, targets: bool = True) -> None:
    """ValueError, in one line naming the dataset and the split, unless each of ``data.train`` / ``valid`` / ``test``
    (a :class:`~deepscope.data.Dataset`) is None or ``(x, y)`` tensors with as many examples, the training set holds
    at least one example, and the inputs (and floating-point targets, with ``targets``: a loss of your own may mask
    missing targets given as NaN) are finite (one host read per split)."""
    name = name or data.name
    for split in ("train", "valid", "test"):
        pair = getattr(data, split)
        if pair is None:
            continue
        where = f"data {name!r}, {split} split"
        if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(isinstance(t, Tensor) for t in pair):
            raise ValueError(f"{where}: expected a pair of tensors (x, y), got a {type(pair).__name__}")
        x, y = pair
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
            raise ValueError(f"{where}: the inputs have shape {tuple(x.shape)} and the targets {tuple(y.shape)}; "
                             "expected one target per example (the same first dimension)")
        if split == "train" and len(x) == 0:
            raise ValueError(f"{where}: the training set is empty (0 examples); give at least one example")
        for what, t in (("inputs", x), ("targets", y))[: 2 if targets else 1]:
            if not t.is_floating_point() or not len(t):
                continue
            bad = ~torch.isfinite(t.reshape(len(t), -1)).all(1)
            count, first = torch.stack([bad.sum(), bad.float().argmax()]).tolist()
            if count:
                raise ValueError(f"{where}: the {what} of {int(count)} example(s) hold NaN or infinite values (the "
                                 f"first is example {int(first)}); remove or impute them (one NaN makes the loss NaN)")


def check_padding(task, data) -> None:
    """ValueError unless the training targets of a token task (or, for a stream, the validation targets) hold at least
    one position that is not padding: a cross-entropy over no position is NaN, and the run would read as diverged."""
    split = data.train if data.train is not None else data.valid
    if getattr(task, "kind", None) != "tokens" or task.ignore_index is None or split is None:
        return
    if not bool((split[1] != task.ignore_index).any()):
        raise ValueError(f"data {data.name!r}: every target position is the padding label "
                         f"train.loss_options.ignore_index={task.ignore_index}; give targets with at least one token "
                         "to learn, or set ignore_index to the label your padding uses")


def load_data(spec):
    """The dataset ``spec.data`` names, with its options; an option's bad value is named as its spec key
    (``data.options.n_valid=-5 is not allowed ...``)."""
    from deepscope.data import get_dataset

    try:
        return get_dataset(spec.data.name, **spec.data.options)
    except ValueError as e:
        message = str(e)
        if any(message.startswith(f"{key}=") for key in spec.data.options):
            raise type(e)(f"data.options.{message}") from None
        raise
