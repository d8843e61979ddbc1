"""The fixes of a model that does not train in train mode, or whose parameters are frozen.

- ``train_mode`` (:func:`train_mode_module`): a module left in eval mode while it trains -- batch normalization
  (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
  Shift", sec. 3.1: the mini-batch's statistics in training, the population's at inference) then normalizes with its
  running statistics and never updates them, and dropout (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent
  Neural Networks from Overfitting", sec. 4) drops nothing. The mode can be lost in several ways, and the wrapper
  :class:`TrainMode` reaches each: a ``train()`` override (of the model or of a layer) that keeps layers in eval mode
  -- ``TrainMode.train(mode)`` sets every submodule's ``training`` itself; a ``forward`` or a hook that calls
  ``.eval()`` / ``.train(False)`` on a layer or sets ``.training = False`` -- a forward pre-hook on every submodule
  sets its mode back to the wrapper's right before it runs.
- ``unfreeze`` (:func:`unfreeze_module`): parameters with ``requires_grad=False``; the trainer builds its optimizer
  from ``model.parameters()``, so the unfrozen ones are in it.
"""

from __future__ import annotations

import inspect
import re

from torch import nn

from deepscope.diagnosis.fixes.module import NotApplicable

__all__ = ["TrainMode", "changes_modes", "train_mode_module", "unfreeze_module"]

# what in forward() or a hook changes a mode: .eval(), .train(...), an assignment to .training
_MODE_CHANGE = re.compile(r"\.eval\s*\(|\.train\s*\(|\.training\s*=(?!=)")


class _Mode:
    """The mode the wrapped module must be in (shared by the hooks of one :class:`TrainMode`)."""

    def __init__(self, training: bool = True):
        self.training = training

    def __call__(self, module: nn.Module, args) -> None:  # a forward pre-hook
        module.training = self.training


class TrainMode(nn.Module):
    """Wraps a module that leaves layers in eval mode while it trains: ``train(mode)`` sets every submodule's mode,
    and a forward pre-hook on every submodule sets its mode to the wrapper's again right before it runs (after
    whatever ``forward`` or a hook of yours did to it). So batch norm uses batch statistics and updates its
    running ones, and dropout drops, while training; ``eval()`` puts everything in eval mode as usual."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.mode = _Mode(module.training)
        for m in module.modules():
            m.register_forward_pre_hook(self.mode)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> TrainMode:
        super().train(mode)
        self.mode.training = mode
        for m in self.module.modules():
            m.training = mode
        return self


def changes_modes(model: nn.Module) -> list[str]:
    """Where ``model`` may leave a layer in eval mode while training: the modules whose class overrides ``train()``,
    the submodules still in eval mode after ``train()`` (every mode restored afterwards), and the modules whose
    ``forward`` or forward hooks (their source, where Python has it) call ``.eval()`` / ``.train(...)`` or assign
    ``.training``."""
    found = [f"{n or 'model'}: {type(m).__name__}.train() is overridden" for n, m in model.named_modules()
             if type(m).train is not nn.Module.train and not isinstance(m, TrainMode)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        found += [f"{n or 'model'}: in eval mode after train()" for n, m in model.named_modules() if not m.training]
    finally:
        for m, mode in modes:
            m.training = mode
    for n, m in model.named_modules():
        own = [] if type(m).__module__.startswith("torch.") else [type(m).forward]  # torch's layers change no mode
        for fn in [*own, *m._forward_pre_hooks.values(), *m._forward_hooks.values()]:
            if isinstance(fn, _Mode):
                continue
            try:
                source = inspect.getsource(fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn))
            except (OSError, TypeError):
                continue
            if _MODE_CHANGE.search(source):
                found.append(f"{n or 'model'}: {getattr(fn, '__qualname__', type(fn).__name__)} changes a mode")
    return list(dict.fromkeys(found))


def train_mode_module(model: nn.Module, seed: int) -> TrainMode:
    """``model`` wrapped in :class:`TrainMode`, when something in it may keep layers in eval (:func:`changes_modes`)."""
    if not changes_modes(model):
        raise NotApplicable("no module overrides train() or changes a mode in forward() or a hook: its mode is the "
                            "trainer's")
    return TrainMode(model)


def unfreeze_module(model: nn.Module, seed: int) -> None:
    """``requires_grad=True`` on every parameter of ``model`` that has ``requires_grad=False``.

    Parameters that require a gradient but get none (used under ``torch.no_grad``, or through ``.detach()`` /
    ``.data`` in ``forward``) cannot be reached from outside the code: the reason says so."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if not frozen:
        raise NotApplicable("every parameter already trains (requires_grad=True; a layer whose weights do not move "
                            "while it requires a gradient is cut from the loss in forward(): .detach(), .data or "
                            "torch.no_grad there must be changed in your code)")
    for p in frozen:
        p.requires_grad_(True)
