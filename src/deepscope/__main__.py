"""``python -m deepscope ...``: the same command line as the ``deepscope`` entry point."""

from deepscope.cli.main import app

app(prog_name="deepscope")
