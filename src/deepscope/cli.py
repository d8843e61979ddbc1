"""The ``deepscope`` command line: a thin typer app that parses, calls the library and prints."""

from __future__ import annotations

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
    """Other registries, by kind (filled in as modules land)."""
    out: dict[str, list[str]] = {}
    try:
        from deepscope.init import SCHEMES

        out["initializations"] = list(SCHEMES)
    except ImportError:
        pass
    try:
        from deepscope.optim import LOSSES, OPTIMIZERS, SCHEDULES

        out["optimizers"] = list(OPTIMIZERS)
        out["schedules"] = list(SCHEDULES)
        out["losses"] = list(LOSSES)
    except ImportError:
        pass
    try:
        from deepscope.data.preprocess import METHODS

        out["preprocessing"] = list(METHODS)
    except ImportError:
        pass
    return out


# --- sub-commands are added below, one section per area -------------------------------------------
# data: `deepscope data ...`          (deepscope.data)
# train / runs: `deepscope train`, `deepscope runs ...`   (deepscope.train, deepscope.store)
# doctor / report: `deepscope doctor`, `deepscope report`  (deepscope.diagnose, deepscope.plots)
# experiments: `deepscope experiments ...`                 (deepscope.experiments)


if __name__ == "__main__":  # pragma: no cover
    app()
