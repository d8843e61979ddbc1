"""Where probe records go: the run store, TensorBoard, Weights & Biases, MLflow, or tidy in-memory tables.

A sink is any object with ``write(stats_rows, histogram_rows)`` (and optionally ``flush()``); the
probe calls it once per record. Rows follow the store contract:
``dict(step, source, layer, quantity, stat, value)`` and
``dict(step, source, layer, quantity, lo, hi, counts)`` with equal-width bins from lo to hi.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepscope.records import filter_rows, to_columns

__all__ = ["Entry", "MLflowSink", "StoreSink", "TensorBoardSink", "WandbSink", "filter_rows", "rows", "to_columns"]

PREFIX = "deepscope"

Entry = tuple[str, str, tuple[str, ...], Tensor, bool]
"""One statistic of a record as the hooks leave it: layer, quantity, stat names, the values on the device
(the statistics, then for a histogram ``lo, hi, counts...``), and whether it has a histogram."""


def rows(entries: list[Entry], step: int, source: str, rank: int | None = None) -> tuple[list[dict], list[dict]]:
    """The statistics and histogram rows of one record (with ``rank`` in each row when given).

    Every value moves to the CPU in one transfer per device (float64, float32 on MPS), so a record costs
    one synchronization however many layers it has.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, e in enumerate(entries):
        by_device.setdefault(e[3].device, []).append(i)
    values: list[list[float]] = [[] for _ in entries]
    for device, idx in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64  # float64 statistics stay float64
        flat = torch.cat([entries[i][3].detach().reshape(-1).to(dtype) for i in idx]).tolist()
        at = 0
        for i in idx:
            n = entries[i][3].numel()
            values[i], at = flat[at : at + n], at + n
    stats, hists = [], []
    for (layer, quantity, names, _, has_hist), v in zip(entries, values, strict=True):
        row = {"step": step, "source": source, "layer": layer, "quantity": quantity}
        if rank is not None:
            row["rank"] = rank
        stats += [{**row, "stat": s, "value": float(val)} for s, val in zip(names, v, strict=False)]
        if has_hist:
            lo, hi, *counts = v[len(names) :]
            hists.append({**row, "lo": lo, "hi": hi, "counts": counts})
    return stats, hists


def require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` or raise ``ImportError`` with one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the {extra} package: pip install 'deepscope[{extra}]'") from None


def stat_tag(row: dict, prefix: str = PREFIX) -> str:
    """A statistic's name in a tracker: ``deepscope/{source}/{quantity}/{stat}/{layer}``."""
    return f"{prefix}/{row['source']}/{row['quantity']}/{row['stat']}/{row['layer']}"


def histogram_tag(row: dict, prefix: str = PREFIX) -> str:
    """A histogram's name in a tracker: ``deepscope/{source}/{quantity}/{layer}``."""
    return f"{prefix}/{row['source']}/{row['quantity']}/{row['layer']}"


class StoreSink:
    """Streams records to a deepscope run store: ``store.log_stats`` / ``store.log_histograms`` per record.

    ``store`` is a ``deepscope.store.Store`` (or any object with those methods); the probe itself never
    imports the store.
    """

    def __init__(self, store: Any, run_id: str):
        if not (callable(getattr(store, "log_stats", None)) and callable(getattr(store, "log_histograms", None))):
            raise TypeError(
                f"StoreSink store={store!r} is not allowed; give a run store, e.g. deepscope.store.Store(path), "
                "or any object with log_stats and log_histograms"
            )
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

    Tags are ``deepscope/{source}/{quantity}/{stat}/{layer}`` (``deepscope/monitor/activation/std/hidden1``)
    and ``deepscope/{source}/{quantity}/{layer}`` for histograms; ``deepscope report LOG_DIR`` reads them back.
    ``writer`` may be any object with ``add_scalar`` / ``add_histogram_raw`` (a ``SummaryWriter`` by default).
    """

    def __init__(self, log_dir: str | Path | None = None, *, writer: Any = None, prefix: str = PREFIX):
        if writer is None:
            tb = require("torch.utils.tensorboard", "tensorboard", "TensorBoardSink")
            if log_dir is not None and Path(log_dir).exists() and not Path(log_dir).is_dir():
                raise ValueError(f"log_dir={str(log_dir)!r} is a file; give a directory for the TensorBoard events")
            writer = tb.SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
        self.writer, self.prefix = writer, prefix

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        for r in stats:
            self.writer.add_scalar(stat_tag(r, self.prefix), r["value"], r["step"])
        for h in histograms:
            counts, lo, hi = h["counts"], h["lo"], h["hi"]
            width = (hi - lo) / len(counts)
            centers = [lo + (i + 0.5) * width for i in range(len(counts))]
            self.writer.add_histogram_raw(
                histogram_tag(h, self.prefix),
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


class WandbSink:
    """Logs records to a Weights & Biases run (optional extra ``deepscope[wandb]``).

    Statistics are logged as ``deepscope/{source}/{quantity}/{stat}/{layer}`` against their own x-axis
    ``deepscope/step`` (``define_metric``), so they never clash with the step counter of your own
    ``wandb.log`` calls; histograms as ``wandb.Histogram``. ``run`` defaults to the active run, or one
    started with ``wandb.init(**init_kwargs)`` (``WANDB_MODE=offline`` works without an account).
    """

    def __init__(self, run: Any = None, *, prefix: str = PREFIX, **init_kwargs: Any):
        self._wandb = require("wandb", "wandb", "WandbSink")
        self._owned = run is None and self._wandb.run is None
        self.run = run or self._wandb.run or self._wandb.init(**init_kwargs)
        self.prefix = prefix
        self.run.define_metric(f"{prefix}/step")
        self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        by_step: dict[int, dict[str, Any]] = {}
        for r in stats:
            by_step.setdefault(r["step"], {})[stat_tag(r, self.prefix)] = r["value"]
        for h in histograms:
            counts, lo, hi = h["counts"], h["lo"], h["hi"]
            edges = [lo + i * (hi - lo) / len(counts) for i in range(len(counts) + 1)]
            by_step.setdefault(h["step"], {})[histogram_tag(h, self.prefix)] = \
                self._wandb.Histogram(np_histogram=(counts, edges))
        for step, values in sorted(by_step.items()):
            self.run.log({f"{self.prefix}/step": step, **values})

    def close(self) -> None:
        """Finish the run if this sink started it."""
        if self._owned:
            self.run.finish()


_MLFLOW_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class MLflowSink:
    """Logs the statistics to an MLflow run as metrics (optional extra ``deepscope[mlflow]``).

    Names are ``deepscope/{source}/{quantity}/{stat}/{layer}``, with characters MLflow does not allow in a
    metric name (``@`` of a repeated call, ...) replaced by ``_``; the step is the record's step. MLflow has
    no histograms, so histogram rows are not sent. ``run_id`` defaults to the active run, or a new one in
    ``experiment`` at ``tracking_uri`` (e.g. ``file:./mlruns``).
    """

    def __init__(self, run_id: str | None = None, *, tracking_uri: str | None = None, experiment: str | None = None,
                 prefix: str = PREFIX):
        mlflow = require("mlflow", "mlflow", "MLflowSink")
        self._entities = require("mlflow.entities", "mlflow", "MLflowSink")
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self._owned = False
        if run_id is None and mlflow.active_run() is not None and tracking_uri is None:
            run_id = mlflow.active_run().info.run_id
        if run_id is None:
            name = experiment or "deepscope"
            found = self.client.get_experiment_by_name(name)
            exp_id = found.experiment_id if found is not None else self.client.create_experiment(name)
            run_id, self._owned = self.client.create_run(exp_id).info.run_id, True
        self.run_id, self.prefix = run_id, prefix

    @staticmethod
    def metric_name(tag: str) -> str:
        return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", tag)

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._entities.Metric(self.metric_name(stat_tag(r, self.prefix)), float(r["value"]), now,
                                         int(r["step"])) for r in stats]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _MLFLOW_BATCH])

    def close(self) -> None:
        """End the run if this sink created it."""
        if self._owned:
            self.client.set_terminated(self.run_id)
