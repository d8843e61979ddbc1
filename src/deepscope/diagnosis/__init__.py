"""Diagnosis: rules over probe records, checks of the model and the inputs, and the ``doctor`` workflow.

- :mod:`~deepscope.diagnosis.findings` -- :class:`Finding`, its codes and order;
- :mod:`~deepscope.diagnosis.rules` -- :func:`diagnose`, pure functions of records (no model needed);
- :mod:`~deepscope.diagnosis.checks` -- :func:`check_model` (symmetry) and :func:`diagnose_input`;
- :mod:`~deepscope.diagnosis.workflow` -- :func:`doctor`: train with the probe, diagnose, report
  (loaded on first use: it sits above the trainer and the plots);
- :mod:`~deepscope.diagnosis.fixes` -- candidate repairs per finding code, as data;
- :mod:`~deepscope.diagnosis.trials` -- :func:`repair` (``doctor --fix``): trials of the fixes, verified.
"""

from importlib import import_module

from deepscope.diagnosis.checks import check_model, diagnose_input, layer_outputs
from deepscope.diagnosis.findings import (
    CODES,
    SEVERITIES,
    Finding,
    has_problem,
    load_checks,
    merge_checks,
    save_checks,
    sort_findings,
)
from deepscope.diagnosis.rules import diagnose

__all__ = ["CODES", "SEVERITIES", "DoctorResult", "Finding", "RepairResult", "check_model", "diagnose",
           "diagnose_input", "doctor", "has_problem", "layer_outputs", "load_checks", "merge_checks", "repair",
           "save_checks", "sort_findings"]


def __getattr__(name: str):
    if name in ("doctor", "DoctorResult", "DOCTOR_UPDATES"):
        return getattr(import_module("deepscope.diagnosis.workflow"), name)
    if name in ("repair", "RepairResult"):
        return getattr(import_module("deepscope.diagnosis.trials"), name)
    raise AttributeError(f"module 'deepscope.diagnosis' has no attribute {name!r}")
