"""What a first-time user of the command line runs into: `python -m deepscope`, the help texts."""

import re
import subprocess
import sys

from typer.testing import CliRunner

import deepscope
from deepscope.cli import app

runner = CliRunner()
TINY = """name = "tiny"
[data]
name = "shapeset"
options = { n_valid = 40, n_test = 40, size = 16 }
[train]
updates = 5
eval_every = 5
batch_size = 10
device = "cpu"
"""


def test_python_dash_m_deepscope_runs_the_command_line():
    """``python -m deepscope`` is the ``deepscope`` command (it used to fail: no ``deepscope.__main__``)."""
    out = subprocess.run([sys.executable, "-m", "deepscope", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"deepscope {deepscope.__version__}"
    bad = subprocess.run([sys.executable, "-m", "deepscope", "train", "no-such-spec.toml"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no-such-spec.toml" in bad.stderr and "Traceback" not in bad.stderr


def test_help_texts_keep_their_square_brackets():
    """Help strings are rendered as rich markup: an unescaped ``[model]`` vanished from ``train --help``."""
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    flat = re.sub(r"[\s│]+", " ", result.output)
    assert "instead of [model]:" in flat


def test_train_model_imports_a_module_of_the_current_directory(tmp_path, monkeypatch):
    """``deepscope train SPEC --model mynets:build`` run from the folder holding ``mynets.py`` (the README's line):
    the console script's ``sys.path`` starts at its own directory, so the module was not found (doctor found it)."""
    (tmp_path / "newcomer_nets.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 7), nn.Tanh(), nn.Linear(7, 9))\n")
    (tmp_path / "tiny.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "newcomer_nets", raising=False)
    result = runner.invoke(app, ["train", "tiny.toml", "--model", "newcomer_nets:build", "-q",
                                 "--store", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    from deepscope.store import Store

    run = Store(tmp_path / "runs", read_only=True).get_run("tiny-1")
    assert run["spec"]["model"]["class"].endswith("Sequential")  # the module of the factory was trained


def test_runs_ls_shows_whole_run_ids_on_a_narrow_terminal(tmp_path):
    """The id is what one types next (``runs show ID``): on 80 columns it was cut to ``friedman-regres…``."""
    name = "a-rather-long-regression-name"
    (tmp_path / "long.toml").write_text(TINY.replace('"tiny"', f'"{name}"'))
    store = str(tmp_path / "runs")
    assert runner.invoke(app, ["train", str(tmp_path / "long.toml"), "-q", "--store", store]).exit_code == 0
    result = runner.invoke(app, ["runs", "ls", "--store", store], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert f"{name}-1" in result.output and "finished" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_the_progress_bar_ends_at_the_last_update(tmp_path):
    """The bar is refreshed at most four times a second: it used to end at the last refresh (``9/10``, ``1994/2000``)
    right above "test error ... after 10 updates"."""
    (tmp_path / "tiny.toml").write_text(TINY.replace("updates = 5", "updates = 7").replace("eval_every = 5",
                                                                                           "eval_every = 3"))
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.toml"), "--store", str(tmp_path / "runs")],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    bars = [line for line in result.output.splitlines() if line.startswith("tiny ")]
    assert bars and re.search(r"\b7/7\b", bars[-1]), result.output
    assert "after 7 updates" in result.output


def test_experiments_run_says_what_it_checks_before_it_runs(tmp_path, monkeypatch):
    """A quick profile trains for minutes: the claim and "running" come first (nothing was printed until the end)."""
    import deepscope.experiments as experiments

    def interrupted(*args, **kwargs):  # the run itself, cut short: what was printed before it is what we read
        raise ValueError("stopped by the test")

    monkeypatch.setattr(experiments, "run_experiment", interrupted)
    claim = experiments.get_experiment("selu-lecun").claim
    result = runner.invoke(app, ["experiments", "run", "selu-lecun", "-p", "tiny", "-o", str(tmp_path)],
                           env={"COLUMNS": "1000"})
    assert result.exit_code == 2 and "stopped by the test" in result.stderr
    assert claim in result.stdout and "running profile tiny" in result.stdout
    bad = runner.invoke(app, ["experiments", "run", "selu-lecun", "-p", "tny", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and bad.stdout == "" and "profile='tny'" in bad.stderr  # bad input: nothing else


def test_data_show_of_a_file_dataset_names_the_root_flag(tmp_path):
    """``deepscope data show mnist`` said "needs root=<directory ...>", the library's keyword, not the flag."""
    result = runner.invoke(app, ["data", "show", "mnist", "-o", str(tmp_path / "m.png")])
    assert result.exit_code == 2
    assert "needs root=" in result.stderr and "--root DIR" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.png").exists()
