"""The Probe: Glorot & Bengio's (2010) instruments, recorded inside any PyTorch training loop.

```python
with Probe(model, every=100, monitor=(x_fixed, y_fixed)) as probe:
    for x, y in batches:
        loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
        probe.step()
rows = probe.to_rows(quantity="activation", stat="std")
```

Hooks exist only while a record is being taken (the step whose index is a multiple of ``every``
and the probe's own pass over the monitor set), so the other steps run the bare model. This module
arms the probe and runs the two passes; the hooks, statistics, Jacobians and rows live in
:mod:`~deepscope.probe.hooks`, :mod:`~deepscope.probe.stats`, :mod:`~deepscope.probe.jacobian` and
:mod:`~deepscope.probe.sinks`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.stateless import _reparametrize_module

from deepscope.probe import options as opts
from deepscope.probe.compat import compiled, default_loss, eager, rank, unwrap
from deepscope.probe.compiled import CompiledStats
from deepscope.probe.hooks import (
    Capture,
    Hooks,
    attach_layer_hooks,
    optimizer_hook,
    root_hook,
    start_watching,
    train_entries,
    weight_hook,
)
from deepscope.probe.jacobian import jacobians_due, plan_jacobians, prepare_jacobians, run_jacobian
from deepscope.probe.layers import Layer, Weight, find_layers, find_unobservable, find_weights
from deepscope.probe.options import check_options, monitor_to_model, parse_monitor, positive_int
from deepscope.probe.pacing import Pacing
from deepscope.probe.replay import arm_replay
from deepscope.probe.sinks import Entry, filter_rows, rows, to_columns
from deepscope.probe.stats import weight_sample

__all__ = ["Probe"]


class Probe:
    """Records per-layer statistics of ``model`` every ``every`` training steps.

    Args:
        model: any ``nn.Module``; left exactly as found (hooks, modes, parameters, gradients).
        every: record the training steps whose index is a multiple of ``every``; call :meth:`step` after each update.
        monitor: a fixed set ``x`` or ``(x, y)``, ``x`` a tensor, tuple or dict of them (300 test examples in the
            paper; the README gives the error of fewer). At each record the probe runs its own pass on it in eval
            mode, without touching parameters, ``.grad``, optimizer or RNG state; dLoss/ds needs ``y``.
        loss_fn: ``loss_fn(output, y) -> scalar`` for the monitor pass; cross-entropy by default.
        layers: module names to record (``["hidden1.act", ...]``) instead of the discovered ones.
        bins: histogram bins.
        sinks: objects with ``write(stats_rows, histogram_rows)`` (:class:`StoreSink`, :class:`TensorBoardSink`).
        jacobian_examples: monitor examples for the Jacobian singular values (0: none).
        jacobian_every: also at steps that are multiples of this (of ``every``); by default only at the first record.
        jacobian_method: ``"exact"`` (explicit Jacobians and their SVD: ``sv_mean, sv_min, sv_max``), ``"lanczos"``
            (``sv_mean, sv_max`` from Jacobian-vector products) or ``"auto"`` (exact up to 256 units); the errors
            are in :mod:`deepscope.probe.jacobian`. Records after the first spread these over the next steps.
        start_step: the number of updates already done (when resuming).
        keep: keep the rows in memory (``records``, ``histograms``); set False when streaming to a sink.
        all_ranks: under ``torch.distributed``, record on every rank, each row carrying its ``rank``;
            by default only rank 0 records (the other ranks' probes do nothing).

    ``model`` may be wrapped in ``DistributedDataParallel`` or ``torch.compile``: the probe hooks the
    module inside and runs the monitor pass on it (no collective). A compiled model's training step always
    runs its compiled graph, recorded steps too (no recompilation, no graph break, the numerics of the
    unprobed run); its activations and dLoss/ds are taken from a replay (:mod:`deepscope.probe.replay`).
    Weight gradients are read when the optimizer steps (after the backward pass of every micro-batch, DDP's
    all-reduce, clipping), or as the backward pass left them when no ``torch.optim`` optimizer steps. With
    several forward passes per step (gradient accumulation), activations and dLoss/ds come from the first;
    ``name@k`` is the k-th call of one module within one forward pass.

    Records carry ``source="train"`` (the training batch of the recorded step: activations,
    back-propagated gradients dLoss/ds, weight gradients, update/weight ratios) or
    ``source="monitor"`` (activations, dLoss/ds, Jacobians). Their ``step`` is the number of
    updates done before the recorded forward pass.

    Attributes: ``layers`` and ``weights`` (what is recorded, under which name), ``unobservable``
    (``(module, reason)`` for non-linearities computed inside a ``forward``, found by reading its
    source), ``jacobian_unavailable`` (``{layer: reason}``), ``jacobian_methods`` (``{layer: "exact" |
    "lanczos"}``, as resolved at the last Jacobian record), ``unavailable`` (``{part: reason}`` for other
    instruments that could not be taken), ``records`` and ``histograms`` (the rows),
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
        self.loss_fn = opts.check_loss_fn(loss_fn) or default_loss
        self.sinks = opts.check_sinks(sinks)
        self.keep = keep
        self._monitor_x, self._monitor_y = parse_monitor(monitor)

        self.unobservable: list[tuple[str, str]] = find_unobservable(net)
        self.layers: list[Layer] = find_layers(net, layers, self.unobservable)
        self.weights: list[Weight] = find_weights(net)
        self._maps, self.jacobian_unavailable = plan_jacobians(net, self.layers)
        self.unavailable: dict[str, str] = opts.missing_layers(self.layers)
        # later records run the monitor pass at the step after them, on a copy of the weights, if it is small
        self._defer_monitor = not self._compiled and state_bytes(net) <= DEFER_MONITOR_BYTES
        self._pacing = Pacing()  # and only where that pays (deepscope.probe.pacing)
        inplace = any(getattr(layer.module, "inplace", False) for layer in self.layers)
        # the monitor pass differentiates down to its input when in-place activations or frozen
        # parameters would otherwise leave pre-activations without a gradient
        self._input_grad = inplace or any(not p.requires_grad for p in net.parameters())

        self.records: list[dict] = []
        self.histograms: list[dict] = []
        self._step = start_step
        self._active = False
        self._armed = False
        self._hooks = Hooks()
        self._cap = Capture(bins, jacobian_examples, {m.source for m in self._maps.values()})
        self._cap.unavailable = self.unavailable  # where its hooks say what they could not take
        if self._compiled:  # the statistics of its records by compiled kernels too (deepscope.probe.compiled)
            self._cap.compiled = CompiledStats(bins, self.unavailable)
        self._snapshot: list[Tensor] = []
        self._jacobians_done = False
        # (step, source, work): statistics and Jacobians of earlier records still to compute, one item per step
        self._deferred: list[tuple[int, str, Callable[[], list[Entry]]]] = []

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Probe:
        if self._active:
            raise RuntimeError("this Probe is already active")
        self._active = True
        self._pacing.pause()
        if not self._enabled:
            return self
        try:
            self._monitor_x, self._monitor_y = monitor_to_model(self._monitor_x, self._monitor_y, self._net)
            if self._step % self.every == 0:
                self._arm()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._detach()
        self._run_deferred()
        self.flush()

    def _detach(self) -> None:
        self._hooks.remove()
        self._cap.start(None)  # tensor hooks still attached to live graphs become no-ops
        self._armed = False
        self._active = False
        self._snapshot = []

    # ------------------------------------------------------------------ public

    def step(self, step: int | None = None) -> None:
        """Call after each optimizer step. ``step``: updates done so far (default: one more)."""
        if not self._active:
            raise RuntimeError("the probe is not active; use it as a context manager: `with Probe(model) as probe:`")
        self._pacing.lap(plain=not self._armed)
        if recorded := self._enabled and self._armed:
            self._record_train()
        self._step = self._step + 1 if step is None else positive_int("step", step, minimum=0)
        if self._enabled and self._step % self.every == 0:
            self._run_deferred()  # the previous record's Jacobians first: rows arrive in the order of their steps
            self._arm(deferred=True)
        elif not recorded:  # one Jacobian per step, from the step after the recorded one
            self._run_deferred(1)
        self._pacing.restart()

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

    # ------------------------------------------------------------------ the two passes

    def _arm(self, deferred: bool = False) -> None:
        """Record the monitor set now (``deferred``: see :func:`record_monitor`), then hook the next step."""
        if self._monitor_x is not None:
            # on a copy of the weights of now, at the next step; not when a forward is set on the module itself
            # (a wrapper that may exist only while this step() runs, as the transformers callback's)
            if deferred and self._defer_monitor and "forward" not in self._net.__dict__ and self._pacing.move_monitor():
                state = snapshot_state(self._net)
                self._deferred.append((self._step, "monitor", partial(record_monitor, self, True, self._step, state)))
            else:
                record_monitor(self, deferred)
        cap = self._cap
        cap.start("train")
        cap.trainable = any(p.requires_grad for p in self._net.parameters())
        with torch.no_grad():
            self._snapshot = [weight_sample(w.param) for w in self.weights]
        if self._compiled:  # the compiled step runs untouched; the probe replays it (deepscope.probe.replay)
            arm_replay(self.model, self._net, self.layers, cap, self._hooks, self._start_watching, self.unavailable)
        else:
            attach_layer_hooks(self.layers, cap, self._hooks)
            self._hooks.add(self._net.register_forward_pre_hook(root_hook(cap)))
            if cap.watcher is None:  # no monitor pass ran yet: look for functional activations in this one
                self._start_watching(self._hooks)
        for w in self.weights:
            if w.param.requires_grad:
                self._hooks.add(w.param.register_post_accumulate_grad_hook(weight_hook(cap, w.name)))
        self._hooks.add(optimizer_hook(cap, self.weights))
        self._armed = True

    def _record_train(self) -> None:
        """The training step's record: what the hooks took, the weight gradients and the update ratios."""
        self._hooks.remove()
        entries = train_entries(self._cap, self.weights, self._snapshot)
        self._armed, self._snapshot = False, []
        self._cap.start(None)
        self._emit("train", entries)

    def _start_watching(self, hooks: Hooks) -> None:
        """Watch the next forward pass for non-linearities the source did not show (:class:`Watcher`)."""

        def report(found: list[tuple[str, str]]) -> None:
            known = {name for name, _ in self.unobservable}
            self.unobservable += [(name, reason) for name, reason in found if name not in known]

        start_watching(self._cap, self._net, self.layers, report, hooks)

    def _run_deferred(self, limit: int | None = None) -> None:
        """Run up to ``limit`` (all, and what they queue, by default) of the parts left by earlier records: monitor
        passes on copies of their weights, percentiles and histograms, Jacobians; emit their rows."""
        done = 0
        while self._deferred and (limit is None or done < limit):
            step, source, work = self._deferred.pop(0)
            self._emit(source, work(), step)
            done += 1

    def _emit(self, source: str, entries: list[Entry], step: int | None = None, at: int | None = None) -> None:
        """Hand the rows of one record (at ``step``, default now) to ``records`` / ``histograms`` and the sinks.

        Statistics whose percentiles and histograms were deferred (:data:`~deepscope.probe.stats.Finish`) are
        queued instead (at position ``at``, default last) and finished at a later :meth:`step`."""
        if not entries:
            return
        step = self._step if step is None else step
        if any(callable(e[3]) for e in entries):
            item = (step, source, partial(_finish, entries))
            self._deferred.insert(len(self._deferred) if at is None else at, item)
            return
        stats, hists = rows(entries, step, source, self.rank if self._all_ranks else None)
        if self.keep:
            self.records += stats
            self.histograms += hists
        for sink in self.sinks:
            sink.write(stats, hists)


def record_monitor(probe: Probe, deferred: bool = False, step: int | None = None, state: dict | None = None) -> list:
    """Forward (and backward, with labels) on the monitor set in eval mode, leaving no trace.

    With ``deferred``, the Jacobians of ``diag(f'(s)) A`` maps (``A`` and the slopes copied now) are computed
    one map per later :meth:`step` (rows at this record's step; ``__exit__`` or the next record finish them).
    ``state``: the parameters and buffers of ``step`` (:func:`snapshot_state`), when the pass runs later.
    Returns no entries: it emits its own."""
    cap = probe._cap
    step = probe._step if step is None else step
    cap.start("monitor")
    cap.want_jacobians = jacobians_due(step, probe.jacobian_examples, probe._jacobians_done, probe.jacobian_every)

    def jacobians() -> None:
        prepared = prepare_jacobians(probe._maps, probe.layers, cap.calls, cap.jacobian_inputs, probe.jacobian_method,
                                     probe.jacobian_unavailable, probe.jacobian_methods)
        unavailable = probe.jacobian_unavailable
        probe._deferred[queued:queued] = [(step, "monitor", partial(run_jacobian, name, spectrum, probe._maps,
                                                                    unavailable)) for name, spectrum in prepared]
        probe._jacobians_done = True

    # this record's parts go before those of its training step when the pass runs after that step
    queued = len(probe._deferred) if state is None else 0
    try:
        weights = contextlib.nullcontext() if state is None else _reparametrize_module(probe._net, state)
        start = time.perf_counter()
        with eager(probe._compiled), weights:
            monitor_pass(probe._net, probe._monitor_x, probe._monitor_y, probe.loss_fn, probe.layers, cap,
                         input_grad=probe._input_grad, watch=probe._start_watching,
                         then=jacobians if cap.want_jacobians else None)
        if not cap.want_jacobians:
            probe._pacing.monitor_seconds = time.perf_counter() - start
    except Exception as e:  # a bad monitor set fails at `with`; a later failure never fails the training step
        probe.unavailable["monitor"] = opts.monitor_failure(e, probe._monitor_x, probe._monitor_y, deferred)
    finally:
        entries = cap.pending
        cap.start(None)
    probe._emit("monitor", entries, step, at=queued)
    if not deferred:
        probe._run_deferred()
    return []


DEFER_MONITOR_BYTES = 2**26


def state_bytes(net: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``net``."""
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def snapshot_state(net: nn.Module) -> dict[str, Tensor]:
    """Copies of the parameters (requiring gradients as they do) and buffers of ``net``, by name."""
    with torch.no_grad():
        out = {name: p.detach().clone().requires_grad_(p.requires_grad) for name, p in net.named_parameters()}
        out.update({name: b.clone() for name, b in net.named_buffers()})
    return out


def _finish(entries: list[Entry]) -> list[Entry]:
    """``entries`` with every deferred statistic computed."""
    return [(*e[:3], e[3]() if callable(e[3]) else e[3], e[4]) for e in entries]


def monitor_pass(
    model: nn.Module, x: Any, y: Tensor | None, loss_fn: Callable, layers: list[Layer], cap: Capture, *,
    input_grad: bool, watch: Callable[[Hooks], None], then: Callable[[], None] | None = None,
) -> None:
    """The probe's own pass on the monitor set: ``model`` in eval mode with the layer hooks of ``cap``, forward
    and (with labels ``y``) backward to the pre-activations only, under a forked RNG; the modes are restored and
    no parameter, ``.grad``, buffer or random state of the training run is touched. ``watch`` adds the
    :class:`Watcher`'s hooks at the first pass; ``then`` runs after the pass, still in eval mode (the Jacobians)."""
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({t.device.index or 0 for t in opts.input_tensors(x) if t.device.type == "cuda"})
    hooks = Hooks()
    try:
        with torch.random.fork_rng(devices=devices):
            for m, _ in modes:
                m.training = False
            attach_layer_hooks(layers, cap, hooks)
            with torch.set_grad_enabled(y is not None):
                if y is not None and input_grad:
                    # the backward pass must run down to the input to reach hooks on tensors that in-place activations
                    # overwrote, and the pre-activations after frozen layers; the input itself is no pre-activation
                    x, leaves, clones = opts.grad_inputs(x)
                    cap.input, cap.grad_inputs = (clones or [None])[0], cap.grad_inputs + leaves
                if cap.watcher is None:
                    watch(hooks)
                out = opts.call_model(model, x)
                hooks.remove()
                if y is not None:
                    inputs = [t for t in cap.grad_inputs if t.requires_grad]
                    if inputs:
                        torch.autograd.grad(loss_fn(out, y), inputs, allow_unused=True)
                del out
            if then is not None:
                then()
    finally:
        hooks.remove()
        for m, mode in modes:
            m.training = mode
