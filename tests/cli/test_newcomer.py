"""What a first-time user of the command line runs into: `python -m deepscope`, the help texts."""

import re
import subprocess
import sys

from typer.testing import CliRunner

import deepscope
from deepscope.cli import app

runner = CliRunner()


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
