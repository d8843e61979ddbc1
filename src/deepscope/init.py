"""Weight initialization schemes, by name.

One public function per scheme, named after it: each fills ``tensor`` in place (without recording
autograd history) and returns it, like ``torch.nn.init``::

    deepscope.init.glorot_uniform(layer.weight)
    deepscope.init.he_normal(conv.weight, mode="fan_out")

The sampling is done by ``torch.nn.init`` (``normal_``, ``uniform_``, ``orthogonal_``, ...); what this
module adds is the formulas of the texts and the fans. ``fan_in``/``fan_out`` are computed from the
weight's shape as ``torch.nn.init`` does it -- Linear ``(out, in)``: ``(in, out)``; Conv ``(out, in, *k)``:
``(in * prod(k), out * prod(k))`` -- except that a scheme can be handed the fans explicitly
(``fans=(fan_in, fan_out)``), which :func:`apply` does for :class:`~deepscope.nn.activations.Maxout`:
its weight has shape ``(out * k, in)`` but its fans are ``(in, out)`` (see :func:`layer_fans`).

:func:`apply` initializes every Linear / Conv / Maxout weight of a model with one scheme and sets
the biases to zero; :func:`lsuv` is the data-driven scheme of Mishkin & Matas (2016).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from deepscope.nn.activations import ACTIVATIONS, Maxout, spec_for_module
from deepscope.registry import lookup, register, unknown

__all__ = [
    "LAYER_TYPES",
    "SCHEMES",
    "apply",
    "constant",
    "fans",
    "get_scheme",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "layer_fans",
    "lecun_normal",
    "lecun_uniform",
    "lsuv",
    "normal",
    "orthogonal",
    "standard",
    "uniform",
    "zeros",
]

#: Layers whose ``weight`` :func:`apply` initializes (their ``bias`` is set to zero).
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, Maxout)

FAN_MODES = ("fan_in", "fan_out", "fan_avg")

Fans = tuple[int, int]


# --- fans -----------------------------------------------------------------------------------------


def fans(tensor: Tensor) -> Fans:
    """``(fan_in, fan_out)`` of a Linear ``(out, in)`` or Conv ``(out, in, *kernel)`` weight.

    The same rule as ``torch.nn.init``: ``fan_in = in * prod(kernel)``, ``fan_out = out * prod(kernel)``.
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"weight shape={tuple(tensor.shape)}: fan-based initialization needs a weight with at least "
            "2 dimensions (out, in, *kernel)"
        )
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def layer_fans(module: nn.Module) -> Fans:
    """``(fan_in, fan_out)`` of a layer's weight, knowing what the layer is.

    For :class:`Maxout` (weight ``(out * k, in)``) the fans are ``(in, out)``: each input feeds ``k``
    pieces of every unit, but only the winning piece passes a unit's output and its gradient on, so
    the forward and backward signals see ``in`` and ``out`` connections, as for a Linear layer.
    Other layers: :func:`fans` of their weight.
    """
    if isinstance(module, Maxout):
        return module.in_features, module.out_features
    return fans(module.weight)


def _fan(tensor: Tensor, fans_: Fans | None, mode: str) -> float:
    if mode not in FAN_MODES:
        raise unknown("mode", mode, FAN_MODES)
    fan_in, fan_out = fans(tensor) if fans_ is None else fans_
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def _normal(tensor: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    return nn.init.normal_(tensor, 0.0, std, generator=generator)


def _uniform(tensor: Tensor, bound: float, generator: torch.Generator | None) -> Tensor:
    return nn.init.uniform_(tensor, -bound, bound, generator=generator)


# --- schemes --------------------------------------------------------------------------------------


def zeros(tensor: Tensor) -> Tensor:
    """W = 0: the usual bias init; for weights it never breaks the symmetry between units (Jen (2020))."""
    return nn.init.zeros_(tensor)


def constant(tensor: Tensor, value: float) -> Tensor:
    """W = value everywhere (no symmetry breaking either)."""
    return nn.init.constant_(tensor, value)


def normal(tensor: Tensor, std: float, mean: float = 0.0, *, generator: torch.Generator | None = None) -> Tensor:
    """W ~ N(mean, std^2): the "small random numbers" initialization, e.g. std=0.01 (Jen (2020))."""
    return nn.init.normal_(tensor, mean, std, generator=generator)


def uniform(tensor: Tensor, bound: float, *, generator: torch.Generator | None = None) -> Tensor:
    """W ~ U[-bound, bound], so Var(W) = bound^2 / 3."""
    return _uniform(tensor, bound, generator)


def standard(tensor: Tensor, *, fans: Fans | None = None, generator: torch.Generator | None = None) -> Tensor:
    """W ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)], so fan_in * Var(W) = 1/3.

    The "standard" heuristic the paper starts from (Glorot & Bengio 2010, eq. 1).
    """
    return _uniform(tensor, 1.0 / math.sqrt(_fan(tensor, fans, "fan_in")), generator)


def glorot_normal(
    tensor: Tensor, gain: float = 1.0, *, fans: Fans | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """W ~ N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio 2010; "Xavier normal")."""
    return _normal(tensor, gain / math.sqrt(_fan(tensor, fans, "fan_avg")), generator)


def glorot_uniform(
    tensor: Tensor, gain: float = 1.0, *, fans: Fans | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """W ~ U[-r, r], r = gain * sqrt(6 / (fan_in + fan_out)).

    The "normalized initialization" of Glorot & Bengio (2010, eq. 16); Var(W) = 2 / (fan_in + fan_out).
    """
    return _uniform(tensor, gain * math.sqrt(3.0 / _fan(tensor, fans, "fan_avg")), generator)


def he_normal(
    tensor: Tensor,
    mode: str = "fan_in",
    gain: float = math.sqrt(2.0),
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """W ~ N(0, std^2), std = gain / sqrt(fan), gain = sqrt(2) for ReLU (He et al. 2015).

    ``mode`` picks fan: ``"fan_in"`` (std = sqrt(2 / fan_in), preserves the forward variance),
    ``"fan_out"`` (preserves the backward variance) or ``"fan_avg"`` = (fan_in + fan_out) / 2, the
    variant of Varma & Das, ch. 7, section 7.5: std = sqrt(4 / (n_in + n_out)). For a leaky ReLU of slope a use
    gain = sqrt(2 / (1 + a^2)).
    """
    return _normal(tensor, gain / math.sqrt(_fan(tensor, fans, mode)), generator)


def he_uniform(
    tensor: Tensor,
    mode: str = "fan_in",
    gain: float = math.sqrt(2.0),
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """W ~ U[-r, r], r = gain * sqrt(3 / fan): He et al. (2015) with a uniform distribution.

    ``mode`` as in :func:`he_normal`; ``"fan_avg"`` gives Varma & Das, ch. 7's r = sqrt(12 / (n_in + n_out)).
    """
    return _uniform(tensor, gain * math.sqrt(3.0 / _fan(tensor, fans, mode)), generator)


def lecun_normal(
    tensor: Tensor, gain: float = 1.0, *, fans: Fans | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """W ~ N(0, std^2), std = gain / sqrt(fan_in) (LeCun et al. 1998; the init SELU needs, Klambauer 2017)."""
    return _normal(tensor, gain / math.sqrt(_fan(tensor, fans, "fan_in")), generator)


def lecun_uniform(
    tensor: Tensor, gain: float = 1.0, *, fans: Fans | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """W ~ U[-r, r], r = gain * sqrt(3 / fan_in), so Var(W) = gain^2 / fan_in (LeCun et al. 1998)."""
    return _uniform(tensor, gain * math.sqrt(3.0 / _fan(tensor, fans, "fan_in")), generator)


def orthogonal(tensor: Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None) -> Tensor:
    """W = gain * Q with Q (semi-)orthogonal: W W^T = gain^2 I if out <= in, else W^T W = gain^2 I.

    Saxe et al. (2013); a Conv weight is treated as the matrix ``(out, in * prod(kernel))``.
    """
    return nn.init.orthogonal_(tensor, gain, generator=generator)


# --- LSUV -----------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the layer of interest has run."""


def _layer_output_var(model: nn.Module, name: str, layer: nn.Module, x: Tensor) -> float:
    captured: list[Tensor] = []

    def hook(module, inputs, output):
        captured.append(output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"LSUV: layer {name!r} was not called by model(x); it cannot be measured")
    return captured[0].float().var().item()


def lsuv(
    model: nn.Module,
    x: Tensor | None = None,
    tol: float = 0.1,
    t_max: int = 10,
    *,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016, Algorithm 1).

    Orthonormal weights and zero biases first; then, for each Linear / Conv / Maxout layer in
    registration order (the forward order of an ``nn.Sequential`` such as :func:`~deepscope.models.mlp`),
    W <- W / sqrt(Var(B)) with B the layer's output on the batch ``x``, until |Var(B) - 1| < ``tol``
    or ``t_max`` rescalings were made. The forward passes run without autograd and in eval mode
    (dropout off; batch norm uses, and does not update, its running statistics); the modules'
    training flags are restored afterwards. Returns ``model``.
    """
    if isinstance(model, Tensor):
        raise TypeError("lsuv initializes a model from a batch of data: call lsuv(model, x), not lsuv(tensor)")
    if x is None:
        raise ValueError(
            "init 'lsuv' needs a batch `x` of inputs: call deepscope.init.lsuv(model, x) "
            "or deepscope.init.apply(model, 'lsuv', x=batch)"
        )
    if tol <= 0:
        raise ValueError(f"lsuv tol={tol!r}: must be > 0")
    if t_max < 1:
        raise ValueError(f"lsuv t_max={t_max!r}: must be >= 1")
    apply(model, "orthogonal", generator=generator)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for name, layer in _layers(model):
                for _ in range(t_max):
                    var = _layer_output_var(model, name, layer, x)
                    if not math.isfinite(var) or var <= 0:
                        raise ValueError(
                            f"LSUV: output of layer {name!r} has variance {var} on the batch; cannot rescale it"
                        )
                    if abs(var - 1.0) < tol:
                        break
                    layer.weight.div_(math.sqrt(var))
    finally:
        for m, training in modes.items():
            m.training = training
    return model


# --- registry and apply ---------------------------------------------------------------------------

SCHEMES: dict[str, Callable[..., object]] = {
    "zeros": zeros,
    "constant": constant,
    "normal": normal,
    "uniform": uniform,
    "standard": standard,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "orthogonal": orthogonal,
    "lsuv": lsuv,
}

#: Names :func:`apply` accepts besides :data:`SCHEMES`: "auto" = each layer gets the init that the
#: activation following it recommends (:attr:`ActivationSpec.init`).
APPLY_ONLY = ("auto",)


def get_scheme(name: str) -> Callable[..., object]:
    """The scheme function registered as ``name``; an unknown name lists the valid ones."""
    return lookup(SCHEMES, "init", name)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's Linear / Conv / Maxout layers in registration order (the Linear inside a Maxout excluded)."""
    inner = {id(m.linear) for m in model.modules() if isinstance(m, Maxout)}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES) and id(m) not in inner]


def _check_kwargs(name: str, fn: Callable[..., object], kwargs: dict) -> None:
    params = list(inspect.signature(fn).parameters.values())[1:]  # skip the tensor / model
    allowed = [p.name for p in params if p.name != "fans"]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(
            f"init {name!r} does not take {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(allowed) or '(none)'}"
        )
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if missing:
        raise ValueError(f"init {name!r} needs {', '.join(missing)}, e.g. apply(model, {name!r}, {missing[0]}=...)")


def _init_layer(layer: nn.Module, fn: Callable[..., object], kwargs: dict) -> None:
    if "fans" in inspect.signature(fn).parameters:
        kwargs = {**kwargs, "fans": layer_fans(layer)}
    fn(layer.weight, **kwargs)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _auto_schemes(model: nn.Module) -> dict[int, str]:
    """For each layer, the init recommended by the activation that follows it in registration order.

    A Maxout layer is its own activation; layers followed by no activation (the output layer) get the
    "identity" entry's recommendation.
    """
    chosen: dict[int, str] = {}
    pending: list[nn.Module] = []
    inner = {id(m.linear) for m in model.modules() if isinstance(m, Maxout)}
    for m in model.modules():
        if id(m) in inner:
            continue
        if isinstance(m, Maxout):
            chosen[id(m)] = ACTIVATIONS["maxout"].init
        elif isinstance(m, LAYER_TYPES):
            pending.append(m)
        elif (spec := spec_for_module(m)) is not None:
            chosen.update({id(p): spec.init for p in pending})
            pending.clear()
    chosen.update({id(p): ACTIVATIONS["identity"].init for p in pending})
    return chosen


def apply(model: nn.Module, scheme: str, **kwargs) -> nn.Module:
    """Initialize every Linear / Conv / Maxout weight of ``model`` with ``scheme``; biases to zero.

    ``kwargs`` go to the scheme function (``apply(model, "he_normal", mode="fan_out")``); the fans of
    each layer are supplied by :func:`layer_fans`. Normalization layers (BatchNorm: weight 1, bias 0),
    PReLU slopes and other parameters are left as they are. ``scheme="lsuv"`` needs ``x=batch``;
    ``scheme="auto"`` gives each layer the init its activation recommends (scheme defaults;
    ``generator`` is the only keyword it accepts). Returns ``model``.
    """
    if scheme == "auto":
        if unknown := [k for k in kwargs if k != "generator"]:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"init 'auto' does not take {names}; its only parameter is: generator")
        chosen = _auto_schemes(model)
        for _, layer in _layers(model):
            _init_layer(layer, SCHEMES[chosen[id(layer)]], kwargs)
        return model
    if scheme not in SCHEMES:
        raise unknown("init", scheme, [*SCHEMES, *APPLY_ONLY])
    fn = SCHEMES[scheme]
    _check_kwargs(scheme, fn, kwargs)
    if scheme == "lsuv":
        return lsuv(model, **kwargs)
    for _, layer in _layers(model):
        _init_layer(layer, fn, kwargs)
    return model

register("init", SCHEMES)
register("init_apply_only", dict.fromkeys(APPLY_ONLY))
