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
    out = subprocess.run([sys.executable, "-m", "deepscope", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "deepscope" in out.stdout  # python -m deepscope


def test_list_shows_every_registry():
    from deepscope.data import DATASETS
    from deepscope.init import SCHEMES
    from deepscope.optim import OPTIMIZERS, SCHEDULES

    result = runner.invoke(app, ["list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for name in [*SCHEMES, *OPTIMIZERS, *SCHEDULES, *DATASETS]:
        assert name in result.output


def test_top_level_api_resolves_lazily():
    import deepscope.models
    import deepscope.store

    assert deepscope.mlp is deepscope.models.mlp
    assert deepscope.Store is deepscope.store.Store
    try:
        deepscope.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_train_says_at_which_update_a_run_diverged(tmp_path):
    from deepscope.store import Store

    spec = tmp_path / "dv.toml"
    spec.write_text(
        'name = "dv"\n[data]\nname = "shapeset"\noptions = { n_valid = 40, n_test = 40, size = 16 }\n'
        '[model]\ndepth = 2\nwidth = 16\nactivation = "relu"\n[init]\nscheme = "normal"\nstd = 10.0\n'
        '[optim]\nlr = 1e6\n[train]\nupdates = 200\neval_every = 100\nbatch_size = 10\ndevice = "cpu"\n'
    )
    result = runner.invoke(app, ["train", str(spec), "--store", str(tmp_path), "-q"])
    assert result.exit_code == 1
    nan = [r for r in Store(tmp_path).scalars("dv-1", "train/loss") if r["value"] != r["value"]]
    assert f"diverged at update {nan[0]['step']}; stopped at update 100" in result.output
