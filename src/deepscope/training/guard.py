"""Guard: keeps a long training run healthy while it runs -- it catches a bad update, acts, and names the examples.

```python
with deepscope.Guard(model, optimizer) as guard:
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        guard.step(loss, batch=(x, y))   # the guard steps the optimizer, or skips, or rolls back
        optimizer.zero_grad()
print(guard.events)
```

Every update the guard checks the loss and the gradients' total 2-norm against limits computed on the device from
the last ``window`` healthy updates (a z-score above ``z``, after ``warmup``; a non-finite value; a median loss
above ``EXPLOSION`` x its level at the end of the warm-up, or a moving average of the last ~4 losses above
``SUSTAINED`` = 10 x the median) and reads one flag. A flagged update is *skipped* (the
optimizer is not stepped: its state, the schedule and the step count are untouched); when ``rollback_after`` flags
fall within ``rollback_window`` updates, or the loss diverges, the model, optimizer, schedule and RNG *roll back* to
the last good in-memory snapshot and the learning rate is lowered by ``lr_factor`` for ``cooldown`` updates; after
``max_rollbacks`` rollbacks the run *stops* (:class:`GuardStop`). On a spike the offending batch's examples are
ranked by their own loss and gradient norm (:mod:`.guard_examples`). The README's "Guard" section has the details
and the measurements. Defaults follow OLMo-core's skip-step optimizer (z > 6 over the last 128 updates) with a
robust centre (the median); skipping, rolling back and lowering the learning rate are what PaLM (Chowdhery et al.
2022, "PaLM: Scaling Language Modeling with Pathways", section 5.1) and OPT-175B (Zhang et al. 2022, "OPT: Open
Pre-trained Transformer Language Models", section 2.5) did by hand. Under ``torch.distributed`` the checked values
are averaged over the ranks first, so every rank takes the same decision.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.registry import integer, unknown
from deepscope.training.guard_examples import rank_examples

__all__ = ["DEFAULTS", "EXPLOSION", "SUSTAINED", "Guard", "GuardEvent", "GuardStop"]

EXPLOSION = 10.0  # divergence: the window's median loss above this many times its median at the end of warm-up
SUSTAINED = 10.0  # divergence: the moving average of the last ~4 losses above this many times the window's median
DEFAULTS: dict[str, Any] = dict(window=128, warmup=64, z=6.0, refresh=8, snapshot_every=100, rollback_after=3,
                                rollback_window=50, lr_factor=0.1, cooldown=200, max_rollbacks=5, examples=3,
                                on_pathology="warn", check_grad=True)
ACTIONS = ("skip", "rollback", "stop", "warn")


class GuardStop(RuntimeError):
    """The guard stopped the run: it rolled back ``max_rollbacks`` times and the trouble came back."""


@dataclass
class GuardEvent:
    """One thing the guard saw and did. ``step``: the update index (the guard's ``step()`` calls before it)."""

    step: int
    kind: str  # nonfinite, loss_spike, grad_spike, divergence, dead, saturated
    action: str  # one of ACTIONS
    loss: float = math.nan
    grad_norm: float = math.nan
    z_loss: float = math.nan  # (log value - window median) / spread, on the log scale
    z_grad: float = math.nan
    examples: list[int] = field(default_factory=list)  # positions in the batch, most suspect first
    ids: list[int] | None = None  # their dataset ids, when known
    example_loss: list[float] = field(default_factory=list)
    example_grad_norm: list[float] = field(default_factory=list)
    lr_scale: float = 1.0  # the learning-rate factor in force after the action
    restored: int | None = None  # rollback: the update whose state was restored
    message: str = ""


class _Window:
    """The logarithms of the last ``size`` healthy (loss, gradient norm) pairs in a ring buffer on the device, and
    the limits above which a new pair is flagged: median + z x spread, the spread being the larger of 1.4826 x the
    median absolute deviation and the standard deviation (on a log scale, as both quantities are positive and
    heavy-tailed: a small batch's loss late in training varies by factors, not by amounts). Nothing here reads the
    device except :meth:`z` (on an event)."""

    def __init__(self, size: int, warmup: int, z: float, refresh: int, device: torch.device):
        self.size, self.warmup, self.zmax, self.refresh = size, warmup, z, refresh
        self.values = torch.full((2, size), math.nan, device=device)
        self.limit = torch.full((2,), math.inf, device=device)
        self.center, self.spread, self.reference = torch.zeros(2, device=device), torch.ones(2, device=device), None
        self.diverged, self.count = torch.zeros((), dtype=torch.bool, device=device), 0
        # a moving average of the log loss over about 4 updates, and the level above which it is a divergence
        self.recent, self.sustained = torch.zeros((), device=device), torch.full((), math.inf, device=device)

    def check(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(flag, log v)``: the flag is True (0-d, on device) unless both values are finite and their logarithms
        under the limits (NaN fails every test; a value <= 0 counts as 1e-12, so only a positive loss spikes)."""
        log = v.clamp_min(1e-12).log()
        capped = torch.minimum(log[0], self.limit[0])  # one huge spike moves the average by 1/4 of the limit only
        self.recent = torch.where(log[0].isfinite(), self.recent * 0.75 + capped * 0.25, self.recent)
        return ~(log < self.limit).all() | (self.recent > self.sustained), log

    def add(self, log: Tensor) -> None:
        self.values[:, self.count % self.size].copy_(log)
        self.count += 1
        if self.count >= self.warmup and self.count % self.refresh == 0:
            self._update_limits()

    def _update_limits(self) -> None:
        n = min(self.count, self.size)
        values = self.values[:, :n] if n < self.size else self.values
        center = values.median(dim=1).values
        mad = (values - center[:, None]).abs().median(dim=1).values
        spread = torch.maximum(1.4826 * mad, values.std(dim=1)) + 1e-3
        if self.reference is None:
            self.reference = center[0].clone()
        self.diverged = center[0] > math.log(EXPLOSION) + self.reference
        self.sustained = center[0] + math.log(SUSTAINED)
        self.limit = torch.where(self.diverged, torch.full_like(center, -math.inf), center + self.zmax * spread)
        self.center, self.spread = center, spread

    def z(self, log: Tensor) -> tuple[float, float]:
        z = ((log - self.center) / self.spread).tolist() if self.count >= self.warmup else [math.nan, math.nan]
        return z[0], z[1]

    def state(self, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """A copy of the window's state; with ``state``: load a copy of it."""
        vars(self).update({k: (v.clone() if isinstance(v, Tensor) else v) for k, v in (state or {}).items()})
        return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in vars(self).items()}


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The guard's options over ``DEFAULTS``; a ValueError naming a bad key, its value and what is allowed."""
    if bad := [k for k in options if k not in DEFAULTS]:
        raise unknown("guard option", bad[0], DEFAULTS)
    o = {**DEFAULTS, **options}
    for key in ("window", "refresh", "snapshot_every", "rollback_after", "rollback_window", "cooldown", "warmup",
                "max_rollbacks", "examples"):
        o[key] = integer(f"guard {key}", o[key], minimum=0 if key in ("warmup", "max_rollbacks", "examples") else 1)
    for key, ok, allowed in (("z", lambda v: 0 < v < math.inf, "a finite number > 0 (the z-score of a spike)"),
                             ("lr_factor", lambda v: 0 < v <= 1, "a number in (0, 1] (1 keeps the rate)")):
        if isinstance(o[key], bool) or not isinstance(o[key], int | float) or not ok(o[key]):
            raise ValueError(f"guard {key}={o[key]!r} is not allowed; give {allowed}")
    if not isinstance(o["check_grad"], bool):
        raise ValueError(f"guard check_grad={o['check_grad']!r} is not allowed; give True or False")
    if o["on_pathology"] not in ("warn", "rollback"):
        raise unknown("guard on_pathology", o["on_pathology"], ["warn", "rollback"])
    return {**o, "warmup": max(o["warmup"], 2)}


class Guard:
    """Watches every update of ``model`` trained by ``optimizer`` and acts: see the module's documentation.

    Args:
        model, optimizer: what is trained; ``scheduler``: a learning-rate schedule stepped once per applied update
            (``torch.optim.lr_scheduler``), rolled back with the rest; ``None`` if you step it yourself.
        loss_fn: ``loss_fn(output, y)`` for ranking the examples of an offending batch (cross-entropy by default).
        probe: a :class:`~deepscope.probe.Probe` on ``model``: its dead/saturated records become events.
        sinks: objects with ``write(stats_rows, histogram_rows)`` (the probe's sinks: store, TensorBoard, W&B,
            MLflow): each event is written as rows ``source="guard", layer=kind, quantity=action``.
        snapshot_device: where snapshots are kept (default: the parameters' device; ``"cpu"`` saves its memory).
        options: ``window``, ``warmup``, ``z``, ``refresh``, ``snapshot_every``, ``rollback_after``,
            ``rollback_window``, ``lr_factor``, ``cooldown``, ``max_rollbacks``, ``examples``, ``on_pathology``,
            ``check_grad`` (False: the loss alone, no gradient norm to compute) (defaults in ``DEFAULTS``).

    After (or during) training: ``events`` (a list of :class:`GuardEvent`), ``updates`` (updates applied),
    ``skipped``, ``rollbacks``, ``lr_scale``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None, *,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, probe: Any = None,
                 sinks: Iterable[Any] = (), snapshot_device: str | torch.device | None = None,
                 step_scheduler: bool = True, **options: Any):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Guard: model={type(model).__name__} is not allowed; give a torch.nn.Module")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Guard: optimizer={type(optimizer).__name__} is not allowed; give a torch.optim.Optimizer")
        self.options = o = check_options(options)
        self.model, self.optimizer, self.scheduler, self.probe = model, optimizer, scheduler, probe
        self._optimizer_step, self.step_scheduler = optimizer.step, step_scheduler  # the step before any wrapping
        self.loss_fn = loss_fn or F.cross_entropy
        self.sinks = list(sinks)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.snapshot_device = torch.device(snapshot_device) if snapshot_device is not None else None
        self.window = _Window(o["window"], o["warmup"], float(o["z"]), o["refresh"], self.device)
        self.events: list[GuardEvent] = []
        self.step_index = self.updates = self.skipped = self.rollbacks = 0
        self.lr_scale, self._calm = 1.0, 0  # healthy updates since the last rollback (for the cool-down)
        self._flags: deque[int] = deque()  # step indices of recent flags
        self._good: dict | None = None  # the snapshot a rollback returns to
        self._pending: dict | None = None  # the newest snapshot, trusted once an interval passes without a flag
        self._flag_since_pending = False
        self._probe_seen, self._pathology_base, self._pathology_hit = 0, {}, set()
        self._open = False

    def __enter__(self) -> Guard:
        self._good, self._open = self._snapshot(), True  # the starting state is trusted
        return self

    def __exit__(self, *exc: Any) -> None:
        self._open, self._good, self._pending = False, None, None  # free the snapshots' memory

    def step(self, loss: Tensor | float, batch: Any = None, *, ids: Any = None,
             grad_norm: Tensor | None = None) -> bool:
        """Check this update (after ``loss.backward()``); step the optimizer (and the scheduler) if healthy.

        ``batch``: ``(x, y)`` or ``(x, y, ids)``, ranked on a spike; ``ids``: the examples' dataset ids (a tensor,
        a list, or a function returning one, called on an event only); ``grad_norm``: the total gradient norm if
        you computed it already (``clip_grad_norm_`` returns it). Returns True when the update was applied.
        """
        if not self._open:
            raise RuntimeError("the guard is not active; use it as a context manager: `with Guard(model, opt) as g:`")
        index, self.step_index = self.step_index, self.step_index + 1
        loss = loss.detach().reshape(()).float() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        if grad_norm is None:  # check_grad=False: the loss alone (a constant norm never flags)
            grads = [p.grad for p in self.params if p.grad is not None] if self.options["check_grad"] else []
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.ones((), device=self.device)
        v = torch.stack([loss.to(self.device), grad_norm.detach().float().to(self.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.AVG)  # one decision for every rank
        flag, log = self.window.check(v)
        if not bool(flag):  # the one host read of a healthy update (a flag)
            self._apply()
            self.window.add(log)
            self.updates += 1
            self._cool_down()
            if self.updates % self.options["snapshot_every"] == 0:
                self._rotate_snapshots()
            if self.probe is not None and len(self.probe.records) != self._probe_seen:
                self._check_probe(index)
            return True
        self._on_flag(index, v, log, batch, ids)
        return False

    def _apply(self) -> None:
        """``optimizer.step()`` at the scheduled learning rate x ``lr_scale``, then one scheduler step."""
        groups = self.optimizer.param_groups
        saved = [g["lr"] for g in groups] if self.lr_scale != 1.0 else None
        if saved is not None:
            for g in groups:
                g["lr"] = g["lr"] * self.lr_scale
        try:
            self._optimizer_step()
        finally:
            if saved is not None:
                for g, lr in zip(groups, saved, strict=True):
                    g["lr"] = lr
        if self.scheduler is not None and self.step_scheduler:
            self.scheduler.step()

    def _cool_down(self) -> None:  # the lowered rate returns after ``cooldown`` healthy updates
        if self.lr_scale != 1.0:
            self._calm += 1
            if self._calm >= self.options["cooldown"]:
                self.lr_scale, self._calm = 1.0, 0

    def _on_flag(self, index: int, v: Tensor, log: Tensor, batch: Any, ids: Any) -> None:
        o = self.options
        loss, norm = v.tolist()
        z_loss, z_grad = self.window.z(log)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            kind = "nonfinite"
        elif bool(self.window.diverged | (self.window.recent > self.window.sustained)):
            kind = "divergence"
        else:
            kind = "loss_spike" if not float(log[0]) < float(self.window.limit[0]) else "grad_spike"
        self._flag_since_pending = True
        self._flags.append(index)
        while self._flags and self._flags[0] <= index - o["rollback_window"]:
            self._flags.popleft()
        event = GuardEvent(step=index, kind=kind, action="skip", loss=loss, grad_norm=norm, z_loss=z_loss,
                           z_grad=z_grad)
        if kind != "divergence" and batch is not None and o["examples"]:
            self._name_examples(event, batch, ids)
        if kind == "divergence" or len(self._flags) >= o["rollback_after"]:
            self._rollback(event)  # records the event (rollback, or stop and raise)
            return
        self.skipped += 1
        event.lr_scale = self.lr_scale
        event.message = f"update {index}: {kind.replace('_', ' ')} (loss {loss:.4g}, gradient norm {norm:.4g}); skipped"
        self._record(event)

    def _rollback(self, event: GuardEvent) -> None:
        o = self.options
        if self.rollbacks >= o["max_rollbacks"] or self._good is None:
            event.action, event.lr_scale = "stop", self.lr_scale
            event.message = (f"update {event.step}: {event.kind.replace('_', ' ')} again after {self.rollbacks} "
                             f"rollbacks (guard max_rollbacks={o['max_rollbacks']}); the run is stopped. Lower the "
                             "learning rate, clip the gradients, or look at the examples the events name.")
            self._record(event)
            raise GuardStop(event.message)
        restored = self._restore(self._good)
        self.rollbacks += 1
        self.lr_scale, self._calm = self.lr_scale * o["lr_factor"], 0
        self._flags.clear()
        event.action, event.restored, event.lr_scale = "rollback", restored, self.lr_scale
        event.message = (f"update {event.step}: {event.kind.replace('_', ' ')}; rolled back to update {restored}, "
                         f"learning rate x{self.lr_scale:g} for the next {o['cooldown']} updates")
        self._record(event)

    def _name_examples(self, event: GuardEvent, batch: Any, ids: Any) -> None:
        if not isinstance(batch, tuple | list) or len(batch) < 2 or not all(isinstance(t, Tensor) for t in batch[:2]):
            return
        x, y = batch[0], batch[1]
        ids = ids() if callable(ids) else ids if ids is not None else batch[2] if len(batch) > 2 else None
        try:
            ranking = rank_examples(self.model, self.loss_fn, x, y, ids).top(self.options["examples"])
        except Exception as e:  # a module torch.func cannot trace: the event stands without its examples
            event.message = f"(examples not ranked: {type(e).__name__}: {str(e)[:120]}) "
            return
        event.examples, event.ids = ranking.index, ranking.ids
        event.example_loss, event.example_grad_norm = ranking.loss, ranking.grad_norm

    def _record(self, event: GuardEvent) -> None:
        self.events.append(event)
        for sink in self.sinks:
            sink.write(event_rows(event), [])

    def _snapshot(self) -> dict[str, Any]:
        to = self.snapshot_device

        def keep(t: Any) -> Any:
            return t.detach().to(to, copy=True) if isinstance(t, Tensor) and to is not None else \
                t.detach().clone() if isinstance(t, Tensor) else t

        return {
            "model": {k: keep(t) for k, t in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if to is None else
            _map(self.optimizer.state_dict(), keep),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()) if self.scheduler is not None else None,
            "rng": (torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []),
            "window": self.window.state(), "updates": self.updates,
        }

    def _rotate_snapshots(self) -> None:
        if self._pending is not None and not self._flag_since_pending:
            self._good = self._pending  # a whole interval passed without a flag: it is good
        self._pending, self._flag_since_pending = self._snapshot(), False

    def _restore(self, snap: dict[str, Any]) -> int:
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        if self.scheduler is not None and snap["scheduler"] is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
        torch.set_rng_state(snap["rng"][0])
        if snap["rng"][1]:
            torch.cuda.set_rng_state_all(snap["rng"][1])
        self.window.state(snap["window"])
        for p in self.params:
            p.grad = None
        self._pending, self._flag_since_pending = None, False
        return snap["updates"]

    def _check_probe(self, index: int) -> None:
        """A layer whose dead or saturated fraction rises past the diagnosis threshold while it started under it."""
        from deepscope.diagnosis.rules.layers import DEAD_FRACTION, SATURATION_FRACTION

        rows, self._probe_seen = self.probe.records[self._probe_seen:], len(self.probe.records)
        limits = {"dead": DEAD_FRACTION, "saturated": SATURATION_FRACTION}
        for r in rows:
            if r["quantity"] != "activation" or r["stat"] not in limits:
                continue
            key = (r["source"], r["layer"], r["stat"])
            base = self._pathology_base.setdefault(key, r["value"])
            if r["value"] >= limits[r["stat"]] > base and key not in self._pathology_hit:
                self._pathology_hit.add(key)
                event = GuardEvent(step=index, kind=r["stat"], action="warn", lr_scale=self.lr_scale,
                                   message=f"update {index}: layer {r['layer']} {r['stat']} fraction "
                                           f"{r['value']:.0%} (was {base:.0%} at the first record)")
                if self.options["on_pathology"] == "rollback":
                    self._rollback(event)
                else:
                    self._record(event)

    def summary(self) -> str:
        """One line: what the guard did."""
        counts = {a: sum(e.action == a for e in self.events) for a in ACTIONS}
        did = ", ".join(f"{n} {a}{'s' if n != 1 and a != 'stop' else ''}" for a, n in counts.items() if n)
        return f"guard: {self.updates} updates applied, {did or 'no action'}"

    def scalars(self) -> list[dict[str, Any]]:
        """The events as scalar rows ``dict(step, name="guard/<action>", value=loss)`` (what the store keeps)."""
        return [{"step": e.step, "name": f"guard/{e.action}", "value": e.loss} for e in self.events]


def event_rows(event: GuardEvent) -> list[dict[str, Any]]:
    """An event as probe-style stats rows for the sinks: ``source="guard"``, ``layer`` = kind, ``quantity`` =
    action, one row per number (loss, gradient norm, learning-rate scale)."""
    values = {"loss": event.loss, "grad_norm": event.grad_norm, "lr_scale": event.lr_scale}
    return [dict(step=event.step, source="guard", layer=event.kind, quantity=event.action, stat=k, value=float(v))
            for k, v in values.items()]


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map(v, fn) for v in obj)
    return fn(obj)
