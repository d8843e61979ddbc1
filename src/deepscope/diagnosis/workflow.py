"""``doctor``: diagnose a short probed run and, with ``fix=True``, try the fixes and keep what was verified.

:func:`doctor` is the entry point of ``deepscope doctor``: the diagnosis run is
:func:`~deepscope.diagnosis.session.diagnosis_run`, the repair :func:`~deepscope.diagnosis.trials.repair`.
"""

from __future__ import annotations

from typing import Any

from deepscope.diagnosis.session import DOCTOR_UPDATES, DoctorResult, diagnosis_run, write_report
from deepscope.probe.trainer import MONITOR

__all__ = ["DOCTOR_UPDATES", "DoctorResult", "doctor", "write_report"]


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
) -> Any:
    """Train ``spec`` (a RunSpec or its dict; or your own ``model`` with the spec's data and training) for
    ``updates`` updates with the probe, diagnose it and write the report: a :class:`DoctorResult`
    (see :func:`~deepscope.diagnosis.session.diagnosis_run` for what is checked).

    ``fix=True`` goes on to try the candidate fixes (``budget`` trial runs, each as long as the diagnosis run,
    from the same seed and initial weights) and returns the :class:`~deepscope.diagnosis.trials.RepairResult`
    of :func:`~deepscope.diagnosis.trials.repair`.
    """
    if fix:
        from deepscope.diagnosis.trials import repair

        return repair(spec, model=model, dataset=dataset, store=store, updates=updates, monitor=monitor, budget=budget,
                      report=report, report_path=report_path, quiet=quiet)
    return diagnosis_run(spec, model=model, dataset=dataset, store=store, updates=updates, monitor=monitor,
                         report_path=report_path, report=report, quiet=quiet)
