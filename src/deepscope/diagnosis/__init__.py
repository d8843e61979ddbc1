"""Diagnosis: rules over probe records, checks of the model and the inputs, candidate fixes as data.

- :mod:`~deepscope.diagnosis.findings` -- :class:`Finding`, its codes and order;
- :mod:`~deepscope.diagnosis.rules` -- :func:`diagnose`, pure functions of records (no model needed);
- :mod:`~deepscope.diagnosis.checks` -- :func:`check_model` (symmetry), :func:`diagnose_input` and the set-up;
- :mod:`~deepscope.diagnosis.fixes` -- candidate repairs per finding code: spec and module transforms.

The ``doctor`` run and its repair are workflows (:mod:`deepscope.workflows`), above the trainer.
"""

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

__all__ = ["CODES", "SEVERITIES", "Finding", "check_model", "diagnose", "diagnose_input", "has_problem",
           "layer_outputs", "load_checks", "merge_checks", "save_checks", "sort_findings"]
