"""Where probe records go: the run store, TensorBoard, or tidy in-memory tables.

A sink is any object with ``write(stats_rows, histogram_rows)`` (and optionally ``flush()``); the
probe calls it once per record. Rows follow the store contract:
``dict(step, source, layer, quantity, stat, value)`` and
``dict(step, source, layer, quantity, lo, hi, counts)`` with equal-width bins from lo to hi.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["StoreSink", "TensorBoardSink", "filter_rows", "to_columns"]

STAT_COLUMNS = ("step", "source", "layer", "quantity", "stat", "value")


def filter_rows(rows: list[dict], filters: dict[str, Any]) -> list[dict]:
    """The rows whose fields equal every ``filters`` value; an unknown field raises ``ValueError``.

    ``rank`` (rows of ``Probe(..., all_ranks=True)`` under ``torch.distributed``) may be filtered on too.
    """
    for key in filters:
        if key not in (*STAT_COLUMNS, "rank"):
            allowed = ", ".join((*STAT_COLUMNS, "rank"))
            raise ValueError(f"filter {key}={filters[key]!r} is not allowed; filter on one of: {allowed}")
    return [r for r in rows if all(r.get(k) == v for k, v in filters.items())]


def to_columns(rows: list[dict]) -> dict[str, list]:
    """A list of row dicts as a column table ``{column: [values...]}`` (``pandas.DataFrame(...)``-ready)."""
    return {c: [r[c] for r in rows] for c in STAT_COLUMNS}


class StoreSink:
    """Streams records to a deepscope run store: ``store.log_stats`` / ``store.log_histograms`` per record.

    ``store`` is a ``deepscope.store.Store`` (or any object with those methods) or a directory for one.
    """

    def __init__(self, store: Any, run_id: str):
        if isinstance(store, str | Path):
            from deepscope.store import Store

            store = Store(store)
        self.store, self.run_id = store, run_id

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        if stats:
            self.store.log_stats(self.run_id, stats)
        if histograms:
            self.store.log_histograms(self.run_id, histograms)

    def flush(self) -> None:
        flush = getattr(self.store, "flush", None)
        if flush is not None:
            flush()


class TensorBoardSink:
    """Writes records as TensorBoard scalars and histograms (optional extra ``deepscope[tensorboard]``).

    Tags are ``{source}/{quantity}/{stat}/{layer}`` and ``{source}/{quantity}/{layer}``. ``writer``
    may be any object with ``add_scalar`` / ``add_histogram_raw`` (a ``SummaryWriter`` by default).
    """

    def __init__(self, log_dir: str | Path | None = None, *, writer: Any = None):
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "TensorBoardSink needs the tensorboard package: pip install deepscope[tensorboard]"
                ) from e
            writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
        self.writer = writer

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        for r in stats:
            self.writer.add_scalar(f"{r['source']}/{r['quantity']}/{r['stat']}/{r['layer']}", r["value"], r["step"])
        for h in histograms:
            counts, lo, hi = h["counts"], h["lo"], h["hi"]
            width = (hi - lo) / len(counts)
            centers = [lo + (i + 0.5) * width for i in range(len(counts))]
            self.writer.add_histogram_raw(
                f"{h['source']}/{h['quantity']}/{h['layer']}",
                min=lo,
                max=hi,
                num=int(sum(counts)),
                sum=sum(c * x for c, x in zip(counts, centers, strict=True)),
                sum_squares=sum(c * x * x for c, x in zip(counts, centers, strict=True)),
                bucket_limits=[lo + (i + 1) * width for i in range(len(counts))],
                bucket_counts=counts,
                global_step=h["step"],
            )

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
