"""``repair`` (``deepscope doctor --fix``): diagnose, try the candidate fixes, verify them, hand back a run that trains.

1. The diagnosis run: :func:`~deepscope.workflows.run.diagnosis_run` on the spec (or your module, whose initial
   state is deep-copied first). A healthy run gets "nothing to fix" and no trials.
2. Trials: for the top :data:`TOP_FINDINGS` findings, each candidate of
   :data:`~deepscope.diagnosis.fixes.FIXES_FOR` that applies is a short doctor run of the repaired spec (or
   repaired copy of the initial module), as long as the diagnosis run, from the same seed -- so the same
   batches and, where the fix leaves the network alone, the same initial weights. Trials run in parallel
   (local processes, or Ray) and are recorded in the run store.
3. Verification (:func:`judge`): a fix is *verified* when the finding it targets is gone and the network it gives
   *trains* (:func:`trains`): the trial finished with a validation error at least :data:`TRAINS_MARGIN` (10 points)
   below the chance error, and
   - when the baseline did not train: below the baseline's error (or the baseline diverged), having improved on it
     by the margins (:data:`ERROR_MARGIN` of error, or :data:`LOSS_MARGIN` of loss at no higher error);
   - when the baseline already trained (a bug such as a model left in eval mode, which costs little error in a
     short run): no worse than the baseline's error by more than :data:`NOISE_MARGIN` (3 points, the noise of a
     few hundred validation examples). No gain is asked of such a fix, and its verdict says so: "the network
     already trained; the fix removes <finding>".
   A cause in the data (:data:`deepscope.diagnosis.causes.DATA_CAUSES`: constant inputs or labels, labels that
   nothing explains) gets no trials: no training change can help.
4. Combination: the verified fixes, best first, are added greedily (one per group) while the budget lasts;
   a combination is kept when it is verified and at least as good as the best so far. With no verified fix,
   the best fix that cleared its finding without a gain is tried with the best that gained without clearing
   its finding, and judged by the same rule.
5. The best verified trial (never one that is not better than the baseline, unless the baseline trained already
   and the trial removes its finding within the noise margin) is written as a TOML spec
   ``<run>-fixed.toml`` beside the run in the store (the working directory without a store) and drawn next to the
   baseline in the report.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscope.config import RunSpec, validate_spec
from deepscope.diagnosis.findings import Finding
from deepscope.diagnosis.fixes import FIXES_FOR, NotApplicable, apply_fixes
from deepscope.parallel import check_backend
from deepscope.training.probe import MONITOR
from deepscope.workflows.repair_output import removed, repair_table, summary, write_fixed, write_repair_report
from deepscope.workflows.repair_output import score as _score
from deepscope.workflows.run import DOCTOR_UPDATES, diagnosis_run
from deepscope.workflows.trials import Trial, picklable, run_trials

__all__ = ["ERROR_MARGIN", "LOSS_MARGIN", "NOISE_MARGIN", "TOP_FINDINGS", "TRAINS_MARGIN", "RepairResult", "judge",
           "repair", "repair_table", "summary", "trains"]

ERROR_MARGIN = 0.01  # a verified fix lowers the validation error by at least 1 point ...
LOSS_MARGIN = 0.05  # (a trial that lowers the validation loss by 5 % at no higher error counts as improved) ...
TRAINS_MARGIN = 0.10  # ... and ends at least 10 points below the chance error: the network trains
# A baseline that trains already: its fix may end up to 3 points above its error. The binomial standard error of an
# error near 30 % on 300 validation examples is sqrt(0.3 * 0.7 / 300) = 2.6 points (the benchmark's eval-mode cases
# end 1.0-1.3 points above their baselines once fixed).
NOISE_MARGIN = 0.03
TOP_FINDINGS = 2  # the fixes of this many findings (most severe first) are tried by default
# A fresh worker process imports torch and deepscope (a few seconds on 2 busy cores) before its first trial:
# when the diagnosis run is shorter than this, trials run one after the other in this process instead.
SPAWN_SECONDS = 10.0
PROBLEM = ("error", "warning")


@dataclass
class RepairResult:
    """What :func:`repair` did: the baseline diagnosis, the trials ranked (verified first), the best one."""

    baseline: Any  # the DoctorResult of the diagnosis run
    trials: list[Trial] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (fix, why it does not apply)
    best: Trial | None = None
    fixed_path: Path | None = None
    report: Path | None = None
    interrupted: bool = False
    diagnosis_seconds: float = 0.0
    seconds: float = 0.0  # the whole repair, diagnosis included

    @property
    def healthy(self) -> bool:
        return self.baseline.healthy

    @property
    def repaired(self) -> bool:
        return self.best is not None

    @property
    def data_cause(self) -> str | None:
        """The cause in the data that no training change can help, or None: a certain one (DATA_CAUSES: no trials
        run), or a suspected one (SUSPECTED_DATA_CAUSES) once no trial trained."""
        from deepscope.diagnosis.causes import SUSPECTED_DATA_CAUSES

        certain = _certain_data_cause(self.baseline)
        if certain is not None or self.best is not None or self.interrupted:
            return certain
        return next((f.code for f in self.baseline.findings if f.code in SUSPECTED_DATA_CAUSES), None)


    @property
    def model(self) -> Any:
        """Your module repaired (its initial weights with the module-level fixes), or None."""
        return self.best.model if self.best is not None else None

    @property
    def exit_code(self) -> int:
        """0: nothing wrong, or a verified repair; 1: the problems remain."""
        return 0 if self.healthy or self.repaired else 1


def _certain_data_cause(baseline) -> str | None:
    from deepscope.diagnosis.causes import DATA_CAUSES

    return next((f.code for f in baseline.findings if f.code in DATA_CAUSES and f.severity == "error"), None)


# --- verification ------------------------------------------------------------------------------------


def trains(error: float, chance: float | None, baseline_error: float, baseline_diverged: bool = False) -> bool:
    """The rule of a repair: a validation ``error`` at least TRAINS_MARGIN below the ``chance`` error (1 - the
    largest class frequency; unknown: 0.5 is taken), and below the baseline's error (or the baseline diverged) --
    or, when the baseline trained already (its error was TRAINS_MARGIN below chance too), at most NOISE_MARGIN
    above it: a fix of a network that trains need not lower its error, only not raise it beyond the noise."""
    chance = 0.5 if chance is None or not math.isfinite(chance) else chance
    if not (math.isfinite(error) and error <= chance - TRAINS_MARGIN):
        return False
    if baseline_diverged:
        return True
    if baseline_trained(baseline_error, chance):
        return error <= baseline_error + NOISE_MARGIN
    return error < baseline_error


def baseline_trained(baseline_error: float, chance: float | None) -> bool:
    """Whether the baseline's validation error is already TRAINS_MARGIN below the ``chance`` error."""
    chance = 0.5 if chance is None or not math.isfinite(chance) else chance
    return math.isfinite(baseline_error) and baseline_error <= chance - TRAINS_MARGIN


def judge(before: dict[str, float], after: dict[str, float], targets, before_findings: list[Finding],
          after_findings: list[Finding], status: str = "finished",
          before_status: str = "finished", chance: float | None = None) -> tuple[bool, bool, bool, str]:
    """``(improved, cleared, verified, verdict)`` of a trial against the baseline.

    improved: the validation error is lower by >= ERROR_MARGIN, or the validation loss is lower by >= LOSS_MARGIN
    (relative) with the error at most ERROR_MARGIN higher. cleared: none of ``targets`` is among the trial's
    problems (errors and warnings), unless it recovers by the end of the run. verified: the trial finished, cleared
    its targets and *trains* (:func:`trains`: 10 points below the ``chance`` error), and
    - if the baseline did not train: it improved and its error is below the baseline's (or the baseline diverged)
      -- a lower loss alone, or an error a little below chance, is not a repair;
    - if the baseline trained already: its error is at most NOISE_MARGIN above the baseline's. Such a fix removes
      a bug the short run did not pay for (a model left in eval mode); the verdict says that the network already
      trained and names the findings the fix removes.
    The verdict also names error-severity findings the baseline did not have.
    """
    b_err, b_loss = _score(before, before_status)
    a_err, a_loss = _score(after, status)
    improved = status == "finished" and (a_err <= b_err - ERROR_MARGIN or (
        a_loss <= (1.0 - LOSS_MARGIN) * b_loss and a_err <= b_err + ERROR_MARGIN))
    problems = {f.code for f in after_findings if f.severity in PROBLEM and f.recovers is not True}
    remaining = [c for c in targets if c in problems]
    cleared = not remaining
    diverged = before_status == "diverged"
    already = not diverged and before_status == "finished" and baseline_trained(b_err, chance)
    ok = status == "finished" and trains(a_err, chance, b_err, diverged)
    verified = (improved or already) and cleared and ok
    before_codes = {f.code for f in before_findings if f.severity in PROBLEM}
    new = sorted({f.code for f in after_findings if f.severity == "error"} - before_codes)
    reasons = ["verified"] if verified else [] if status == "finished" else [status]
    if verified and already and not improved:
        gone = removed(before_findings, after_findings) or list(targets)
        reasons = [f"verified: the network already trained; the fix removes {', '.join(gone)} (valid error "
                   f"{b_err:.1%} -> {a_err:.1%}, within the {NOISE_MARGIN:.0%} noise margin)"]
    elif status == "finished" and already and not ok:
        reasons.append(f"does not train as well as the baseline (error more than {NOISE_MARGIN:.0%} above it, or "
                       "not 10 points below chance)")
    elif status == "finished" and not improved and not already:
        reasons.append("no gain beyond the margin")
    elif status == "finished" and not ok:
        reasons.append("does not train (not 10 points below chance and better than the baseline)")
    reasons += [f"{c} remains" for c in remaining] + [f"new error: {c}" for c in new]
    return improved, cleared, verified, "; ".join(reasons)


# --- the workflow ------------------------------------------------------------------------------------


def _candidates(codes: list[str], spec: dict, model: Any, seed: int) -> tuple[list[Trial], list[tuple[str, str]]]:
    trials, skipped, seen = [], [], set()
    for code in codes:
        for name in FIXES_FOR.get(code, []):
            if name in seen:
                continue
            seen.add(name)
            try:
                fixed, fixed_model = apply_fixes([name], spec, model, seed)
            except NotApplicable as e:
                skipped.append((name, str(e)))
                continue
            trials.append(Trial((name,), (code,), fixed, fixed_model))
    return trials, skipped


def _judge(trial: Trial, baseline) -> None:
    trial.improved, trial.cleared, trial.verified, trial.verdict = judge(
        baseline.metrics, trial.metrics, trial.targets, baseline.findings, trial.findings, trial.status,
        baseline.status, getattr(baseline, "chance_error", None))
    if trial.status != "finished":
        trial.cleared = False  # a trial that did not run to its end clears nothing
    if trial.error:
        trial.verdict = f"failed: {trial.error}"


def repair(
    spec: Any = None,
    *,
    model: Any = None,
    dataset: Any = None,
    store: Any = None,
    updates: int | None = None,
    monitor: int | None = None,
    budget: int | None = None,
    jobs: int | None = None,
    backend: str = "local",
    report: bool = True,
    report_path: Any = None,
    fixed_path: Any = None,
    quiet: bool = True,
    loss_fn: Any = None,
) -> RepairResult:
    """Diagnose ``spec`` (or your ``model`` trained with it), try the candidate fixes, keep the best verified one.

    ``budget`` is the number of trial runs (default: every applicable fix of the top two findings, plus one
    combination). ``jobs`` parallel workers on ``backend`` ("local" processes or "ray"); by default two local
    processes, or this process alone when the diagnosis run took less than ``SPAWN_SECONDS``. Trials go to ``store``
    like any doctor run. With a verified repair its spec is written to ``fixed_path`` (default
    ``<run>-fixed.toml`` beside the run in the store, or in the current directory without a store) and, with
    ``report``, the baseline and the repaired run are drawn side by side (``report_path``, default the baseline
    run's ``report.html``). ``loss_fn``: your loss.
    """
    updates = DOCTOR_UPDATES if updates is None else updates
    monitor = MONITOR if monitor is None else monitor
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
        raise ValueError(f"budget={budget!r} is not allowed; give an integer >= 0 (the number of trial runs)")
    check_backend(backend, jobs)
    if not isinstance(spec, RunSpec):
        data = dict(spec or {})
        train = dict(data.get("train") or {})
        if train.get("updates") is None and train.get("epochs") is None:  # as doctor(spec) accepts it
            train["updates"] = updates
        data["train"] = train
        spec = validate_spec(data, source="repair spec")
    original = spec.to_dict()
    initial = _copy_module(model)  # the trials start from it; the diagnosis run trains a copy of it too
    start = time.perf_counter()
    baseline = diagnosis_run(spec, model=copy.deepcopy(initial), dataset=dataset, store=store, updates=updates,
                                  monitor=monitor, report=False, quiet=quiet, loss_fn=loss_fn)
    store = baseline.store  # a path is opened by the diagnosis run, once the spec, data and model are checked
    result = RepairResult(baseline, diagnosis_seconds=time.perf_counter() - start)
    codes = list(dict.fromkeys(f.code for f in baseline.findings if f.severity in PROBLEM))
    result.interrupted = baseline.status == "interrupted"  # Ctrl-C during the diagnosis run: no trials
    if codes and not result.interrupted and _certain_data_cause(baseline) is None:  # a cause in the data: no trial
        candidates, result.skipped = _candidates(codes[:TOP_FINDINGS], original, initial, spec.train.seed)
        budget = len(candidates) + 1 if budget is None else budget
        if jobs is None and backend == "local" and result.diagnosis_seconds < SPAWN_SECONDS or not picklable(loss_fn):
            jobs = 1
        run_args = dict(dataset=dataset, store_root=str(store.root) if store is not None else None,
                        updates=updates, monitor=monitor, loss_fn=loss_fn)
        with _Progress(quiet) as progress:
            singles = candidates[:budget]
            result.interrupted = run_trials(singles, run_args, backend, jobs, progress.add(len(singles)))
            for trial in singles:
                _judge(trial, baseline)
            result.trials = [t for t in singles if t.status != "not run"]
            if not result.interrupted:
                result.interrupted = _combine(result, original, initial, spec.train.seed, budget - len(singles),
                                              run_args, backend, progress)
        verified = [t for t in result.trials if t.verified]
        result.best = min(verified, key=lambda t: (*_score(t.metrics, t.status), len(t.fixes))) if verified else None
        result.trials.sort(key=lambda t: (not t.verified, *_score(t.metrics, t.status), len(t.fixes)))
    if result.best is not None:
        name = f"{baseline.run_id or spec.name}-fixed.toml"  # beside the run in the store, else here
        default = store.run_dir(baseline.run_id) / name if store is not None and baseline.run_id else Path(name)
        result.fixed_path = write_fixed(result.best, original, model is not None, dataset is not None,
                                        fixed_path or default)
    if report:
        result.report = write_repair_report(result, spec.name, store, report_path)
    result.seconds = time.perf_counter() - start
    return result


def _copy_module(model: Any) -> Any:
    """A deep copy of your module (None for a spec-built network); one that cannot be copied is named."""
    if model is None:
        return None
    try:
        return copy.deepcopy(model)
    except Exception as e:
        raise ValueError(f"model: doctor --fix trains copies of your module, and this one cannot be copied "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); keep objects such as "
                         "locks, open files or generators out of the module, or run doctor without --fix") from None


def _combine(result: RepairResult, spec: dict, model: Any, seed: int, left: int, run_args: dict, backend: str,
             progress) -> bool:
    """Greedy: add the next-best verified fix of a new group to the best so far while ``left`` trials remain.

    With no verified fix, the halves of one: the best fix that cleared its finding without a gain, with the best
    one (of another group) that gained without clearing its finding -- e.g. a re-initialization that ends the
    saturation but learns no faster in the short trial, with a batch norm that learns faster but leaves it.
    """
    ranked = sorted((t for t in result.trials if t.verified), key=lambda t: _score(t.metrics, t.status))
    if not ranked:
        finished = sorted((t for t in result.trials if t.status == "finished"),
                          key=lambda t: _score(t.metrics, t.status))
        cleared = [t for t in finished if t.cleared and not t.improved]
        gained = [t for t in finished if t.improved and not t.cleared]
        for a, b in ((a, b) for a in cleared for b in gained if not a.groups & b.groups):
            if left <= 0:
                break
            trial, interrupted = _try_pair(result, a, b, spec, model, seed, run_args, backend, progress)
            if trial is not None or interrupted:  # one pair run (a pair that does not apply: the next one)
                return interrupted
        return False
    current = ranked[0]
    for other in ranked[1:]:
        if left <= 0:
            break
        if other.groups & current.groups:
            continue
        trial, interrupted = _try_pair(result, current, other, spec, model, seed, run_args, backend, progress)
        if trial is None and not interrupted:
            continue
        left -= 1
        if interrupted:
            return True
        if trial.verified and _score(trial.metrics, trial.status) <= _score(current.metrics, current.status):
            current = trial
    return False


def _try_pair(result: RepairResult, first: Trial, second: Trial, spec: dict, model: Any, seed: int,
              run_args: dict, backend: str, progress) -> tuple[Trial | None, bool]:
    """Run ``first``'s fixes with ``second``'s as one trial; (the trial or None if it does not apply, interrupted)."""
    fixes = first.fixes + second.fixes
    try:
        fixed, fixed_model = apply_fixes(fixes, spec, model, seed)
    except NotApplicable as e:  # one fix undoes the ground of another (e.g. two swaps of one activation)
        result.skipped.append((" + ".join(fixes), str(e)))
        return None, False
    trial = Trial(fixes, tuple(dict.fromkeys(first.targets + second.targets)), fixed, fixed_model)
    interrupted = run_trials([trial], run_args, backend, 1, progress.add(1))
    if trial.status == "not run":
        return trial, True
    _judge(trial, result.baseline)
    result.trials.append(trial)
    return trial, interrupted


class _Progress:
    """A rich progress bar over the trials (nothing when ``quiet``)."""

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=Console(stderr=True, quiet=quiet),
                            disable=quiet)
        self.task = None

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=0)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def add(self, n: int):
        self.bar.update(self.task, total=self.bar.tasks[0].total + n)

        def finished(trial: Trial) -> None:
            self.bar.update(self.task, advance=1, description=f"{trial.name}: {trial.status}")

        return finished
