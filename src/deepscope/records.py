"""Probe records: the row types, the names of quantities and statistics, and one index every reader uses.

The probe writes three kinds of plain rows (so they go to SQLite, TensorBoard or a DataFrame unchanged):

- stats rows ``dict(step, source, layer, quantity, stat, value)``,
- histogram rows ``dict(step, source, layer, quantity, lo, hi, counts)`` (equal-width bins from lo to hi),
- scalar rows ``dict(step, name, value)`` written by the trainer (``"train/loss"``, ``"valid/error"``...).

``source`` is ``"monitor"`` (the probe's own pass on a fixed monitor set, as Glorot & Bengio 2010 did) or
``"train"`` (the user's training batches). :class:`Records` indexes stats rows once and answers the
questions diagnosis, the figures, the experiments and the sinks ask: the series of a quantity per layer
in depth order, preferring the monitor pass; the values at one update; the layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ACTIVATION", "GRADIENT_STATS", "HISTOGRAM_COLUMNS", "JACOBIAN", "PREACT_GRAD", "QUANTITIES", "Records",
    "RESTORED_STEP", "SCALAR_COLUMNS", "SOURCES", "STAT_COLUMNS", "UPDATE_RATIO", "WEIGHT_GRAD", "filter_rows",
    "final_scalars", "layer_order", "pick_source", "restored_at", "to_columns",
]

Row = Mapping[str, Any]

STAT_COLUMNS = ("step", "source", "layer", "quantity", "stat", "value")
HISTOGRAM_COLUMNS = ("step", "source", "layer", "quantity", "lo", "hi", "counts")
SCALAR_COLUMNS = ("step", "name", "value")
# the scalar train.restore_best logs at a run's last update: the update whose weights the run ended with
RESTORED_STEP = "restored_step"

# sources, in the order a reader prefers them
MONITOR, TRAIN = "monitor", "train"
SOURCES = (MONITOR, TRAIN)

# quantities
ACTIVATION = "activation"  # a layer's output (after its non-linearity)
PREACT_GRAD = "preact_grad"  # back-propagated gradient dCost/ds of the pre-activation s
WEIGHT_GRAD = "weight_grad"  # dCost/dW
UPDATE_RATIO = "update_ratio"  # |dW| / |W| of one optimizer step
JACOBIAN = "jacobian"  # singular values of the layer's Jacobian
QUANTITIES = (ACTIVATION, PREACT_GRAD, WEIGHT_GRAD, UPDATE_RATIO, JACOBIAN)

# statistics (not every quantity has every one)
MEAN, STD, SATURATED, DEAD = "mean", "std", "saturated", "dead"
RATIO, SV_MEAN, SV_MAX, SV_MIN = "ratio", "sv_mean", "sv_max", "sv_min"
GRADIENT_STATS = (MEAN, STD)

# quantities whose rows come in forward (input to output) order: activations are recorded as the forward
# pass reaches each layer, update ratios in parameter order; gradients arrive in backward order.
_FORWARD_RANK = {ACTIVATION: 0, UPDATE_RATIO: 1}


def layer_order(rows: Iterable[Row]) -> dict[str, int]:
    """Depth index of every layer named in ``rows``, input first.

    Layers are numbered in the order they first appear among the activation rows, then the update-ratio
    rows, then the others -- the probe writes gradient rows in backward order, output layer first.
    """
    order: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: _FORWARD_RANK.get(r["quantity"], 2)):  # stable: keeps appearance order
        order.setdefault(row["layer"], len(order))
    return order


def pick_source(rows: Iterable[Row], quantity: str) -> str | None:
    """The source to read ``quantity`` from: the fixed monitor set when recorded (as the paper does), else train."""
    sources = {r["source"] for r in rows if r["quantity"] == quantity}
    for source in SOURCES:
        if source in sources:
            return source
    return next(iter(sorted(sources)), None)


def filter_rows(rows: Iterable[Row], filters: Mapping[str, Any]) -> list[dict]:
    """The rows whose fields equal every ``filters`` value; an unknown field raises ``ValueError``.

    ``rank`` (rows of ``Probe(..., all_ranks=True)`` under ``torch.distributed``) may be filtered on too.
    """
    for key in filters:
        if key not in (*STAT_COLUMNS, "rank"):
            allowed = ", ".join((*STAT_COLUMNS, "rank"))
            raise ValueError(f"filter {key}={filters[key]!r} is not allowed; filter on one of: {allowed}")
    return [r for r in rows if all(r.get(k) == v for k, v in filters.items())]


def to_columns(rows: Iterable[Row], columns: tuple[str, ...] = STAT_COLUMNS) -> dict[str, list]:
    """Rows as a column table ``{column: [values...]}`` (``pandas.DataFrame(...)``-ready)."""
    rows = list(rows)
    return {c: [r[c] for r in rows] for c in columns}


def restored_at(last: Mapping[str, tuple[int, float]]) -> int | None:
    """The update whose weights a run ended with when ``train.restore_best`` went back to it, from each scalar's
    last ``(step, value)``; None without a restore, or when a validation value was logged after it (a resumed
    run that trained on)."""
    if RESTORED_STEP not in last:
        return None
    logged, value = last[RESTORED_STEP]
    if any(step > logged for name, (step, _) in last.items() if name.startswith("valid/")):
        return None
    return int(value)


def final_scalars(scalars: Iterable[Row]) -> dict[str, float]:
    """Each scalar's value at the end of a run: its last one; after a restore (:func:`restored_at`) the
    evaluation values (``split/metric``) of the restored update."""
    last: dict[str, tuple[int, float]] = {}
    by_step: dict[tuple[int, str], float] = {}
    for row in scalars:
        step, name, value = int(row["step"]), row["name"], float(row["value"])
        by_step[step, name] = value
        if name not in last or step >= last[name][0]:
            last[name] = (step, value)
    out = {name: value for name, (_, value) in last.items()}
    if (restored := restored_at(last)) is not None:
        out |= {name: value for (step, name), value in by_step.items() if step == restored and "/" in name}
    return out


class Records:
    """Stats rows indexed once: ``(source, quantity, stat) -> layer -> [(step, value)]``, layers in depth order.

    Malformed rows (a missing field, a value that is not a number) are skipped rather than fatal: the
    readers of records -- diagnosis above all -- must answer on whatever was recorded.
    """

    def __init__(self, rows: Iterable[Row] = ()):
        rows = [r for r in rows if _well_formed(r)]
        self.rows = rows
        self.order = layer_order(rows)
        data: dict[tuple[str, str, str], dict[str, list[tuple[int, float]]]] = {}
        for row in rows:
            key = (row["source"], row["quantity"], row["stat"])
            data.setdefault(key, {}).setdefault(row["layer"], []).append((int(row["step"]), float(row["value"])))
        for series in data.values():
            for points in series.values():
                points.sort()
        self._data = data

    def __len__(self) -> int:
        return len(self.rows)

    def source(self, quantity: str, stat: str | None = None) -> str | None:
        """The source ``quantity`` (and ``stat``) is read from: monitor when recorded there, else train."""
        have = {s for (s, q, st) in self._data if q == quantity and (stat is None or st == stat)}
        return next((s for s in SOURCES if s in have), next(iter(sorted(have)), None))

    def get(self, quantity: str, stat: str, source: str | None = None) -> dict[str, list[tuple[int, float]]]:
        """``layer -> [(step, value)]`` (steps ascending), layers in depth order, from ``source`` or the
        preferred one (the monitor pass when there is one, else training batches)."""
        source = source or self.source(quantity, stat)
        series = self._data.get((source, quantity, stat), {})
        return {layer: series[layer] for layer in sorted(series, key=self.order.__getitem__)}

    def series(self, quantity: str, stat: str, source: str | None = None) -> dict[str, tuple[list[int], list[float]]]:
        """``layer -> (steps, values)``, non-finite values as NaN (the figures' form)."""
        return {layer: ([s for s, _ in points], [v if math.isfinite(v) else math.nan for _, v in points])
                for layer, points in self.get(quantity, stat, source).items()}

    def by_step(self, quantity: str, stat: str, source: str | None = None) -> dict[int, dict[str, float]]:
        """``step -> {layer: value}``, steps ascending, layers in depth order."""
        out: dict[int, dict[str, float]] = {}
        for layer, points in self.get(quantity, stat, source).items():
            for step, value in points:
                out.setdefault(step, {})[layer] = value
        return dict(sorted(out.items()))

    def value(self, quantity: str, stat: str, layer: str, step: int | None = None,
              source: str | None = None) -> float:
        """One statistic of one layer at ``step`` (default: its first record); NaN when not recorded."""
        points = self.get(quantity, stat, source).get(layer, [])
        if not points:
            return math.nan
        if step is None:
            return points[0][1]
        return next((v for s, v in points if s == step), math.nan)

    def layers(self, quantity: str | None = None) -> list[str]:
        """Layers in depth order (those that recorded ``quantity``, when given)."""
        if quantity is None:
            return sorted(self.order, key=self.order.__getitem__)
        have = {layer for (_, q, _), series in self._data.items() if q == quantity for layer in series}
        return sorted(have, key=self.order.__getitem__)

    def steps(self) -> list[int]:
        return sorted({step for series in self._data.values() for points in series.values() for step, _ in points})

    def items(self):
        """Every ``(source, quantity, stat, layer, step, value)``."""
        for (source, quantity, stat), series in self._data.items():
            for layer, points in series.items():
                for step, value in points:
                    yield source, quantity, stat, layer, step, value


def _well_formed(row: Any) -> bool:
    try:
        int(row["step"]), float(row["value"])
        return all(isinstance(row[k], str) for k in ("source", "layer", "quantity", "stat"))
    except (KeyError, TypeError, ValueError, OverflowError):
        return False
