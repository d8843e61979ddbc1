"""``python -m deepscope``: the command line, as the ``deepscope`` entry point."""

from deepscope.cli import app

app(prog_name="deepscope")
