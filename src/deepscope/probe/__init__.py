"""The Probe: Glorot & Bengio's (2010) instruments, recorded inside any PyTorch training loop.

```python
with Probe(model, every=100, monitor=(x_fixed, y_fixed)) as probe:
    for x, y in batches:
        loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
        probe.step()
rows = probe.to_rows(quantity="activation", stat="std")
```

Hooks exist only while a record is being taken (the step whose index is a multiple of ``every``
and the probe's own pass over the monitor set), so the other steps run the bare model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.nn.activations import Maxout
from deepscope.probe.hooks import Hooks, Layer, Weight, find_layers, find_unobservable, find_weights
from deepscope.probe.jacobian import JACOBIAN_METHODS, plan_jacobians
from deepscope.probe.sinks import StoreSink, TensorBoardSink, filter_rows, to_columns
from deepscope.probe.stats import (
    GRADIENT_STATS,
    WEIGHT_GRADIENT_STATS,
    activation_stat_names,
    activation_stats,
    gradient_stats,
    update_ratio,
    weight_gradient_stats,
    weight_sample,
)
from deepscope.registry import integer

__all__ = ["Probe", "StoreSink", "TensorBoardSink", "check_options"]

_Entry = tuple[str, str, tuple[str, ...], Tensor, bool]  # layer, quantity, stat names, values, has histogram


def _first_tensor(out: Any) -> Tensor | None:
    """The tensor a module produced: itself, the first of a tuple (LSTM, attention), a packed sequence's data."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return out.data
    if isinstance(out, tuple | list) and out:
        return _first_tensor(out[0])
    return None


def _default_loss(output: Any, y: Tensor) -> Tensor:
    return F.cross_entropy(_first_tensor(output), y)


_positive_int = integer


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
    _positive_int("every", every)
    _positive_int("bins", bins)
    _positive_int("jacobian_examples", jacobian_examples, minimum=0)
    _positive_int("start_step", start_step, minimum=0)
    if jacobian_every is not None and _positive_int("jacobian_every", jacobian_every) % every != 0:
        raise ValueError(f"jacobian_every={jacobian_every!r} is not allowed; give a multiple of every={every}")
    if jacobian_method not in JACOBIAN_METHODS:
        raise ValueError(
            f"jacobian_method={jacobian_method!r} is not known; choose one of: {', '.join(JACOBIAN_METHODS)}"
        )


class Probe:
    """Records per-layer statistics of ``model`` every ``every`` training steps.

    Args:
        model: any ``nn.Module``; left exactly as found (hooks, modes, parameters, gradients).
        every: record the training step whose index is a multiple of ``every``; call
            :meth:`step` once after each optimizer step.
        monitor: a fixed set ``x`` or ``(x, y)`` (the paper used 300 test examples). At each record
            the probe runs its own pass on it in eval mode, without touching parameters, ``.grad``,
            optimizer or RNG state. With ``x`` alone only activations and Jacobians are recorded;
            back-propagated gradients need ``y``.
        loss_fn: ``loss_fn(output, y) -> scalar`` for the monitor pass; cross-entropy by default.
        layers: module names to record (``["hidden1.act", ...]``) instead of the discovered ones.
        bins: histogram bins.
        sinks: objects with ``write(stats_rows, histogram_rows)`` (:class:`StoreSink`,
            :class:`TensorBoardSink`), called once per record.
        jacobian_examples: monitor examples for the Jacobian singular values (0: none).
        jacobian_every: also compute them at steps that are multiples of this (a multiple of
            ``every``); by default only at the first record, the initialization.
        jacobian_method: ``"exact"`` (explicit Jacobians and their SVD: ``sv_mean, sv_min, sv_max``),
            ``"lanczos"`` (stochastic Lanczos quadrature from Jacobian-vector products: ``sv_mean,
            sv_max``, about 2 % off; about one plain step for the four layer maps of a 5 x 1000 MLP) or ``"auto"``
            (exact for layers of at most 128 units; see :mod:`deepscope.probe.jacobian`).
        start_step: the number of updates already done (when resuming).
        keep: keep the rows in memory (``records``, ``histograms``); set False when streaming to a sink.

    Records carry ``source="train"`` (the training batch of the recorded step: activations,
    back-propagated gradients dLoss/ds, weight gradients, update/weight ratios) or
    ``source="monitor"`` (activations, dLoss/ds, Jacobians). Their ``step`` is the number of
    updates done before the recorded forward pass.

    Attributes: ``layers`` and ``weights`` (what is recorded, under which name), ``unobservable``
    (``(module, reason)`` for non-linearities computed inside a ``forward``), ``jacobian_unavailable``
    (``{layer: reason}``), ``jacobian_methods`` (``{layer: "exact" | "lanczos"}``, as resolved at the
    last Jacobian record), ``records`` and ``histograms`` (the rows).
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 100,
        monitor: Tensor | tuple[Tensor, Tensor] | None = None,
        loss_fn: Callable[[Any, Tensor], Tensor] | None = None,
        layers: Sequence[str] | None = None,
        bins: int = 50,
        sinks: Iterable[Any] = (),
        *,
        jacobian_examples: int = 10,
        jacobian_every: int | None = None,
        jacobian_method: str = "auto",
        start_step: int = 0,
        keep: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        check_options(every=every, bins=bins, jacobian_examples=jacobian_examples, jacobian_every=jacobian_every,
                      jacobian_method=jacobian_method, start_step=start_step)
        self.every, self.bins, self.jacobian_examples = every, bins, jacobian_examples
        self.jacobian_every, self.jacobian_method = jacobian_every, jacobian_method
        self.jacobian_methods: dict[str, str] = {}
        self.loss_fn = loss_fn or _default_loss
        self.sinks = list(sinks)
        self.keep = keep
        self._monitor_x, self._monitor_y = self._parse_monitor(monitor)

        self.unobservable: list[tuple[str, str]] = find_unobservable(model)
        self.layers: list[Layer] = find_layers(model, layers, self.unobservable)
        self.weights: list[Weight] = find_weights(model)
        self._maps, self.jacobian_unavailable = plan_jacobians(model, self.layers)
        self._map_sources = {m.source for m in self._maps.values()}
        self._inplace = any(getattr(layer.module, "inplace", False) for layer in self.layers)

        self.records: list[dict] = []
        self.histograms: list[dict] = []
        self._step = start_step
        self._active = False
        self._armed = False
        self._hooks = Hooks()
        self._token = 0
        self._source: str | None = None
        self._pending: list[_Entry] = []
        self._weight_grads: dict[str, Tensor] = {}
        self._snapshot: list[Tensor] = []
        self._calls: dict[int, int] = {}
        self._grad_inputs: list[Tensor] = []
        self._input: Tensor | None = None
        self._jacobian_inputs: dict[str, Tensor] = {}
        self._want_jacobians = False
        self._jacobians_done = False

    @staticmethod
    def _parse_monitor(monitor: Any) -> tuple[Tensor | None, Tensor | None]:
        if monitor is None:
            return None, None
        if isinstance(monitor, Tensor):
            return monitor, None
        if isinstance(monitor, tuple | list) and len(monitor) == 2 and all(isinstance(t, Tensor) for t in monitor):
            x, y = monitor
            if len(x) != len(y):
                raise ValueError(f"monitor: x has {len(x)} examples but y has {len(y)}")
            return x, y
        raise ValueError(f"monitor={type(monitor).__name__} is not allowed; give a tensor x or a pair (x, y)")

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Probe:
        if self._active:
            raise RuntimeError("this Probe is already active")
        self._active = True
        try:
            device = next((p.device for p in self.model.parameters()), None)
            if device is not None and self._monitor_x is not None:
                self._monitor_x = self._monitor_x.to(device)
                self._monitor_y = self._monitor_y.to(device) if self._monitor_y is not None else None
            if self._step % self.every == 0:
                self._arm()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._detach()
        self.flush()

    def _detach(self) -> None:
        self._hooks.remove()
        self._token += 1  # tensor hooks still attached to live graphs become no-ops
        self._armed = False
        self._active = False
        self._source = None
        self._pending, self._weight_grads, self._snapshot = [], {}, []
        self._grad_inputs, self._jacobian_inputs = [], {}

    # ------------------------------------------------------------------ public

    def step(self, step: int | None = None) -> None:
        """Call after each optimizer step. ``step``: updates done so far (default: one more)."""
        if not self._active:
            raise RuntimeError("the probe is not active; use it as a context manager: `with Probe(model) as probe:`")
        if self._armed:
            self._record_train()
        self._step = self._step + 1 if step is None else _positive_int("step", step, minimum=0)
        if self._step % self.every == 0:
            self._arm()

    def flush(self) -> None:
        """Ask every sink to write out what it buffered."""
        for sink in self.sinks:
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush()

    def to_rows(self, **filters: Any) -> list[dict]:
        """The statistics as a tidy list of dicts, optionally filtered (``layer="hidden1", stat="std"``)."""
        return filter_rows(self.records, filters)

    def to_columns(self, **filters: Any) -> dict[str, list]:
        """The statistics as a column table ``{"step": [...], "layer": [...], ...}`` (pandas-free)."""
        return to_columns(filter_rows(self.records, filters))

    # ------------------------------------------------------------------ recording

    def _arm(self) -> None:
        """Record the monitor set now, then hook the next training step."""
        if self._monitor_x is not None:
            self._record_monitor()
        self._token += 1
        self._source, self._calls, self._pending, self._weight_grads = "train", {}, [], {}
        with torch.no_grad():
            self._snapshot = [weight_sample(w.param) for w in self.weights]
        self._attach_layer_hooks(self._token)
        for w in self.weights:
            if w.param.requires_grad:
                self._hooks.add(w.param.register_post_accumulate_grad_hook(self._weight_hook(w.name, self._token)))
        self._armed = True

    def _record_train(self) -> None:
        self._hooks.remove()
        entries = self._pending
        for name, values in self._weight_grads.items():
            entries.append((name, "weight_grad", WEIGHT_GRADIENT_STATS, values, True))
        with torch.no_grad():
            for w, before in zip(self.weights, self._snapshot, strict=True):
                entries.append((w.name, "update_ratio", ("ratio",), update_ratio(before, w.param), False))
        self._armed, self._source, self._pending, self._weight_grads, self._snapshot = False, None, [], {}, []
        self._token += 1
        self._emit("train", entries)

    def _record_monitor(self) -> None:
        """Forward (and backward, with labels) on the monitor set in eval mode, leaving no trace."""
        model, x, y = self.model, self._monitor_x, self._monitor_y
        modes = [(m, m.training) for m in model.modules()]
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        self._token += 1
        self._source, self._calls, self._pending, self._grad_inputs, self._jacobian_inputs = "monitor", {}, [], [], {}
        self._want_jacobians = self.jacobian_examples > 0 and (
            not self._jacobians_done or (self.jacobian_every is not None and self._step % self.jacobian_every == 0)
        )
        hooks = Hooks()
        try:
            with torch.random.fork_rng(devices=devices):
                for m, _ in modes:
                    m.training = False
                self._attach_layer_hooks(self._token, hooks)
                with torch.set_grad_enabled(y is not None):
                    if y is not None and self._inplace and x.is_floating_point():
                        # the backward pass must run down to the input to reach hooks on tensors
                        # that in-place activations overwrote; the input itself is no pre-activation
                        leaf = x.detach().requires_grad_(True)
                        x = self._input = leaf.clone()
                        self._grad_inputs.append(leaf)
                    out = model(x)
                    hooks.remove()
                    if y is not None:
                        inputs = [t for t in self._grad_inputs if t.requires_grad]
                        if inputs:
                            torch.autograd.grad(self.loss_fn(out, y), inputs, allow_unused=True)
                    del out
                if self._want_jacobians:
                    self._add_jacobians()
                    self._jacobians_done = True
        finally:
            hooks.remove()
            for m, mode in modes:
                m.training = mode
            entries, self._pending, self._grad_inputs, self._jacobian_inputs = self._pending, [], [], {}
            self._input = None
            self._source = None
            self._token += 1
        self._emit("monitor", entries)

    def _add_jacobians(self) -> None:
        reused = {layer.name for layer in self.layers if self._calls.get(id(layer.module), 0) > 1}
        for name, jmap in list(self._maps.items()):
            if name in reused or jmap.source in reused:
                module = "the module" if name in reused else f"the previous layer {jmap.source!r}"
                self.jacobian_unavailable[name] = f"{module} is called more than once per forward pass"
                del self._maps[name]
                continue
            z = self._jacobian_inputs.get(jmap.source)
            if z is None:
                continue
            try:
                method = jmap.method(z, self.jacobian_method)
                stats, values = jmap.spectrum(z, method)
            except Exception as e:  # an instrument that cannot be computed is reported, not fatal
                self.jacobian_unavailable[name] = f"could not be computed: {type(e).__name__}: {e}"
                del self._maps[name]
                continue
            self.jacobian_methods[name] = method
            self._pending.append((name, "jacobian", stats, values, False))

    def _emit(self, source: str, entries: list[_Entry]) -> None:
        """Move every statistic of one record to the CPU in one go and hand out the rows."""
        if not entries:
            return
        by_device: dict[torch.device, list[int]] = {}
        for i, e in enumerate(entries):
            by_device.setdefault(e[3].device, []).append(i)
        values: list[list[float]] = [[] for _ in entries]
        for idx in by_device.values():
            flat = torch.cat([entries[i][3].detach().reshape(-1).float() for i in idx]).tolist()
            at = 0
            for i in idx:
                n = entries[i][3].numel()
                values[i], at = flat[at : at + n], at + n
        rows, hists = [], []
        for (layer, quantity, names, _, has_hist), v in zip(entries, values, strict=True):
            base = {"step": self._step, "source": source, "layer": layer, "quantity": quantity}
            rows += [{**base, "stat": s, "value": float(val)} for s, val in zip(names, v, strict=False)]
            if has_hist:
                lo, hi, *counts = v[len(names) :]
                hists.append({**base, "lo": lo, "hi": hi, "counts": counts})
        if self.keep:
            self.records += rows
            self.histograms += hists
        for sink in self.sinks:
            sink.write(rows, hists)

    # ------------------------------------------------------------------ hooks

    def _attach_layer_hooks(self, token: int, hooks: Hooks | None = None) -> None:
        hooks = hooks if hooks is not None else self._hooks
        for layer in self.layers:
            m = layer.module
            if layer.kind == "activation" and layer.elementwise:
                hooks.add(m.register_forward_pre_hook(self._preact_hook(layer, token)))
            elif isinstance(m, Maxout):  # its pre-activations are the k affine pieces
                hooks.add(m.linear.register_forward_hook(self._maxout_hook(layer, token)))
            hooks.add(m.register_forward_hook(self._output_hook(layer, token)))

    def _capturing(self, token: int) -> bool:
        return token == self._token and (self._source == "monitor" or torch.is_grad_enabled())

    def _name(self, layer: Layer, call: int) -> str:
        return layer.name if call == 1 else f"{layer.name}@{call}"

    def _watch_grad(self, s: Tensor, name: str, token: int) -> None:
        """Record dLoss/ds when the backward pass reaches the pre-activations ``s``."""
        if not (isinstance(s, Tensor) and s.requires_grad) or s is self._input:
            return
        source, bins = self._source, self.bins

        def hook(g: Tensor) -> None:
            if token == self._token:
                self._pending.append((name, "preact_grad", GRADIENT_STATS, gradient_stats(g, bins), True))

        s.register_hook(hook)
        if source == "monitor":
            self._grad_inputs.append(s)

    def _preact_hook(self, layer: Layer, token: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self._capturing(token) and args:
                self._watch_grad(args[0], self._name(layer, self._calls.get(id(module), 0) + 1), token)

        return hook

    def _maxout_hook(self, layer: Layer, token: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            if self._capturing(token):
                self._watch_grad(out, self._name(layer, self._calls.get(id(layer.module), 0) + 1), token)

        return hook

    def _output_hook(self, layer: Layer, token: int) -> Callable:
        spec = layer.spec if layer.kind == "activation" else None
        names = activation_stat_names(spec)

        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if not self._capturing(token):
                return
            call = self._calls[id(module)] = self._calls.get(id(module), 0) + 1
            z = _first_tensor(out)
            if z is None or z.dim() == 0 or not z.is_floating_point():
                return
            with torch.no_grad():
                stats = activation_stats(z, spec, self.bins)
            self._pending.append((self._name(layer, call), "activation", names, stats, True))
            if self._source == "monitor" and self._want_jacobians and call == 1 and layer.name in self._map_sources:
                self._jacobian_inputs[layer.name] = z.detach()[: self.jacobian_examples].clone()

        return hook

    def _weight_hook(self, name: str, token: int) -> Callable:
        def hook(p: Tensor) -> None:
            if token == self._token and p.grad is not None:
                with torch.no_grad():
                    self._weight_grads[name] = weight_gradient_stats(p.grad, self.bins)

        return hook
