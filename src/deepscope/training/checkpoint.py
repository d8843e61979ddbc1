"""Checkpoint files: written atomically through a per-process temporary file, read without running code.

:func:`save` writes ``checkpoint.pt.<pid>.tmp`` next to the checkpoint and renames it over the old one
(``os.replace`` is atomic), so a reader never sees half a file and two processes never share a temporary
file; the temporary file is removed when the write fails (a full disk, say), and those of killed writers
at the next successful write (a run has one writer: any other temporary file is stale). :func:`load` reads with
``torch.load(..., weights_only=True)`` -- plain containers and tensors only, no code can run -- and turns
every failure (not a checkpoint, damaged, truncated, empty, a pickle that asks to run code) into one
:class:`CheckpointError` line naming the file.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscope.config import RunSpec, validate_spec
from deepscope.data.preprocess import Preprocessor
from deepscope.models import build_model
from deepscope.store import CHECKPOINT_FILE, Store

__all__ = ["REQUIRED", "CheckpointError", "check_resume", "load_checkpoint", "load_model", "restore_run", "rng_state",
           "run_checkpoint", "run_state", "save", "set_rng_state"]

#: Keys every deepscope checkpoint has.
REQUIRED = ("step", "spec", "input_shape", "num_classes", "model", "optimizer", "preprocessor", "rng", "accumulators",
            "metrics", "early_stopping")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically through this process's own temporary file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
        for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a killed writer (the run has one writer)
            stale.unlink(missing_ok=True)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (free is not None and free < max(2**20, written)):
            error = OSError(f"the disk is full: cannot write the checkpoint {path} ({free} bytes free); free some "
                            "space or give --store DIR on another disk")
            error.errno = errno.ENOSPC
        else:
            error = OSError(f"cannot write the checkpoint {path} ({getattr(e, 'strerror', None) or e})")
        raise error from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint as saved by :func:`~deepscope.training.loop.train`, as a dict (plain containers and tensors,
    loaded with ``weights_only=True``); :class:`CheckpointError` (one line, naming ``path``) if it is not one."""
    path = Path(path)
    advice = "it is not a usable deepscope checkpoint; start the run again, or restore the file from a copy"
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path} ({e.strerror or e})") from None
    if size == 0:
        raise CheckpointError(f"the checkpoint {path} is empty (0 bytes): {advice}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to refusing a file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused something: never load it another way
        raise CheckpointError(f"the checkpoint {path} holds objects other than tensors and plain containers, or is "
                              f"not a torch file; refused without running it: {advice}") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        reason = "truncated or damaged" if "central directory" in str(e) or isinstance(e, EOFError | OSError) \
            else "damaged or not a torch file"
        raise CheckpointError(f"the checkpoint {path} cannot be read ({reason}): {advice}") from None
    if not isinstance(state, dict) or (missing := [k for k in REQUIRED if k not in state]):
        what = f"has no {missing[0]!r}" if isinstance(state, dict) else f"holds a {type(state).__name__}"
        raise CheckpointError(f"the checkpoint {path} {what}: {advice}")
    kinds = {"step": int, "spec": dict, "input_shape": list, "num_classes": int, "model": dict, "accumulators": dict}
    if bad := [k for k, kind in kinds.items() if not isinstance(state[k], kind)]:
        raise CheckpointError(f"the checkpoint {path} has a {type(state[bad[0]]).__name__} as {bad[0]!r}: {advice}")
    return state


#: Sections (and keys) a resume may not change: they shape the network or the data it was trained on.
_FIXED = ("data.name", "data.options", "data.preprocess", "model", "train.loss")


def check_resume(run_id: str, stored: dict, spec: dict, step: int, total: int) -> None:
    """Refuse a resume whose spec changes the network or the data of the stored run, or whose length
    (``total`` updates) is not past the checkpoint's ``step``."""
    for key in _FIXED:
        section, _, name = key.partition(".")
        old, new = stored.get(section, {}), spec.get(section, {})
        old, new = (old.get(name), new.get(name)) if name else (old, new)
        if isinstance(old, dict) and isinstance(new, dict) and name == "":  # a whole section: the keys it had
            changed = [k for k in old if old[k] != new.get(k)]
            if not changed:
                continue
            key, old, new = f"{key}.{changed[0]}", old[changed[0]], new.get(changed[0])
        if old != new:
            raise CheckpointError(f"--resume {run_id}: {key}={new!r} differs from the run's {old!r}; a resume keeps "
                                  "the run's network and data (start a new run with that value instead)")
    if step >= total:
        length = spec["train"]
        given = f"train.updates={length['updates']}" if length.get("updates") else \
            f"train.epochs={length['epochs']} ({total} updates)"
        raise CheckpointError(f"run {run_id} has already done {step} updates, as many as {given} asks or more "
                              f"(its stored spec is left as it was); to continue it give more, e.g. --resume {run_id} "
                              f"--updates {2 * step}")


def rng_state(device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def run_checkpoint(store: Store, run: str) -> dict[str, Any]:
    """The last checkpoint of a stored run; a clear error when it has none."""
    run_id = store.resolve(run)
    path = store.run_dir(run_id) / CHECKPOINT_FILE
    if not path.exists():
        raise ValueError(f"run {run_id} has no checkpoint to resume from (looked for {path})")
    return load_checkpoint(path)


def load_model(run: str, store: Store | str | os.PathLike | None = None) -> tuple[nn.Module, Preprocessor, RunSpec]:
    """The model of a stored run as of its last checkpoint, in eval mode, with its fitted preprocessor and spec."""
    if not isinstance(store, Store):
        with Store(store, read_only=True) as opened:  # reading a model never creates or changes a store
            return load_model(run, opened)
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


def run_state(run: Any) -> dict[str, Any]:
    """The checkpoint of a training run as it goes (``deepscope.training.loop``'s run): everything a resume needs
    to continue bit-identically -- weights, optimizer, schedule, preprocessing, RNG, accumulators, early stopping."""
    parts = run.parts
    return {
        "format": 1,
        "step": run.step,
        "spec": run.spec.to_dict(),
        "input_shape": list(parts.data.input_shape),
        "num_classes": parts.data.num_classes,
        "user_model": parts.user_model,
        "user_loss": parts.user_loss,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict() if run.schedule is not None else None,
        "preprocessor": parts.pre.state_dict(),
        "rng": rng_state(run.device),
        "accumulators": {"losses": run.losses[: run.n].cpu().clone(), "sums": {  # deepscope.metrics.batch_sums
            k: v.cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in run.sums.items()}},
        "metrics": dict(run.metrics),
        "early_stopping": run.stopping.state(),
        "start_loss": run.start_loss,
        "guard": run.guard.state_dict() if getattr(run, "guard", None) is not None else None,  # train.guard
    }


def restore_run(run: Any, ckpt: dict[str, Any]) -> None:
    """Put the state of :func:`run_state` back into a run built from the same spec."""
    stopping = ckpt["early_stopping"]
    # a run that ended with its best weights resumes from its last ones (the optimizer state is theirs)
    run.model.load_state_dict(stopping.get("last_model") or ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.schedule is not None and ckpt["schedule"] is not None:
        run.schedule.load_state_dict(ckpt["schedule"])
    run.step = ckpt["step"]
    acc = ckpt["accumulators"]
    run.n = len(acc["losses"])
    run.losses[: run.n] = acc["losses"].to(run.device)
    sums = acc["sums"] if "sums" in acc else {"wrong": acc["wrong"], "count": acc["seen"]} if acc["seen"] else {}
    run.sums = {k: v.to(run.device) if isinstance(v, torch.Tensor) else v for k, v in sums.items()}
    run.metrics.update(ckpt["metrics"])
    run.stopping.load(stopping)
    run.start_loss = ckpt.get("start_loss")
    run.guard_state = ckpt.get("guard")  # train.guard: loaded when the guard is made (guard_adapters.for_trainer)
    set_rng_state(ckpt["rng"])
