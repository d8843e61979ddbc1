"""Findings: what diagnosis reports, how findings are ordered, and how the model/input checks are kept.

A :class:`Finding` names a problem (``code``), where (``layers``), since when (``first_step``), the
numbers (``evidence``) and the fix (``advice``). ``deepscope doctor`` keeps the findings of the checks
that need the model or the inputs in the run's folder of the store, so ``deepscope report`` shows the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CODES", "SEVERITIES", "Finding", "has_problem", "load_checks", "merge_checks", "print_findings",
           "save_checks", "sort_findings"]

SEVERITIES = ("error", "warning", "info")

CODES: dict[str, str] = {
    "symmetry": "units of a layer are identical (zero or constant initialization)",
    "exploding_gradients": "back-propagated gradients grow toward the input, or statistics become Inf/NaN",
    "vanishing_gradients": "back-propagated gradients shrink by orders of magnitude toward the input",
    "saturation": "a large fraction of a layer's units sit at an asymptote of the non-linearity",
    "dead_units": "ReLU units output 0 on every monitor example",
    "variance_shrinks": "activation variance shrinks with depth at initialization (init scale too small)",
    "variance_grows": "activation variance grows with depth at initialization (init scale too large)",
    "lr_too_high": "the loss rises, oscillates or becomes NaN: learning rate too high",
    "lr_too_low": "the loss decreases slowly, in tiny steps: learning rate too low",
    "input_not_centered": "the inputs are not centered (per-component mean far from 0)",
    "input_not_scaled": "the inputs are not scaled (per-component std far from 1 or very unequal)",
    "not_learning": "layers whose weights do not change: frozen, left out of the optimizer or not registered",
    "output_loss_mismatch": "the model outputs probabilities or bounded values but the loss expects logits",
    "loss_for_classes": "a regression loss (mse, l1, huber) on one-hot class labels: a classifier trained as a "
                        "regression",
    "output_saturated": "output logits so large that the softmax saturates (probabilities pinned at 0 and 1)",
    "loss_spikes": "the training loss jumps by a large factor at some updates without diverging",
    "gradient_spikes": "the gradient norm jumps by orders of magnitude at some updates",
    "plateau": "the loss does not fall although gradients flow and the weights move at a normal rate",
    "overfitting": "the validation loss rises while the training loss falls: the gap between them grows",
    "eval_mode": "the model or its batch-norm / dropout layers are in eval mode during training",
    "bn_stats_frozen": "batch-norm running statistics do not change during training",
    "unobservable": "modules whose non-linearities the probe cannot hook (functions in forward(), fused kernels)",
    "diagnosis_error": "a diagnosis rule could not run on these records (a bug of deepscope: please report it)",
    # causes (deepscope.diagnosis.causes): what the user must change behind the symptoms above
    "forward_overflow": "an activation overflows (Inf/NaN) in the forward pass at initialization",
    "output_activation": "an activation after the last layer bounds or clips the logits the loss reads",
    "weight_decay_strong": "weight decay strong enough to hold the weights down",
    "dropout_strong": "dropout strong enough to hold the signal down",
    "input_constant": "the inputs do not vary across examples: they carry no information",
    "labels_constant": "every training label is the same",
    "labels_unexplained": "the loss stays at chance with healthy gradients: nothing in the inputs explains the labels",
    "depth_unnormalized": "a deep stack without normalization or residual paths",
}



@dataclass
class Finding:
    """One diagnosed problem: what, where, since when, the numbers, and the fix."""

    code: str
    severity: str  # "error" | "warning" | "info"
    message: str
    layers: list[str] = field(default_factory=list)
    first_step: int | None = None  # first update at which the condition was seen
    recovers: bool | None = None  # True: gone by the last record; False: still there; None: not known
    evidence: dict[str, float] = field(default_factory=dict)
    advice: str = ""
    cause: str = ""  # the code of the cause that explains it (deepscope.diagnosis.causes), its own code if none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; within a severity, the roots (findings that are their own cause)
    before the findings another one explains (:mod:`deepscope.diagnosis.ranking`), then earliest update first."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (rank.get(f.severity, 9), bool(f.cause) and f.cause != f.code,
                                           f.first_step if f.first_step is not None else 0))


def has_problem(findings: Iterable[Finding]) -> bool:
    """True when any finding is an error or a warning (what ``deepscope doctor`` exits 1 on)."""
    return any(f.severity in ("error", "warning") for f in findings)



def merge_checks(findings: list[Finding], checks: list[Finding]) -> list[Finding]:
    """The records' findings with the model/input ``checks``; a check replaces a finding of the same code."""
    codes = {c.code for c in checks}
    return sort_findings([f for f in findings if f.code not in codes] + list(checks))


def save_checks(path, checks: list[Finding]) -> None:
    """Write ``checks`` as JSON (``deepscope report`` reads them back with :func:`load_checks`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps([c.to_dict() for c in checks], indent=1))


def load_checks(path) -> list[Finding]:
    """The findings :func:`save_checks` wrote; none when the file does not exist.

    A file that is not such a list raises ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
        return [Finding(**{k: v for k, v in row.items() if k in Finding.__dataclass_fields__}) for row in rows]
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a list of findings written by deepscope doctor ({e})") from None


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def print_findings(findings: list[Finding], title: str) -> None:
    """The findings as a rich table (severity, finding and numbers, where and since when, advice); every user
    string escaped, so a layer named ``[red]`` prints as it is."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def cause(f: Finding) -> str:  # the cause that explains a symptom (deepscope.diagnosis.causes), beside it
        return f" [dim]-> cause: {escape(f.cause)}[/]" if f.cause and f.cause != f.code else ""

    console = Console()
    if not findings:
        console.print(f"[bold green]healthy[/]: no rule fired ({escape(title)})")
        return
    table = Table("severity", "finding", "where", "advice", title=escape(title), show_lines=True, expand=True)
    for f in findings:
        evidence = ", ".join(f"{k}={v:.3g}" for k, v in f.evidence.items())
        where = [", ".join(f.layers)] if f.layers else []
        where += [f"since update {f.first_step}"] if f.first_step is not None else []
        where += [{True: "recovers", False: "does not recover"}[f.recovers]] if f.recovers is not None else []
        table.add_row(f"[{_SEVERITY_STYLE.get(f.severity, '')}]{escape(f.severity)}[/]",
                      f"[bold]{escape(f.code)}[/]{cause(f)}\n{escape(f.message)}\n[dim]{escape(evidence)}[/]",
                      escape("\n".join(where)), escape(f.advice))
    console.print(table)
