"""Which modules of a model the probe watches and what they are called.

Layers are found by module type: every activation module of the registry (and the element-wise
activations of ``torch.nn``), or the modules the user names. Non-linearities computed inside a
``forward`` (``F.relu`` in ``nn.TransformerEncoderLayer``, the gates of ``nn.LSTM``) cannot be
hooked; such modules are reported as *unobservable* and their outputs, and the outputs of the
Linear/Conv layers directly inside them, are recorded as *layer outputs* instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from deepscope.nn.activations import ActivationSpec, Maxout, spec_for_module
from deepscope.probe.functional import functional_nonlinearities

__all__ = [
    "Layer",
    "Weight",
    "custom_activation",
    "find_layers",
    "find_unobservable",
    "find_weights",
    "is_activation",
    "sequential_chains",
]

_WEIGHT_MODULES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_NOT_HIDDEN_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)
_NOT_ELEMENTWISE = (nn.GLU, Maxout)

# torch.nn activations outside the registry (not offered as ``model.activation``) whose flat regions are as plain as
# ReLU's or tanh's, so the probe records their dead or saturated fractions too: ReLU6 (MobileNetV2, Sandler et al.
# 2018) and hard-swish (MobileNetV3, Howard et al. 2019) output 0 with a zero gradient for x <= 0 and x <= -3, a dead
# unit as ReLU's; hardtanh and hard-sigmoid sit on their bounds with a zero gradient, saturated as tanh and sigmoid.
_KIN = {
    nn.ReLU6: ActivationSpec("relu6", nn.ReLU6, "he_normal", 2.0**0.5, (-0.5, 6.5), dead=lambda y: y == 0),
    nn.Hardswish: ActivationSpec("hardswish", nn.Hardswish, "he_normal", 2.0**0.5, (-0.5, 3.0), dead=lambda y: y == 0),
    nn.Hardtanh: ActivationSpec("hardtanh", nn.Hardtanh, "glorot_uniform", 1.0, (-1.0, 1.0),
                                saturated=lambda y: y.abs() >= 1.0),
    nn.Hardsigmoid: ActivationSpec("hardsigmoid", nn.Hardsigmoid, "glorot_uniform", 1.0, (0.0, 1.0),
                                   saturated=lambda y: (y <= 0.0) | (y >= 1.0)),
}


@dataclass
class Layer:
    """One recorded layer: ``kind`` is "activation" (its input is the pre-activation s) or "output".

    ``preact``: dLoss/ds is taken on the module's input (element-wise activations, custom activation modules).
    """

    name: str
    path: str
    module: nn.Module
    kind: str
    spec: ActivationSpec | None = None
    elementwise: bool = False
    preact: bool = False


@dataclass
class Weight:
    """A weight matrix or kernel (a parameter with 2 or more dimensions) and its layer name."""

    name: str
    path: str
    param: nn.Parameter


def is_activation(module: nn.Module) -> tuple[bool, ActivationSpec | None, bool]:
    """``(is a hidden-unit activation module, its registry entry or None, element-wise)``."""
    spec = spec_for_module(module)
    if spec is not None:
        return True, spec, not isinstance(module, _NOT_ELEMENTWISE)
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, _NOT_HIDDEN_ACTIVATIONS):
        kin = _KIN.get(type(module))  # the exact type: ReLU6 is a Hardtanh subclass
        if type(module) is nn.Hardtanh and (module.min_val, module.max_val) != (-1.0, 1.0):
            kin = None  # bounds of one's own: the spec's |y| >= 1 would not be its bounds
        return True, kin, not isinstance(module, _NOT_ELEMENTWISE)
    return False, None, False


def _is_torch(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.")


def custom_activation(m: nn.Module) -> bool:
    """A module of the user's with no submodules whose ``forward`` applies a non-linearity: its output is
    taken as an activation and its input as the pre-activation."""
    if _is_torch(m) or is_activation(m)[0] or any(True for _ in m.children()):
        return False
    return bool(functional_nonlinearities(m))


def find_unobservable(model: nn.Module) -> list[tuple[str, str]]:
    """Modules whose non-linearities run inside ``forward``, as ``(module name, reason)``.

    Known ``torch.nn`` cases are listed by type; for modules defined outside torch the source of
    ``forward`` is read (never run, see :mod:`deepscope.probe.functional`) for calls such as ``F.relu``,
    ``x.clamp(min=0)`` or ``torch.where``. A module without submodules that calls them is no loss: it is
    recorded as an activation layer (:func:`custom_activation`).
    """
    found = []
    for path, m in model.named_modules():
        name = path or "(model)"
        if isinstance(m, nn.RNNBase):
            found.append((name, f"{type(m).__name__} gate non-linearities run inside the fused recurrent kernel"))
        elif isinstance(m, nn.MultiheadAttention):
            found.append((name, "the attention softmax is computed inside forward"))
        elif isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            if not isinstance(m.activation, nn.Module):
                fn = getattr(m.activation, "__name__", repr(m.activation))
                found.append((name, f"activation {fn} is applied functionally inside forward"))
        elif not _is_torch(m) and not is_activation(m)[0]:
            calls = functional_nonlinearities(m)
            if calls is None:
                found.append((name, "the source of forward could not be read to look for functional activations"))
            elif calls and any(True for _ in m.children()):
                found.append((name, f"calls {', '.join(calls)} inside forward"))
    return found


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _block_names(model: nn.Module, paths: list[str], base: dict[str, str]) -> dict[str, str]:
    """Name each path after its block when it is the only one of ``paths`` inside that block.

    A block is the nearest enclosing ``nn.Sequential`` other than the model itself (``hidden1`` for
    ``hidden1.act``); a child named ``act`` is always named after its parent. Collisions keep ``base``.
    """
    modules = dict(model.named_modules())
    sequential = {p for p, m in modules.items() if p and isinstance(m, nn.Sequential)}

    def block(path: str) -> str | None:
        p = _parent(path)
        while p:
            if p in sequential:
                return p
            p = _parent(p)
        return None

    blocks = {path: block(path) for path in paths}
    names = {}
    for path in paths:
        b = blocks[path]
        if path.rpartition(".")[2] == "act" and _parent(path):
            names[path] = _parent(path)
        elif b is not None and sum(1 for q in paths if blocks[q] == b) == 1:
            names[path] = b
        else:
            names[path] = base[path]
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {p: (n if counts[n] == 1 else base[p]) for p, n in names.items()}


def find_layers(
    model: nn.Module, layers: str | Sequence[str] | None, unobservable: list[tuple[str, str]]
) -> list[Layer]:
    """The recorded layers, in module registration order.

    With ``layers=None``: every activation module (:func:`custom_activation` ones included), plus the
    outputs of unobservable modules (except the model itself) and of the Linear/Conv modules directly
    inside them. Otherwise exactly the named modules (``"hidden1.act"``); an unknown name raises
    ``ValueError`` listing the valid ones.
    """
    modules = dict(model.named_modules())
    chosen: list[tuple[str, nn.Module]] = []
    if layers is None:
        hidden = {("" if n == "(model)" else n) for n, _ in unobservable}
        for path, m in modules.items():
            if is_activation(m)[0] or (path not in hidden and custom_activation(m)):
                chosen.append((path, m))
            elif path and path in hidden:
                chosen.append((path, m))
            elif isinstance(m, _WEIGHT_MODULES) and path and _parent(path) in hidden:
                chosen.append((path, m))
    else:
        if isinstance(layers, str):
            layers = [layers]
        for path in layers:
            if path not in modules or not path:
                valid = [p for p in modules if p]
                shown = ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")
                raise ValueError(f"layers: {path!r} is not a module of the model; choose from: {shown}")
            chosen.append((path, modules[path]))
    names = _block_names(model, [p for p, _ in chosen], {p: p for p, _ in chosen})
    out = []
    for path, m in chosen:
        act, spec, elementwise = is_activation(m)
        custom = not act and custom_activation(m)
        kind = "activation" if act or custom else "output"
        out.append(Layer(names[path], path, m, kind, spec, elementwise, preact=elementwise or custom))
    return out


def find_weights(model: nn.Module) -> list[Weight]:
    """Every parameter with 2 or more dimensions, named after its module (``hidden1``, ``output``).

    A Linear/Conv ``weight`` takes its module's name, other matrices ``module.param``
    (``lstm.weight_hh_l0``); block naming as for layers, so an MLP's ``hidden1.linear.weight`` is
    ``hidden1``, the same name as the activations it feeds.
    """
    seen: set[int] = set()
    found: list[tuple[str, str, nn.Parameter]] = []
    for path, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.dim() < 2 or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{path}.{pname}" if path else pname
            base = path if (pname == "weight" and path) else full
            found.append((full, base, p))
    names = _block_names(model, [f for f, _, _ in found], {f: b for f, b, _ in found})
    return [Weight(names[full], full, p) for full, _, p in found]


def sequential_chains(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """Every outermost ``nn.Sequential`` as ``(its name, the flat list of what it applies, in order)``.

    Nested ``nn.Sequential`` children are expanded, so ``model(x)`` for an MLP built of blocks is
    exactly the composition of the listed modules; a module that appears twice (weight tying) is listed
    at both places. Subclasses that override ``forward`` are not chains.
    """

    def plain(m: nn.Module) -> bool:
        return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward

    def expand(seq: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
        out = []
        for name, child in seq._modules.items():  # not named_children(): a module used twice stays twice
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            out += expand(child, path) if plain(child) else [(path, child)]
        return out

    modules = dict(model.named_modules())
    return [
        (path, expand(m, path))
        for path, m in modules.items()
        if plain(m) and not (path and plain(modules[_parent(path)]))
    ]
