"""Module surgery: the module-level fixes of :mod:`deepscope.diagnosis.fixes`, on your own ``nn.Module``.

Each changes the module in place (or returns a module wrapping it) where that is safe, and raises
:class:`NotApplicable` with the reason where it is not: activation modules swapped (every use of a shared
instance; the output's squashing left alone), ``BatchNorm`` inserted after each hidden Linear/Conv of an
``nn.Sequential``, re-initialization by formula (He et al. 2015; Glorot & Bengio 2010), frozen parameters
layers kept in Python lists registered, batch-norm momentum restored, squashed outputs read back as logits
(train mode and frozen parameters: :mod:`deepscope.diagnosis.fixes.modes`). The output layer is the last Linear/Conv
registered, as ``deepscope.init.apply(model, "auto")`` takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["BN_MOMENTUM", "AsLogits", "NotApplicable", "as_logits_module", "batch_norm_module",
           "bn_momentum_module", "register_module", "reinit_module", "swap_module"]

BN_MOMENTUM = 0.1  # torch's default running-statistics momentum


class NotApplicable(Exception):  # noqa: N818 -- a reason, not a failure
    """A fix that does not apply to this run; the message says why."""


def _replace_modules(model, kinds: tuple[type, ...], make: Callable[[], Any], what: str) -> list[str]:
    """Replace every hidden submodule of the types ``kinds`` by ``make()`` (an instance used at several places
    stays one instance); the names replaced. An activation after the last Linear/Conv (in registration order,
    as :func:`deepscope.init.apply` reads it) squashes the output and is left alone."""
    order = list(model.modules())
    layers = [i for i, m in enumerate(order) if _is_layer(m)]
    output = {id(m) for m in order[layers[-1] + 1:]} if layers else set()
    new: dict[int, Any] = {}
    names = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):  # named_children() would skip a repeated instance
            if isinstance(child, kinds) and id(child) not in output:
                setattr(parent, name, new.setdefault(id(child), make()))
                names.append(f"{parent_name}.{name}" if parent_name else name)
    if not names:
        raise NotApplicable(f"no hidden {what} module to swap (an activation called as a function in forward() "
                            "cannot be replaced from outside; one after the output layer is left as it is)")
    return names


def _is_layer(module) -> bool:
    from deepscope.init import LAYER_TYPES

    return isinstance(module, LAYER_TYPES)


def swap_module(old: str, new: str) -> Callable[[Any, int], None]:
    """Swap the activation modules, then give each layer the init that fits the activation after it."""

    def fn(model, seed: int) -> None:
        from torch import nn

        from deepscope.nn.activations import ACTIVATIONS

        make = {"tanh": nn.Tanh, "softsign": nn.Softsign, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU}[new]
        kinds = ACTIVATIONS[old].module_types
        _replace_modules(model, kinds, make, f"{old} ({kinds[0].__name__})")
        reinit_module(model, seed)

    return fn


def reinit_module(model, seed: int) -> None:
    """Each Linear/Conv gets the init of the activation module after it (``init.apply(model, "auto")``). A module
    that applies its activations as functions in ``forward()`` (``torch.relu(x)``), all with one init, gets that
    init on every layer but the last registered (taken for the output layer, as ``"auto"`` does), which gets
    the init of no activation."""
    import torch

    from deepscope import init
    from deepscope.nn.activations import ACTIVATIONS, spec_for_module

    layers = [m for _, m in _layers(model)]
    if not layers:
        raise NotApplicable("the module has no Linear/Conv layer to re-initialize")
    generator = torch.Generator().manual_seed(seed)
    if any(spec_for_module(m) is not None for m in model.modules()):
        init.apply(model, "auto", generator=generator)
        return
    scheme = _functional_init(model)
    for i, layer in enumerate(layers):
        init.apply(layer, scheme if i < len(layers) - 1 else ACTIVATIONS["identity"].init, generator=generator)


def _functional_init(model) -> str:
    """The init scheme of the activations of the registry that ``model``'s forward() methods call as functions
    (read from their source, see :mod:`deepscope.probe.functional`); NotApplicable when there is none, or when
    they call for different inits."""
    from deepscope.nn.activations import ACTIVATIONS
    from deepscope.probe.functional import functional_nonlinearities

    calls = [functional_nonlinearities(m) for m in model.modules()]
    found = {name.rstrip("_") for names in calls for name in names or ()}
    if not found and None not in calls:  # every forward() read, and none applies a non-linearity: a linear net
        return ACTIVATIONS["identity"].init
    kinds = sorted(found & (ACTIVATIONS.keys() - {"identity"}))
    schemes = {ACTIVATIONS[k].init for k in kinds}
    if len(schemes) == 1:
        return schemes.pop()
    if kinds:
        raise NotApplicable(f"the module calls activations with different inits as functions in forward() "
                            f"({', '.join(kinds)}): the init that fits each layer cannot be told")
    raise NotApplicable("the module has no activation modules, nor an activation function called in forward() "
                        "that deepscope knows: the init that fits cannot be told")


def _layers(model) -> list[tuple[str, Any]]:
    from deepscope.init import LAYER_TYPES

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def batch_norm_module(model, seed: int) -> None:
    """Insert BatchNorm1d/2d/3d after each hidden Linear/Conv that is a child of an ``nn.Sequential``.

    The output layer (the last Linear/Conv) gets none, nor does a layer already followed by a batch norm.
    A layer called from a custom ``forward()`` is out of reach: without any layer in an ``nn.Sequential``
    the fix does not apply.
    """
    from collections import OrderedDict

    from torch import nn

    from deepscope.probe.functional import indexed_children

    norms = {nn.Linear: nn.BatchNorm1d, nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d,
             nn.Conv3d: nn.BatchNorm3d}
    layers = _layers(model)
    output = layers[-1][1] if layers else None
    for owner in model.modules():  # self.net[1](x) would call another module once layers are inserted
        for name in indexed_children(owner) or ():
            if isinstance(owner._modules[name], nn.Sequential):
                raise NotApplicable(f"{type(owner).__name__}.forward() indexes its nn.Sequential {name!r} "
                                    f"(self.{name}[...]): inserted batch norms would shift the positions it calls")
    inserted = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        items, children = list(seq._modules.items()), []
        for i, (name, child) in enumerate(items):
            children.append((name, child))
            after = items[i + 1][1] if i + 1 < len(items) else None
            if type(child) in norms and child is not output and not isinstance(after, nn.modules.batchnorm._BatchNorm):
                size = child.out_features if isinstance(child, nn.Linear) else child.out_channels
                children.append((f"{name}_bn", norms[type(child)](size)))
                inserted += 1
        if len(children) > len(items):
            seq._modules = OrderedDict(children)
    if not inserted:
        raise NotApplicable("no hidden Linear/Conv layer is a child of an nn.Sequential (layers called from a "
                            "custom forward() cannot safely get a batch norm)")


def register_module(model, seed: int) -> None:
    """Layers kept in a plain Python list or dict attribute become an ``nn.ModuleList`` / ``nn.ModuleDict``: the
    same objects in the same order, now registered, so ``parameters()`` and the optimizer see them."""
    found = []
    for owner_name, owner in list(model.named_modules()):
        for name, value in list(vars(owner).items()):
            if name.startswith("_"):  # torch's own registries (_modules, _parameters, ...)
                continue
            if isinstance(value, list | tuple) and value and all(isinstance(v, nn.Module) for v in value):
                wrapped = nn.ModuleList(value)
            elif isinstance(value, dict) and value and all(isinstance(v, nn.Module) and isinstance(k, str)
                                                           for k, v in value.items()):
                wrapped = nn.ModuleDict(value)
            else:
                continue
            del vars(owner)[name]
            setattr(owner, name, wrapped)
            found.append(f"{owner_name}.{name}".lstrip("."))
    if not found:
        raise NotApplicable("no layers kept in a Python list or dict attribute")


def bn_momentum_module(model, seed: int) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum == 0]
    if not norms:
        raise NotApplicable("no batch norm with running-statistics momentum 0")
    for m in norms:
        m.momentum = BN_MOMENTUM


class AsLogits(nn.Module):
    """Wraps a module whose output is squashed (softmax, sigmoid or tanh) and reads it back as logits.

    The kind is read from the first output: rows >= 0 that sum to 1 are probabilities -> ``log p`` (then
    cross-entropy's log-softmax of ``log p`` is ``log p`` itself: the loss of the unsquashed logits); values in
    [0, 1] -> ``logit p``; in [-1, 1] -> ``atanh y``; anything else passes unchanged.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.kind = module, None

    def forward(self, *args, **kwargs):
        import torch

        y = self.module(*args, **kwargs)
        if self.kind is None:
            d = y.detach()
            if d.min() >= -1e-4 and torch.allclose(d.sum(-1), torch.ones(()), atol=1e-3):
                self.kind = "log"
            else:
                self.kind = "logit" if d.min() >= 0 and d.max() <= 1 else "atanh" if d.abs().max() <= 1 else "none"
        if self.kind == "log":
            return y.clamp_min(1e-12).log()
        if self.kind == "logit":
            return torch.logit(y, eps=1e-6)
        return torch.atanh(y.clamp(-1 + 1e-6, 1 - 1e-6)) if self.kind == "atanh" else y


def as_logits_module(model, seed: int) -> AsLogits:
    return AsLogits(model)
