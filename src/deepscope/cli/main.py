"""The ``deepscope`` command line: a thin typer app that parses, calls the library and prints.

The top-level commands (list, train, doctor, report) are here; `data`, `runs` and `experiments` have a module each."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

import deepscope
from deepscope.cli.common import STORE_HELP, fail, model_from_factory, read_store
from deepscope.cli.data import data_app
from deepscope.cli.experiments import experiments_app
from deepscope.cli.runs import runs_app
from deepscope.diagnosis.findings import print_findings
from deepscope.training.probe import MONITOR
from deepscope.workflows.run import DOCTOR_UPDATES

app = typer.Typer(
    name="deepscope",
    help="Make deep networks train, and see why they do or don't.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepscope {deepscope.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Make deep networks train, and see why they do or don't."""


@app.command("list")
def list_components() -> None:
    """List every building block by name: activations, initializations, optimizers, schedules, ..."""
    from rich.console import Console
    from rich.table import Table

    from deepscope.nn.activations import ACTIVATIONS

    table = Table("kind", "names")
    table.add_row("activations", ", ".join(ACTIVATIONS))
    for kind, names in _registries().items():
        table.add_row(kind, ", ".join(names))
    Console().print(table)


def _registries() -> dict[str, list[str]]:
    """Every other registry, by kind."""
    from deepscope.data import AUGMENTATIONS, DATASETS
    from deepscope.data.preprocess import METHODS
    from deepscope.init import APPLY_ONLY, SCHEMES
    from deepscope.losses import LOSSES
    from deepscope.optim import OPTIMIZERS, SCHEDULES

    return {
        "initializations": [*SCHEMES, *APPLY_ONLY],
        "optimizers": list(OPTIMIZERS),
        "schedules": list(SCHEDULES),
        "losses": list(LOSSES),
        "preprocessing": list(METHODS),
        "datasets": list(DATASETS),
        "augmentations": list(AUGMENTATIONS),
    }


app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(experiments_app, name="experiments")


@app.command("train")
def train_command(
    spec: Path | None = typer.Argument(None, help="Run spec (TOML); optional with --resume.", show_default=False),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a value: --set model.activation=tanh."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar: only the final lines."),
    resume: str | None = typer.Option(None, "--resume", help="Continue run RUN (id or prefix) from its checkpoint."),
    updates: int | None = typer.Option(None, "--updates", help="Train for N updates (replaces train.updates/epochs)."),
    probe_every: int | None = typer.Option(
        None, "--probe-every", help="Record the probe's instruments every N updates into the store."),
    probe_monitor: int = typer.Option(MONITOR, "--probe-monitor", help="Fixed validation examples the probe runs on."),
    probe_jacobian_every: int | None = typer.Option(
        None, "--probe-jacobian-every",
        help="Also record Jacobian singular values every N updates (a multiple of --probe-every); "
        "default: at the first record only."),
    probe_jacobian_method: str = typer.Option(
        "auto", "--probe-jacobian-method", help="Jacobian singular values: auto, exact or lanczos."),
    force: bool = typer.Option(False, "--force", help="With --resume: take the run over even if it reads as running "
                               "(its process died on another host, say)."),
    model: str | None = typer.Option(
        None, "--model", help="Your own network instead of \\[model]: package.module:factory (a no-argument callable "
        "returning an nn.Module), importable from the current directory; give it again with --resume."),
    guard: bool = typer.Option(False, "--guard", help="Watch every update: skip spikes, roll back on divergence, "
                               "name the examples (train.guard=true; events in <run>/guard.json)."),
) -> None:
    """Train a run described by a TOML spec; print the final test error and where the run is stored."""
    from deepscope.config import apply_overrides, load_spec, validate_spec
    from deepscope.store import default_root
    from deepscope.training.loop import train

    if updates is not None and updates < 1:
        raise fail(f"--updates={updates}: give a number of updates >= 1")
    if force and resume is None:
        raise fail("--force goes with --resume RUN (it takes over a run that reads as running)")
    overrides = list(set_ or []) + ([f"train.updates={updates}", "train.epochs=none"] if updates else [])
    if guard and spec is None and not any(o.startswith("train.guard") for o in overrides):
        overrides.append("train.guard=true")  # a resume: onto the stored spec
    try:
        if spec is None and resume is None:
            raise ValueError("give a spec file (deepscope train SPEC.toml) or --resume RUN")
        run_spec = load_spec(spec, overrides) if spec is not None else None  # before the store: no db for bad input
        if guard and run_spec is not None and run_spec.train.guard is False:
            run_spec.train.guard = True  # --guard: the guard's defaults, unless the spec gives its options
        callbacks = []
        if probe_every is None and (probe_jacobian_every is not None or probe_jacobian_method != "auto"
                                    or probe_monitor != MONITOR):
            raise ValueError("--probe-monitor, --probe-jacobian-every and --probe-jacobian-method need "
                             "--probe-every N")
        if probe_every is not None:
            from deepscope.training.probe import TrainerProbe

            try:
                callbacks.append(TrainerProbe(probe_every, probe_monitor, jacobian_every=probe_jacobian_every,
                                              jacobian_method=probe_jacobian_method))
            except ValueError as e:  # name the flags, not the Probe's arguments
                flags = {"every": "--probe-every", "monitor": "--probe-monitor",
                         "jacobian_every": "--probe-jacobian-every", "jacobian_method": "--probe-jacobian-method"}
                raise ValueError(re.sub(r"(?<![\w-])(jacobian_every|jacobian_method|every|monitor)=",
                                        lambda m: f"{flags[m[1]]}=", str(e).removeprefix("probe "))) from None
        # a new run opens (and creates) the store only once its data and model are checked
        st = read_store(store, read_only=False) if resume is not None else (store or default_root())
        if spec is None and overrides:
            stored = st.get_run(resume)["spec"]
            if "class" in stored.get("model", {}):  # a module of your own is described there: the spec is the
                from deepscope.training.checkpoint import run_checkpoint  # checkpoint's

                stored = run_checkpoint(st, st.resolve(resume))["spec"]
            run_spec = validate_spec(apply_overrides(stored, overrides), source=f"run {resume}")
        net = model_from_factory(model) if model is not None else None
        result = train(run_spec, store=st, quiet=quiet, resume=resume, callbacks=callbacks, force=force, model=net)
        st = result.store
    except (ValueError, OSError) as e:
        raise fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if quiet and result.message:
        typer.echo(result.message, err=True)
    m = result.metrics
    status, last = result.status, result.eval_step
    if result.diverged_at is not None:
        status, last = f"diverged at update {result.diverged_at}", result.diverged_at
    if result.restored is not None:
        status += f" at update {result.step}; weights of update {result.restored} restored"
    elif last is not None and last != result.step:
        status += f"; stopped at update {result.step}"
    if "test/error" in m:
        valid = f" (valid {m['valid/error']:.2%})" if "valid/error" in m else ""
        typer.echo(f"test error {m['test/error']:.2%}{valid} after {result.eval_step} updates [{status}]")
    elif "test/rmse" in m:  # a regression
        valid = f" (valid R² {m['valid/r2']:.3f})" if "valid/r2" in m else ""
        typer.echo(f"test RMSE {m['test/rmse']:.4g}, R² {m['test/r2']:.3f}{valid} after {result.eval_step} updates "
                   f"[{status}]")
    else:
        typer.echo(f"{status}" if result.diverged_at is not None else f"{status} after {result.step} updates")
    if result.guard is not None:  # train.guard: what it did
        typer.echo(result.guard.summary())
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    typer.echo(f"run {result.run_id} stored in {st.path}{where}")
    if result.status != "finished":
        raise typer.Exit(1 if result.status == "diverged" else 130)


@app.command("doctor")
def doctor_command(
    spec: Path | None = typer.Argument(None, help="Run spec (TOML); omit it with --model.", show_default=False),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a value: --set optim.lr=0.1."),
    updates: int = typer.Option(DOCTOR_UPDATES, "--updates", help="Train for N updates with the probe."),
    monitor: int = typer.Option(MONITOR, "--monitor", help="Fixed validation examples the probe records on."),
    model: str | None = typer.Option(
        None, "--model", help="Your own network: package.module:factory (a no-argument callable returning an "
        "nn.Module), importable from the current directory."),
    data: str | None = typer.Option(None, "--data", help="Dataset name (replaces data.name)."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    output: Path | None = typer.Option(None, "-o", "--output", help="Report file; default <store>/<run>/report.html."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    no_report: bool = typer.Option(False, "--no-report", help="Print the findings only; draw no HTML report."),
    fix: bool = typer.Option(False, "--fix", help="Try the candidate fixes in short trials, verify them, write "
                             "the repaired spec <run>-fixed.toml."),
    budget: int | None = typer.Option(None, "--budget", help="With --fix: N trial runs (default: the fixes of the "
                                      "top two findings plus one combination)."),
    backend: str = typer.Option("local", "--backend", help="With --fix: run the trials on local processes or ray."),
    jobs: int | None = typer.Option(None, "--jobs", help="With --fix: parallel trial processes (default: 2, or this "
                                    "process alone when the diagnosis run is short)."),
) -> None:
    """Train briefly with the probe, print the findings, then write the HTML report.

    Exit status: 0 healthy (with --fix: or a verified repair was found), 1 a problem was found (an error or a
    warning; with --fix: and no fix was verified), 2 bad input.
    """
    from deepscope.config import apply_overrides, load_spec, validate_spec
    from deepscope.store import default_root
    from deepscope.workflows.doctor import doctor
    from deepscope.workflows.run import write_report

    for flag, value in (("--updates", updates), ("--monitor", monitor)):
        if value < 1:
            raise fail(f"{flag}={value}: give an integer >= 1")
    if not fix and (budget is not None or backend != "local" or jobs is not None):
        flag = "--budget" if budget is not None else "--jobs" if jobs is not None else "--backend"
        raise fail(f"{flag} goes with --fix (it sets the trial runs)")
    if output is not None and not output.parent.is_dir():
        raise fail(f"-o {output}: the directory {output.parent} does not exist; create it or give another path")
    overrides = list(set_ or []) + ([f"data.name={data}"] if data else [])
    try:
        if spec is None and model is None:
            raise ValueError("give a spec file (deepscope doctor SPEC.toml) or --model package.module:factory")
        if spec is not None:
            run_spec = load_spec(spec, overrides)
        else:
            name = model.rpartition(":")[2] or "model"
            run_spec = validate_spec(apply_overrides({"name": name, "train": {"updates": updates}}, overrides),
                                     source="--set")
        net = model_from_factory(model) if model is not None else None
        st = store or default_root()  # opened (and created) by the run once the spec, data and model are checked
        # with --fix the report draws the baseline and the repaired run; without, it is written after the findings
        result = doctor(run_spec, model=net, store=st, updates=updates, monitor=monitor, fix=fix, budget=budget,
                        jobs=jobs, backend=backend, report=fix and not no_report, report_path=output, quiet=quiet)
    except (ValueError, OSError, ImportError) as e:
        raise fail(str(e)) from None
    print_findings(result.findings, f"deepscope doctor: run {result.run_id} ({result.status})")
    typer.echo(f"run {result.run_id} stored in {result.store.path}")
    if fix:
        from rich.console import Console

        from deepscope.workflows.repair import repair_table, summary

        fixed = result.repair
        if fixed.trials:
            Console().print(repair_table(fixed))
        typer.echo("\n".join(summary(fixed)) + (f"\nreport: {fixed.report}" if fixed.report else ""))
        raise typer.Exit(result.exit_code)
    if not no_report:
        sys.stdout.flush()  # the findings are out before the figures are drawn
        try:
            typer.echo(f"report: {write_report(result, output)}")
        except OSError as e:
            raise fail(str(e)) from None
    raise typer.Exit(result.exit_code)


@app.command("report")
def report_command(
    runs: list[str] = typer.Argument(..., help="Run ids or unique prefixes, or TensorBoard log directories "
                                     "written by deepscope's sink or callbacks; side by side."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="Report file."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    title: str = typer.Option("deepscope report", "--title", help="Page title."),
) -> None:
    """Write one self-contained HTML report (findings and Glorot & Bengio's figures) for stored runs."""
    from deepscope.integrations.trackers import is_tensorboard_dir, run_from_tensorboard
    from deepscope.workflows.report import diagnosed, report, run_data

    if not output.parent.is_dir():
        raise fail(f"-o {output}: the directory {output.parent} does not exist; create it or give another path")
    if output.is_dir():
        raise fail(f"-o {output}: is a directory; give a file name such as {output / 'report.html'}")
    logged = {run for run in runs if is_tensorboard_dir(run)}
    for run in runs:
        if run not in logged and Path(run).exists():  # a path, not a run id: say what it lacks
            raise fail(f"{run}: holds no TensorBoard event files (deepscope report reads a run id of the store, "
                       "or a log directory written by deepscope's TensorBoardSink or callbacks)")
    st = read_store(store) if any(run not in logged for run in runs) else None
    try:
        bundles = [run_from_tensorboard(run) if run in logged else run_data(st, run) for run in runs]
        path = report(bundles, out_path=output, title=title)
    except (ValueError, OSError, ImportError) as e:
        raise fail(str(e)) from None
    for run in bundles:
        if not run.stats and not run.checks:
            hint = ("log it with deepscope's TensorBoardSink or callbacks" if run.run_id in logged else
                    "train it with --probe-every N (or run deepscope doctor on its spec)")
            typer.echo(f"run {run.run_id}: no probe records to diagnose; {hint}")
        else:
            print_findings(diagnosed(run), f"run {run.run_id}")
    typer.echo(f"report: {path}")
