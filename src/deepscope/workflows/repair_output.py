"""The output of ``repair``: the fixed spec written beside the run, the report of the baseline and the repair, the
table of the trials and the summary lines (split out of :mod:`deepscope.workflows.repair`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from deepscope.config import spec_toml
from deepscope.diagnosis.fixes import FIXES

__all__ = ["removed", "repair_table", "score", "summary", "write_fixed", "write_repair_report"]


def score(metrics: dict[str, float], status: str) -> tuple[float, float]:
    """(validation error, or 1 - R^2 for a regression; validation loss); diverged, or without them: the worst."""
    err, loss = metrics.get("valid/error", min(1, 1 - metrics.get("valid/r2", -1))), metrics.get("valid/loss", math.nan)
    if status == "diverged" or not math.isfinite(err):
        return 1.0, math.inf
    return err, loss if math.isfinite(loss) else math.inf

_score = score


def removed(before_findings, after_findings) -> list[str]:
    """The problem codes (errors, warnings) of the baseline that a trial no longer has (or that recover in it)."""
    problems = ("error", "warning")
    after = {f.code for f in after_findings if f.severity in problems and f.recovers is not True}
    return list(dict.fromkeys(f.code for f in before_findings if f.severity in problems and f.code not in after))


def write_fixed(best, original: dict, own_module: bool, own_data: bool, path: Any) -> Path:
    spec = {**best.spec, "name": f"{original['name']}-fixed"}
    header = [f"Repaired by deepscope doctor --fix: {best.name}.",
              f"Verified in a {best.data.get('spec', {}).get('train', {}).get('updates', '?')}-update trial: "
              f"valid {'1 - R²' if 'valid/r2' in best.metrics else 'error'} {_score(best.metrics, best.status)[0]:.2%}"
              f"{f' (run {best.run_id})' if best.run_id else ''}."]
    if own_module:
        module_fixes = [f for f in best.fixes if not FIXES[f].run_level]
        spec = {k: v for k, v in spec.items() if k not in ("model", "init")}  # your module replaces them
        header += ["It trained a module of your own: run it with deepscope train THIS_FILE --model pkg.mod:factory,",
                   "or train(load_spec(this file), model=your_module); without one, deepscope train builds its",
                   "default MLP instead."]
        if module_fixes:
            header.append(f"Apply the module-level fixes {', '.join(module_fixes)} to your module first: your_module = "
                          f"deepscope.diagnosis.fixes.apply_fixes({module_fixes!r}, spec.to_dict(), your_module, "
                          f"seed={original['train'].get('seed', 0)})[1]")
    if own_data:
        header.append("It trained on a dataset given in Python: train(load_spec(this file), dataset=your_dataset).")
    path = Path(path)
    path.write_text(spec_toml(spec, header))
    return path


def write_repair_report(result, name: str, store, report_path) -> Path:
    from deepscope.plots.html import RunData, write_html
    from deepscope.store import REPORT_FILE

    b = result.baseline
    if report_path is None:
        report_path = Path("doctor-report.html") if store is None else store.run_dir(b.run_id) / REPORT_FILE
    runs = [RunData(f"baseline {b.run_id or name}", run_id=b.run_id, spec=b.spec, status=b.status,
                    stats=b.records, histograms=b.histograms, scalars=b.scalars, findings=b.findings,
                    checks=b.checks)]
    if (best := result.best) is not None:
        d = best.data
        runs.append(RunData(f"repaired ({best.name})", run_id=best.run_id, spec=d["spec"], status=best.status,
                            stats=d["records"], histograms=d["histograms"], scalars=d["scalars"],
                            findings=best.findings, checks=d["checks"]))
    return write_html(runs, report_path, title=f"deepscope doctor --fix: {name}")


# --- output: the table and the summary ---------------------------------------------------------------


def repair_table(result):
    """The trials as a rich table, ranked: verified first, then by validation error."""
    from rich.table import Table

    b_err, b_loss = _score(result.baseline.metrics, result.baseline.status)
    measure = "valid 1 - R²" if "valid/r2" in result.baseline.metrics else "valid error"
    table = Table("#", "fix", "for finding", "cleared", measure, "valid loss", "time", "verdict",
                  title=f"deepscope doctor --fix: {len(result.trials)} trials (diagnosis run "
                  f"{result.diagnosis_seconds:.0f} s)", show_lines=False)
    for i, t in enumerate(result.trials, 1):
        err, loss = _score(t.metrics, t.status)
        mark = "[bold green]" if t is result.best else ""
        cleared = "-" if t.status != "finished" else "yes" if t.cleared else "[red]no[/]"
        table.add_row(str(i), f"{mark}{t.name}", ", ".join(t.targets), cleared,
                      f"{b_err:.1%} -> {err:.1%}", f"{b_loss:.3g} -> {loss:.3g}",
                      f"{t.seconds:.0f} s ({t.seconds / max(result.diagnosis_seconds, 1e-9):.1f}x)",
                      t.verdict.replace("verified", "[green]verified[/]", 1))
    return table


def summary(result) -> list[str]:
    """What happened, in a few lines: nothing to fix, the repair and where it was written, or that none helped."""
    b = result.baseline
    if result.healthy:
        return ["nothing to fix: the diagnosis run is healthy (no trials run)"]
    if result.data_cause is not None:
        from deepscope.diagnosis.causes import CAUSES

        if not result.trials:
            return [f"no training change can help: {CAUSES[result.data_cause]} (no trials run)"]
        return [f"no trial trained ({len(result.trials)} tried): {CAUSES[result.data_cause]}"]
    lines = [f"skipped {name}: {why}" for name, why in result.skipped]
    if result.interrupted:
        done = sum(t.status == "finished" for t in result.trials)
        lines.append(f"interrupted: {done} finished trials kept (in the run store)")
    b_err, _ = _score(b.metrics, b.status)
    measure = "valid 1 - R²" if "valid/r2" in b.metrics else "valid error"  # a regression's error is 1 - R²
    if result.best is None:
        lines.append(f"no candidate fix was verified ({len(result.trials)} tried; baseline {measure} {b_err:.1%}): "
                     "the run is left as it is (a fix must remove its finding and leave a network that trains: a "
                     "validation error 10 points below the chance error and below the baseline's, or within the "
                     "noise of it when the baseline trained already)")
    else:
        best = result.best
        err, _ = _score(best.metrics, best.status)
        run = f" (run {best.run_id})" if best.run_id else ""
        if not best.improved:  # verified without a gain: the baseline trained already (workflows.repair.judge)
            lines.append(f"repaired: {best.name}: the network already trained ({measure} {b_err:.1%} -> {err:.1%}, "
                         f"no change beyond the noise); the fix removes "
                         f"{', '.join(removed(b.findings, best.findings) or best.targets)}{run}; "
                         f"fixed spec: {result.fixed_path}")
        else:
            lines.append(f"repaired: {best.name}: {measure} {b_err:.1%} -> {err:.1%}{run}; "
                         f"fixed spec: {result.fixed_path}")
    return lines
