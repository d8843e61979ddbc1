"""The probe's options, checked before anything is attached: one-line errors naming the key, the value
and what is allowed."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from deepscope.probe.jacobian import JACOBIAN_METHODS
from deepscope.registry import integer, unknown

__all__ = [
    "call_model",
    "check_loss_fn",
    "check_sinks",
    "check_options",
    "check_probe_kwargs",
    "grad_inputs",
    "input_tensors",
    "missing_layers",
    "monitor_failure",
    "monitor_to_model",
    "parse_monitor",
    "positive_int",
]

# the options of a Probe that can be checked before the model is known
MODEL_FREE = ("bins", "jacobian_examples", "jacobian_every", "jacobian_method")


positive_int = integer


def check_options(
    every: int = 100,
    bins: int = 50,
    jacobian_examples: int = 10,
    jacobian_every: int | None = None,
    jacobian_method: str = "auto",
    start_step: int = 0,
) -> None:
    """Raise ``ValueError`` naming the option, its value and what is allowed, for the options of :class:`Probe`
    that do not depend on the model (so that a trainer can check them before training starts)."""
    positive_int("every", every)
    positive_int("bins", bins)
    positive_int("jacobian_examples", jacobian_examples, minimum=0)
    positive_int("start_step", start_step, minimum=0)
    if jacobian_every is not None and positive_int("jacobian_every", jacobian_every) % every != 0:
        raise ValueError(f"jacobian_every={jacobian_every!r} is not allowed; give a multiple of every={every}")
    if jacobian_method not in JACOBIAN_METHODS:
        raise unknown("jacobian_method", jacobian_method, JACOBIAN_METHODS)


def check_probe_kwargs(every: int, probe_kwargs: dict[str, Any]) -> None:
    """:func:`check_options` on the ``Probe`` keyword arguments a callback was given (the model-free ones), so a
    bad option fails when the callback is made, before any training (layer names are checked on the model)."""
    check_options(every, **{k: v for k, v in probe_kwargs.items() if k in MODEL_FREE})


def _inputs(x: Any) -> bool:
    """Whether ``x`` is model inputs: a tensor, a tuple / list of tensors (positional arguments) or a dict of
    tensors by name (keyword arguments, or one dict argument: :func:`call_model`)."""
    if isinstance(x, Tensor):
        return True
    if isinstance(x, tuple | list):
        return bool(x) and all(isinstance(t, Tensor) for t in x)
    return isinstance(x, dict) and bool(x) and all(isinstance(k, str) and isinstance(t, Tensor) for k, t in x.items())


_MONITOR_FORMS = ("a tensor x", "a pair (x, y)", "(inputs, y) with inputs a tuple of tensors (the forward's "
                  "positional arguments) or a dict of tensors (its keyword arguments, or one dict argument)",
                  "(inputs, None)")


def check_loss_fn(loss_fn: Any) -> Any:
    """``loss_fn`` if it is None or callable, else a ``TypeError`` saying what to give."""
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} is not allowed; give a callable loss_fn(output, y) -> scalar tensor, "
                        "e.g. torch.nn.functional.mse_loss, or None for the default")
    return loss_fn


def check_sinks(sinks: Any) -> list:
    """``sinks`` as a list, each with a ``write`` method, else a ``TypeError`` (before training, not at a record)."""
    if isinstance(sinks, str) or not isinstance(sinks, Iterable):
        raise TypeError(f"sinks={sinks!r} is not allowed; give a list of sinks (objects with a write method)")
    sinks = list(sinks)
    for sink in sinks:
        if not callable(getattr(sink, "write", None)):
            raise TypeError(f"sinks: {sink!r} is not allowed; a sink needs a write(stats_rows, histogram_rows) "
                            "method (StoreSink, TensorBoardSink, WandbSink, MLflowSink)")
    return sinks


def missing_layers(layers: list) -> dict[str, str]:
    """The probe's ``unavailable`` to start with: the activations, when the model has no layer to record."""
    if layers:
        return {}
    return {"activations": "the model has no activation module to record (non-linearities inside a forward "
                           "are in probe.unobservable); give layers=[module names] to record chosen modules' outputs"}


def parse_monitor(monitor: Any) -> tuple[Any, Tensor | None]:
    """``monitor`` as ``(x, y)`` (``y`` None when only ``x`` is given); ``x`` is a tensor, or a tuple or dict of
    tensors (a model of several inputs)."""
    if monitor is None:
        return None, None
    if isinstance(monitor, Tensor | dict):
        x, y = monitor, None
    elif (isinstance(monitor, tuple | list) and len(monitor) == 2 and _inputs(monitor[0])
          and (monitor[1] is None or isinstance(monitor[1], Tensor))):
        x, y = monitor
    else:
        raise ValueError(f"monitor={_describe(monitor)} is not allowed; give {', '.join(_MONITOR_FORMS)}")
    if not _inputs(x):
        raise ValueError(f"monitor={_describe(x)} is not allowed; give {', '.join(_MONITOR_FORMS)}")
    first = x if isinstance(x, Tensor) else next(iter(x.values() if isinstance(x, dict) else x))
    if first.dim() == 0 or len(first) == 0:
        raise ValueError(f"monitor: the monitor set has no examples (shape {tuple(first.shape)}); give at least one")
    if y is not None and y.dim() == 0:
        raise ValueError("monitor: y is a single number (shape ()); give one target per example (shape (N, ...))")
    if isinstance(x, Tensor) and y is not None and len(x) != len(y):
        raise ValueError(f"monitor: x has {len(x)} examples but y has {len(y)}")
    return x, y


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, tuple | list | dict):
        items = x.values() if isinstance(x, dict) else x
        return f"a {type(x).__name__} of {', '.join(type(t).__name__ for t in items) or 'nothing'}"
    return f"{type(x).__name__} {x!r:.60}"


def call_model(model: nn.Module, x: Any) -> Any:
    """``model`` on monitor inputs ``x``: a tensor, a tuple (``model(*x)``) or a dict, given as keyword arguments
    (``model(**x)``, a HuggingFace batch) when its keys are parameters of ``forward``, else as one argument."""
    if isinstance(x, Tensor):
        return model(x)
    if isinstance(x, tuple | list):
        return model(*x)
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return model(**x) if set(x) <= named else model(x)


def grad_inputs(x: Any) -> tuple[Any, list[Tensor], list[Tensor]]:
    """``x`` with each float tensor replaced by a clone of a leaf that requires gradients; the leaves; the clones."""
    leaves: list[Tensor] = []
    clones: list[Tensor] = []

    def leaf(t: Tensor) -> Tensor:
        if not t.is_floating_point():
            return t
        leaves.append(t.detach().requires_grad_(True))
        clones.append(leaves[-1].clone())
        return clones[-1]

    if isinstance(x, Tensor):
        return leaf(x), leaves, clones
    x = {k: leaf(t) for k, t in x.items()} if isinstance(x, dict) else tuple(map(leaf, x))
    return x, leaves, clones


def monitor_failure(error: Exception, x: Any, y: Tensor | None, later: bool) -> str:
    """What to say when the probe's pass on the monitor set raised ``error``. The first pass runs when the ``with``
    block is entered: there it is raised, naming ``monitor`` and ``loss_fn`` (a ``TypeError`` stays one); at a
    later record (inside ``probe.step()``) the reason is returned, for ``probe.unavailable["monitor"]``."""
    given = f"x: {_describe(x)}" + ("" if y is None else f", y: {_describe(y)}")
    reason = f"the probe's pass on the monitor set ({given}) failed: {type(error).__name__}: {error}"
    if later:
        return reason
    allowed = "give monitor inputs the model takes and a loss_fn(output, y) that returns a scalar tensor"
    raise (TypeError if isinstance(error, TypeError) else ValueError)(f"monitor: {reason}; {allowed}") from error


def input_tensors(x: Any) -> list[Tensor]:
    """The tensors of monitor inputs ``x``."""
    if x is None:
        return []
    return [x] if isinstance(x, Tensor) else list(x.values() if isinstance(x, dict) else x)


def monitor_to_model(x: Any, y: Tensor | None, model: nn.Module) -> tuple[Any, Tensor | None]:
    """The monitor set on the model's device, float inputs in its float type (a float64 model, a float32 set)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None or x is None:
        return x, y

    def move(t: Tensor) -> Tensor:
        return t.to(param.device, param.dtype if t.is_floating_point() else t.dtype)

    if isinstance(x, Tensor):
        x = move(x)
    else:
        x = {k: move(t) for k, t in x.items()} if isinstance(x, dict) else tuple(map(move, x))
    return x, (y.to(param.device) if y is not None else None)
