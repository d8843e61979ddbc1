"""``doctor``: a short probed training run through :func:`deepscope.trainer.train`, diagnosed and reported.

The run is an ordinary :func:`~deepscope.trainer.train` run of the spec (or of your own module with the
spec's data, optimizer and schedule) with two callbacks: :class:`~deepscope.probe.trainer.TrainerProbe`
and :class:`_Checks`, which looks at the model's weights at the start and the end and keeps the
per-update losses. So a doctor run is the same run ``deepscope train`` would make from that spec and seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscope.callbacks import Callback
from deepscope.config import RunSpec, validate_spec
from deepscope.diagnosis.checks import check_model, diagnose_input
from deepscope.diagnosis.findings import Finding, has_problem, merge_checks, save_checks
from deepscope.diagnosis.rules import diagnose
from deepscope.probe.trainer import MONITOR, TrainerProbe
from deepscope.store import CHECKS_FILE, REPORT_FILE, Store

__all__ = ["DOCTOR_UPDATES", "DoctorResult", "doctor"]

DOCTOR_UPDATES = 500  # long enough for the loss curve and saturation to show, short enough to wait for
DOCTOR_RECORDS = 10  # probe records over the run (plus the one at initialization)
DOCTOR_EVALS = 5  # evaluations over the run (the error curves of the report)


@dataclass
class DoctorResult:
    """What :func:`doctor` found: the run, its findings (errors first), what was recorded and the report."""

    run_id: str | None
    status: str
    findings: list[Finding]
    report: Any = None  # pathlib.Path of the HTML report, or None when none was asked for
    store: Any = None  # the Store the run was recorded in, if any
    records: list[dict] = field(default_factory=list, repr=False)  # the probe's stats rows
    histograms: list[dict] = field(default_factory=list, repr=False)
    losses: list[float] = field(default_factory=list, repr=False)  # the training loss of every update
    scalars: list[dict] = field(default_factory=list, repr=False)  # the evaluations (step, name, value)
    checks: list[Finding] = field(default_factory=list)  # the findings of the model and input checks
    spec: dict = field(default_factory=dict, repr=False)  # the spec as recorded
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation

    @property
    def healthy(self) -> bool:
        return not has_problem(self.findings)


class _Checks(Callback):
    """Symmetry of the weights at the start and the end, the monitor inputs, and the per-update losses."""

    def __init__(self, monitor: int):
        self.monitor = monitor
        self.losses: list[Any] = []
        self.evals: list[dict] = []
        self.at_start: list[Finding] = []
        self.at_end: list[Finding] = []
        self.inputs: list[Finding] = []
        self.x = None

    def on_start(self, ctx) -> None:
        valid = ctx.eval_sets.get("valid")
        self.x = valid[0][: self.monitor] if valid is not None else None
        self.at_start = check_model(ctx.model, self.x)
        self.inputs = diagnose_input(self.x) if self.x is not None and len(self.x) >= 2 else []

    def on_step(self, ctx) -> None:
        self.losses.append(ctx.loss)  # stays on the device; read once at the end

    def on_eval(self, ctx) -> None:
        self.evals += [dict(step=ctx.step, name=k, value=v) for k, v in ctx.metrics.items()]

    def on_end(self, ctx) -> None:
        self.at_end = check_model(ctx.model, self.x)

    def findings(self) -> list[Finding]:
        """One symmetry finding (the weights at the start or the end), then the input findings."""
        if not self.at_start and not self.at_end:
            return list(self.inputs)
        finding = (self.at_start or self.at_end)[0]
        finding.first_step = 0 if self.at_start else None
        finding.recovers = not self.at_end
        if not self.at_end:
            finding.severity = "warning"
            finding.message += "; training has broken the symmetry since"
        return [finding, *self.inputs]


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
) -> DoctorResult:
    """Train ``spec`` (a RunSpec or its dict) for ``updates`` updates with the probe, diagnose, write the report.

    The probe records ``DOCTOR_RECORDS`` times on a fixed monitor set of ``monitor`` validation examples
    (preprocessed as the trainer does). ``model`` trains your own ``nn.Module`` with the spec's data,
    optimizer, schedule and training sections (``train(spec, model=model)``). Findings come from
    :func:`~deepscope.diagnosis.rules.diagnose` on the records and the per-update training loss,
    :func:`~deepscope.diagnosis.checks.check_model` at the start and at the end, and
    :func:`~deepscope.diagnosis.checks.diagnose_input` on the monitor inputs. With ``report`` the HTML report
    goes to ``report_path`` (default: ``<store>/<run>/report.html``, or ``doctor-report.html`` without a store).
    """
    import torch

    from deepscope.data import get_dataset
    from deepscope.trainer import train

    for key, value in (("updates", updates), ("monitor", monitor)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value!r} is not allowed; give an integer >= 1")
    data_spec = spec.to_dict() if isinstance(spec, RunSpec) else dict(spec or {})
    data_spec["train"] = {**data_spec.get("train", {}), "updates": updates, "epochs": None,
                          "eval_every": max(1, updates // DOCTOR_EVALS)}
    spec = validate_spec(data_spec, source="doctor spec")
    if store is not None and not isinstance(store, Store):
        store = Store(store)
    data = dataset if dataset is not None else get_dataset(spec.data.name, **spec.data.options)

    checks = _Checks(monitor)
    probe = TrainerProbe(every=max(1, updates // DOCTOR_RECORDS), monitor=monitor)
    try:
        result = train(spec, model=model, store=store, callbacks=[checks, probe], quiet=quiet, dataset=data)
    finally:
        probe.close()  # training raised: the probe's hooks go all the same
    losses = torch.stack(checks.losses).float().tolist() if checks.losses else []
    loss_rows = [dict(step=i + 1, name="train/loss", value=v) for i, v in enumerate(losses)]
    recorded = spec.to_dict()
    if model is not None:
        from deepscope.trainer import describe_model

        recorded["model"] = describe_model(model)
    # what the records cannot tell later: the model's weights at init and at the end, and the inputs
    found_checks = checks.findings()
    findings = merge_checks(diagnose(probe.records, scalars=loss_rows, histograms=probe.histograms, spec=recorded),
                            found_checks)
    if store is not None:
        save_checks(store.run_dir(result.run_id) / CHECKS_FILE, found_checks)
    scalars = store.scalars(result.run_id) if store is not None else checks.evals
    out = DoctorResult(result.run_id, result.status, findings, None, store, probe.records, probe.histograms, losses,
                       scalars, found_checks, recorded, dict(result.metrics))
    if report:
        from deepscope.plots import RunData
        from deepscope.plots import report as write_report

        if report_path is None:
            report_path = Path("doctor-report.html") if store is None else store.run_dir(result.run_id) / REPORT_FILE
        run = RunData(spec.name, run_id=result.run_id, spec=recorded, status=result.status, stats=probe.records,
                      histograms=probe.histograms, findings=findings, checks=found_checks, scalars=scalars)
        out.report = write_report([run], out_path=report_path, title=f"deepscope doctor: {spec.name}")
    return out
