"""Activation registry: every non-linearity of the texts, by name.

Each entry knows how to build its module, the initialization it is usually paired with (and the
gain), the range its histograms are drawn over, and what "saturated" and "dead" mean for it -- the
probe reads those to compute saturation and dead-unit fractions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepscope.registry import lookup, register

__all__ = [
    "ACTIVATIONS",
    "ActivationSpec",
    "Maxout",
    "PReLU",
    "Softsign",
    "get_activation",
    "make_activation",
    "spec_for_module",
]

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


class Softsign(nn.Softsign):
    """x / (1 + |x|) (Glorot & Bengio 2010, after Bergstra et al. 2009)."""


class PReLU(nn.Module):
    """Parametric ReLU with a learned slope per neuron or per channel (He et al. 2015).

    ``shape`` is the shape of the slope tensor, broadcast against the input without its batch
    dimension: ``(features,)`` for one slope per neuron of a Linear layer, ``(C, 1, 1)`` for one per
    channel of a conv layer, ``(C, H, W)`` for one per neuron of a conv layer, ``()`` for a single
    shared slope.
    """

    def __init__(self, shape: tuple[int, ...] | int = (), init: float = 0.25):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.weight = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, self.weight * x)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class Maxout(nn.Module):
    """Maxout unit: the max over ``k`` affine pieces (Goodfellow et al. 2013).

    A layer rather than an element-wise function, since it owns the ``k`` affine maps:
    ``y_j = max_i (x W_ij + b_ij)``. ``weight`` has shape ``(out_features * k, in_features)``,
    pieces of one unit adjacent, so the usual fan computations and initializers apply to it.
    """

    def __init__(self, in_features: int, out_features: int, k: int = 2, bias: bool = True):
        super().__init__()
        if k < 1:
            raise ValueError(f"maxout k={k!r}: the number of pieces must be >= 1")
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.linear = nn.Linear(in_features, out_features * k, bias=bias)

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x)
        return z.unflatten(-1, (self.out_features, self.k)).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}"


Predicate = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ActivationSpec:
    """What deepscope knows about one activation.

    ``saturated(y)`` and ``dead(y)`` take the activation *output* and return a boolean tensor of the
    same shape (``None`` when the notion does not apply). ``range`` bounds the histograms.
    """

    name: str
    factory: Callable[..., nn.Module]
    init: str
    gain: float
    range: tuple[float, float]
    saturated: Predicate | None = None
    dead: Predicate | None = None
    module_types: tuple[type, ...] = ()
    doc: str = ""


def _leaky_gain(slope: float) -> float:
    return math.sqrt(2.0 / (1.0 + slope**2))


def _is_zero(y: Tensor) -> Tensor:
    return y == 0


ACTIVATIONS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in [
        ActivationSpec(
            "sigmoid", lambda **kw: nn.Sigmoid(), "glorot_uniform", 1.0, (0.0, 1.0),
            saturated=lambda y: (y < 0.01) | (y > 0.99), module_types=(nn.Sigmoid,),
            doc="1 / (1 + exp(-x)); saturated outside [0.01, 0.99]",
        ),
        ActivationSpec(
            "tanh", lambda **kw: nn.Tanh(), "glorot_uniform", 5.0 / 3.0, (-1.0, 1.0),
            saturated=lambda y: y.abs() > 0.99, module_types=(nn.Tanh,),
            doc="tanh(x); saturated where |y| > 0.99",
        ),
        ActivationSpec(
            "softsign", lambda **kw: Softsign(), "glorot_uniform", 1.0, (-1.0, 1.0),
            saturated=lambda y: y.abs() > 0.9, module_types=(nn.Softsign,),
            doc="x / (1 + |x|); saturated where |y| > 0.9 (its tails approach +-1 only polynomially)",
        ),
        ActivationSpec(
            "relu", lambda **kw: nn.ReLU(), "he_normal", math.sqrt(2.0), (-0.5, 3.0),
            dead=_is_zero, module_types=(nn.ReLU,),
            doc="max(0, x); dead where the output is exactly 0",
        ),
        ActivationSpec(
            "leaky_relu",
            lambda slope=0.01, **kw: nn.LeakyReLU(negative_slope=slope),
            "he_normal", _leaky_gain(0.01), (-1.0, 3.0), module_types=(nn.LeakyReLU,),
            doc="max(slope * x, x), slope 0.01 by default; never dead",
        ),
        ActivationSpec(
            "prelu",
            lambda shape=(), init=0.25, **kw: PReLU(shape, init),
            "he_normal", _leaky_gain(0.25), (-1.0, 3.0), module_types=(PReLU, nn.PReLU),
            doc="Leaky ReLU whose slope is learned, per neuron or per channel",
        ),
        ActivationSpec(
            "elu", lambda alpha=1.0, **kw: nn.ELU(alpha=alpha), "he_normal", 1.0, (-1.0, 3.0),
            saturated=lambda y: y < -0.99, module_types=(nn.ELU,),
            doc="x if x > 0 else alpha (exp(x) - 1); saturated near -alpha (y < -0.99 alpha=1)",
        ),
        ActivationSpec(
            "selu", lambda **kw: nn.SELU(), "lecun_normal", 1.0, (-2.0, 3.0),
            saturated=lambda y: y < -0.99 * SELU_ALPHA * SELU_SCALE, module_types=(nn.SELU,),
            doc="scale * elu(x, alpha) with the self-normalizing constants; pair with lecun_normal",
        ),
        ActivationSpec(
            "maxout", lambda **kw: nn.Identity(), "glorot_uniform", 1.0, (-3.0, 3.0),
            module_types=(Maxout,),
            doc="max over k affine pieces: a layer (Maxout), not an element-wise function",
        ),
        ActivationSpec(
            "gelu", lambda **kw: nn.GELU(), "he_normal", math.sqrt(2.0), (-0.5, 3.0),
            module_types=(nn.GELU,), doc="x * Phi(x)",
        ),
        ActivationSpec(
            "silu", lambda **kw: nn.SiLU(), "he_normal", math.sqrt(2.0), (-0.5, 3.0),
            module_types=(nn.SiLU,), doc="x * sigmoid(x) (swish)",
        ),
        ActivationSpec(
            "identity", lambda **kw: nn.Identity(), "glorot_uniform", 1.0, (-3.0, 3.0),
            module_types=(), doc="no non-linearity (linear network)",
        ),
    ]
}


def get_activation(name: str) -> ActivationSpec:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    return lookup(ACTIVATIONS, "activation", name)


def make_activation(name: str, **kwargs) -> nn.Module:
    """Build the element-wise activation module ``name`` (for maxout use :class:`Maxout`)."""
    return get_activation(name).factory(**kwargs)


def spec_for_module(module: nn.Module) -> ActivationSpec | None:
    """The registry entry whose module type ``module`` is, or ``None`` if it is no activation."""
    for spec in ACTIVATIONS.values():
        if spec.module_types and isinstance(module, spec.module_types):
            return spec
    return None

register("activations", ACTIVATIONS)
