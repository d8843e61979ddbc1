"""The HTML report: findings first, then the figures of Glorot & Bengio (2010) for one or several runs,
side by side, in a single self-contained file (PNG figures embedded as data URIs; no scripts, no fonts,
no network)::

    write_html([RunData("mine", stats=probe.records, histograms=probe.histograms, findings=found)], "r.html")

The plots draw records and the findings they are given; they never diagnose. ``deepscope.report``
(:func:`deepscope.workflows.report.report`) reads runs from a store, diagnoses them and calls :func:`write_html`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepscope.config import flatten
from deepscope.diagnosis.findings import Finding, has_problem, sort_findings
from deepscope.plots.activations import activation_histograms, activation_mean_std, activation_percentiles
from deepscope.plots.curves import error_curves, loss_curves
from deepscope.plots.figure import to_data_uri
from deepscope.plots.gradients import backprop_histograms, weight_gradient_histograms, weight_gradient_intervals
from deepscope.plots.jacobian import jacobian_singular_values
from deepscope.records import final_scalars

if TYPE_CHECKING:
    import jinja2
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "RunData", "render", "write_html"]

Rows = list[dict[str, Any]]


@dataclass
class RunData:
    """Everything the report draws for one run: the rows of a store, or a probe's records held in memory."""

    name: str
    run_id: str | None = None
    spec: Any = None
    status: str | None = None
    stats: Rows = field(default_factory=list)
    histograms: Rows = field(default_factory=list)
    scalars: Rows = field(default_factory=list)
    findings: list[Finding] | None = None  # the run's diagnosis, given (None: not diagnosed; drawn as none)
    checks: list[Finding] = field(default_factory=list)  # doctor's model and input checks


@dataclass(frozen=True)
class FigureKind:
    key: str
    title: str
    draw: Callable[[RunData], Figure | None]
    missing: str  # shown in place of the figure when the run has no data for it


FIGURES: list[FigureKind] = [
    FigureKind("activation_mean_std", "Activation mean and standard deviation per layer (fig. 2)",
               lambda r: activation_mean_std(r.stats), "no activation statistics recorded"),
    FigureKind("activation_percentiles", "98th percentile and standard deviation of activations (figs. 3, 10)",
               lambda r: activation_percentiles(r.stats), "no activation percentiles recorded"),
    FigureKind("activation_histograms", "Activation histograms at initialization and at the end (figs. 4, 6)",
               lambda r: activation_histograms(r.histograms), "no activation histograms recorded"),
    FigureKind("backprop_histograms", "Back-propagated gradient histograms dCost/ds (fig. 7)",
               lambda r: backprop_histograms(r.histograms), "no back-propagated gradient histograms recorded"),
    FigureKind("weight_gradient_histograms", "Weight-gradient histograms dCost/dW (fig. 8)",
               lambda r: weight_gradient_histograms(r.histograms), "no weight-gradient histograms recorded"),
    FigureKind("weight_gradient_intervals", "Weight-gradient standard-deviation intervals over training (fig. 9)",
               lambda r: weight_gradient_intervals(r.stats), "no weight-gradient statistics recorded"),
    FigureKind("jacobian", "Layer Jacobian singular values",
               lambda r: jacobian_singular_values(r.stats), "no Jacobian singular values recorded"),
]

# what a run's summary card shows: label -> spec paths to try (a bare key matches at any depth)
_SUMMARY = {
    "data": ("data.name", "dataset"), "model": ("model.class",), "activation": ("model.activation", "activation"),
    "init": ("init.scheme", "init"), "depth": ("model.depth", "depth"), "width": ("model.width", "width"),
    "norm": ("model.norm", "norm"), "optimizer": ("optim.name", "optimizer"), "lr": ("optim.lr", "lr"),
    "batch size": ("train.batch_size", "batch_size"), "updates": ("train.updates", "updates"),
    "seed": ("train.seed", "seed"),
}
_FINAL_SCALARS = ("test/error", "valid/error", "train/error", "train/loss")


def _summary(spec: Any) -> list[tuple[str, str]]:
    flat = {path: value for path, value in flatten(spec).items() if value is not None and value != []}
    out = []
    for label, paths in _SUMMARY.items():
        for path in paths:
            found = [v for p, v in flat.items() if p == path or ("." not in path and p.endswith("." + path))]
            if found:
                out.append((label, str(found[0])))
                break
    return out


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _finding_row(f: Finding) -> dict[str, Any]:
    return {
        "severity": f.severity, "code": f.code, "message": f.message, "layers": ", ".join(f.layers),
        "since": "" if f.first_step is None else str(f.first_step),
        "recovers": {True: "yes", False: "no", None: "–"}[f.recovers],
        "evidence": ", ".join(f"{k} = {_number(v)}" for k, v in f.evidence.items()), "advice": f.advice,
    }


def _run_context(run: RunData) -> dict[str, Any]:
    findings = sort_findings(run.findings or [])
    finals, last = [], final_scalars(run.scalars)  # after train.restore_best: the restored network's values
    for name in _FINAL_SCALARS:
        value = last.get(name)
        if value is not None:
            finals.append((name, f"{100 * value:.2f} %" if name.endswith("error") else _number(value)))
    spec = run.spec.model_dump() if hasattr(run.spec, "model_dump") else run.spec
    return {
        "name": run.name, "run_id": run.run_id or "", "status": run.status or "",
        "summary": _summary(spec) + finals,
        "spec_json": json.dumps(spec, indent=2, sort_keys=True, default=str) if spec else "",
        "findings": [_finding_row(f) for f in findings],
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
        "healthy": not has_problem(findings),
        "has_records": bool(run.stats or run.scalars or run.histograms),
        "probed": bool(run.stats or run.histograms or run.checks),
    }


def _image(fig: Figure | None, missing: str) -> dict[str, Any]:
    if fig is None:
        return {"uri": None, "note": missing}
    width, height = (round(v) for v in fig.get_size_inches() * fig.dpi)
    return {"uri": to_data_uri(fig), "width": width, "height": height, "note": ""}


def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # run names, spec strings and layer names are user input
        undefined=jinja2.StrictUndefined,
    )


def render(runs: Sequence[RunData], *, title: str = "deepscope report") -> str:
    """The report's HTML for in-memory runs (see :func:`report`)."""
    from deepscope import __version__

    if not runs:
        raise ValueError("report needs at least one run")
    unique = len({r.name for r in runs}) == len(runs)
    labels = {(r.name if unique else f"{r.name} ({r.run_id or i + 1})").replace("$", r"\$"): r.scalars  # no mathtext
              for i, r in enumerate(runs)}
    comparison = [
        {"title": "Error during training (figs. 11-12)",
         **_image(error_curves(labels), "no error curves recorded (train/error, valid/error, test/error)")},
        {"title": "Loss during training (Varma & Das, ch. 7, fig. 7.6)",
         **_image(loss_curves(labels), "no loss curve recorded (train/loss)")},
    ]
    sections = [
        {"key": kind.key, "title": kind.title, "cells": [{"run": r.name, **_image(kind.draw(r), kind.missing)}
                                                          for r in runs]}
        for kind in FIGURES
    ]
    contexts = [_run_context(r) for r in runs]
    return _environment().get_template("report.html").render(
        title=title, version=__version__, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        runs=contexts, comparison=comparison, sections=sections,
        problems=sum(not c["healthy"] for c in contexts),
    )


def write_html(runs: Sequence[RunData], out_path: str | Path = "report.html", *,
               title: str = "deepscope report") -> Path:
    """Write one self-contained HTML report for ``runs``: their findings first, then the comparison of learning
    curves, then each figure family with the runs side by side. A figure a run has no data for is replaced by a
    note. Returns the path written."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, title=title), encoding="utf-8")
    return out
