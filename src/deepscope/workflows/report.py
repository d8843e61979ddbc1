"""``deepscope.report``: read runs (from a store, or as :class:`~deepscope.plots.html.RunData`), diagnose those not
yet diagnosed, and write the HTML report with :func:`deepscope.plots.html.write_html`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deepscope.diagnosis.findings import Finding, load_checks, merge_checks
from deepscope.diagnosis.ranking import rank
from deepscope.diagnosis.rules import diagnose
from deepscope.plots.html import RunData, write_html
from deepscope.store import CHECKS_FILE

__all__ = ["diagnosed", "report", "run_data"]


def run_data(store, run_id: str) -> RunData:
    """One run (id or unique prefix) of a :class:`~deepscope.store.Store`: its records and doctor's checks."""
    run = store.get_run(run_id)
    return RunData(name=run["name"], run_id=run["id"], spec=run["spec"], status=run["status"],
                   stats=store.stats(run["id"]), histograms=store.histograms(run["id"]),
                   scalars=store.scalars(run["id"]), checks=load_checks(store.run_dir(run["id"]) / CHECKS_FILE))


def diagnosed(run: RunData) -> list[Finding]:
    """The findings of ``run``: the ones it carries, else :func:`~deepscope.diagnosis.diagnose` of its records
    merged with its checks (and kept on it)."""
    if run.findings is None:
        scalars = list(run.scalars)
        if run.status == "diverged":  # as doctor does: the trainer stopped it at its last training loss
            last = max((int(r["step"]) for r in scalars if r["name"] == "train/loss"), default=0)
            scalars.append(dict(step=last, name="train/diverged", value=1.0))
        found = diagnose(run.stats, scalars=scalars, histograms=run.histograms, spec=run.spec)
        run.findings = rank(merge_checks(found, run.checks))  # the checks' edges too (deepscope.diagnosis.ranking)
    return run.findings


def report(runs: Sequence[str | RunData], store=None, out_path: str | Path = "report.html", *,
           title: str = "deepscope report") -> Path:
    """Write one self-contained HTML report for ``runs`` (run ids read from ``store``, or :class:`RunData`).

    Findings come first (from :func:`~deepscope.diagnosis.diagnose` unless a RunData carries its own), then
    the comparison of learning curves, then each figure family with the runs side by side. Returns the path.
    """
    bundles = []
    for run in runs:
        if isinstance(run, RunData):
            bundles.append(run)
        elif store is None:
            raise ValueError(f"run {run!r} is an id: pass the store to read it from")
        else:
            bundles.append(run_data(store, run))
    for run in bundles:
        diagnosed(run)
    return write_html(bundles, out_path, title=title)
