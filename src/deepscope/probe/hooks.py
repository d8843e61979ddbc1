"""The hooks the probe attaches while a record is taken, and the state one record collects.

Every hook is a plain function of a :class:`Capture` (what the record being taken has collected so
far) and a *token*: the capture's token changes whenever a record ends, so a hook left on a live
autograd graph (a tensor hook) becomes a no-op instead of writing into the next record. The probe owns
the handles (:class:`Hooks`) and removes them all when the record ends, whatever happened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from deepscope.nn.activations import Maxout
from deepscope.probe.compat import VMAP, first_tensor, in_backward, in_vmap
from deepscope.probe.functional import Watcher
from deepscope.probe.layers import (  # re-exported: the names this module held before the split
    Layer,
    Weight,
    custom_activation,
    find_layers,
    find_unobservable,
    find_weights,
    is_activation,
    sequential_chains,
)
from deepscope.probe.sinks import Entry
from deepscope.probe.stats import (
    GRADIENT_STATS,
    WEIGHT_GRADIENT_STATS,
    activation_stat_names,
    activation_stats,
    gradient_stats,
    update_ratio,
    weight_gradient_stats,
)

__all__ = [
    "Capture",
    "Hooks",
    "Layer",
    "Weight",
    "attach_layer_hooks",
    "custom_activation",
    "find_layers",
    "find_unobservable",
    "find_weights",
    "is_activation",
    "optimizer_hook",
    "root_hook",
    "sequential_chains",
    "start_watching",
    "train_entries",
    "weight_hook",
]


@dataclass
class Hooks:
    """Hook handles owned by the probe; :meth:`remove` detaches them all, whatever happened."""

    handles: list[RemovableHandle] = field(default_factory=list)

    def add(self, handle: RemovableHandle) -> None:
        self.handles.append(handle)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


@dataclass
class Capture:
    """What one record collects while its hooks run.

    ``source`` is ``"train"`` or ``"monitor"`` (None between records); ``pending`` the statistics taken so
    far (their reductions over every value done, the percentiles and histograms of the subsamples deferred:
    :data:`~deepscope.probe.stats.Finish`); ``calls`` how often each module ran in this forward pass
    (``name@k``); the rest serves the training step (``forwards``, ``root_inputs``: which forward is the
    first micro-batch; ``trainable``; ``grad_refs`` / ``weight_grads``: weight gradients) or the monitor
    pass (``grad_inputs``: what the backward pass differentiates to; ``input``: its leaf copy of the input;
    ``jacobian_inputs``); ``replay`` is set while the training step of a compiled model is replayed
    (:mod:`deepscope.probe.replay`).
    """

    bins: int
    jacobian_examples: int
    map_sources: set[str]
    token: int = 0
    source: str | None = None
    pending: list[Entry] = field(default_factory=list)
    calls: dict[int, int] = field(default_factory=dict)
    forwards: int = 0
    root_inputs: set[int] = field(default_factory=set)
    trainable: bool = True
    grad_refs: dict[str, Tensor] = field(default_factory=dict)
    weight_grads: dict[str, Tensor] = field(default_factory=dict)
    grad_inputs: list[Tensor] = field(default_factory=list)
    input: Tensor | None = None
    jacobian_inputs: dict[str, Tensor] = field(default_factory=dict)
    want_jacobians: bool = False
    watcher: Watcher | None = None
    replay: bool = False
    compiled: Any = None  # a CompiledStats for a torch.compile'd model (deepscope.probe.compiled)
    batch: Any = None  # the compiled statistics' Batch of the record being taken
    unavailable: dict[str, str] = field(default_factory=dict)  # the probe's: what a hook could not take, and why

    def start(self, source: str | None) -> int:
        """Begin a record from ``source`` (None: end it): a fresh token and empty buffers."""
        self.token += 1
        self.source, self.pending, self.calls, self.forwards = source, [], {}, 0
        self.root_inputs, self.grad_refs, self.weight_grads = set(), {}, {}
        self.grad_inputs, self.input, self.jacobian_inputs = [], None, {}
        self.batch = None if source is None or self.compiled is None else self.compiled.batch()
        return self.token

    def capturing(self, token: int) -> bool:
        """Record this call? Not on a stale token, not in a re-computation during backward (gradient
        checkpointing), and in training only the first forward with gradients after arming (the first
        micro-batch when gradients are accumulated over several)."""
        if token != self.token or in_backward():
            return False
        if in_vmap():  # torch.func.vmap (per-example gradients): its tensors cannot leave it
            self.unavailable[f"{self.source} activations and dLoss/ds"] = VMAP
            return False
        return self.source == "monitor" or (torch.is_grad_enabled() and self.forwards <= 1)

    def quiet(self) -> contextlib.AbstractContextManager:
        """The probe's own computations are not the model's: hidden from the :class:`Watcher`."""
        return self.watcher.quiet() if self.watcher is not None else contextlib.nullcontext()


def _name(layer: Layer, call: int) -> str:
    return layer.name if call == 1 else f"{layer.name}@{call}"


def attach_layer_hooks(layers: list[Layer], cap: Capture, hooks: Hooks) -> None:
    """Hooks on every recorded layer: activations on its output, dLoss/ds on its input (pre-activation)."""
    for layer in layers:
        m = layer.module
        if layer.kind == "activation" and layer.preact:
            hooks.add(m.register_forward_pre_hook(_preact_hook(cap, layer, cap.token)))
        elif isinstance(m, Maxout):  # its pre-activations are the k affine pieces
            hooks.add(m.linear.register_forward_hook(_maxout_hook(cap, layer, cap.token)))
        hooks.add(m.register_forward_hook(_output_hook(cap, layer, cap.token)))


def root_hook(cap: Capture) -> Callable:
    """On the model itself: counts the forward passes with gradients and keeps the first one's inputs."""
    token = cap.token

    def hook(module: nn.Module, args: tuple) -> None:
        if token == cap.token and torch.is_grad_enabled() and not in_backward():
            cap.forwards += 1
            if cap.forwards == 1:
                cap.root_inputs = {id(a) for a in args if isinstance(a, Tensor)}

    return hook


def watch_grad(cap: Capture, s: Any, name: str, token: int) -> None:
    """Record dLoss/ds when the backward pass reaches the pre-activations ``s``."""
    if not (isinstance(s, Tensor) and s.requires_grad) or s is cap.input:
        return
    source, bins, batch = cap.source, cap.bins, cap.batch

    def hook(g: Tensor) -> None:
        if token == cap.token and g.numel():  # an empty batch has no statistics
            stats = gradient_stats(g, bins, defer=True) if batch is None else batch.add("preact_grad", g, None)
            cap.pending.append((name, "preact_grad", GRADIENT_STATS, stats, True))

    s.register_hook(hook)
    if source == "monitor" or cap.replay:
        cap.grad_inputs.append(s)


def _preact_hook(cap: Capture, layer: Layer, token: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if not (cap.capturing(token) and args):
            return None
        s, new = args[0], None
        if (
            cap.source == "train" and isinstance(s, Tensor) and s.is_floating_point() and not s.requires_grad
            and id(s) not in cap.root_inputs and cap.trainable
        ):
            # after frozen layers only: no gradient would reach s, though dLoss/ds exists; a leaf
            # copy of s that requires it lets the backward pass through (parameters get the same
            # gradients); the clone keeps in-place activations off the leaf
            s = new = s.detach().requires_grad_(True).clone()
        watch_grad(cap, s, _name(layer, cap.calls.get(id(module), 0) + 1), token)
        return None if new is None else (new, *args[1:])

    return hook


def _maxout_hook(cap: Capture, layer: Layer, token: int) -> Callable:
    def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
        if cap.capturing(token):
            watch_grad(cap, out, _name(layer, cap.calls.get(id(layer.module), 0) + 1), token)

    return hook


def _output_hook(cap: Capture, layer: Layer, token: int) -> Callable:
    spec = layer.spec if layer.kind == "activation" else None
    names = activation_stat_names(spec)

    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        if not cap.capturing(token):
            return
        call = cap.calls[id(module)] = cap.calls.get(id(module), 0) + 1
        z = first_tensor(out)
        if z is None or z.dim() == 0 or not z.is_floating_point() or z.numel() == 0:
            return  # an empty batch has no statistics
        with torch.no_grad(), cap.quiet():
            if cap.batch is None:
                stats = activation_stats(z, spec, cap.bins, defer=True)
            else:  # a compiled model: computed with the record's other layers by a compiled function
                stats = cap.batch.add("activation", z, spec)
        cap.pending.append((_name(layer, call), "activation", names, stats, True))
        if cap.source == "monitor" and cap.want_jacobians and call == 1 and layer.name in cap.map_sources:
            cap.jacobian_inputs[layer.name] = z.detach()[: cap.jacobian_examples].clone()

    return hook


def weight_hook(cap: Capture, name: str) -> Callable:
    """Keep the gradient the backward pass accumulated, in case no optimizer steps (a hand-written update)."""
    token = cap.token

    def hook(p: Tensor) -> None:
        if token == cap.token and p.grad is not None:
            cap.grad_refs[name] = p.grad

    return hook


def optimizer_hook(cap: Capture, weights: list[Weight]) -> RemovableHandle:
    """Weight gradients as the optimizer reads them: after the backward pass of every micro-batch,
    DDP's all-reduce, gradient clipping and ``GradScaler`` unscaling (a hook on every ``torch.optim``
    optimizer)."""
    token = cap.token

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if token != cap.token:
            return
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            for w in weights:
                if id(w.param) in stepped and w.param.grad is not None and w.name not in cap.weight_grads:
                    cap.weight_grads[w.name] = weight_gradient_stats(w.param.grad, cap.bins, defer=True)

    return register_optimizer_step_pre_hook(hook)


def start_watching(
    cap: Capture, model: nn.Module, layers: list[Layer], report: Callable[[list], None], hooks: Hooks
) -> None:
    """Watch the next forward pass of ``model`` for non-linearities the source did not show (:class:`Watcher`):
    ``report`` gets ``(module, reason)`` pairs; the recorded activation modules are not reported."""
    token = cap.token
    cap.watcher = Watcher()
    skip = {id(layer.module) for layer in layers if layer.kind == "activation"}
    for handle in cap.watcher.watch(model, skip, lambda: token == cap.token, report):
        hooks.add(handle)


def train_entries(cap: Capture, weights: list[Weight], snapshot: list[Tensor]) -> list[Entry]:
    """The training step's record: what the hooks took, the weight gradients (as the optimizer read them, or
    without an optimizer step as the backward pass left them) and the update ratios against ``snapshot``."""
    entries = cap.pending
    with torch.no_grad():
        for name, grad in cap.grad_refs.items():
            if name not in cap.weight_grads:
                cap.weight_grads[name] = weight_gradient_stats(grad, cap.bins, defer=True)
        for w in weights:
            if w.name in cap.weight_grads:
                entries.append((w.name, "weight_grad", WEIGHT_GRADIENT_STATS, cap.weight_grads[w.name], True))
        for w, before in zip(weights, snapshot, strict=True):
            entries.append((w.name, "update_ratio", ("ratio",), update_ratio(before, w.param), False))
    return entries
