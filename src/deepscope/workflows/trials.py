"""The trials of ``doctor --fix``: one short diagnosis run per candidate fix, run through
:func:`deepscope.parallel.run_many`; a trial that raises fails alone, and Ctrl-C keeps the finished ones."""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from typing import Any

from deepscope.diagnosis.findings import Finding
from deepscope.diagnosis.fixes import FIXES
from deepscope.parallel import run_many
from deepscope.workflows.run import diagnosis_run

__all__ = ["Trial", "run_trial", "run_trials"]


@dataclass
class Trial:
    """One trial run: the fixes applied, what they target, how the run went and the verdict of :func:`judge`."""

    fixes: tuple[str, ...]
    targets: tuple[str, ...]  # the baseline finding codes the fixes were tried for
    spec: dict = field(repr=False)  # the repaired spec, at the run's full length
    model: Any = field(default=None, repr=False)  # the repaired copy of your initial module
    run_id: str | None = None
    status: str = "not run"
    metrics: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list, repr=False)
    seconds: float = 0.0
    improved: bool = False
    cleared: bool = False
    verified: bool = False
    verdict: str = ""
    error: str = ""  # why a trial that raised failed (it is not verified; the other trials go on)
    data: dict = field(default_factory=dict, repr=False)  # records, histograms, scalars, checks, spec

    @property
    def name(self) -> str:
        return " + ".join(self.fixes)

    @property
    def groups(self) -> set[str]:
        return {g for f in self.fixes for g in FIXES[f].group.split("+")}


def run_trial(spec: dict, model: Any = None, dataset: Any = None, store_root: str | None = None,
              updates: int = 500, monitor: int = 300) -> dict:
    """One diagnosis run of ``spec`` (and your ``model``), without a report; a picklable summary of it."""
    from deepscope.store import Store

    start = time.perf_counter()
    store = Store(store_root) if store_root is not None else None
    try:
        r = diagnosis_run(spec, model=model, dataset=dataset, store=store, updates=updates, monitor=monitor,
                          report=False, quiet=True)
    except Exception as e:  # a fix the module does not take (a shape it breaks, say): this trial fails, not the repair
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return dict(run_id=None, status="failed", metrics={}, findings=[], seconds=time.perf_counter() - start,
                    records=[], histograms=[], scalars=[], checks=[], spec=spec,
                    error=f"{type(e).__name__}: {first}" if first else type(e).__name__)
    finally:
        if store is not None:
            store.close()
    return dict(run_id=r.run_id, status=r.status, metrics=dict(r.metrics),
                findings=r.findings, seconds=time.perf_counter() - start,
                records=r.records, histograms=r.histograms, scalars=r.scalars, checks=r.checks, spec=r.spec)


def run_trials(trials: list[Trial], run_args: dict, backend: str, jobs: int | None, progress) -> bool:
    """Run ``trials`` (filling them in as they finish); True when interrupted (Ctrl-C keeps the finished ones)."""
    def done(index: int, out: dict) -> None:
        trial = trials[index]
        for key in ("run_id", "status", "metrics", "findings", "seconds"):
            setattr(trial, key, out[key])
        trial.error = out.get("error", "")
        trial.data = {k: out[k] for k in ("records", "histograms", "scalars", "checks", "spec")}
        progress(trial)

    args = [(_trial_spec(t), copy.deepcopy(t.model)) for t in trials]  # a trial trains its module in place
    _, interrupted = run_many(functools.partial(run_trial, **run_args), args, workers=jobs, backend=backend,
                              on_result=done, share_cores=True,
                              stop=lambda out: out["status"] == "interrupted")
    return interrupted or any(t.status == "interrupted" for t in trials)


def _trial_spec(trial: Trial) -> dict:
    name = f"{trial.spec['name'].removesuffix('-fixed')}-{'-'.join(trial.fixes)}"
    return {**trial.spec, "name": name}
