"""Checkpoints of a run: what :func:`deepscope.trainer.train` saves and resumes from, and the model they hold.

A checkpoint holds plain containers and tensors only and is always read with ``weights_only=True``:
loading one never runs code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscope.config import RunSpec, validate_spec
from deepscope.data.preprocess import Preprocessor
from deepscope.nn.models import build_model
from deepscope.store import CHECKPOINT_FILE, Store

__all__ = ["load_checkpoint", "load_model", "rng_state", "run_checkpoint", "save_checkpoint", "set_rng_state"]


def rng_state(device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint as saved by :func:`train` (plain containers and tensors; loaded with ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_model(run: str, store: Store | str | os.PathLike | None = None) -> tuple[nn.Module, Preprocessor, RunSpec]:
    """The model of a stored run as of its last checkpoint, in eval mode, with its fitted preprocessor and spec."""
    store = store if isinstance(store, Store) else Store(store)
    run_id = store.resolve(run)
    ckpt = load_checkpoint(store.run_dir(run_id) / CHECKPOINT_FILE)
    if ckpt.get("user_model"):
        raise ValueError(f"run {run_id} trained a model of your own ({ckpt['user_model'].get('class', '?')}): "
                         "build it and load_state_dict(load_checkpoint(path)['model']) instead")
    spec = validate_spec(ckpt["spec"])
    model = build_model(spec, ckpt["input_shape"], ckpt["num_classes"], initialize=False)
    model.load_state_dict(ckpt["model"])
    pre = Preprocessor(spec.data.preprocess or "none").load_state_dict(ckpt["preprocessor"])
    return model.eval(), pre, spec


def run_checkpoint(store: Store, run: str) -> dict[str, Any]:
    """The last checkpoint of a stored run; a clear error when it has none."""
    run_id = store.resolve(run)
    path = store.run_dir(run_id) / CHECKPOINT_FILE
    if not path.exists():
        raise ValueError(f"run {run_id} has no checkpoint to resume from (looked for {path})")
    return load_checkpoint(path)


