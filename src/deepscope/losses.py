"""Every loss by name: classification, binary and multi-label, regression, token sequences.

A loss is a function ``loss(output, target, **options) -> scalar tensor`` (the mean over the batch); the registry
:data:`LOSSES` maps a name to it and :func:`make_loss` binds its options (``make_loss("huber", delta=2.0)``), with
the registry's errors for an unknown name or option. Each loss also says what it is for (:data:`FAMILIES`: the
targets it fits) and what it expects from the model (:data:`OUTPUTS`: logits, log-probabilities or plain values),
which the metrics (:mod:`deepscope.metrics`) and the diagnosis read. :func:`describe` answers the same questions
for a callable of your own (a ``torch.nn`` loss module or function is recognized; any other callable gets its
family from the targets).

Element-wise losses (``bce_with_logits``, ``mse``, ``huber``, ``l1``) take an output of the targets' shape, or one
with the same number of values per example (a one-output model's ``(N, 1)`` against targets ``(N,)``): it is
reshaped to the targets' shape, never broadcast (``(N, 1) - (N,)`` would silently be ``(N, N)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.registry import check_kwargs, lookup, register

__all__ = [
    "CLASS",
    "FAMILIES",
    "LOSSES",
    "LOSS_OPTIONS",
    "OUTPUTS",
    "BINARY",
    "REGRESSION",
    "Loss",
    "LossInfo",
    "bce_with_logits",
    "cross_entropy",
    "describe",
    "huber",
    "l1",
    "make_loss",
    "match_shape",
    "mse",
    "nll",
    "quadratic",
    "resolve",
]

CLASS, BINARY, REGRESSION = "class", "binary", "regression"  # what a loss is for: class labels, 0/1 labels, values


def match_shape(output: Tensor, target: Tensor) -> Tensor:
    """``output`` in the shape of ``target`` for an element-wise loss: as it is when the shapes agree, reshaped when
    each example has as many values (``(N, 1)`` against ``(N,)``), else a ValueError naming both shapes."""
    if output.shape == target.shape:
        return output
    if output.ndim and target.ndim and output.shape[0] == target.shape[0] and output.numel() == target.numel():
        return output.reshape(target.shape)
    raise ValueError(f"the model's output has shape {tuple(output.shape)} but the targets have shape "
                     f"{tuple(target.shape)}; an element-wise loss needs one output per target value")


def _flat_classes(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Scores ``(N, K)`` against labels ``(N,)``, or per position ``(N, T, K)`` against ``(N, T)`` (flattened)."""
    if output.ndim == target.ndim + 1 and output.ndim >= 3:
        return output.flatten(0, -2), target.flatten()
    return output, target


# --- the losses ------------------------------------------------------------------------------------------------


def cross_entropy(output: Tensor, target: Tensor, *, label_smoothing: float = 0.0,
                  ignore_index: int = -100) -> Tensor:
    """The conditional log-likelihood cost on logits: mean over the examples of -log softmax(z)[y].

    With ``label_smoothing`` e the target distribution is (1 - e) onehot(y) + e / K, so the loss is
    (1 - e) (-log softmax(z)[y]) + e mean_k (-log softmax(z)_k) (Szegedy et al. 2016, "Rethinking the Inception
    Architecture for Computer Vision", section 7). Token targets ``(N, T)`` take logits ``(N, T, K)``; positions
    whose target is ``ignore_index`` (padding) count for nothing, and the mean is over the others.
    """
    output, target = _flat_classes(output, target)
    return F.cross_entropy(output, target, label_smoothing=label_smoothing, ignore_index=ignore_index)


def nll(output: Tensor, target: Tensor, *, ignore_index: int = -100) -> Tensor:
    """The negative log-likelihood of log-probabilities: mean over the examples of -output[y].

    The model ends in ``log_softmax``; ``nll`` of log_softmax(z) is ``cross_entropy`` of z. Token targets and
    ``ignore_index`` as for :func:`cross_entropy`.
    """
    output, target = _flat_classes(output, target)
    return F.nll_loss(output, target, ignore_index=ignore_index)


def quadratic(output: Tensor, target: Tensor) -> Tensor:
    """Mean over the examples of sum_k (softmax(z)_k - onehot(y)_k)^2 (Glorot & Bengio 2010, section 4.1).

    The quadratic cost on the softmax outputs that Glorot & Bengio compare with the log-likelihood cost
    (their Figure 5: it has plateaus).
    """
    output, target = _flat_classes(output, target)
    probs = output.softmax(dim=-1)
    onehot = F.one_hot(target, probs.shape[-1]).to(probs.dtype)
    return (probs - onehot).square().sum(dim=-1).mean()


def bce_with_logits(output: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, mean over every output: -[y log s(z) + (1 - y) log(1 - s(z))], s the sigmoid.

    One output per example for a binary task (targets ``(N,)`` in {0, 1}), one per label for a multi-label task
    (targets ``(N, K)``); computed from z as log-sum-exp, stable for large |z| (``torch``'s
    ``binary_cross_entropy_with_logits``). Targets in [0, 1] are soft labels.
    """
    return F.binary_cross_entropy_with_logits(match_shape(output, target), target.to(output.dtype))


def mse(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every value: mean (z - y)^2 (the quadratic cost of regression)."""
    return F.mse_loss(match_shape(output, target), target.to(output.dtype))


def huber(output: Tensor, target: Tensor, *, delta: float = 1.0) -> Tensor:
    """Huber's loss, mean over every value: (z - y)^2 / 2 where |z - y| <= delta, else delta (|z - y| - delta / 2).

    Quadratic near the target, linear far from it, so an outlier pulls with a bounded gradient (Huber 1964,
    "Robust Estimation of a Location Parameter", Annals of Mathematical Statistics 35(1)).
    """
    if not delta > 0:
        raise ValueError(f"huber: delta={delta!r} is not allowed; give a number > 0")
    return F.huber_loss(match_shape(output, target), target.to(output.dtype), delta=delta)


def l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every value: mean |z - y|."""
    return F.l1_loss(match_shape(output, target), target.to(output.dtype))


LOSSES: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": cross_entropy,
    "nll": nll,
    "quadratic": quadratic,
    "bce_with_logits": bce_with_logits,
    "mse": mse,
    "huber": huber,
    "l1": l1,
}
FAMILIES: dict[str, str] = {"cross_entropy": CLASS, "nll": CLASS, "quadratic": CLASS, "bce_with_logits": BINARY,
                            "mse": REGRESSION, "huber": REGRESSION, "l1": REGRESSION}
# what the loss expects from the model: "logits" (any real scores; softmax or sigmoid is applied inside),
# "log_probabilities" (the model ends in log_softmax), "values" (unbounded real predictions)
OUTPUTS: dict[str, str] = {"cross_entropy": "logits", "nll": "log_probabilities", "quadratic": "logits",
                           "bce_with_logits": "logits", "mse": "values", "huber": "values", "l1": "values"}
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {name: tuple(
    p for p in fn.__kwdefaults__ or {}) for name, fn in LOSSES.items()}
register("losses", LOSSES)


class Loss:
    """A loss of :data:`LOSSES` with its options bound: ``loss(output, target) -> scalar``."""

    def __init__(self, name: str, options: dict[str, Any] | None = None):
        self.fn = lookup(LOSSES, "loss", name)
        self.name, self.options = name, dict(options or {})
        check_kwargs(f"loss {name!r}", self.options, allowed=LOSS_OPTIONS[name])

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        return self.fn(output, target, **self.options)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Loss({self.name!r}{', ' + options if options else ''})"


def make_loss(name: str, **options: Any) -> Loss:
    """The loss ``name`` with ``options`` bound, e.g. ``make_loss("cross_entropy", label_smoothing=0.1)``;
    an unknown name or option is an error listing the valid ones."""
    return Loss(name, options)


@dataclass(frozen=True)
class LossInfo:
    """What a loss is: the name recorded for it, its family (``class``, ``binary``, ``regression``, or None when
    only the targets can tell), what it expects from the model, and the label it ignores (token padding)."""

    name: str
    family: str | None = None
    output: str | None = None  # "logits", "log_probabilities", "probabilities", "values" or None (unknown)
    ignore_index: int | None = None


# torch's own loss modules and functions, recognized when you pass them as loss_fn=
_TORCH: dict[Any, tuple[str, str, str]] = {
    nn.CrossEntropyLoss: ("cross_entropy", CLASS, "logits"), F.cross_entropy: ("cross_entropy", CLASS, "logits"),
    nn.NLLLoss: ("nll", CLASS, "log_probabilities"), F.nll_loss: ("nll", CLASS, "log_probabilities"),
    nn.BCEWithLogitsLoss: ("bce_with_logits", BINARY, "logits"),
    F.binary_cross_entropy_with_logits: ("bce_with_logits", BINARY, "logits"),
    nn.BCELoss: ("bce", BINARY, "probabilities"), F.binary_cross_entropy: ("bce", BINARY, "probabilities"),
    nn.MSELoss: ("mse", REGRESSION, "values"), F.mse_loss: ("mse", REGRESSION, "values"),
    nn.L1Loss: ("l1", REGRESSION, "values"), F.l1_loss: ("l1", REGRESSION, "values"),
    nn.HuberLoss: ("huber", REGRESSION, "values"), F.huber_loss: ("huber", REGRESSION, "values"),
    nn.SmoothL1Loss: ("smooth_l1", REGRESSION, "values"), F.smooth_l1_loss: ("smooth_l1", REGRESSION, "values"),
}


def describe(loss: str | Callable[..., Tensor], options: dict[str, Any] | None = None) -> LossInfo:
    """:class:`LossInfo` of a registry name (with its ``options``), a :class:`Loss`, a ``torch.nn`` loss module or
    function, or any callable ``(output, target) -> scalar`` (named ``module.qualname``; family unknown)."""
    if isinstance(loss, str):
        lookup(LOSSES, "loss", loss)
        ignore = (options or {}).get("ignore_index", -100) if "ignore_index" in LOSS_OPTIONS[loss] else None
        return LossInfo(loss, FAMILIES[loss], OUTPUTS[loss], ignore)
    if isinstance(loss, Loss):
        return describe(loss.name, loss.options)
    if isinstance(loss, _ElementWise):  # a torch loss the trainer wrapped: describe the loss itself
        return describe(loss.fn)
    if not callable(loss):
        raise TypeError(f"loss_fn={loss!r} is not allowed; give a loss name ({', '.join(LOSSES)}) or a callable "
                        "(output, target) -> scalar tensor")
    known = _TORCH.get(type(loss)) if isinstance(loss, nn.Module) else _TORCH.get(loss)
    if isinstance(loss, nn.Module):
        ignore = getattr(loss, "ignore_index", None) if known and known[1] == CLASS else None
        return LossInfo(type(loss).__name__, *(known[1:] if known else (None, None)), ignore)
    name = f"{getattr(loss, '__module__', None) or ''}.{getattr(loss, '__qualname__', type(loss).__name__)}"
    name = name.lstrip(".").replace("torch.nn.functional.", "F.")
    return LossInfo(name, *(known[1:] if known else (None, None)), -100 if known and known[1] == CLASS else None)


def resolve(loss: str | Callable[..., Tensor], options: dict[str, Any] | None = None
            ) -> tuple[Callable[[Tensor, Tensor], Tensor], LossInfo]:
    """``(loss function, its LossInfo)`` for a registry name with ``options`` (bound by :func:`make_loss`) or for a
    callable ``(output, target) -> scalar`` of your own (``options`` must then be empty)."""
    if isinstance(loss, str):
        return make_loss(loss, **(options or {})), describe(loss, options)
    info = describe(loss)
    if options:
        raise ValueError(f"train.loss_options={options!r} apply to the losses of the registry; loss_fn={info.name} "
                         "takes none (bind its options yourself, e.g. nn.HuberLoss(delta=2.0))")
    if info.family in (BINARY, REGRESSION):  # torch's element-wise losses: a one-output model's (N, 1) against (N,)
        return _ElementWise(loss), info
    return loss, info


class _ElementWise:
    """A torch element-wise loss given the output in the targets' shape (:func:`match_shape`) and float targets:
    ``nn.BCEWithLogitsLoss()`` refuses ``(N, 1)`` against ``(N,)``, and ``nn.MSELoss()`` would broadcast it."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        self.fn = fn

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        return self.fn(match_shape(output, target), target.to(output.dtype))

    def __repr__(self) -> str:
        return repr(self.fn)
