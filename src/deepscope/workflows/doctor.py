"""``doctor``: diagnose a short probed run and, with ``fix=True``, try the fixes and keep what was verified.

:func:`doctor` is the verb of ``deepscope doctor``: the diagnosis run is :func:`~deepscope.workflows.run.diagnosis_run`,
the repair :func:`~deepscope.workflows.repair.repair`. It returns one type, a
:class:`~deepscope.workflows.run.DoctorResult`; with ``fix=True`` its ``repair`` holds what the repair did.
"""

from __future__ import annotations

from typing import Any

from deepscope.training.probe import MONITOR
from deepscope.workflows.repair import repair
from deepscope.workflows.run import DOCTOR_UPDATES, DoctorResult, diagnosis_run

__all__ = ["doctor"]


def doctor(
    spec: Any = None,
    *,
    model: Any = None,
    dataset: Any = None,
    store: Any = None,
    updates: int = DOCTOR_UPDATES,
    monitor: int = MONITOR,
    report_path: Any = None,
    report: bool = True,
    quiet: bool = True,
    fix: bool = False,
    budget: int | None = None,
    jobs: int | None = None,
    backend: str = "local",
) -> DoctorResult:
    """Train ``spec`` (a RunSpec or its dict; or your own ``model`` with the spec's data and training) for
    ``updates`` updates with the probe, diagnose it and write the report: a :class:`DoctorResult`
    (see :func:`~deepscope.workflows.run.diagnosis_run` for what is checked).

    ``fix=True`` goes on to try the candidate fixes (``budget`` trial runs, each as long as the diagnosis run,
    from the same seed and initial weights, ``jobs`` at once on ``backend``): the result's ``repair`` is the
    :class:`~deepscope.workflows.repair.RepairResult` of :func:`~deepscope.workflows.repair.repair`.
    """
    if fix:
        result = repair(spec, model=model, dataset=dataset, store=store, updates=updates, monitor=monitor,
                        budget=budget, jobs=jobs, backend=backend, report=report, report_path=report_path,
                        quiet=quiet)
        result.baseline.repair = result
        if result.report is not None:
            result.baseline.report = result.report
        return result.baseline
    return diagnosis_run(spec, model=model, dataset=dataset, store=store, updates=updates, monitor=monitor,
                         report_path=report_path, report=report, quiet=quiet)
