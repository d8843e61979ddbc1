"""Model builders: a deep MLP and a small convnet, every technique a switch.

Layers are named so that a probe or a diagnosis can refer to them: ``hidden1`` ... ``hidden{depth}``
(or ``conv1`` ...) and ``output``. Each hidden block is itself an ``nn.Sequential``::

    hidden{i}: linear (nn.Linear, or Maxout) -> [norm] -> act -> [norm] -> [dropout]
    conv{i}:   conv (nn.Conv2d, "same" padding) -> [norm] -> act -> [norm] -> pool (2x2 max) -> [dropout]

``norm="batch"`` adds ``BatchNorm1d``/``BatchNorm2d`` (Ioffe & Szegedy 2015) before or after the
activation (``norm_position``); ``dropout`` adds ``nn.Dropout`` (Srivastava et al. 2014). The weights
are initialized by :func:`deepscope.init.apply` (``init=None`` keeps PyTorch's default init).

``activation_kwargs`` go to :func:`~deepscope.nn.activations.make_activation` (e.g. ``{"slope": 0.1}``
for leaky_relu). For prelu they also accept ``per``: ``"neuron"`` (one learned slope per unit, as
Varma & Das, ch. 7 defines PReLU; the mlp default), ``"channel"`` (one per feature map; the convnet default)
or ``"shared"`` (a single slope). In an mlp ``"neuron"`` and ``"channel"`` are the same thing.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from deepscope import init as init_module
from deepscope.nn.activations import Maxout, get_activation, make_activation
from deepscope.registry import integer, unknown

__all__ = ["build_model", "convnet", "mlp"]

NORMS = (None, "batch")
NORM_POSITIONS = ("before", "after")
PRELU_PER = ("neuron", "channel", "shared")


_check_int = integer


def _check_switches(norm, norm_position, dropout) -> None:
    if norm not in NORMS:
        raise unknown("norm", norm, ["None", "'batch'"])
    if norm_position not in NORM_POSITIONS:
        raise unknown("norm_position", norm_position, ["before", "after"])
    if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: must be a probability in [0, 1)")


def _activation(name: str, kwargs: dict | None, neuron_shape: tuple[int, ...], channel_shape: tuple[int, ...],
                default_per: str) -> nn.Module:
    """Build one activation module, checking ``kwargs`` against its factory's parameters."""
    spec = get_activation(name)
    kwargs = dict(kwargs or {})
    params = [
        p.name for p in inspect.signature(spec.factory).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if name == "prelu":
        per = kwargs.pop("per", default_per)
        if per not in PRELU_PER:
            raise unknown("activation_kwargs per", per, PRELU_PER)
        if "shape" not in kwargs:
            kwargs["shape"] = {"neuron": neuron_shape, "channel": channel_shape, "shared": ()}[per]
        params.append("per")
    if bad := [k for k in kwargs if k not in params]:
        raise ValueError(
            f"activation {name!r} does not take {', '.join(map(repr, bad))}; "
            f"its parameters are: {', '.join(params) or '(none)'}"
        )
    return make_activation(name, **kwargs)


def _block(layer_name: str, layer: nn.Module, norm: nn.Module | None, act: nn.Module | None, norm_position: str,
           tail: list[tuple[str, nn.Module]]) -> nn.Sequential:
    children: list[tuple[str, nn.Module]] = [(layer_name, layer)]
    if norm is not None and (norm_position == "before" or act is None):
        children.append(("norm", norm))
    if act is not None:
        children.append(("act", act))
    if norm is not None and norm_position == "after" and act is not None:
        children.append(("norm", norm))
    return nn.Sequential(OrderedDict(children + tail))


def _initialize(model: nn.Module, init: str | None, init_kwargs: dict | None) -> nn.Module:
    if init is not None:
        init_module.apply(model, init, **(init_kwargs or {}))
    return model


def mlp(
    in_features: int | tuple[int, ...],
    out_features: int,
    depth: int,
    width: int,
    activation: str = "tanh",
    init: str | None = "glorot_uniform",
    norm: str | None = None,
    norm_position: str = "before",
    dropout: float = 0.0,
    *,
    activation_kwargs: dict | None = None,
    init_kwargs: dict | None = None,
    maxout_k: int = 2,
) -> nn.Sequential:
    """A fully connected network of ``depth`` hidden layers of ``width`` units (Glorot & Bengio 2010, sec. 2.3).

    Children: ``flatten``, ``hidden1`` ... ``hidden{depth}``, ``output`` (``nn.Linear``, logits).
    ``in_features`` may be an input shape such as ``(1, 32, 32)``; the input is flattened.
    ``activation="maxout"`` makes each hidden ``linear`` a :class:`Maxout` of ``maxout_k`` pieces with
    no ``act`` child (the max is the activation; a ``norm`` then follows the Maxout whatever
    ``norm_position`` says). ``init="lsuv"`` needs ``init_kwargs={"x": batch}``.
    """
    if not isinstance(in_features, int):
        in_features = math.prod(in_features)
    for key, value in [("in_features", in_features), ("out_features", out_features), ("depth", depth),
                       ("width", width), ("maxout_k", maxout_k)]:
        _check_int(key, value)
    _check_switches(norm, norm_position, dropout)
    get_activation(activation)

    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    fan_in = in_features
    for i in range(1, depth + 1):
        if activation == "maxout":
            linear, act = Maxout(fan_in, width, maxout_k), None
        else:
            linear = nn.Linear(fan_in, width)
            act = _activation(activation, activation_kwargs, (width,), (width,), default_per="neuron")
        bn = nn.BatchNorm1d(width) if norm == "batch" else None
        tail = [("dropout", nn.Dropout(dropout))] if dropout > 0 else []
        layers.append((f"hidden{i}", _block("linear", linear, bn, act, norm_position, tail)))
        fan_in = width
    layers.append(("output", nn.Linear(fan_in, out_features)))
    return _initialize(nn.Sequential(OrderedDict(layers)), init, init_kwargs)


def convnet(
    in_channels: int,
    num_classes: int,
    image_size: int | tuple[int, int],
    channels: tuple[int, ...] = (16, 32),
    kernel_size: int = 3,
    activation: str = "relu",
    init: str | None = "he_normal",
    norm: str | None = None,
    norm_position: str = "before",
    dropout: float = 0.0,
    *,
    activation_kwargs: dict | None = None,
    init_kwargs: dict | None = None,
) -> nn.Sequential:
    """A small convnet: ``len(channels)`` conv blocks, each halving the image, then a linear head.

    Children: ``conv1`` ... ``conv{len(channels)}`` (each ``conv``, [``norm``], ``act``, ``pool``,
    [``dropout``]), ``flatten``, ``output`` (``nn.Linear`` to ``num_classes`` logits). ``image_size`` is
    ``H`` or ``(H, W)`` and must survive ``len(channels)`` halvings. Maxout is not available here.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    for key, value in [("in_channels", in_channels), ("num_classes", num_classes), ("image_size", h),
                       ("image_size", w), ("kernel_size", kernel_size)]:
        _check_int(key, value)
    channels = tuple(channels)
    if not channels:
        raise ValueError("channels=(): a convnet needs at least one conv block")
    for c in channels:
        _check_int("channels", c)
    if min(h, w) < 2 ** len(channels):
        raise ValueError(
            f"image_size={image_size!r} is too small for {len(channels)} conv blocks that each halve it "
            f"(needs >= {2 ** len(channels)})"
        )
    _check_switches(norm, norm_position, dropout)
    get_activation(activation)
    if activation == "maxout":
        raise ValueError("activation='maxout' is available in mlp only (Maxout is a fully connected layer)")

    layers: list[tuple[str, nn.Module]] = []
    c_in = in_channels
    for i, c in enumerate(channels, start=1):
        conv = nn.Conv2d(c_in, c, kernel_size, padding="same")
        act = _activation(activation, activation_kwargs, (c, h, w), (c, 1, 1), default_per="channel")
        bn = nn.BatchNorm2d(c) if norm == "batch" else None
        tail = [("pool", nn.MaxPool2d(2))] + ([("dropout", nn.Dropout(dropout))] if dropout > 0 else [])
        layers.append((f"conv{i}", _block("conv", conv, bn, act, norm_position, tail)))
        c_in, h, w = c, h // 2, w // 2
    layers += [("flatten", nn.Flatten()), ("output", nn.Linear(c_in * h * w, num_classes))]
    return _initialize(nn.Sequential(OrderedDict(layers)), init, init_kwargs)


def build_model(spec, input_shape: Sequence[int], num_classes: int, *, x=None, initialize: bool = True) -> nn.Module:
    """The network of a run spec's ``[model]``, initialized by its ``[init]`` (LSUV calibrates on the batch ``x``)."""
    m, init_kwargs = spec.model, spec.init.params
    init = spec.init.scheme if initialize else None
    if init == "lsuv":
        init_kwargs = {**init_kwargs, "x": x}
    common = dict(activation=m.activation, init=init, norm=m.norm, norm_position=m.norm_position, dropout=m.dropout,
                  activation_kwargs=m.activation_kwargs, init_kwargs=init_kwargs)
    if m.builder == "mlp":
        return mlp(tuple(input_shape), num_classes, m.depth, m.width, maxout_k=m.maxout_k, **common)
    c, *hw = input_shape
    return convnet(c, num_classes, tuple(hw), tuple(m.channels), m.kernel_size, **common)

