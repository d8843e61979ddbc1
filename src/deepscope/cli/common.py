"""What the command line's commands share: the one-line failure, opening the store, printing findings, --model."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["STORE_HELP", "fail", "model_from_factory", "read_store"]

STORE_HELP = "Run store directory (default: $DEEPSCOPE_STORE, else ./runs)."


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit (code 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def read_store(root: Path | None, read_only: bool = True):
    """The store at ``root``, which must exist; read-only (nothing is written) unless ``read_only=False``."""
    from deepscope.store import DB_NAME, Store, StoreError, default_root

    root = root if root is not None else default_root()
    if not (root / DB_NAME).exists():
        raise fail(f"no run store at {root} (train a run first, or give --store DIR)")
    try:
        return Store(root, read_only=read_only)
    except StoreError as e:
        raise fail(str(e)) from None


def model_from_factory(path: str):
    """Import ``package.module:factory`` and call it with no arguments; it must return an ``nn.Module``."""
    import importlib
    import inspect
    import os
    import sys

    from torch import nn

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model {path!r}: expected package.module:factory, e.g. mypkg.nets:build")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current directory import
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model {path!r}: cannot import {module_name!r} ({e})") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model {path!r}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if callable(factory) and not isinstance(factory, nn.Module):
        try:
            inspect.signature(factory).bind()
        except TypeError as e:
            raise ValueError(f"--model {path!r}: {attr} cannot be called without arguments ({e}); give a factory "
                             "that takes none") from None
        except ValueError:
            pass  # no signature to check (a builtin): call it and see
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - the user's factory failed: say so in one line
            raise ValueError(f"--model {path!r}: calling {attr}() failed ({type(e).__name__}: {e})") from None
    else:
        model = factory
    if not isinstance(model, nn.Module):
        what = (f"the factory returned {type(model).__name__}" if model is not factory
                else f"{attr} is a {type(model).__name__}, neither a factory nor a module")
        raise ValueError(f"--model {path!r}: {what}, not a torch.nn.Module")
    return model
