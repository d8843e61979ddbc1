"""A run logged to TensorBoard, read back as the probe's rows, so that ``deepscope report LOG_DIR`` gives it
the same findings and figures as a run in the store.

Tags written by :class:`~deepscope.probe.sinks.TensorBoardSink` or by the Lightning / Hugging Face
callbacks, ``[...]/deepscope/{source}/{quantity}/{stat}/{layer}`` (statistics) and
``[...]/deepscope/{source}/{quantity}/{layer}`` (histograms), become stats and histogram rows. Every
other scalar is kept under its own tag as a scalar row; the training loss is read from ``train/loss``, or
else ``deepscope/loss``, ``train_loss`` or ``loss``. Needs the extra ``deepscope[tensorboard]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepscope.probe.sinks import PREFIX, require

__all__ = ["is_tensorboard_dir", "read_tensorboard", "run_from_tensorboard"]

_SOURCES = ("train", "monitor")
_LOSS_TAGS = ("train/loss", f"{PREFIX}/loss", "train_loss", "loss")


def _event_files(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.rglob("events.out.tfevents.*") if p.is_file())


def is_tensorboard_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding TensorBoard event files (in it or below)."""
    p = Path(path)
    return p.is_dir() and bool(_event_files(p))


def _split(tag: str, parts: int) -> list[str] | None:
    """The fields after the ``deepscope/`` segment of ``tag`` (``train/deepscope/...`` from a Hugging Face
    reporter too), when the source is known and there are ``parts`` of them (the layer keeps any ``/``)."""
    fields = tag.split("/")
    if PREFIX not in fields:
        return None
    rest = fields[fields.index(PREFIX) + 1:]
    if len(rest) < parts or rest[0] not in _SOURCES:
        return None
    return rest[: parts - 1] + ["/".join(rest[parts - 1:])]


def _scalar(value: Any) -> float | None:
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor"):
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(value.tensor)
        return float(array) if array.size == 1 and array.dtype.kind == "f" else None
    return None


def read_tensorboard(log_dir: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """``(stats, histograms, scalars)`` rows from every event file under ``log_dir``.

    A value logged twice for the same tag and step keeps the last one read.
    """
    require("tensorboard", "tensorboard", "reading a TensorBoard log directory")
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    root = Path(log_dir)
    files = _event_files(root)
    if not files:
        raise ValueError(f"log directory {str(root)!r} holds no TensorBoard event files (events.out.tfevents.*)")
    stats: dict[tuple, dict] = {}
    hists: dict[tuple, dict] = {}
    scalars: dict[tuple, dict] = {}
    for path in files:
        for event in LegacyEventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                continue
            step = int(event.step)
            for value in event.summary.value:
                tag = value.tag
                if value.HasField("histo"):
                    f = _split(tag, 3)
                    if f is not None:
                        h = value.histo
                        hists[(step, *f)] = {"step": step, "source": f[0], "quantity": f[1], "layer": f[2],
                                             "lo": h.min, "hi": h.max, "counts": [float(c) for c in h.bucket]}
                    continue
                number = _scalar(value)
                if number is None:
                    continue
                f = _split(tag, 4)
                if f is not None:
                    stats[(step, *f)] = {"step": step, "source": f[0], "quantity": f[1], "stat": f[2], "layer": f[3],
                                         "value": number}
                else:
                    scalars[(tag, step)] = {"step": step, "name": tag, "value": number}
    scalar_rows = sorted(scalars.values(), key=lambda r: (r["name"], r["step"]))
    names = {r["name"] for r in scalar_rows}
    loss = next((t for t in _LOSS_TAGS if t in names), None)
    if loss is not None and loss != "train/loss":
        scalar_rows += [{**r, "name": "train/loss"} for r in scalar_rows if r["name"] == loss]
    return _in_record_order(stats), _in_record_order(hists), scalar_rows


def _in_record_order(rows: dict[tuple, dict]) -> list[dict]:
    """Rows by step, then source, keeping the order they were logged in within a record (the probe's layer
    order, input to output, which the diagnosis reads)."""
    order = {"monitor": 0, "train": 1}
    return sorted(rows.values(), key=lambda r: (r["step"], order[r["source"]]))


def run_from_tensorboard(log_dir: str | Path, name: str | None = None) -> Any:
    """A :class:`~deepscope.plots.RunData` for the run logged under ``log_dir``."""
    from deepscope.plots.html import RunData

    stats, histograms, scalars = read_tensorboard(log_dir)
    path = Path(log_dir)
    return RunData(name or path.resolve().name, run_id=str(path), stats=stats, histograms=histograms,
                   scalars=scalars)
