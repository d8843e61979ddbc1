"""`deepscope experiments list|show|run`: check a claim of the texts, get a verdict."""

from __future__ import annotations

from pathlib import Path

import typer

from deepscope.cli.common import fail

experiments_app = typer.Typer(help="Check the claims of the texts: run an experiment, get a verdict.",
                              no_args_is_help=True)


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
        raise fail(str(e)) from None
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
    profile: str = typer.Option("quick", "--profile", "-p", help="tiny | quick | paper (some also have demo)."),
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

    if out.exists() and not out.is_dir():
        raise fail(f"-o {out}: is a file; give a directory for the figures and the verdict JSON")
    console = Console()
    try:
        experiment = get_experiment(name)
        experiment.settings(profile, list(set_ or []))  # a bad profile or setting is named before anything runs
        if store is None and experiment.grid is not None:
            store = default_root()
        # the claim first: a quick profile trains for minutes, and the reader knows what is being checked
        console.print(f"[bold]{experiment.name}[/bold]: {escape(experiment.claim)} [dim]({escape(experiment.source)})"
                      f"[/dim]\nrunning profile {escape(profile)} ...")
        verdict = run_experiment(name, profile, seeds=seeds, store=store, jobs=jobs, out_dir=out, backend=backend,
                                 overrides=list(set_ or []))
    except (ValueError, ImportError) as e:
        raise fail(str(e)) from None
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


