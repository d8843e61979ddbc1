"""Module surgery for the fixes of causes (:mod:`deepscope.diagnosis.causes`), on your own ``nn.Module``.

- :func:`swap_any_activation`: replace the hidden activation modules -- a user's own leaf modules (``Exp``, a custom
  gate) and torch activations the registry does not know first -- by one the registry knows, then give each layer
  the init that fits it (He et al. 2015 for ReLU; Glorot & Bengio 2010 for tanh);
- :func:`remove_output_activation`: the activation modules registered after the last layer become ``nn.Identity``
  (the cross-entropy reads logits; Bridle 1990);
- :func:`lower_dropout_module`: every ``nn.Dropout`` of probability >= 0.5 drops 0.1 (Srivastava et al. 2014).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from deepscope.diagnosis.fixes.module import NotApplicable, _is_layer, _replace_modules, reinit_module

__all__ = ["LOW_DROPOUT", "lower_dropout_module", "remove_output_activation", "swap_any_activation", "user_leaf"]

LOW_DROPOUT = 0.1


def user_leaf(m: nn.Module) -> bool:
    """A module of the user's own (not torch's) with no submodules and no parameters: an element-wise function
    such as ``Exp`` or a custom gate, taken as an activation."""
    return (not type(m).__module__.startswith("torch.") and not any(True for _ in m.children())
            and not any(True for _ in m.parameters(recurse=False)))


def _activation_kinds(model) -> tuple[list[type], list[type]]:
    """(hidden activation module types the registry does not know, types it knows) of ``model``."""
    from deepscope.nn.activations import spec_for_module
    from deepscope.probe.hooks import custom_activation, is_activation

    unknown, known = [], []
    for m in model.modules():
        if spec_for_module(m) is not None:
            known.append(type(m))
        elif is_activation(m)[0] or custom_activation(m) or user_leaf(m):
            unknown.append(type(m))
    return list(dict.fromkeys(unknown)), list(dict.fromkeys(known))


def swap_any_activation(new: str) -> Callable[[Any, int], None]:
    """Swap the hidden activation modules the registry does not know (else the one kind it knows, if it is not
    ``new``) for ``new``, then re-initialize each layer with the init that fits the activation after it."""

    def fn(model, seed: int) -> None:
        from deepscope.nn.activations import ACTIVATIONS

        unknown, known = _activation_kinds(model)
        kinds = unknown or [k for k in known if not isinstance(ACTIVATIONS[new].module_types, tuple)
                            or k not in ACTIVATIONS[new].module_types]
        if not unknown and len(kinds) != 1:
            raise NotApplicable(f"no activation module to swap for {new} (the registry's "
                                f"{', '.join(k.__name__ for k in known) or 'none'} are already in place)")
        make = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}[new]
        _replace_modules(model, tuple(kinds), make, ", ".join(k.__name__ for k in kinds))
        reinit_module(model, seed)

    return fn


def remove_output_activation(model, seed: int) -> None:
    """The activation modules registered after the last Linear/Conv become ``nn.Identity``: the logits go out."""
    from deepscope.probe.hooks import custom_activation, is_activation

    order = list(model.modules())
    layers = [i for i, m in enumerate(order) if _is_layer(m)]
    after = {id(m) for m in order[layers[-1] + 1:]} if layers else set()
    removed = 0
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if id(child) in after and (is_activation(child)[0] or custom_activation(child) or user_leaf(child)
                                       or isinstance(child, nn.Softmax | nn.Softmax2d)):
                setattr(parent, name, nn.Identity())
                removed += 1
    if not removed:
        raise NotApplicable("no activation module after the last layer (one applied as a function in forward() "
                            "cannot be removed from outside: return the logits there)")


def lower_dropout_module(model, seed: int) -> None:
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p >= 0.5]
    if not drops:
        raise NotApplicable("no dropout of probability 0.5 or more")
    for m in drops:
        m.p = LOW_DROPOUT
