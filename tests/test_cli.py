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
