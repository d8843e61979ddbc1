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

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from deepscope.nn.activations import Maxout
from deepscope.probe.compat import compiled, default_loss, eager, first_tensor, in_backward, rank, unwrap
from deepscope.probe.functional import Watcher
from deepscope.probe.hooks import Hooks, Layer, Weight, find_layers, find_unobservable, find_weights
from deepscope.probe.jacobian import plan_jacobians
from deepscope.probe.options import check_options, parse_monitor, positive_int
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

__all__ = ["Probe", "StoreSink", "TensorBoardSink", "check_options"]

_Entry = tuple[str, str, tuple[str, ...], Tensor, bool]  # layer, quantity, stat names, values, has histogram


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
            sv_max``, per layer map up to about 2 % off at 1000 units, 4 % at 256-512, 9 % at 64; about one
            plain step for the four layer maps of a 5 x 1000 MLP) or ``"auto"``
            (exact for layers of at most 256 units; see :mod:`deepscope.probe.jacobian`).
        start_step: the number of updates already done (when resuming).
        keep: keep the rows in memory (``records``, ``histograms``); set False when streaming to a sink.
        all_ranks: under ``torch.distributed``, record on every rank, each row carrying its ``rank``;
            by default only rank 0 records (the other ranks' probes do nothing).

    ``model`` may be wrapped in ``DistributedDataParallel`` or ``torch.compile``: the probe hooks the
    module inside, runs the monitor pass on it (no collective), and runs the recorded training step
    eagerly (``torch.compiler.set_stance("force_eager")``). Weight gradients are read when the optimizer
    steps (after the backward pass of every micro-batch, DDP's all-reduce, clipping), or as the backward
    pass left them when no ``torch.optim`` optimizer steps. With several forward passes per step
    (gradient accumulation), activations and dLoss/ds come from the first; ``name@k`` is the k-th call of
    one module within one forward pass.

    Records carry ``source="train"`` (the training batch of the recorded step: activations,
    back-propagated gradients dLoss/ds, weight gradients, update/weight ratios) or
    ``source="monitor"`` (activations, dLoss/ds, Jacobians). Their ``step`` is the number of
    updates done before the recorded forward pass.

    Attributes: ``layers`` and ``weights`` (what is recorded, under which name), ``unobservable``
    (``(module, reason)`` for non-linearities computed inside a ``forward``, found by reading its
    source), ``jacobian_unavailable`` (``{layer: reason}``), ``jacobian_methods`` (``{layer: "exact" |
    "lanczos"}``, as resolved at the last Jacobian record), ``records`` and ``histograms`` (the rows),
    ``rank`` (this process's rank under ``torch.distributed``, else None).
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
        all_ranks: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        net = self._net = unwrap(model)  # hooks and the monitor pass go to the eager module inside wrappers
        self._compiled = compiled(model)
        self.rank = rank()
        self._all_ranks = bool(all_ranks)
        # under torch.distributed, rank 0 records (or every rank, its rank in each row, with all_ranks=True)
        self._enabled = self.rank is None or self.rank == 0 or self._all_ranks
        check_options(every=every, bins=bins, jacobian_examples=jacobian_examples, jacobian_every=jacobian_every,
                      jacobian_method=jacobian_method, start_step=start_step)
        self.every, self.bins, self.jacobian_examples = every, bins, jacobian_examples
        self.jacobian_every, self.jacobian_method = jacobian_every, jacobian_method
        self.jacobian_methods: dict[str, str] = {}
        self.loss_fn = loss_fn or default_loss
        self.sinks = list(sinks)
        self.keep = keep
        self._monitor_x, self._monitor_y = parse_monitor(monitor)

        self.unobservable: list[tuple[str, str]] = find_unobservable(net)
        self.layers: list[Layer] = find_layers(net, layers, self.unobservable)
        self.weights: list[Weight] = find_weights(net)
        self._maps, self.jacobian_unavailable = plan_jacobians(net, self.layers)
        self._map_sources = {m.source for m in self._maps.values()}
        self._inplace = any(getattr(layer.module, "inplace", False) for layer in self.layers)
        # the monitor pass differentiates down to its input when in-place activations or frozen
        # parameters would otherwise leave pre-activations without a gradient
        self._input_grad = self._inplace or any(not p.requires_grad for p in net.parameters())

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
        self._forwards = 0
        self._watcher: Watcher | None = None
        self._trainable = True
        self._root_inputs: set[int] = set()
        self._grad_refs: dict[str, Tensor] = {}
        self._eager = contextlib.ExitStack()
        self._grad_inputs: list[Tensor] = []
        self._input: Tensor | None = None
        self._jacobian_inputs: dict[str, Tensor] = {}
        self._want_jacobians = False
        self._jacobians_done = False

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Probe:
        if self._active:
            raise RuntimeError("this Probe is already active")
        self._active = True
        if not self._enabled:
            return self
        try:
            param = next((p for p in self._net.parameters() if p.is_floating_point()), None)
            if param is not None and self._monitor_x is not None:
                # the model's device, and its float type for float inputs (a float64 model, float32 monitor set)
                dtype = param.dtype if self._monitor_x.is_floating_point() else self._monitor_x.dtype
                self._monitor_x = self._monitor_x.to(param.device, dtype)
                self._monitor_y = self._monitor_y.to(param.device) if self._monitor_y is not None else None
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
        self._eager.close()
        self._token += 1  # tensor hooks still attached to live graphs become no-ops
        self._armed = False
        self._active = False
        self._source = None
        self._pending, self._weight_grads, self._snapshot, self._grad_refs = [], {}, [], {}
        self._grad_inputs, self._jacobian_inputs = [], {}

    # ------------------------------------------------------------------ public

    def step(self, step: int | None = None) -> None:
        """Call after each optimizer step. ``step``: updates done so far (default: one more)."""
        if not self._active:
            raise RuntimeError("the probe is not active; use it as a context manager: `with Probe(model) as probe:`")
        if not self._enabled:
            self._step = self._step + 1 if step is None else positive_int("step", step, minimum=0)
            return
        if self._armed:
            self._record_train()
        self._step = self._step + 1 if step is None else positive_int("step", step, minimum=0)
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
        self._forwards, self._root_inputs, self._grad_refs = 0, set(), {}
        self._trainable = any(p.requires_grad for p in self._net.parameters())
        with torch.no_grad():
            self._snapshot = [weight_sample(w.param) for w in self.weights]
        self._attach_layer_hooks(self._token)
        self._hooks.add(self._net.register_forward_pre_hook(self._root_hook(self._token)))
        if self._watcher is None:  # no monitor pass ran yet: look for functional activations in this one
            self._start_watching(self._hooks, self._token)
        for w in self.weights:
            if w.param.requires_grad:
                self._hooks.add(w.param.register_post_accumulate_grad_hook(self._weight_hook(w.name, self._token)))
        self._hooks.add(register_optimizer_step_pre_hook(self._optimizer_hook(self._token)))
        self._eager.enter_context(eager(self._compiled))  # hooks see every module of a compiled model
        self._armed = True

    def _record_train(self) -> None:
        self._hooks.remove()
        self._eager.close()
        entries = self._pending
        with torch.no_grad():  # without an optimizer step, the gradients the backward pass left
            for name, grad in self._grad_refs.items():
                if name not in self._weight_grads:
                    self._weight_grads[name] = weight_gradient_stats(grad, self.bins)
        for w in self.weights:
            if w.name in self._weight_grads:
                entries.append((w.name, "weight_grad", WEIGHT_GRADIENT_STATS, self._weight_grads[w.name], True))
        with torch.no_grad():
            for w, before in zip(self.weights, self._snapshot, strict=True):
                entries.append((w.name, "update_ratio", ("ratio",), update_ratio(before, w.param), False))
        self._armed, self._source, self._pending, self._weight_grads, self._snapshot = False, None, [], {}, []
        self._grad_refs = {}
        self._token += 1
        self._emit("train", entries)

    def _record_monitor(self) -> None:
        """Forward (and backward, with labels) on the monitor set in eval mode, leaving no trace."""
        model, x, y = self._net, self._monitor_x, self._monitor_y
        modes = [(m, m.training) for m in model.modules()]
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        self._token += 1
        self._source, self._calls, self._pending, self._grad_inputs, self._jacobian_inputs = "monitor", {}, [], [], {}
        self._want_jacobians = self.jacobian_examples > 0 and (
            not self._jacobians_done or (self.jacobian_every is not None and self._step % self.jacobian_every == 0)
        )
        hooks = Hooks()
        try:
            with torch.random.fork_rng(devices=devices), eager(self._compiled):
                for m, _ in modes:
                    m.training = False
                self._attach_layer_hooks(self._token, hooks)
                with torch.set_grad_enabled(y is not None):
                    if y is not None and self._input_grad and x.is_floating_point():
                        # the backward pass must run down to the input to reach hooks on tensors that
                        # in-place activations overwrote, and the pre-activations after frozen layers;
                        # the input itself is no pre-activation
                        leaf = x.detach().requires_grad_(True)
                        x = self._input = leaf.clone()
                        self._grad_inputs.append(leaf)
                    if self._watcher is None:
                        self._start_watching(hooks, self._token)
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
        for device, idx in by_device.items():
            dtype = torch.float32 if device.type == "mps" else torch.float64  # float64 statistics stay float64
            flat = torch.cat([entries[i][3].detach().reshape(-1).to(dtype) for i in idx]).tolist()
            at = 0
            for i in idx:
                n = entries[i][3].numel()
                values[i], at = flat[at : at + n], at + n
        rows, hists = [], []
        for (layer, quantity, names, _, has_hist), v in zip(entries, values, strict=True):
            base = {"step": self._step, "source": source, "layer": layer, "quantity": quantity}
            if self._all_ranks and self.rank is not None:
                base["rank"] = self.rank
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
            if layer.kind == "activation" and layer.preact:
                hooks.add(m.register_forward_pre_hook(self._preact_hook(layer, token)))
            elif isinstance(m, Maxout):  # its pre-activations are the k affine pieces
                hooks.add(m.linear.register_forward_hook(self._maxout_hook(layer, token)))
            hooks.add(m.register_forward_hook(self._output_hook(layer, token)))

    def _capturing(self, token: int) -> bool:
        """Record this call? Not on a stale token, not in a re-computation during backward (gradient
        checkpointing), and in training only the first forward with gradients after arming (the first
        micro-batch when gradients are accumulated over several)."""
        if token != self._token or in_backward():
            return False
        return self._source == "monitor" or (torch.is_grad_enabled() and self._forwards <= 1)

    def _start_watching(self, hooks: Hooks, token: int) -> None:
        """Watch the next forward pass for non-linearities the source did not show (:class:`Watcher`)."""
        self._watcher = Watcher()
        skip = {id(layer.module) for layer in self.layers if layer.kind == "activation"}

        def report(found: list[tuple[str, str]]) -> None:
            known = {name for name, _ in self.unobservable}
            self.unobservable += [(name, reason) for name, reason in found if name not in known]

        for handle in self._watcher.watch(self._net, skip, lambda: token == self._token, report):
            hooks.add(handle)

    def _quiet(self) -> contextlib.AbstractContextManager:
        """The probe's own computations are not the model's: hidden from the :class:`Watcher`."""
        return self._watcher.quiet() if self._watcher is not None else contextlib.nullcontext()

    def _root_hook(self, token: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if token == self._token and torch.is_grad_enabled() and not in_backward():
                self._forwards += 1
                if self._forwards == 1:
                    self._root_inputs = {id(a) for a in args if isinstance(a, Tensor)}

        return hook

    def _name(self, layer: Layer, call: int) -> str:
        return layer.name if call == 1 else f"{layer.name}@{call}"

    def _watch_grad(self, s: Tensor, name: str, token: int) -> None:
        """Record dLoss/ds when the backward pass reaches the pre-activations ``s``."""
        if not (isinstance(s, Tensor) and s.requires_grad) or s is self._input:
            return
        source, bins = self._source, self.bins

        def hook(g: Tensor) -> None:
            if token == self._token and g.numel():  # an empty batch has no statistics
                self._pending.append((name, "preact_grad", GRADIENT_STATS, gradient_stats(g, bins), True))

        s.register_hook(hook)
        if source == "monitor":
            self._grad_inputs.append(s)

    def _preact_hook(self, layer: Layer, token: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not (self._capturing(token) and args):
                return None
            s, new = args[0], None
            if (
                self._source == "train" and isinstance(s, Tensor) and s.is_floating_point() and not s.requires_grad
                and id(s) not in self._root_inputs and self._trainable
            ):
                # after frozen layers only: no gradient would reach s, though dLoss/ds exists; a leaf
                # copy of s that requires it lets the backward pass through (parameters get the same
                # gradients); the clone keeps in-place activations off the leaf
                s = new = s.detach().requires_grad_(True).clone()
            self._watch_grad(s, self._name(layer, self._calls.get(id(module), 0) + 1), token)
            return None if new is None else (new, *args[1:])

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
            z = first_tensor(out)
            if z is None or z.dim() == 0 or not z.is_floating_point() or z.numel() == 0:
                return  # an empty batch has no statistics
            with torch.no_grad(), self._quiet():
                stats = activation_stats(z, spec, self.bins)
            self._pending.append((self._name(layer, call), "activation", names, stats, True))
            if self._source == "monitor" and self._want_jacobians and call == 1 and layer.name in self._map_sources:
                self._jacobian_inputs[layer.name] = z.detach()[: self.jacobian_examples].clone()

        return hook

    def _weight_hook(self, name: str, token: int) -> Callable:
        """Keep the gradient the backward pass accumulated, in case no optimizer steps (a hand-written update)."""

        def hook(p: Tensor) -> None:
            if token == self._token and p.grad is not None:
                self._grad_refs[name] = p.grad

        return hook

    def _optimizer_hook(self, token: int) -> Callable:
        """Weight gradients as the optimizer reads them: after the backward pass of every micro-batch,
        DDP's all-reduce, gradient clipping and ``GradScaler`` unscaling."""

        def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            if token != self._token:
                return
            stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
            with torch.no_grad():
                for w in self.weights:
                    if id(w.param) in stepped and w.param.grad is not None and w.name not in self._weight_grads:
                        self._weight_grads[w.name] = weight_gradient_stats(w.param.grad, self.bins)

        return hook
