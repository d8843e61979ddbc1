"""The ``deepscope`` command line (``deepscope.cli:app``; ``python -m deepscope.cli``)."""

from deepscope.cli.main import app

__all__ = ["app"]
