"""What the probe needs to know about the way a model is run: wrappers (DDP, ``torch.compile``), the
process's rank, model outputs that are dicts or dataclasses (HuggingFace ``ModelOutput``), and the
default loss of the monitor pass."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["compiled", "default_loss", "eager", "first_tensor", "in_backward", "in_vmap", "rank", "unwrap"]

_LOSS_HINT = (
    "pass loss_fn=, e.g. Probe(model, monitor=(x, y), loss_fn=lambda output, y: "
    "torch.nn.functional.cross_entropy(output['logits'], y))"
)


def unwrap(model: nn.Module) -> nn.Module:
    """The eager module inside ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def compiled(model: nn.Module) -> bool:
    """Whether calling ``model`` runs code compiled by ``torch.compile`` (wrapper or ``module.compile()``)."""
    m = model
    while True:
        if isinstance(getattr(m, "_orig_mod", None), nn.Module) or getattr(m, "_compiled_call_impl", None):
            return True
        if not isinstance(m, nn.parallel.DistributedDataParallel | nn.DataParallel):
            return any(getattr(sub, "_compiled_call_impl", None) is not None for sub in m.modules())
        m = m.module


@contextlib.contextmanager
def eager(active: bool = True) -> Iterator[None]:
    """Run ``torch.compile``d code eagerly inside the block (``torch.compiler.set_stance("force_eager")``),
    so that the probe's hooks see every module; the previous stance is restored on exit."""
    if not active:
        yield
        return
    from torch._dynamo import eval_frame

    before = eval_frame._stance
    torch.compiler.set_stance("force_eager")
    try:
        yield
    finally:
        torch.compiler.set_stance(
            before.stance, skip_guard_eval_unsafe=before.skip_guard_eval_unsafe, force_backend=before.backend
        )


def rank() -> int | None:
    """This process's rank when ``torch.distributed`` is initialized, else ``None``."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def in_backward() -> bool:
    """True while autograd runs a backward pass (gradient checkpointing re-runs forwards there)."""
    return torch._C._current_graph_task_id() != -1


def in_vmap() -> bool:
    """True inside ``torch.func.vmap`` (per-example gradients): its tensors are batched views that must not
    leave the transform, so the probe's hooks take nothing there (``probe.unavailable`` says so)."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


VMAP = "the model ran inside torch.func.vmap, whose batched tensors cannot leave it: nothing recorded there"


def _fields(out: Any) -> Mapping | None:
    if isinstance(out, Mapping):
        return out
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return None


def first_tensor(out: Any) -> Tensor | None:
    """The tensor a module produced: itself, the first of a tuple (LSTM, attention), a packed sequence's
    data, the ``logits`` or first tensor field of a dict or dataclass output."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return out.data
    fields = _fields(out)
    if fields is not None:
        if isinstance(fields.get("logits"), Tensor):
            return fields["logits"]
        return next((t for t in map(first_tensor, fields.values()) if t is not None), None)
    if isinstance(out, tuple | list) and out:
        return first_tensor(out[0])
    return None


def default_loss(output: Any, y: Tensor) -> Tensor:
    """Cross-entropy of the model's logits against ``y``: the output itself, the first of a tuple, or the
    ``logits`` of a dict / dataclass output (a ``loss`` field alone is taken as it is). Logits with extra
    dimensions (``(batch, tokens, classes)``) are scored per position against ``y`` of ``(batch, tokens)``.
    Float targets take the loss they fit: BCE on logits for 0/1 targets (a one-output binary classifier, or one
    output per label), the mean squared error for other real values.
    Raises ``TypeError`` with the ``loss_fn=`` to pass when the output cannot be scored."""
    fields = _fields(output)
    if fields is not None:
        logits = fields.get("logits")
        if not isinstance(logits, Tensor):
            loss = fields.get("loss")
            if isinstance(loss, Tensor) and loss.dim() == 0:
                return loss
            raise TypeError(
                f"the probe cannot score the model's output, a {type(output).__name__} with fields "
                f"{', '.join(map(str, fields)) or 'none'} (no 'logits' tensor): {_LOSS_HINT}"
            )
    else:
        logits = first_tensor(output)
    if logits is None or not logits.is_floating_point():
        raise TypeError(f"the probe cannot score the model's output, a {type(output).__name__}: {_LOSS_HINT}")
    try:
        if y.is_floating_point():  # 0/1 targets: BCE on logits (one per label); other real targets: mean squared error
            from deepscope.losses import bce_with_logits, mse
            from deepscope.metrics import REGRESSION_TASK, task_of

            return (mse if task_of(None, y).kind == REGRESSION_TASK else bce_with_logits)(logits, y)
        if logits.dim() > 2 and y.dim() == logits.dim() - 1:
            return F.cross_entropy(logits.flatten(0, -2), y.flatten())
        return F.cross_entropy(logits, y)
    except (RuntimeError, ValueError, IndexError) as e:
        raise TypeError(
            f"the probe's default loss (cross-entropy) failed on logits of shape {tuple(logits.shape)} and "
            f"labels of shape {tuple(y.shape)} ({e}): {_LOSS_HINT}"
        ) from e
