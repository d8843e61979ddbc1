"""The diagnosis run of ``doctor``: a short probed training run through :func:`deepscope.training.loop.train`,
diagnosed and reported (:func:`diagnosis_run`; :func:`deepscope.workflows.doctor.doctor` calls it, and
the repair trials too).

The run is an ordinary :func:`~deepscope.training.loop.train` run of the spec (or of your own module with the
spec's data, optimizer and schedule) with two callbacks: :class:`~deepscope.training.probe.TrainerProbe`
and :class:`_Checks`, which looks at the model's weights at the start and the end and keeps the
per-update losses. So a doctor run is the same run ``deepscope train`` would make from that spec and seed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepscope.config import load_spec, validate_spec
from deepscope.diagnosis.causes import explain, hidden_records, model_facts, weight_norm
from deepscope.diagnosis.checks import (
    batchnorm_state,
    check_batchnorm,
    check_model,
    check_modes,
    check_training,
    diagnose_input,
)
from deepscope.diagnosis.findings import Finding, has_problem, merge_checks, save_checks
from deepscope.diagnosis.rules import diagnose
from deepscope.metrics import baseline
from deepscope.records import RESTORED_STEP
from deepscope.store import CHECKS_FILE, REPORT_FILE
from deepscope.training.callbacks import Callback
from deepscope.training.probe import MONITOR, TrainerProbe

__all__ = ["DOCTOR_UPDATES", "DoctorResult", "diagnosis_run", "write_report"]

DOCTOR_UPDATES = 500  # long enough for the loss curve and saturation to show, short enough to wait for
DOCTOR_RECORDS = 10  # probe records over the run (plus the one at initialization)
DOCTOR_EVALS = 10  # evaluations over the run (the error curves of the report, the overfitting rule)


# Curve findings a check explains better: a frozen or eval-mode batch norm makes the validation loss differ
# from the training loss (not overfitting); a model whose layers do not learn or whose output does not fit the
# loss sits at the chance level for that reason (not a plateau of a healthy set-up).
_EXPLAINED_BY_CHECKS = {
    "overfitting": {"bn_stats_frozen", "eval_mode"},
    "plateau": {"not_learning", "output_loss_mismatch", "output_saturated", "eval_mode", "symmetry"},
}


# Findings read from the loss and gradient norm of every update and the chance level, which the store does not keep
_FROM_UPDATE_CURVES = {"loss_spikes", "gradient_spikes", "plateau"}


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
    grad_norms: list[float] = field(default_factory=list, repr=False)  # the gradient norm of every update
    scalars: list[dict] = field(default_factory=list, repr=False)  # the evaluations (step, name, value)
    checks: list[Finding] = field(default_factory=list)  # the findings of the model and input checks
    spec: dict = field(default_factory=dict, repr=False)  # the spec as recorded
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    timings: dict[str, float] = field(default_factory=dict)  # seconds: "train", "findings" (after it), "report"
    repair: Any = field(default=None, repr=False)  # doctor(fix=True): the RepairResult of the trials
    chance_error: float | None = None  # the validation error of the task's baseline (1 - R^2 = 1 for a regression)

    @property
    def healthy(self) -> bool:
        return not has_problem(self.findings)

    @property
    def exit_code(self) -> int:
        """0: nothing wrong, or a verified repair; 1: the problems remain (the command's exit status)."""
        if self.repair is not None:
            return self.repair.exit_code
        return 0 if self.healthy else 1


class _Checks(Callback):
    """The checks that need the model: symmetry of the weights at the start and the end, parameters the
    optimizer moves and the output the loss sees (start), the mode at the first update, batch-norm running
    statistics (start vs end); the monitor inputs; and the loss and gradient norm of every update."""

    def __init__(self, monitor: int):
        self.monitor = monitor
        self.losses: list[Any] = []
        self.grad_norms: list[Any] = []  # the gradient norm of every update, on the device
        self.evals: list[dict] = []
        self.at_start: list[Finding] = []
        self.at_end: list[Finding] = []
        self.inputs: list[Finding] = []
        self.training: list[Finding] = []  # frozen / unregistered parameters, output fed to the loss
        self.modes: list[Finding] = []  # eval mode during training
        self.batchnorm: list[Finding] = []  # running statistics that never moved
        self.bn_before: dict = {}
        self.first_step = 0
        self.check_modes = True
        self.x = None
        self.loss_fn = None  # the run's loss: the chance level is that loss's on a constant prediction
        self.facts: dict = {}

    def on_start(self, ctx) -> None:
        from deepscope.losses import describe

        valid = ctx.eval_sets.get("valid")
        self.x = valid[0][: self.monitor] if valid is not None else None
        self.loss_fn = ctx.loss_fn
        self.at_start = check_model(ctx.model, self.x)
        self.inputs = diagnose_input(self.x, ctx.model) if self.x is not None and len(self.x) >= 2 else []
        self.training = check_training(ctx.model, ctx.optimizer, self.x, loss=describe(ctx.loss_fn) if ctx.loss_fn
                                       is not None else None, targets=valid[1] if valid is not None else None)
        self.bn_before, self.first_step = batchnorm_state(ctx.model), ctx.step
        self.facts = model_facts(ctx.model, self.x)  # what the causes are read from (diagnosis.causes)

    def on_step(self, ctx) -> None:
        if self.check_modes:  # the first update, and the first after each evaluation (where model.eval() is called)
            self.check_modes = False
            if not self.modes and (found := check_modes(ctx.model)):
                found[0].first_step = ctx.step
                self.modes = found
        self.losses.append(ctx.loss)  # stays on the device; read once at the end
        grads = [p.grad for p in ctx.model.parameters() if p.grad is not None]
        norms = [torch.linalg.vector_norm(g) for g in grads]  # stays on the device, like the loss
        self.grad_norms.append(torch.linalg.vector_norm(torch.stack(norms)) if norms
                               else torch.zeros((), device=ctx.loss.device))

    def on_eval(self, ctx) -> None:
        self.check_modes = True
        self.evals += [dict(step=ctx.step, name=k, value=v) for k, v in ctx.metrics.items()]

    def on_end(self, ctx) -> None:
        self.at_end = check_model(ctx.model, self.x)
        self.facts["weight_norm_end"] = weight_norm(ctx.model)
        self.batchnorm = check_batchnorm(self.bn_before, ctx.model, ctx.step - self.first_step, self.modes)

    def findings(self) -> list[Finding]:
        """One symmetry finding (the weights at the start or the end), then the other checks' findings."""
        others = [*self.training, *self.modes, *self.batchnorm, *self.inputs]
        if not self.at_start and not self.at_end:
            return others
        finding = (self.at_start or self.at_end)[0]
        finding.first_step = 0 if self.at_start else None
        finding.recovers = not self.at_end
        if not self.at_end:
            finding.severity = "warning"
            finding.message += "; training has broken the symmetry since"
        return [finding, *others]


def diagnosis_run(
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
    loss_fn: Any = None,
) -> DoctorResult:
    """Train ``spec`` (a RunSpec or its dict) for ``updates`` updates with the probe, diagnose, write the report.

    The probe records ``DOCTOR_RECORDS`` times on a fixed monitor set of ``monitor`` validation examples
    (preprocessed as the trainer does). ``model`` trains your own ``nn.Module`` with the spec's data,
    optimizer, schedule and training sections (``train(spec, model=model)``); ``loss_fn`` a loss of your own
    (``train(spec, loss_fn=loss_fn)``). Findings come from
    :func:`~deepscope.diagnosis.rules.diagnose` on the records, the loss and gradient norm of every update, the
    evaluations and the task's baseline on the validation targets (:func:`deepscope.metrics.baseline`); from
    :func:`~deepscope.diagnosis.checks.check_model` (symmetry) at the start and at the end,
    :func:`~deepscope.diagnosis.checks.check_training` (frozen, missing or unregistered parameters, the output
    fed to the loss) at the start, :func:`~deepscope.diagnosis.checks.check_modes` at the first update and after
    each evaluation, :func:`~deepscope.diagnosis.checks.check_batchnorm` (start vs end) and
    :func:`~deepscope.diagnosis.checks.diagnose_input` on the monitor inputs. With ``report`` the HTML report
    goes to ``report_path`` (default: ``<store>/<run>/report.html``, or ``doctor-report.html`` without a store);
    with ``report=False`` none is drawn (:func:`write_report` draws it later). ``timings`` gives the seconds of
    training, from its end to the findings, and of the report.
    """
    from deepscope.training.data_checks import load_data
    from deepscope.training.loop import train

    for key, value in (("updates", updates), ("monitor", monitor)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value!r} is not allowed; give an integer >= 1")
    spec = load_spec(spec) if isinstance(spec, str | os.PathLike) else spec  # a TOML file's path
    data_spec = dict(spec) if isinstance(spec, dict) else {} if spec is None else validate_spec(spec).to_dict()
    data_spec["train"] = {**data_spec.get("train", {}), "updates": updates, "epochs": None,
                          "eval_every": max(1, updates // DOCTOR_EVALS)}
    spec = validate_spec(data_spec, source="doctor spec")
    data = dataset if dataset is not None else load_data(spec)

    began = time.perf_counter()
    checks = _Checks(monitor)
    probe = TrainerProbe(every=max(1, updates // DOCTOR_RECORDS), monitor=monitor)
    try:
        result = train(spec, model=model, store=store, callbacks=[checks, probe], quiet=quiet, dataset=data,
                       loss_fn=loss_fn)
    finally:
        probe.close()  # training raised: the probe's hooks go all the same
    store = result.store  # opened by train once the spec, the data and the model passed their checks
    trained = time.perf_counter()
    losses = torch.stack(checks.losses).float().tolist() if checks.losses else []
    norms = torch.stack(checks.grad_norms).float().tolist() if checks.grad_norms else []
    start = result.step - len(losses)
    loss_rows = [dict(step=start + i + 1, name="train/loss", value=v) for i, v in enumerate(losses)]
    loss_rows += [dict(step=start + i + 1, name="train/grad_norm", value=v) for i, v in enumerate(norms)]
    # the evaluations, but the per-update losses stand for the training loss
    loss_rows += [r for r in checks.evals if not r["name"].startswith("train/")]
    if data.valid is not None and len(data.valid[1]):  # the chance level: valid/chance_loss, _error, _rmse, _r2 ...
        chance = baseline(result.task, data.valid[1], checks.loss_fn, data.num_classes)
        loss_rows += [dict(step=0, name=f"valid/chance_{k}", value=v) for k, v in chance.items()]
    if result.restored is not None:  # train.restore_best: the rules judge the network the run ended with
        loss_rows.append(dict(step=result.step, name=RESTORED_STEP, value=float(result.restored)))
    if result.status == "diverged":  # the trainer stopped it (a NaN/Inf loss, or a finite one that exploded)
        loss_rows.append(dict(step=result.diverged_at or result.step, name="train/diverged", value=1.0))
    recorded = spec.to_dict()
    if model is not None:
        from deepscope.training.setup import describe_model

        recorded["model"] = describe_model(model)
        recorded.pop("init", None)  # not applied to your module
    if loss_fn is not None:
        from deepscope.losses import describe

        recorded["train"]["loss"], recorded["train"]["loss_options"] = describe(loss_fn).name, {}
    # what the records cannot tell later: the model's weights at init and at the end, and the inputs
    found_checks = checks.findings() + _unobservable(probe)
    found = diagnose(hidden_records(probe.records, checks.facts), scalars=loss_rows, histograms=probe.histograms,
                     spec=recorded)
    codes = {f.code for f in found_checks}
    findings = merge_checks([f for f in found if not codes & _EXPLAINED_BY_CHECKS.get(f.code, set())], found_checks)
    labels = data.train[1] if data.train is not None and isinstance(data.train[1], torch.Tensor) else None
    findings = explain(findings, checks.facts, recorded, labels, result.step)
    if store is not None:  # kept for `deepscope report`, with what the stored per-evaluation rows cannot re-derive
        kept = found_checks + [f for f in findings if f.code in _FROM_UPDATE_CURVES]
        save_checks(store.run_dir(result.run_id) / CHECKS_FILE, kept)
    scalars = store.scalars(result.run_id) if store is not None else checks.evals
    out = DoctorResult(result.run_id, result.status, findings, store=store, records=probe.records,
                       histograms=probe.histograms, losses=losses, grad_norms=norms, scalars=scalars,
                       checks=found_checks, spec=recorded, metrics=dict(result.metrics))
    out.timings = {"train": trained - began, "findings": time.perf_counter() - trained}
    if data.valid is not None and len(data.valid[1]):  # the repair's "trains" bar: error, or 1 - R^2 (the mean's: 1)
        out.chance_error = chance["error"] if "error" in chance else 1.0 if "r2" in chance else None
    if report:
        write_report(out, report_path)
    return out


def _unobservable(probe: TrainerProbe) -> list[Finding]:
    """An info finding naming the modules whose non-linearities the probe could not see, if any: the rules on
    saturation, dead units and variance say nothing about them, so a healthy verdict covers less there."""
    hidden = getattr(probe.probe, "unobservable", None) or []
    if not hidden:
        return []
    shown = "; ".join(f"{name}: {why}" for name, why in hidden[:3]) + (" ..." if len(hidden) > 3 else "")
    return [Finding("unobservable", "info",
                    f"the probe cannot see the non-linearities of {len(hidden)} module(s) ({shown}): saturation, "
                    "dead units and the variance of what they compute are not checked there",
                    layers=[name for name, _ in hidden],
                    advice="Where you can, use activation modules (nn.ReLU(), nn.Tanh()...) rather than "
                    "torch.relu(x) or F.tanh(x) in forward(), so that the probe records them.")]


def write_report(result: DoctorResult, path: Any = None) -> Path:
    """Draw the HTML report of a :func:`doctor` result (run with ``report=False``) to ``path``; return the path.

    The default path is ``<store>/<run>/report.html``, or ``doctor-report.html`` without a store. Matplotlib is
    imported here, not before: the findings need none of it. Sets ``result.report`` and ``result.timings["report"]``.
    """
    from deepscope.plots.html import RunData, write_html

    drawing = time.perf_counter()
    if path is None:
        path = Path("doctor-report.html") if result.store is None else result.store.run_dir(result.run_id) / REPORT_FILE
    name = result.spec.get("name", "run")
    run = RunData(name, run_id=result.run_id, spec=result.spec, status=result.status, stats=result.records,
                  histograms=result.histograms, findings=result.findings, checks=result.checks,
                  scalars=result.scalars)
    result.report = write_html([run], path, title=f"deepscope doctor: {name}")
    result.timings["report"] = time.perf_counter() - drawing
    return result.report
