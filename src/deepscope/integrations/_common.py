"""What the framework callbacks share: the monitor set, metric names, findings and the report at the end."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepscope.diagnosis.findings import print_findings
from deepscope.probe.sinks import PREFIX, histogram_tag, require, stat_tag

__all__ = ["LOSS", "MONITOR", "LossWindow", "finish", "guard_options", "histogram_tag", "metrics_by_step", "require",
           "set_options", "stat_tag", "take_examples"]

MONITOR = 128  # fixed monitor examples (the paper used 300; README "Performance" gives the error of 128)
LOSS = f"{PREFIX}/loss"  # mean training loss since the previous record; read back as "train/loss"
REPORT_FILE = "deepscope-report.html"



def set_options(callback: Any, every: int, monitor: Any, sinks: Iterable[Any], diagnose: bool, monitor_size: int,
                loss_fn: Any, log: bool, probe_kwargs: dict[str, Any]) -> None:
    """Check a framework callback's options (before any training) and set them, with its empty results."""
    from deepscope.probe.options import check_probe_kwargs
    from deepscope.registry import integer

    check_probe_kwargs(every, probe_kwargs)
    callback.every, callback.monitor = every, monitor
    callback.monitor_size = integer("monitor_size", monitor_size, minimum=0)
    callback.sinks, callback.diagnose, callback.loss_fn, callback.log = list(sinks), diagnose, loss_fn, log
    callback.probe_kwargs = probe_kwargs
    callback.probe, callback.findings, callback.report_path, callback._open = None, [], None, False


def guard_options(guard: Any) -> dict[str, Any] | None:
    """A callback's ``guard=``: None (off), or the options of :class:`deepscope.Guard` (checked now)."""
    if guard is False or guard is None:
        return None
    if guard is True:
        return {}
    if not isinstance(guard, dict):
        raise ValueError(f"guard={guard!r} is not allowed; give True, False or a dict of the guard's options")
    from deepscope.training.guard import check_options

    check_options(guard)
    return dict(guard)


def metrics_by_step(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Stats rows as ``{step: {tag: value}}``, the form loggers take (``log_metrics(metrics, step)``)."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        out.setdefault(int(r["step"]), {})[stat_tag(r)] = float(r["value"])
    return out


def _take(batches: Iterable[Any], n: int) -> Any:
    """The first ``n`` examples of an iterable of batches (tensors, tuples/lists or dicts of tensors)."""
    parts: list[Any] = []
    have = 0
    for batch in batches:
        parts.append(batch)
        first = batch if isinstance(batch, Tensor) else next(iter(batch.values())) if isinstance(batch, Mapping) \
            else batch[0]
        have += len(first)
        if have >= n:
            break
    if not parts:
        return None
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)[:n]
    if isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0] if isinstance(parts[0][k], Tensor)}
    return tuple(torch.cat([p[i] for p in parts])[:n] for i in range(len(parts[0])))


def take_examples(loader: Any, n: int = MONITOR) -> Any:
    """The first ``n`` examples of a data loader, without advancing the global RNG (a loader's iterator
    draws its base seed from it, which would change the training run)."""
    if loader is None or n <= 0:
        return None
    with torch.random.fork_rng(devices=[]):
        return _take(loader, n)


class LossWindow:
    """Training losses per optimizer step, kept as tensors (no device sync in the loop) until read."""

    def __init__(self) -> None:
        self.points: list[tuple[int, Tensor]] = []
        self._since = 0  # index of the first point after the last logged window

    def add(self, step: int, loss: Tensor) -> None:
        self.points.append((step, loss.detach().float().reshape(())))

    def window_mean(self) -> float | None:
        """Mean loss since the previous call (what is logged with each record)."""
        window = [v for _, v in self.points[self._since:]]
        self._since = len(self.points)
        return float(torch.stack(window).mean()) if window else None

    def rows(self) -> list[dict]:
        if not self.points:
            return []
        values = torch.stack([v for _, v in self.points]).tolist()
        return [{"step": s, "name": "train/loss", "value": v} for (s, _), v in zip(self.points, values, strict=True)]


def finish(name: str, records: list[dict], histograms: list[dict], scalars: list[dict], log_dir: str | Path | None,
           *, show: bool = True, write_report: bool = True) -> tuple[list, Path | None]:
    """Diagnose the records, print the findings, write the HTML report into ``log_dir``."""
    from deepscope.diagnosis import diagnose
    from deepscope.plots.html import RunData, write_html

    findings = diagnose(records, scalars=scalars, histograms=histograms)
    if show:
        print_findings(findings, f"deepscope: {name}")
    path = None
    if write_report and log_dir is not None:
        run = RunData(name, stats=records, histograms=histograms, scalars=scalars, findings=findings)
        path = write_html([run], Path(log_dir) / REPORT_FILE, title=f"deepscope report: {name}")
        if show:
            print(f"deepscope report: {path}")
    return findings, path
