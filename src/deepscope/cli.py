"""The ``deepscope`` command line: a thin typer app that parses, calls the library and prints."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import typer

import deepscope

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
    from deepscope.optim import LOSSES, OPTIMIZERS, SCHEDULES

    return {
        "initializations": [*SCHEMES, *APPLY_ONLY],
        "optimizers": list(OPTIMIZERS),
        "schedules": list(SCHEDULES),
        "losses": list(LOSSES),
        "preprocessing": list(METHODS),
        "datasets": list(DATASETS),
        "augmentations": list(AUGMENTATIONS),
    }


# --- sub-commands are added below, one section per area -------------------------------------------
# data: `deepscope data ...`          (deepscope.data)
# train / runs: `deepscope train`, `deepscope runs ...`   (deepscope.trainer, deepscope.store)
# doctor / report: `deepscope doctor`, `deepscope report`  (deepscope.diagnosis, deepscope.plots)
# experiments: `deepscope experiments ...`                 (deepscope.experiments)


# --- data: `deepscope data list|show` (deepscope.data) --------------------------------------------------------------

data_app = typer.Typer(help="Datasets: list them, look at them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _data_options(pairs: list[str] | None) -> dict[str, object]:
    """``key=value`` strings as a dict; values are Python literals when they parse as one (10, True, (-1, 1))."""
    import ast

    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option {pair!r} is not key=value")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


@data_app.command("list")
def data_list() -> None:
    """List the datasets, their options, and the augmentations."""
    import inspect

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepscope.data import AUGMENTATIONS, DATASETS

    table = Table("dataset", "description", "options")
    for name, factory in DATASETS.items():
        doc = escape((factory.__doc__ or "").splitlines()[0])
        table.add_row(name, doc, ", ".join(inspect.signature(factory).parameters))
    Console().print(table)
    typer.echo(f"augmentations: {', '.join(AUGMENTATIONS)}")


@data_app.command("show")
def data_show(
    name: str = typer.Argument(..., help="Dataset name (see `deepscope data list`)."),
    n: int = typer.Option(25, "-n", help="Number of examples."),
    output: Path = typer.Option(Path("samples.png"), "-o", "--output", help="Image file to write."),
    split: str = typer.Option("train", "--split", help="train, valid or test."),
    root: Path | None = typer.Option(None, "--root", help="Directory with the dataset's files (mnist, cifar10, ...)."),
    option: list[str] | None = typer.Option(None, "--option", help="Dataset option key=value, e.g. balanced=True."),
) -> None:
    """Draw a labelled grid of examples: `deepscope data show shapeset -n 25 -o shapes.png`."""
    from deepscope.data import DataFileError, examples, save_grid

    if n < 1:
        raise _fail(f"-n {n}: give the number of examples to draw, an integer >= 1")
    if not output.parent.is_dir():
        raise _fail(f"-o {output}: the directory {output.parent} does not exist; create it or give another path")
    options = _data_options(option)
    if root is not None:
        options["root"] = root
    try:
        x, y, class_names = examples(name, n, split, **options)
    except (ValueError, ImportError, DataFileError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        save_grid(x, y, class_names, output, title=f"{name} ({split})")
    except OSError as e:
        raise _fail(f"-o {output}: cannot write the image ({e.strerror or e})") from None
    typer.echo(f"wrote {len(x)} {name} examples to {output}")


# --- train / runs: `deepscope train`, `deepscope runs ls|show|compare` (deepscope.trainer, deepscope.store) ---

runs_app = typer.Typer(help="List, show and compare the runs of a store.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

_STORE_HELP = "Run store directory (default: $DEEPSCOPE_STORE, else ./runs)."


def _fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit (code 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _read_store(root: Path | None, read_only: bool = True):
    """The store at ``root``, which must exist; read-only (nothing is written) unless ``read_only=False``."""
    from deepscope.store import DB_NAME, Store, StoreError, default_root

    root = root if root is not None else default_root()
    if not (root / DB_NAME).exists():
        raise _fail(f"no run store at {root} (train a run first, or give --store DIR)")
    try:
        return Store(root, read_only=read_only)
    except StoreError as e:
        raise _fail(str(e)) from None


@app.command("train")
def train_command(
    spec: Path | None = typer.Argument(None, help="Run spec (TOML); optional with --resume.", show_default=False),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a value: --set model.activation=tanh."),
    store: Path | None = typer.Option(None, "--store", help=_STORE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar: only the final lines."),
    resume: str | None = typer.Option(None, "--resume", help="Continue run RUN (id or prefix) from its checkpoint."),
    updates: int | None = typer.Option(None, "--updates", help="Train for N updates (replaces train.updates/epochs)."),
    probe_every: int | None = typer.Option(
        None, "--probe-every", help="Record the probe's instruments every N updates into the store."),
    probe_monitor: int = typer.Option(300, "--probe-monitor", help="Fixed validation examples the probe runs on."),
    probe_jacobian_every: int | None = typer.Option(
        None, "--probe-jacobian-every",
        help="Also record Jacobian singular values every N updates (a multiple of --probe-every); "
        "default: at the first record only."),
    probe_jacobian_method: str = typer.Option(
        "auto", "--probe-jacobian-method", help="Jacobian singular values: auto, exact or lanczos."),
    force: bool = typer.Option(False, "--force", help="With --resume: take the run over even if it reads as running "
                               "(its process died on another host, say)."),
) -> None:
    """Train a run described by a TOML spec; print the final test error and where the run is stored."""
    from deepscope.config import apply_overrides, load_spec, validate_spec
    from deepscope.store import default_root
    from deepscope.trainer import train

    if updates is not None and updates < 1:
        raise _fail(f"--updates={updates}: give a number of updates >= 1")
    if force and resume is None:
        raise _fail("--force goes with --resume RUN (it takes over a run that reads as running)")
    overrides = list(set_ or []) + ([f"train.updates={updates}", "train.epochs=none"] if updates else [])
    try:
        if spec is None and resume is None:
            raise ValueError("give a spec file (deepscope train SPEC.toml) or --resume RUN")
        run_spec = load_spec(spec, overrides) if spec is not None else None  # before the store: no db for bad input
        callbacks = []
        if probe_every is None and (probe_jacobian_every is not None or probe_jacobian_method != "auto"):
            raise ValueError("--probe-jacobian-every and --probe-jacobian-method need --probe-every N")
        if probe_every is not None:
            from deepscope.probe.trainer import TrainerProbe

            try:
                callbacks.append(TrainerProbe(probe_every, probe_monitor, jacobian_every=probe_jacobian_every,
                                              jacobian_method=probe_jacobian_method))
            except ValueError as e:  # name the flags, not the Probe's arguments
                flags = {"every": "--probe-every", "monitor": "--probe-monitor",
                         "jacobian_every": "--probe-jacobian-every", "jacobian_method": "--probe-jacobian-method"}
                raise ValueError(re.sub(r"(?<![\w-])(jacobian_every|jacobian_method|every|monitor)=",
                                        lambda m: f"{flags[m[1]]}=", str(e).removeprefix("probe "))) from None
        # a new run opens (and creates) the store only once its data and model are checked
        st = _read_store(store, read_only=False) if resume is not None else (store or default_root())
        if spec is None and overrides:
            run_spec = validate_spec(apply_overrides(st.get_run(resume)["spec"], overrides), source=f"run {resume}")
        result = train(run_spec, store=st, quiet=quiet, resume=resume, callbacks=callbacks, force=force)
        st = result.store
    except (ValueError, OSError) as e:
        raise _fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if quiet and result.message:
        typer.echo(result.message, err=True)
    m = result.metrics
    status, last = result.status, result.eval_step
    if result.diverged_at is not None:
        status, last = f"diverged at update {result.diverged_at}", result.diverged_at
    if last is not None and last != result.step:
        status += f"; stopped at update {result.step}"
    if "test/error" in m:
        valid = f" (valid {m['valid/error']:.2%})" if "valid/error" in m else ""
        typer.echo(f"test error {m['test/error']:.2%}{valid} after {result.eval_step} updates [{status}]")
    else:
        typer.echo(f"{status}" if result.diverged_at is not None else f"{status} after {result.step} updates")
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    typer.echo(f"run {result.run_id} stored in {st.path}{where}")
    if result.status != "finished":
        raise typer.Exit(1 if result.status == "diverged" else 130)


def _when(t: float | None) -> str:
    import time

    return time.strftime("%m-%d %H:%M", time.localtime(t)) if t else "-"


def _pct(run: dict, name: str) -> str:
    last = run["last"].get(name)
    return f"{last['value']:.2%}" if last else "-"


def _steps(run: dict) -> str:
    return str(max((v["step"] for v in run["last"].values()), default=0))


@runs_app.command("ls")
def runs_ls(
    pattern: str | None = typer.Argument(None, help="Only runs whose id or name matches this glob, e.g. 'tanh*'."),
    store: Path | None = typer.Option(None, "--store", help=_STORE_HELP),
) -> None:
    """List the runs of the store: status, length, validation and test error."""
    from fnmatch import fnmatchcase

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    st = _read_store(store)
    table = Table(title=escape(f"runs in {st.path}"))
    table.add_column("id", no_wrap=True)
    for column in ("status", "updates", "valid err", "test err", "created"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("status", "created") else "right")
    for run in st.runs():
        if pattern is not None and not (fnmatchcase(run["id"], pattern) or fnmatchcase(run["name"], pattern)):
            continue
        table.add_row(escape(run["id"]), run["status"], _steps(run), _pct(run, "valid/error"),
                      _pct(run, "test/error"), _when(run["created"]))
    Console().print(table)


@runs_app.command("show")
def runs_show(
    run: str = typer.Argument(..., help="Run id or unique prefix."),
    store: Path | None = typer.Option(None, "--store", help=_STORE_HELP),
) -> None:
    """Show one run: status, timings, versions, final metrics and its full spec."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepscope.config import flatten

    st = _read_store(store)
    try:
        info = st.get_run(run)
    except ValueError as e:
        raise _fail(str(e)) from None
    table = Table("key", "value", title=f"run {info['id']}", show_header=False)
    checkpoint = st.run_dir(info["id"]) / "checkpoint.pt"
    rows = {
        "name": info["name"], "status": info["status"], "seed": info["seed"], "created": _when(info["created"]),
        "updated": _when(info["updated"]), "finished": _when(info["finished"]),
        "process": f"{info['pid']} on {info['host']}",
        "versions": ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "checkpoint": str(checkpoint) if checkpoint.exists() else "-",
    }
    rows |= {name: f"{v['value']:.6g} (update {v['step']})" for name, v in sorted(info["last"].items())}
    rows |= flatten(info["spec"])
    for key, value in rows.items():
        table.add_row(escape(key), escape(str(value)))  # user strings (names, spec values) are not markup
    Console().print(table)


@runs_app.command("compare")
def runs_compare(
    runs: list[str] = typer.Argument(..., help="Two or more run ids or prefixes."),
    store: Path | None = typer.Option(None, "--store", help=_STORE_HELP),
    all_keys: bool = typer.Option(False, "--all", help="Show every spec key, not only those that differ."),
) -> None:
    """Compare runs side by side: the spec values that differ and the final metrics."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepscope.config import flatten

    st = _read_store(store)
    try:
        infos = [st.get_run(r) for r in runs]
    except ValueError as e:
        raise _fail(str(e)) from None
    specs = [flatten(info["spec"]) for info in infos]
    keys = list(dict.fromkeys(k for s in specs for k in s))
    if not all_keys:
        keys = [k for k in keys if len({repr(s.get(k)) for s in specs}) > 1]
    table = Table("", *(info["id"] for info in infos))
    table.add_row("status", *(info["status"] for info in infos))
    table.add_row("updates", *(_steps(info) for info in infos))
    for name in ("train/loss", "valid/error", "test/error"):
        cells = [_pct(info, name) if name.endswith("error") else
                 (f"{info['last'][name]['value']:.4f}" if name in info["last"] else "-") for info in infos]
        table.add_row(name, *cells)
    for key in keys:
        table.add_row(escape(key), *(escape(str(s.get(key, "-"))) for s in specs))
    Console().print(table)


# --- experiments: `deepscope experiments list|run` (deepscope.experiments) ---------------------------

experiments_app = typer.Typer(help="Check the claims of the texts: run an experiment, get a verdict.",
                              no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")


@experiments_app.command("list")
def experiments_list() -> None:
    """List the experiments: name, claim and source."""
    from rich.console import Console
    from rich.table import Table

    from deepscope.experiments import EXPERIMENTS

    table = Table(show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("claim")
    table.add_column("source")
    for exp in EXPERIMENTS.values():
        table.add_row(exp.name, exp.claim, exp.source)
    Console().print(table)


@experiments_app.command("show")
def experiments_show(name: str = typer.Argument(..., help="Experiment name.")) -> None:
    """Show an experiment's claim, source and the settings of each profile (what `--set` can change)."""
    from rich.console import Console
    from rich.table import Table

    from deepscope.experiments import get_experiment

    try:
        exp = get_experiment(name)
    except ValueError as e:
        raise _fail(str(e)) from None
    console = Console()
    console.print(f"[bold]{exp.name}[/bold]: {exp.claim} [dim]({exp.source})[/dim]")
    keys = list(dict.fromkeys(k for settings in exp.profiles.values() for k in settings))
    table = Table("setting", *exp.profiles)
    for key in keys:
        table.add_row(key, *(repr(settings[key]) if key in settings else "" for settings in exp.profiles.values()))
    console.print(table)


@experiments_app.command("run")
def experiments_run(
    name: str = typer.Argument(..., help="Experiment name (see `deepscope experiments list`)."),
    profile: str = typer.Option("quick", "--profile", "-p", help="tiny | quick | paper."),
    seeds: int | None = typer.Option(None, "--seeds", help="Number of seeds (default: the profile's)."),
    store: Path | None = typer.Option(
        None, "--store", help="Run store for the runs and the verdict (default for experiments that train: "
        "$DEEPSCOPE_STORE, else ./runs; others record only when given)."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="Parallel training processes (default min(2, cpus))."),
    out: Path = typer.Option(Path("experiments"), "--out", "-o", help="Directory for the figures and verdict JSON."),
    backend: str = typer.Option("local", "--backend", help="local (processes) | ray (the \\[ray] extra)."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Change a setting of the profile: --set updates=2000 (see `experiments show NAME`)."),
) -> None:
    """Run experiment NAME; print the verdict with its numbers. Exit 0 if it passes, 1 if it fails, 2 on bad input."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepscope.experiments import get_experiment, run_experiment
    from deepscope.store import default_root

    try:
        experiment = get_experiment(name)
        if store is None and experiment.grid is not None:
            store = default_root()
        verdict = run_experiment(name, profile, seeds=seeds, store=store, jobs=jobs, out_dir=out, backend=backend,
                                 overrides=list(set_ or []))
    except (ValueError, ImportError) as e:
        raise _fail(str(e)) from None
    console = Console()
    console.print(f"[bold]{experiment.name}[/bold]: {experiment.claim} [dim]({experiment.source})[/dim]")
    changed = f", --set {' '.join(verdict.overrides)}" if verdict.overrides else ""
    console.print(f"profile {profile}{changed}, seeds {verdict.seeds}", soft_wrap=True)
    checks = Table("", "check", show_header=False)
    for check, ok in verdict.checks.items():
        # a check states the claim with the measured numbers; a failed one is a false statement
        checks.add_row("[green]pass[/green]" if ok else "[red]FAIL[/red]",
                       escape(check) if ok else f"{escape(check)} [red](does not hold)[/red]")
    console.print(checks)
    numbers = Table("number", "value")
    for key, value in verdict.numbers.items():
        numbers.add_row(key, f"{value:.4g}")
    console.print(numbers)
    console.print(verdict.summary)
    for path in verdict.figures:
        console.print(f"figure: {path}")
    if store is not None:
        console.print(f"recorded in {store}")
    word = "[bold green]PASSED[/bold green]" if verdict.passed else "[bold red]FAILED[/bold red]"
    console.print(f"verdict: {word} in {verdict.duration:.1f} s")
    raise typer.Exit(0 if verdict.passed else 1)


# --- doctor / report: `deepscope doctor`, `deepscope report` (deepscope.diagnosis, deepscope.plots) ----------

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _print_findings(findings, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not findings:
        console.print(f"[bold green]healthy[/]: no rule fired ({title})")
        return
    table = Table("severity", "finding", "where", "advice", title=title, show_lines=True, expand=True)
    for f in findings:
        evidence = ", ".join(f"{k}={v:.3g}" for k, v in f.evidence.items())
        where = [", ".join(f.layers)] if f.layers else []
        where += [f"since update {f.first_step}"] if f.first_step is not None else []
        where += [{True: "recovers", False: "does not recover"}[f.recovers]] if f.recovers is not None else []
        table.add_row(f"[{_SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/]",
                      f"[bold]{f.code}[/]\n{f.message}\n[dim]{evidence}[/]", "\n".join(where), f.advice)
    console.print(table)


@app.command("doctor")
def doctor_command(
    spec: Path | None = typer.Argument(None, help="Run spec (TOML); omit it with --model.", show_default=False),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a value: --set optim.lr=0.1."),
    updates: int = typer.Option(500, "--updates", help="Train for N updates with the probe."),
    monitor: int = typer.Option(300, "--monitor", help="Fixed validation examples the probe records on."),
    model: str | None = typer.Option(
        None, "--model", help="Your own network: package.module:factory (a no-argument callable returning an "
        "nn.Module), importable from the current directory."),
    data: str | None = typer.Option(None, "--data", help="Dataset name (replaces data.name)."),
    store: Path | None = typer.Option(None, "--store", help=_STORE_HELP),
    output: Path | None = typer.Option(None, "-o", "--output", help="Report file; default <store>/<run>/report.html."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    no_report: bool = typer.Option(False, "--no-report", help="Print the findings only; draw no HTML report."),
    fix: bool = typer.Option(False, "--fix", help="Try the candidate fixes in short trials, verify them, write "
                             "the repaired spec <run>-fixed.toml."),
    budget: int | None = typer.Option(None, "--budget", help="With --fix: N trial runs (default: the fixes of the "
                                      "top two findings plus one combination)."),
    backend: str = typer.Option("local", "--backend", help="With --fix: run the trials on local processes or ray."),
) -> None:
    """Train briefly with the probe, print the findings, then write the HTML report.

    Exit status: 0 healthy (with --fix: or a verified repair was found), 1 a problem was found (an error or a
    warning; with --fix: and no fix was verified), 2 bad input.
    """
    from deepscope.config import apply_overrides, load_spec, validate_spec
    from deepscope.diagnosis import doctor, has_problem
    from deepscope.diagnosis.workflow import write_report
    from deepscope.store import Store

    for flag, value in (("--updates", updates), ("--monitor", monitor)):
        if value < 1:
            raise _fail(f"{flag}={value}: give an integer >= 1")
    if output is not None and not output.parent.is_dir():
        raise _fail(f"-o {output}: the directory {output.parent} does not exist; create it or give another path")
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
        if model is not None and "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current directory import
        net = model_from_factory(model) if model is not None else None
        st = Store(store)
        if fix:
            from deepscope.diagnosis.repair import repair

            fixed = repair(run_spec, model=net, store=st, updates=updates, monitor=monitor, budget=budget,
                           backend=backend, report=not no_report, report_path=output, quiet=quiet)
            result = fixed.baseline
        else:
            result = doctor(run_spec, model=net, store=st, updates=updates, monitor=monitor, report=False,
                            quiet=quiet)
    except (ValueError, OSError, ImportError) as e:
        raise _fail(str(e)) from None
    _print_findings(result.findings, f"deepscope doctor: run {result.run_id} ({result.status})")
    typer.echo(f"run {result.run_id} stored in {st.path}")
    if fix:
        from rich.console import Console

        from deepscope.diagnosis.repair import repair_table, summary

        if fixed.trials:
            Console().print(repair_table(fixed))
        typer.echo("\n".join(summary(fixed)) + (f"\nreport: {fixed.report}" if fixed.report else ""))
        raise typer.Exit(fixed.exit_code)
    if not no_report:
        sys.stdout.flush()  # the findings are out before the figures are drawn
        try:
            typer.echo(f"report: {write_report(result, output)}")
        except OSError as e:
            raise _fail(str(e)) from None
    raise typer.Exit(1 if has_problem(result.findings) else 0)


@app.command("report")
def report_command(
    runs: list[str] = typer.Argument(..., help="Run ids or unique prefixes, or TensorBoard log directories "
                                     "written by deepscope's sink or callbacks; side by side."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="Report file."),
    store: Path | None = typer.Option(None, "--store", help=_STORE_HELP),
    title: str = typer.Option("deepscope report", "--title", help="Page title."),
) -> None:
    """Write one self-contained HTML report (findings and Glorot & Bengio's figures) for stored runs."""
    from deepscope.integrations.tensorboard import is_tensorboard_dir, run_from_tensorboard
    from deepscope.plots import RunData, report

    if not output.parent.is_dir():
        raise _fail(f"-o {output}: the directory {output.parent} does not exist; create it or give another path")
    logged = {run for run in runs if is_tensorboard_dir(run)}
    st = _read_store(store) if len(logged) < len(runs) else None
    try:
        bundles = [run_from_tensorboard(run) if run in logged else RunData.from_store(st, run) for run in runs]
        path = report(bundles, out_path=output, title=title)
    except (ValueError, OSError, ImportError) as e:
        raise _fail(str(e)) from None
    for run in bundles:
        if not run.stats and not run.checks:
            hint = ("log it with deepscope's TensorBoardSink or callbacks" if run.run_id in logged else
                    "train it with --probe-every N (or run deepscope doctor on its spec)")
            typer.echo(f"run {run.run_id}: no probe records to diagnose; {hint}")
        else:
            _print_findings(run.diagnosis(), f"run {run.run_id}")
    typer.echo(f"report: {path}")


def model_from_factory(path: str):
    """Import ``package.module:factory`` and call it with no arguments; it must return an ``nn.Module``."""
    import importlib
    import inspect

    from torch import nn

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model {path!r}: expected package.module:factory, e.g. mypkg.nets:build")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {path!r}: cannot import {module_name!r} ({e})") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model {path!r}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if callable(factory) and not isinstance(factory, nn.Module):
        try:
            inspect.signature(factory).bind()
        except TypeError as e:
            raise ValueError(f"--model {path!r}: {attr} cannot be called without arguments ({e}); give a factory "
                             "that takes none") from None
        except ValueError:
            pass  # no signature to check (a builtin): call it and see
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - the user's factory failed: say so in one line
            raise ValueError(f"--model {path!r}: calling {attr}() failed ({type(e).__name__}: {e})") from None
    else:
        model = factory
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {path!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


if __name__ == "__main__":  # pragma: no cover
    app()
