"""`deepscope data list|show`: the datasets, and a labelled grid of examples."""

from __future__ import annotations

from pathlib import Path

import typer

from deepscope.cli.common import fail

data_app = typer.Typer(help="Datasets: list them, look at them.", no_args_is_help=True)


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


MAX_SHOW = 1000  # examples in one grid: past this the image is unreadable and slow to draw
IMAGE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg", "webp", "tif", "tiff")  # what matplotlib writes


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

    if not 1 <= n <= MAX_SHOW:
        raise fail(f"-n {n}: give the number of examples to draw, an integer in 1..{MAX_SHOW}")
    if not output.parent.is_dir():
        raise fail(f"-o {output}: the directory {output.parent} does not exist; create it or give another path")
    if output.suffix.lower().lstrip(".") not in IMAGE_FORMATS:
        raise fail(f"-o {output}: {output.suffix or 'no suffix'} is not an image format; end the name with one of: "
                   f"{', '.join('.' + f for f in IMAGE_FORMATS)}")
    options = _data_options(option)
    if root is not None:
        options["root"] = root
    try:
        x, y, class_names = examples(name, n, split, **options)
    except (ValueError, ImportError, DataFileError) as e:
        hint = "; give it with --root DIR" if "root" not in options and "needs root=" in str(e) else ""
        typer.echo(f"error: {e}{hint}", err=True)
        raise typer.Exit(2) from None
    try:
        save_grid(x, y, class_names, output, title=f"{name} ({split})")
    except OSError as e:
        raise fail(f"-o {output}: cannot write the image ({e.strerror or e})") from None
    typer.echo(f"wrote {len(x)} {name} examples to {output}")


