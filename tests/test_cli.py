import subprocess
import sys

from typer.testing import CliRunner

import deepscope
from deepscope.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert deepscope.__version__ in result.output


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "list" in result.output


def test_list_shows_activations():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "softsign" in result.output


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "deepscope.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "deepscope" in out.stdout


def test_list_shows_every_registry():
    from deepscope.data import DATASETS
    from deepscope.init import SCHEMES
    from deepscope.optim import OPTIMIZERS, SCHEDULES

    result = runner.invoke(app, ["list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for name in [*SCHEMES, *OPTIMIZERS, *SCHEDULES, *DATASETS]:
        assert name in result.output


def test_top_level_api_resolves_lazily():
    import deepscope.nn.models
    import deepscope.store

    assert deepscope.mlp is deepscope.nn.models.mlp
    assert deepscope.Store is deepscope.store.Store
    try:
        deepscope.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")
