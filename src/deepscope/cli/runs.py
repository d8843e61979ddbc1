"""`deepscope runs ls|show|compare`: the runs of a store."""

from __future__ import annotations

from pathlib import Path

import typer

from deepscope.cli.common import STORE_HELP, fail, read_store

runs_app = typer.Typer(help="List, show and compare the runs of a store.", no_args_is_help=True)


def _when(t: float | None) -> str:
    import time

    return time.strftime("%m-%d %H:%M", time.localtime(t)) if t else "-"


def _pct(run: dict, name: str) -> str:
    """An error rate in %; a regression run (no error rate) shows its RMSE and R^2 instead."""
    last = run["last"].get(name)
    if last is None and name.endswith("/error") and (rmse := run["last"].get(name.replace("error", "rmse"))):
        r2 = run["last"].get(name.replace("error", "r2"))
        return f"RMSE {rmse['value']:.4g}" + (f", R² {r2['value']:.3f}" if r2 else "")
    return f"{last['value']:.2%}" if last else "-"


# the final metrics runs compare shows, those of every task (deepscope.metrics), when a run has them
_COMPARED = ("train/loss", "valid/error", "valid/exact_match", "valid/rmse", "valid/r2", "test/error",
             "test/exact_match", "test/rmse", "test/r2")


def _steps(run: dict) -> str:
    return str(max((v["step"] for v in run["last"].values()), default=0))


@runs_app.command("ls")
def runs_ls(
    pattern: str | None = typer.Argument(None, help="Only runs whose id or name matches this glob, e.g. 'tanh*'."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """List the runs of the store: status, length, validation and test error."""
    from fnmatch import fnmatchcase

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    st = read_store(store)
    rows = [(escape(run["id"]), run["status"], _steps(run), _pct(run, "valid/error"), _pct(run, "test/error"),
             _when(run["created"])) for run in st.runs()
            if pattern is None or fnmatchcase(run["id"], pattern) or fnmatchcase(run["name"], pattern)]
    table = Table(title=escape(f"runs in {st.path}"))
    for i, column in enumerate(("id", "status", "updates", "valid err", "test err", "created")):
        # a narrow terminal wraps the metrics, never the id one types next nor the status
        whole = column not in ("valid err", "test err")
        width = max([len(column), *(len(row[i]) for row in rows)]) if whole else None
        table.add_column(column, no_wrap=whole, min_width=width,
                         justify="left" if column in ("id", "status", "created") else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@runs_app.command("show")
def runs_show(
    run: str = typer.Argument(..., help="Run id or unique prefix."),
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Show one run: status, timings, versions, final metrics and its full spec."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepscope.config import flatten

    st = read_store(store)
    try:
        info = st.get_run(run)
    except ValueError as e:
        raise fail(str(e)) from None
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
    store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    all_keys: bool = typer.Option(False, "--all", help="Show every spec key, not only those that differ."),
) -> None:
    """Compare runs side by side: the spec values that differ and the final metrics."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepscope.config import flatten

    st = read_store(store)
    try:
        infos = [st.get_run(r) for r in runs]
    except ValueError as e:
        raise fail(str(e)) from None
    specs = [flatten(info["spec"]) for info in infos]
    keys = list(dict.fromkeys(k for s in specs for k in s))
    if not all_keys:
        keys = [k for k in keys if len({repr(s.get(k)) for s in specs}) > 1]
    table = Table("", *(info["id"] for info in infos))
    table.add_row("status", *(info["status"] for info in infos))
    table.add_row("updates", *(_steps(info) for info in infos))
    for name in [n for n in _COMPARED if n in ("train/loss", "valid/error", "test/error")
                 or any(n in info["last"] for info in infos)]:
        cells = [(f"{info['last'][name]['value']:.2%}" if name in info["last"] else "-")
                 if name.endswith(("error", "exact_match")) else
                 (f"{info['last'][name]['value']:.4f}" if name in info["last"] else "-") for info in infos]
        table.add_row(name, *cells)
    for key in keys:
        table.add_row(escape(key), *(escape(str(s.get(key, "-"))) for s in specs))
    Console().print(table)


