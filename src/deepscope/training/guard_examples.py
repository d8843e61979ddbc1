"""Which examples of a batch made an update go wrong: per-example losses and gradient norms, ranked.

One extra forward and backward pass over the offending batch only, vectorized over its examples with
``torch.func`` (``vmap`` of ``grad`` of a ``functional_call``): the gradient of each example's own loss, as if it
were a batch of one. The technique is the per-sample gradient of Goodfellow (2015), "Efficient Per-Example
Gradient Computations" (arXiv:1510.01799), computed here by automatic vectorization (the ``torch.func`` recipe)
rather than by hand-written layer rules, so it holds for any module ``torch.func`` can trace.

The pass runs in eval mode (batch normalization uses its running statistics, so an example's gradient does not
depend on the others of its batch, and dropout is off) and leaves the model, its buffers, its gradients and the
random number generators exactly as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Ranking", "default_loss", "per_example", "per_example_dict", "rank_batch", "rank_examples"]


def default_loss(output: Tensor, y: Tensor) -> Tensor:
    """The loss that ranks examples when none is given: cross-entropy over class indices, the classes on dimension
    1 (``(N, C)``, ``(N, C, H, W)``) or, for a token model's ``(N, T, V)`` output and ``(N, T)`` labels, on the last
    (positions labelled -100 ignored). Floating-point targets (regression, binary, multi-label) get a ValueError
    saying to pass the loss: cross-entropy would rank them by a meaningless number (0 for one logit). A tuple output
    is read by its first element, a dict (or model output) by its ``logits``."""
    import torch.nn.functional as F

    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        output = output[0]  # a model returning (logits, extras...)
    output = _logits(output)  # a dict or model output: its logits
    if y.is_floating_point():
        raise ValueError("floating-point targets: the default loss_fn is cross-entropy over class indices; "
                         "pass Guard(loss_fn=...), e.g. F.mse_loss or F.binary_cross_entropy_with_logits")
    if output.dim() == y.dim() + 1 and output.dim() > 2 and output.shape[:-1] == y.shape \
            and output.shape[2:] != y.shape[1:]:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1), ignore_index=-100)
    return F.cross_entropy(output, y, ignore_index=-100)


def per_example(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *,
                chunk_size: int | None = 32) -> tuple[Tensor, Tensor]:
    """``(losses, grad_norms)`` of the examples of ``(x, y)``: each example's loss ``loss_fn(model(x_i), y_i)``
    and the 2-norm of its gradient over every trainable parameter, both shaped ``(len(x),)``, on x's device.

    ``chunk_size`` examples are vectorized at once (memory: that many copies of the gradients); ``None``: all.
    ``x`` may be a tuple of tensors (the model's positional inputs). A model or loss ``vmap`` cannot trace (an
    ``nn.GRU``, a loss with a data-dependent check such as ``gaussian_nll_loss``) is run one example at a time.
    """
    from torch.func import functional_call, grad_and_value, vmap

    inputs = tuple(x) if isinstance(x, tuple | list) else (x,)
    x = inputs[0]

    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def one(p: dict[str, Tensor], xi: tuple[Tensor, ...], yi: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), tuple(t.unsqueeze(0) for t in xi))
        return _loss_of(loss_fn(out, yi.unsqueeze(0)))

    training = model.training
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            try:
                grads, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0), chunk_size=chunk_size)(params,
                                                                                                      inputs, y)
            except Exception:  # not traceable by vmap: a loop over the examples (on an event only)
                return _loop(model, loss_fn, inputs, y)
    finally:
        model.train(training)
    squares = torch.stack([g.reshape(len(x), -1).double().pow(2).sum(1) for g in grads.values()]).sum(0)
    return losses.detach().float(), squares.sqrt().float()


def _loop(model: nn.Module, loss_fn: Callable, inputs: tuple[Tensor, ...], y: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`per_example` one example at a time (called in eval mode, under a forked RNG)."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses, norms = [], []
    for i in range(len(y)):
        loss = _loss_of(loss_fn(model(*(t[i:i + 1] for t in inputs)), y[i:i + 1]))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        losses.append(loss.detach().float().reshape(()))
        squares = [g.double().pow(2).sum() for g in grads if g is not None]
        norms.append(torch.stack(squares).sum().sqrt().float() if squares else torch.zeros((), device=y.device))
    return torch.stack(losses), torch.stack(norms)


def per_example_dict(model: nn.Module, inputs: Mapping[str, Any], y: Tensor | None = None,
                     loss_fn: Callable[[Any, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``(losses, grad_norms)`` of the examples of a batch given as keyword inputs (a Hugging Face batch:
    ``input_ids``, ``attention_mask``, ``labels``, ``pixel_values``, ...), each from the model's own loss
    (``output.loss`` or ``output["loss"]``) on that example alone -- or, with targets ``y`` apart from the inputs,
    ``loss_fn(output, y_i)`` (the output's ``logits`` when it is a model output and ``loss_fn`` the default): a loop
    over the examples (run on an event only), since such models compute their loss inside ``forward``, where
    ``torch.func`` may not trace. Every tensor whose first dimension is the batch's is sliced; the rest are passed as
    they are. Same guarantees as :func:`per_example`: eval mode, RNG, buffers and ``.grad`` untouched."""
    tensors = [v for v in inputs.values() if isinstance(v, Tensor) and v.dim() > 0]
    if not tensors:
        raise ValueError("the batch holds no tensor to take examples from")
    n = tensors[0].shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    device = tensors[0].device
    losses, norms = torch.empty(n, device=device), torch.empty(n, device=device)
    training = model.training
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            for i in range(n):
                one = {k: v[i:i + 1] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v
                       for k, v in inputs.items()}
                output = model(**one)
                if y is not None:
                    loss = _loss_of((loss_fn or default_loss)(
                        _logits(output) if loss_fn in (None, default_loss) else output, y[i:i + 1]))
                else:
                    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
                if loss is None and isinstance(output, tuple | list) and output:  # return_dict=False: loss first
                    loss = output[0] if isinstance(output[0], Tensor) and output[0].dim() == 0 else None
                if not isinstance(loss, Tensor):
                    raise ValueError("the model returned no loss (give the batch its labels)")
                loss = loss.reshape(()) if loss.numel() == 1 else loss
                grads = torch.autograd.grad(loss.float(), params, allow_unused=True)
                squares = [g.double().pow(2).sum() for g in grads if g is not None]
                losses[i] = loss.detach().float()
                norms[i] = torch.stack(squares).sum().sqrt().float() if squares else 0.0
    finally:
        model.train(training)
    return losses, norms


def _loss_of(value: Any) -> Any:
    """A loss function's loss: the value itself, or the first element of a tuple (``(loss, logs)``), or a dict's
    ``"loss"``."""
    if isinstance(value, Mapping) and "loss" in value:
        return value["loss"]
    return value[0] if isinstance(value, tuple | list) and value else value


def _logits(output: Any) -> Any:
    """A model output's logits (a Hugging Face ``ModelOutput`` or dict), else the output as it is."""
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    return getattr(output, "logits", output)


@dataclass
class Ranking:
    """The examples of one batch, most suspect first: ``index`` (positions in the batch), their ``ids`` in the
    dataset when known, per-example ``loss`` and ``grad_norm`` (same order)."""

    index: list[int]
    loss: list[float]
    grad_norm: list[float]
    ids: list[int] | None = None
    share: list[float] = field(default_factory=list)  # each example's share of the batch's summed gradient norms

    def top(self, k: int) -> Ranking:
        return Ranking(self.index[:k], self.loss[:k], self.grad_norm[:k], None if self.ids is None else self.ids[:k],
                       self.share[:k])


def _order_key(value: float) -> float:
    return math.inf if not math.isfinite(value) else value  # a NaN example is the first suspect


def rank_examples(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None, x: Tensor | Mapping,
                  y: Tensor | None = None, ids: Tensor | list[int] | None = None, *,
                  chunk_size: int | None = 32) -> Ranking:
    """The examples of ``(x, y)`` -- or of the keyword inputs ``x`` (a dict batch, ranked by the model's own
    loss: :func:`per_example_dict`) -- ordered by their gradient norm (the size of their pull on the update), the
    loss breaking ties; non-finite values first. ``ids``: the dataset ids of the examples, reported alongside."""
    if isinstance(x, Mapping):
        losses, norms = per_example_dict(model, x, y, loss_fn)
    else:
        losses, norms = per_example(model, loss_fn, x, y, chunk_size=chunk_size)
    losses_, norms_ = losses.tolist(), norms.tolist()  # one host read, on an event only
    order = sorted(range(len(losses_)), key=lambda i: (_order_key(norms_[i]), _order_key(losses_[i])), reverse=True)
    finite = [v for v in norms_ if math.isfinite(v)]
    total = sum(finite) or 1.0
    ids_ = None if ids is None else (ids.tolist() if isinstance(ids, Tensor) else list(ids))
    if ids_ is not None and len(ids_) < len(losses_):
        raise ValueError(f"ids has {len(ids_)} entries for a batch of {len(losses_)} examples; give one id each")
    return Ranking(index=order, loss=[losses_[i] for i in order], grad_norm=[norms_[i] for i in order],
                   ids=None if ids_ is None else [_id(ids_[i]) for i in order],
                   share=[norms_[i] / total if math.isfinite(norms_[i]) else 1.0 for i in order])


def _id(value: Any) -> Any:
    """A dataset id as an int when it is one (a Python, numpy or tensor integer), else as given (a string)."""
    if isinstance(value, str | int):
        return value
    try:
        return int(value) if float(value) == int(value) else value
    except (TypeError, ValueError):
        raise ValueError(f"ids: {value!r} is not an id; give one integer or string per example") from None


def rank_batch(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], batch: Any, ids: Any,
               k: int) -> Ranking:
    """The top ``k`` of :func:`rank_examples` for a batch as the guard is given it: ``(x, y)``, ``(x, y, ids)`` or
    a dict of keyword inputs; ``x`` may be a tuple of tensors (the model's positional inputs) or a dict of keyword
    inputs; ``ids`` (a tensor, a list, or a function returning one) wins over a third element. A ValueError says
    what is wrong otherwise."""
    def tensors(v: Any) -> bool:
        return isinstance(v, Tensor) or (isinstance(v, tuple | list) and bool(v) and
                                         all(isinstance(t, Tensor) for t in v))

    if isinstance(batch, Mapping):  # keyword inputs (a Hugging Face batch): the model's own loss ranks them
        x, y = batch, None
    elif isinstance(batch, tuple | list) and len(batch) >= 2 and isinstance(batch[0], Mapping) \
            and isinstance(batch[1], Tensor):  # keyword inputs and their targets: loss_fn ranks them
        x, y = batch[0], batch[1]
    elif isinstance(batch, tuple | list) and len(batch) >= 2 and tensors(batch[0]) and isinstance(batch[1], Tensor):
        x, y = batch[0], batch[1]
        sizes = [len(t) for t in (x if isinstance(x, tuple | list) else [x])] + [len(y)]
        if len(set(sizes)) > 1:
            raise ValueError(f"batch: its tensors hold {sizes} examples; give (x, y) with one y per example")
    else:
        raise ValueError(f"batch={type(batch).__name__} cannot be ranked; give (x, y), (x, y, ids), ((x1, x2, ...), "
                         "y), ({keyword inputs}, y) or a dict of keyword inputs")
    ids = ids() if callable(ids) else ids if ids is not None else batch[2] if y is not None and len(batch) > 2 \
        else None
    return rank_examples(model, loss_fn, x, y, ids).top(k)


def trainer_ids(batches: Any, t: int) -> Tensor:
    """The dataset ids of the examples of update ``t`` of a :class:`~deepscope.data.loader.TrainBatches`: their
    index in the in-memory training set (the epoch's permutation, drawn again), or in the stream (``t x B + i``)."""
    from deepscope.data.datasets import derive_seed

    b = batches.batch_size
    if batches.stream is not None:
        return torch.arange(t * b, (t + 1) * b)
    epoch, k = divmod(t, batches.per_epoch)
    generator = torch.Generator().manual_seed(derive_seed(batches.seed, epoch))
    return torch.randperm(len(batches.x), generator=generator)[k * b:(k + 1) * b]


def write_events(path: Any, guard: Any) -> None:
    """The guard's events (with the examples they name) and its counts as JSON, in the run folder."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    data = {"summary": guard.summary(), "updates": guard.updates, "skipped": guard.skipped,
            "rollbacks": guard.rollbacks, "options": guard.options, "events": [asdict(e) for e in guard.events]}
    Path(path).write_text(json.dumps(data, indent=1, default=str, allow_nan=True), encoding="utf-8")
