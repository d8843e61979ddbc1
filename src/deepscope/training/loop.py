"""The trainer: one run of a :class:`~deepscope.config.RunSpec`, with evaluation, checkpoints and resume.

This is the one training loop of deepscope: ``deepscope train``, ``deepscope doctor``, the experiments
and your own code (``train(spec, model=my_module)``) all go through :func:`train`, so the same spec and
seed give the same run wherever the model comes from. Read it top to bottom: :func:`train` resolves the
run (new or resumed), :func:`~deepscope.training.setup.build` makes its parts, :meth:`_Run.loop` trains.

Data come either from a stream (Shapeset, learned online, read in chunks of consecutive batches) or
from an in-memory training set visited in epochs (epoch ``e`` shuffled by a generator seeded with
``(seed, e)``). Either way the batch of update ``t`` is a function of ``t``, so the data position of a
checkpoint is just its step (:class:`~deepscope.data.loader.TrainBatches`).

The hot loop keeps everything on the device: per-update losses go into a buffer and the training
errors into a counter, both read once per progress refresh (at most four a second) or evaluation.
Callbacks (:mod:`deepscope.training.callbacks`) are called at ``on_start``, ``on_step`` (after
``optimizer.step()``; ``ctx.loss`` is that update's loss), ``on_eval`` (``ctx.metrics`` just computed)
and ``on_end``. The gradients of an update are cleared just before the next backward pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscope.config import RunSpec, load_spec, validate_spec
from deepscope.data import Dataset
from deepscope.metrics import add_sums, batch_sums
from deepscope.optim import clip_gradients, schedule_steps_on, step_schedule
from deepscope.store import CHECKPOINT_FILE, RunTakenOver, Store, TakenMessage
from deepscope.training import checkpoint as _checkpoint
from deepscope.training.callbacks import TrainContext, as_callback
from deepscope.training.console import eval_line, new_progress, refresh
from deepscope.training.device import resolve_device, stop_on_signals
from deepscope.training.divergence import EXPLOSION, divergence_message, exploded, first_bad
from deepscope.training.early_stopping import EarlyStopping, end_with_best
from deepscope.training.evaluation import run_metrics
from deepscope.training.guard import GuardStop
from deepscope.training.guard_adapters import for_trainer
from deepscope.training.setup import Setup, build, recorded_spec

__all__ = ["Result", "train"]

REFRESH_SECONDS = 0.25  # progress bar: at most four refreshes (and host reads) a second


@dataclass
class Result:
    """A run: how :func:`train` ended it. ``status`` is ``finished``, ``diverged`` or ``interrupted``."""

    run_id: str | None
    status: str
    step: int
    metrics: dict[str, float]
    test_error: float | None
    best: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    message: str = ""
    model: nn.Module | None = field(default=None, repr=False)
    eval_step: int | None = None  # the update at which ``metrics`` were evaluated
    diverged_at: int | None = None  # the first update with a NaN/Inf loss, for a diverged run
    store: Store | None = field(default=None, repr=False)  # the store the run is recorded in
    restored: int | None = None  # train.restore_best: the update whose weights the run ended with
    spec: dict[str, Any] = field(default_factory=dict, repr=False)  # the spec as recorded
    guard: Any = field(default=None, repr=False)  # train.guard: the Guard (its events, summary())
    task: Any = None  # the deepscope.metrics.Task the loss and the targets make


def train(
    spec: RunSpec | dict | None = None,
    *,
    store: Store | str | os.PathLike | None = None,
    callbacks: Sequence[Callable[[TrainContext], Any]] = (),
    quiet: bool = False,
    resume: str | None = None,
    dataset: Dataset | None = None,
    model: nn.Module | None = None,
    force: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Result:
    """Train the run ``spec`` (a :class:`RunSpec` or its dict); record it in ``store`` if given.

    ``model`` trains your own ``nn.Module`` instead of the network of ``spec.model`` (as initialized by you:
    ``[model]`` and ``[init]`` are not used) with everything else the spec says -- data, preprocessing,
    augmentation, optimizer, schedule, clipping, evaluation, checkpoints -- and the same batches, so only the
    network differs. It is moved to the spec's device and trained in place.
    ``callbacks`` are :class:`~deepscope.training.callbacks.Callback` objects or plain functions ``fn(ctx)``.
    ``resume`` is the id (or unique prefix) of a run in ``store`` to continue from its checkpoint; its
    stored spec is used unless ``spec`` is given (e.g. to extend ``train.updates``); a run of your own
    model resumes with the same ``model=`` (any weights: the checkpoint's are loaded). ``dataset`` replaces
    the dataset named by ``spec.data`` (your own tensors). Without a store nothing is written to disk.
    A run has one writer: resuming claims the run in the store, refused while another live process trains
    it, unless ``force`` (see :meth:`~deepscope.store.Store.claim`).
    ``loss_fn`` trains with a loss of your own, any callable ``(output, target) -> scalar`` (``nn.HuberLoss()``,
    ``F.binary_cross_entropy_with_logits``, a function), instead of ``train.loss``; its name is recorded as
    ``train.loss`` and the task (metrics, baseline) is read from it and the targets (:func:`deepscope.metrics.task_of`).
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} is not allowed; give a torch.nn.Module (or None)")
    if store is not None and not isinstance(store, Store | str | os.PathLike):
        raise TypeError(f"store={type(store).__name__} is not allowed; give a Store or a directory path")
    callbacks = [as_callback(c) for c in callbacks]
    if store is not None and not isinstance(store, Store) and resume is not None:
        store = Store(store)  # a new run opens its store once its spec, data and model are checked
    checkpoint, run_id, claimed = None, None, None
    if resume is not None:
        if store is None:
            raise ValueError("resume needs the store that holds the run (store=...)")
        run_id = store.resolve(resume)
        claimed = store.claim(run_id, force=force)
    try:
        if resume is not None:
            checkpoint = _checkpoint.run_checkpoint(store, run_id)
            if checkpoint.get("user_model") and model is None:
                raise ValueError(f"run {run_id} trained a model of your own ({checkpoint['user_model']['class']}); "
                                 "resume it with the same module: train(resume=..., model=...), or --model "
                                 "pkg.mod:factory on the command line")
            if checkpoint.get("user_loss") and loss_fn is None:
                raise ValueError(f"run {run_id} trained with a loss of your own ({checkpoint['user_loss']}); resume it "
                                 "with the same one: train(resume=..., loss_fn=...)")
            spec = spec if spec is not None else checkpoint["spec"]
        if spec is None:
            raise ValueError("train() needs a spec (or resume=RUN with a store)")
        spec = spec if isinstance(spec, RunSpec) else load_spec(spec) if isinstance(spec, str | os.PathLike) else \
            validate_spec(spec)
        device = resolve_device(spec.train.device)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seed for this run, leave the caller's RNG as it was
            torch.manual_seed(spec.train.seed)
            parts = build(spec, device, checkpoint, dataset, model, run_id, loss_fn)
            run = _Run(spec, device, parts, store, run_id, checkpoint, callbacks, quiet)
            claimed = None  # the run owns its store entry now and records how it ends
            return run.loop()
    finally:
        if claimed is not None:  # refused before training: the run is as it was
            store.release(run_id, claimed)


class _Run:
    """The state of one training run as it goes; :meth:`loop` trains. Internal: use :func:`train`."""

    def __init__(self, spec: RunSpec, device: torch.device, parts: Setup, store: Store | None, run_id: str | None,
                 checkpoint: dict | None, callbacks, quiet: bool):
        self.spec, self.device, self.parts, self.store, self.quiet = spec, device, parts, store, quiet
        self.callbacks = tuple(callbacks)
        self.model, self.optimizer, self.schedule = parts.model, parts.optimizer, parts.schedule
        # progress of the run: step, accumulators since the last evaluation, early stopping
        self.step = 0
        saved = len(checkpoint["accumulators"]["losses"]) if checkpoint is not None else 0
        self.losses = torch.zeros(parts.eval_every + saved, device=device)  # room until the next evaluation
        self.slots = self.losses.unbind(0)  # views: slots[i].copy_(loss) writes the buffer in one op
        self.sums: dict[str, Any] = {}  # the task's metric sums since the last evaluation (deepscope.metrics)
        self.n = 0
        self.metrics: dict[str, float] = {}
        self.eval_step: int | None = None  # the update of the last evaluation, which ``metrics`` are from
        self.diverged_at: int | None = None  # the first update whose loss was NaN/Inf
        monitored = parts.task.primary if spec.train.monitor == "error" else spec.train.monitor  # rmse: regression
        self.stopping = EarlyStopping(monitored, spec.train.patience, spec.train.restore_best)
        self.saved_step = -1
        self.start_loss: float | None = None  # the first update's loss: the reference of the explosion rule
        if checkpoint is not None:
            try:
                _checkpoint.restore_run(self, checkpoint)
            except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
                path = store.run_dir(run_id) / CHECKPOINT_FILE if store is not None else "the checkpoint"
                raise _checkpoint.CheckpointError(
                    f"the checkpoint {path} does not fit run {run_id}'s spec ({str(e).splitlines()[0][:160]}); "
                    "it is damaged or from another run: start the run again") from None
        self.run_id, self.path = run_id, None
        if store is not None:
            if not isinstance(store, Store):
                store = self.store = Store(store)
            if run_id is None:
                self.run_id = store.create_run(spec.name, recorded_spec(spec, parts.user_model, parts.user_loss),
                                               spec.train.seed)
            else:
                store.delete_after(run_id, self.step)
                store.update_spec(run_id, recorded_spec(spec, parts.user_model, parts.user_loss))
                store.set_status(run_id, "running")
            self.path = store.run_dir(self.run_id) / CHECKPOINT_FILE
            if checkpoint is not None:
                self.saved_step = self.step
        self.guard = for_trainer(self)  # train.guard (deepscope.training.guard): it steps the optimizer and schedule
        self.ctx = TrainContext(event="start", step=self.step, model=self.model, optimizer=self.optimizer,
                                metrics=self.metrics, run_id=self.run_id, store=store, spec=spec,
                                eval_sets=parts.eval_sets, loss_fn=parts.loss_fn, task=parts.task)

    # --- the loop ------------------------------------------------------------------------------------

    def loop(self) -> Result:
        from rich.console import Console

        console = Console(stderr=True, quiet=self.quiet)
        status, message, flag = "finished", "", {"stop": False}
        model, optimizer, loss_fn, next_batch = self.model, self.optimizer, self.parts.loss_fn, self.parts.next_batch
        params = [p for p in model.parameters() if p.requires_grad]
        clip_norm, clip_value = self.spec.train.clip_norm, self.spec.train.clip_value
        clipping = clip_norm is not None or clip_value is not None
        per_update = self.schedule if self.schedule is not None and schedule_steps_on(self.schedule) == "update" \
            else None
        total, eval_every, checkpoint_every = self.parts.total, self.parts.eval_every, self.parts.checkpoint_every
        guard = self.guard
        task = self.parts.task
        model.train()
        self._emit("start")
        progress = new_progress(console, total, self.step, self.spec.name, self.quiet)
        next_refresh, last_step, last_time = time.perf_counter() + REFRESH_SECONDS, self.step, time.perf_counter()
        consistent = True
        try:
            with progress, stop_on_signals(flag):
                while self.step < total:
                    consistent = False
                    x, y = next_batch(self.step)
                    logits = model(x)
                    loss = loss_fn(logits, y)
                    # Gradients are freed just before backward() re-makes them rather than after step(): the
                    # allocator then reuses their memory (about 25 % faster at batch 10 on CPU).
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    norm = clip_gradients(params, clip_norm, clip_value) if clipping else None
                    if guard is None:
                        optimizer.step()
                        if per_update is not None:
                            step_schedule(per_update)
                    elif not guard.step(loss, (x, y), ids=lambda t=self.step: guard.batch_ids(t), grad_norm=norm):
                        loss = None  # train.guard skipped the update (or rolled back): its loss is not recorded
                    if loss is not None:
                        loss = loss.detach()
                        self.slots[self.n].copy_(loss)
                        self.sums = add_sums(self.sums, batch_sums(task, logits, y))
                        self.n = self.n + 1
                    self.step += 1
                    consistent = True
                    if self.callbacks and loss is not None:
                        self._emit("step", loss)
                    if self.step % eval_every == 0 or self.step == total:
                        status, message = self._evaluation_point(console)
                        if status != "finished" or message:
                            break
                    if self.step % checkpoint_every == 0 and self.step < total and not self.save():
                        status, message = "diverged", self._diverged(*(self._first_bad() or (self.step, math.nan)))
                        break
                    if flag["stop"]:
                        raise KeyboardInterrupt
                    if not self.quiet and (now := time.perf_counter()) >= next_refresh:
                        if bad := self._first_bad():
                            status, message = "diverged", self._diverged(*bad)
                            break
                        refresh(progress, self.step, self.losses, self.n, self.sums,
                                optimizer.param_groups[0]["lr"], (self.step - last_step) / (now - last_time))
                        next_refresh, last_step, last_time = now + REFRESH_SECONDS, self.step, now
                progress.update(progress.task_ids[0], completed=self.step)  # the bar ends where training did
                if status == "finished":
                    status, message = self._end_of_training(message)
        except KeyboardInterrupt:
            status, message = "interrupted", self._interrupted(consistent)
        except GuardStop as e:  # train.guard rolled back max_rollbacks times and the trouble came back
            status, message, self.diverged_at = "diverged", str(e), self.step
        except RunTakenOver as e:  # another process took the run over (--force): leave it everything
            status, message = "interrupted", TakenMessage(e)
        except Exception:  # a failing callback or a full disk: what was flushed stays, the run reads as interrupted
            self._failed()
            raise
        if self.store is not None and not isinstance(message, TakenMessage):
            self.store.set_status(self.run_id, status)
        self._emit("end")
        if message:
            console.print(message, style="yellow" if status == "finished" else "red", markup=False)
        return Result(
            run_id=self.run_id, status=status, step=self.step, metrics=dict(self.metrics),
            test_error=self.metrics.get("test/error"), best=dict(self.stopping.best),
            checkpoint=self.path if self.saved_step >= 0 else None, message=message, model=self.model,
            eval_step=self.eval_step, diverged_at=self.diverged_at, store=self.store,
            restored=self.stopping.restored, spec=recorded_spec(self.spec, self.parts.user_model), guard=self.guard,
            task=self.parts.task,
        )

    def _evaluation_point(self, console) -> tuple[str, str]:
        """At an evaluation update: stop on a non-finite or exploded loss, else evaluate; early stopping's word."""
        if bad := self._first_bad():
            return "diverged", self._diverged(*bad)
        if message := self._exploded():
            self.evaluate()  # the exploded loss is recorded; the checkpoint is not
            return "diverged", message
        self.evaluate()
        self._emit("eval")
        console.print(eval_line(self.step, self.parts.total, self.metrics), markup=False)
        return "finished", self.stopping.stop_message(self.step) or ""

    def _end_of_training(self, message: str) -> tuple[str, str]:
        if self.n:  # stopped between evaluations (early stopping evaluates on its own)
            self.evaluate()
            self._emit("eval")
        if self.spec.train.restore_best:
            message = " ".join(filter(None, [message, end_with_best(self)]))
        if not self.save():
            return "diverged", self._diverged(self.step, math.nan)
        return "finished", message

    def _interrupted(self, consistent: bool) -> str:
        if consistent:  # between two updates: the state is whole, save it
            with contextlib.suppress(RunTakenOver):
                self.save()
        message = f"Interrupted at update {self.step}."
        if self.saved_step >= 0:
            message += (f" Checkpoint at update {self.saved_step}: {self.path}. "
                        f"Resume with: deepscope train --resume {self.run_id}")
        return message

    def _failed(self) -> None:
        if self.store is not None:
            self.store.discard()
            with contextlib.suppress(Exception):  # the store may be what failed: keep the first error
                self.store.set_status(self.run_id, "interrupted")
        self.ctx.event = "end"
        for callback in self.callbacks:  # let every callback let go (a probe removes its hooks)
            with contextlib.suppress(Exception):
                callback.on_end(self.ctx)

    def _emit(self, event: str, loss: torch.Tensor | None = None) -> None:
        ctx = self.ctx
        ctx.event, ctx.step, ctx.loss, ctx.metrics, ctx.run_id = event, self.step, loss, self.metrics, self.run_id
        for callback in self.callbacks:
            getattr(callback, f"on_{event}")(ctx)

    # --- evaluation, divergence, checkpoints ---------------------------------------------------------------

    def evaluate(self) -> None:
        metrics = run_metrics(self.model, self.parts.eval_sets, self.parts.loss_fn, self.spec.train.eval_batch_size,
                              self.losses[: self.n], self.sums, self.parts.task)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        self.metrics.clear()
        self.metrics.update(metrics)
        self.eval_step = self.step
        if self.store is not None:
            self.store.log_scalars(self.run_id, self.step, metrics)
            self.store.flush()
        score = "r2" if self.parts.task.kind == "regression" else "error"  # a plateau schedule maximizes R^2, 1 - error
        valid_score = metrics.get(f"valid/{score}")
        if valid_score is None:  # no validation split: no best model, no patience; a plateau schedule reads training
            valid_score = metrics.get(f"train/{score}", math.nan)
        else:
            self.stopping.observe(self.step, metrics, self.model)
        if self.schedule is not None and schedule_steps_on(self.schedule) == "eval":
            step_schedule(self.schedule, metric=valid_score if score == "r2" else 1.0 - valid_score)
        self.losses.zero_()
        self.sums = {}
        self.n = 0

    def _first_bad(self) -> tuple[int, float] | None:
        return first_bad(self.losses[: self.n], self.step)

    def _exploded(self) -> str | None:
        if self.n == 0:
            return None
        if self.start_loss is None:
            self.start_loss = float(self.losses[0])
        classes = self.parts.data.num_classes
        if (found := exploded(self.losses[: self.n], self.start_loss, classes)) is None:
            return None
        (mean, reference), self.diverged_at = found, self.step
        return divergence_message(
            self.spec, self.step, mean, self.path if self.saved_step >= 0 else None, self.saved_step,
            what=f"The training loss averaged {mean:.4g} up to update {self.step}, more than {EXPLOSION:g} times "
                 f"max(its first value, ln {classes}) = {reference:.3g}: the loss exploded and the run "
                 "is stopped as diverged.")

    def _diverged(self, update: int, value: float) -> str:
        self.diverged_at = update
        if self.store is not None:
            self.store.log_scalars(self.run_id, update, {"train/loss": value})
            self.store.flush()
        return divergence_message(self.spec, update, value, self.path if self.saved_step >= 0 else None,
                                  self.saved_step)

    def save(self) -> bool:
        """Write a checkpoint (when there is a store) unless the state is not finite; False if it is not."""
        if self.path is None:
            return True
        params = [p.detach().isfinite().all() for p in self.model.parameters()]
        if not bool(torch.stack([*params, self.losses[: self.n].isfinite().all()]).all()):
            return False
        if not self.store.owns(self.run_id):
            raise RunTakenOver(self.run_id)
        _checkpoint.save(self.path, _checkpoint.run_state(self))
        self.saved_step = self.step
        return True
