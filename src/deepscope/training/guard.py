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

Every update the guard reads two numbers from the device -- the loss and the gradients' total 2-norm -- and checks
them on the host against limits computed from the last ``window`` healthy updates (:mod:`.guard_window`: a
non-finite value; a log-scale z-score above ``z`` after ``warmup``; a divergence; a sustained rise). The norm is
taken in one call over every small gradient and a fixed sample of each large one (:mod:`.guard_norm`: about 2 % of
the gradients' elements, ``grad_fraction=1`` for all). That one read is the host synchronisation a conditional
``optimizer.step()`` needs
anyway (free on a CPU; on a GPU it waits for the backward pass, as ``loss.item()`` would). A flagged update is
*skipped* (the optimizer is not stepped: its state, the schedule and the step count are untouched); when
``rollback_after`` flags fall within ``rollback_window`` updates, or the loss diverges or rises for long, the model,
optimizer, schedule and RNG *roll back* to the last good in-memory snapshot and the learning rate is lowered by
``lr_factor`` for ``cooldown`` updates; after ``max_rollbacks`` rollbacks the run *stops* (:class:`GuardStop`).
On a spike the offending batch's examples are ranked by their own loss and gradient norm (:mod:`.guard_examples`).
The README's "Guard" section has the details and the measurements. Defaults follow OLMo-core's skip-step
optimizer (z > 6 over the last 128 updates) with a robust centre (the median); skipping, rolling back and lowering
the learning rate are what PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", section
5.1) and OPT-175B (Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models", section 2.5) did by
hand. Under ``torch.distributed`` the checked values are averaged over the ranks first, so every rank takes the
same decision.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.registry import integer, unknown
from deepscope.training.guard_buffers import applied_step
from deepscope.training.guard_examples import default_loss, rank_batch
from deepscope.training.guard_inputs import check_parts, scalar, steps_scheduler
from deepscope.training.guard_norm import GradNorm
from deepscope.training.guard_state import new_pathologies, restore_snapshot, take_snapshot
from deepscope.training.guard_window import EXPLOSION, SUSTAINED, Window

__all__ = ["DEFAULTS", "EXPLOSION", "SUSTAINED", "Guard", "GuardEvent", "GuardStop"]

DEFAULTS: dict[str, Any] = dict(window=128, warmup=64, z=6.0, refresh=8, snapshot_every=100, rollback_after=3,
                                rollback_window=50, lr_factor=0.1, cooldown=200, max_rollbacks=5, examples=3,
                                on_pathology="warn", check_grad=True, grad_fraction=1 / 64)
ACTIONS = ("skip", "rollback", "stop", "warn")
_DISTRIBUTED = torch.distributed.is_available()


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
    ids: list[Any] | None = None  # their dataset ids (integers, or strings as given), when known
    example_loss: list[float] = field(default_factory=list)
    example_grad_norm: list[float] = field(default_factory=list)
    lr_scale: float = 1.0  # the learning-rate factor in force after the action
    restored: int | None = None  # rollback: the update whose state was restored
    message: str = ""


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
    f = o["grad_fraction"]
    if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
        raise ValueError(f"guard grad_fraction={f!r} is not allowed; give a number in (0, 1] (the part of each large "
                         "gradient read for its norm; 1: the exact norm)")
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
        loss_fn: ``loss_fn(output, y)`` for ranking the examples of an offending batch (by default cross-entropy
            over class indices, token-level for ``(N, T, V)`` outputs; floating-point targets need a loss_fn).
            A ``ReduceLROnPlateau`` is rolled back but not stepped (it needs your metric).
        scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop (``scaler.unscale_(optimizer)`` before
            ``guard.step``, ``scaler.update()`` after): non-finite gradients with a finite loss are its overflow
            steps, skipped without an event (``scaler_skips``).
        probe: a :class:`~deepscope.probe.Probe` on ``model``: its dead/saturated records become events.
        sinks: objects with ``write(stats_rows, histogram_rows)`` (the probe's sinks: store, TensorBoard, W&B,
            MLflow): each event is written as rows ``source="guard", layer=kind, quantity=action``.
        snapshot_device: where snapshots are kept (default: the parameters' device; ``"cpu"`` saves its memory).
        options: ``window``, ``warmup``, ``z``, ``refresh``, ``snapshot_every``, ``rollback_after``,
            ``rollback_window``, ``lr_factor``, ``cooldown``, ``max_rollbacks``, ``examples``, ``on_pathology``,
            ``check_grad`` (False: the loss alone, no gradient norm to compute), ``grad_fraction`` (the part of each
            large gradient read for the norm; 1: the exact norm) (defaults in ``DEFAULTS``).
    After (or during) training: ``events`` (:class:`GuardEvent`), ``updates`` (applied), ``skipped``, ``rollbacks``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None, *,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, probe: Any = None,
                 sinks: Iterable[Any] = (), snapshot_device: str | torch.device | None = None,
                 step_scheduler: bool = True, scaler: Any = None, **options: Any):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Guard: model={type(model).__name__} is not allowed; give a torch.nn.Module")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Guard: optimizer={type(optimizer).__name__} is not allowed; give a torch.optim.Optimizer")
        self.options = o = check_options(options)
        self.sinks, snapshot_device = check_parts(optimizer, scheduler, loss_fn, sinks, probe, snapshot_device,
                                                  step_scheduler)
        self.model, self.optimizer, self.scheduler, self.probe = model, optimizer, scheduler, probe
        self._optimizer_step, self._buffers = applied_step(optimizer, model)  # the step before any wrapping
        self.step_scheduler = steps_scheduler(scheduler, step_scheduler)
        self.loss_fn = loss_fn or default_loss
        self.scaler, self.scaler_skips = scaler, 0  # a GradScaler's own overflow steps: not events
        if scaler is not None and not callable(getattr(scaler, "is_enabled", None)):
            raise TypeError(f"Guard: scaler={type(scaler).__name__} is not allowed; give a torch.amp.GradScaler")
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.snapshot_device = snapshot_device
        self.window = Window(o["window"], o["warmup"], float(o["z"]), o["refresh"])
        self.events: list[GuardEvent] = []
        self.step_index = self.updates = self.skipped = self.rollbacks = 0
        self.lr_scale, self._calm = 1.0, 0  # healthy updates since the last rollback (for the cool-down)
        self._flags: deque[int] = deque()  # step indices of recent flags
        self._good: dict | None = None  # the snapshot a rollback returns to
        self._pending: dict | None = None  # the newest snapshot, trusted once an interval passes without a flag
        self._flag_since_pending = False
        self._probe_seen, self._pathology_base, self._pathology_hit = 0, {}, set()
        embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
                      for p in m.parameters(recurse=False)}
        self._norm = GradNorm(self.params, o["grad_fraction"], whole=embeddings)
        self._exact = GradNorm(self.params, 1.0)  # the norm an event reports
        self._open, self.logged = False, 0  # logged: events in a store

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
        loss_value, norm = self._read(loss, grad_norm)
        kind = self.window.check(loss_value, norm)
        if kind == "nonfinite" and self.scaler is not None and math.isfinite(loss_value) and self.scaler.is_enabled():
            self.scaler_skips += 1  # the scaler's overflow (finite loss, inf gradients): its update() lowers the scale
            return False
        if kind is None:
            self._apply()
            self.window.add()
            self.updates += 1
            self._cool_down()
            if self.updates % self.options["snapshot_every"] == 0:
                self._rotate_snapshots()
            if self.probe is not None and len(self.probe.records) != self._probe_seen:
                self._check_probe(index)
            return True
        if self._norm.sampled and grad_norm is None and self.options["check_grad"]:  # the event: the exact norm
            norms = self._exact.compute()
            norm = self._exact.total(torch.stack(norms).tolist()) if norms else norm
        self._buffers.undo()  # the statistics (BatchNorm) this batch moved; before the ranking, which reads them
        self._on_flag(index, kind, loss_value, norm, batch, ids)
        return False

    def _read(self, loss: Tensor | float, grad_norm: Tensor | None) -> tuple[float, float]:
        """The loss and the total gradient norm (sampled, :mod:`.guard_norm`), in one read from the device (the only
        one of a healthy update)."""
        loss = scalar("loss", loss)  # a 0-d float32 tensor, with as few calls as may be (each costs ~10 us here)
        sampled = False
        if grad_norm is not None:  # given (e.g. by clipping): nothing to compute
            norms = [scalar("grad_norm", grad_norm, loss.device).to(loss.device)]
        elif not self.options["check_grad"]:
            norms = []  # the loss alone (a constant norm never flags)
        else:
            norms, sampled = self._norm.compute(), True
        v = torch.stack([loss if loss.device == norms[0].device else loss.to(norms[0].device), *norms]) if norms \
            else loss.reshape(1)
        if _DISTRIBUTED and torch.distributed.is_initialized():
            total = self._norm.device_total(v[1:]) if sampled else torch.linalg.vector_norm(v[1:])
            v = torch.stack([v[0], total if len(v) > 1 else torch.ones_like(v[0])])
            torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.AVG)  # one decision for every rank
            sampled = False
        numbers = v.tolist()  # the one host read of a healthy update
        if len(numbers) == 1:
            return numbers[0], 1.0
        return numbers[0], self._norm.total(numbers[1:]) if sampled else math.sqrt(sum(n * n for n in numbers[1:]))

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
        if self.step_scheduler:
            self.scheduler.step()

    def _cool_down(self) -> None:  # the lowered rate returns after ``cooldown`` healthy updates
        if self.lr_scale != 1.0:
            self._calm += 1
            if self._calm >= self.options["cooldown"]:
                self.lr_scale, self._calm = 1.0, 0

    def _on_flag(self, index: int, kind: str, loss: float, norm: float, batch: Any, ids: Any) -> None:
        o = self.options
        z_loss, z_grad = self.window.z()
        self._flag_since_pending = True
        self._flags.append(index)
        while self._flags and self._flags[0] <= index - o["rollback_window"]:
            self._flags.popleft()
        event = GuardEvent(step=index, kind=kind, action="skip", loss=loss, grad_norm=norm, z_loss=z_loss,
                           z_grad=z_grad)
        if kind not in ("divergence", "rise") and batch is not None and o["examples"]:
            self._name_examples(event, batch, ids)
        if kind in ("divergence", "rise") or len(self._flags) >= o["rollback_after"]:
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
        try:
            ranking = rank_batch(self.model, self.loss_fn, batch, ids, self.options["examples"])
        except Exception as e:  # a module torch.func cannot trace: the event stands without its examples
            event.note = f" (examples not ranked: {type(e).__name__}: {str(e)[:240]})"
            return
        event.examples, event.ids = ranking.index, ranking.ids
        event.example_loss, event.example_grad_norm = ranking.loss, ranking.grad_norm

    def _record(self, event: GuardEvent) -> None:
        event.message += getattr(event, "note", "")  # why the examples were not ranked, if they were not
        self.events.append(event)
        for sink in self.sinks:
            sink.write(event_rows(event), [])

    def _snapshot(self, into: dict[str, Any] | None = None) -> dict[str, Any]:
        return take_snapshot(self.model, self.optimizer, self.scheduler, self.device, self.snapshot_device,
                             {"window": self.window.state(), "updates": self.updates}, into)

    def _rotate_snapshots(self) -> None:
        spare = self._pending
        if self._pending is not None and not self._flag_since_pending:
            self._good, spare = self._pending, self._good  # a whole interval passed without a flag: it is good
        self._pending, self._flag_since_pending = self._snapshot(into=spare), False

    def _restore(self, snap: dict[str, Any]) -> int:
        restore_snapshot(self.model, self.optimizer, self.scheduler, snap, self._buffers)
        self.window.state(snap["window"])
        for p in self.params:
            p.grad = None
        self._pending, self._flag_since_pending = None, False
        return snap["updates"]

    def _check_probe(self, index: int) -> None:
        rows, self._probe_seen = self.probe.records[self._probe_seen:], len(self.probe.records)
        for layer, stat, value, base in new_pathologies(rows, self._pathology_base, self._pathology_hit):
            event = GuardEvent(step=index, kind=stat, action="warn", lr_scale=self.lr_scale,
                               message=f"update {index}: layer {layer} {stat} fraction {value:.0%} (was {base:.0%} "
                                       "at the first record)")
            if self.options["on_pathology"] == "rollback":
                self._rollback(event)
            else:
                self._record(event)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (plain numbers, lists and strings, so ``torch.load(weights_only=True)`` reads it):
        the window, the counters, the learning-rate scale and its cool-down, the recent flags and the events. The
        in-memory snapshots are not kept: after a resume the resumed state is the first good one."""
        return {"window": self.window.state(), "step_index": self.step_index, "updates": self.updates,
                "skipped": self.skipped, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "calm": self._calm,
                "flags": list(self._flags), "events": [asdict(e) for e in self.events], "logged": self.logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned (a resumed run goes on without a second warm-up)."""
        self.window.state(state["window"])
        self.step_index, self.updates, self.skipped = state["step_index"], state["updates"], state["skipped"]
        self.rollbacks, self.lr_scale, self._calm = state["rollbacks"], state["lr_scale"], state["calm"]
        self._flags = deque(state["flags"])
        self.events, self.logged = [GuardEvent(**e) for e in state["events"]], state["logged"]

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
