"""deepscope inside PyTorch Lightning: a callback that records with a :class:`~deepscope.probe.Probe`.

```python
from deepscope.integrations.lightning import DeepscopeCallback
trainer = lightning.Trainer(max_steps=1000, callbacks=[DeepscopeCallback(every=100)])
trainer.fit(module, train_loader, val_loader)   # findings printed, report in trainer.log_dir
```

Needs the extra ``deepscope[lightning]`` (``lightning.pytorch``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from deepscope.integrations._common import (
    LOSS,
    MONITOR,
    LossWindow,
    _take,
    finish,
    guard_options,
    metrics_by_step,
    set_options,
    take_examples,
)
from deepscope.training.probe import ProbeRecords

try:
    from lightning.pytorch import Callback, LightningModule
except ImportError as e:  # one line naming the extra, not a traceback through Lightning
    raise ImportError("deepscope.integrations.lightning needs the lightning package: "
                      "pip install 'deepscope[lightning]'") from e

__all__ = ["DeepscopeCallback"]


class _LoggerSink:
    """The probe's first sink: puts the gradients the optimizer stepped on into the weight-gradient rows,
    then logs the statistics through every logger of the Trainer (histograms to TensorBoard loggers)."""

    def __init__(self, callback: DeepscopeCallback, trainer: Any):
        self.callback, self.trainer = callback, trainer

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        grads = self.callback._grads
        if grads and stats and stats[0]["source"] == "train":
            self.callback._grads = {}
            _replace_weight_grads(stats, histograms, grads)
        if not self.callback.log:
            return
        from deepscope.probe.sinks import TensorBoardSink

        for logger in self.trainer.loggers:
            for step, metrics in metrics_by_step(stats).items():
                logger.log_metrics(metrics, step=step)
            if histograms and type(logger).__name__ == "TensorBoardLogger":
                TensorBoardSink(writer=logger.experiment).write([], histograms)


def _replace_weight_grads(stats: list[dict], histograms: list[dict], grads: dict[str, Tensor]) -> None:
    """Overwrite the ``weight_grad`` rows of one train record with statistics of ``grads`` (per weight name)."""
    from deepscope.probe.stats import WEIGHT_GRADIENT_STATS

    values = {name: v.tolist() for name, v in grads.items()}
    k = len(WEIGHT_GRADIENT_STATS)
    for r in stats:
        if r["quantity"] == "weight_grad" and r["layer"] in values and r["stat"] in WEIGHT_GRADIENT_STATS:
            r["value"] = float(values[r["layer"]][WEIGHT_GRADIENT_STATS.index(r["stat"])])
    for h in histograms:
        if h["quantity"] == "weight_grad" and h["layer"] in values:
            lo, hi, *counts = values[h["layer"]][k:]
            h.update(lo=lo, hi=hi, counts=counts)


class DeepscopeCallback(ProbeRecords, Callback):
    """Records Glorot & Bengio's instruments every ``every`` optimizer steps of a Lightning run.

    Args:
        every: record when ``trainer.global_step`` (optimizer steps, so gradient accumulation counts
            one step per update) is a multiple of ``every``: the monitor set at that step, and the
            training batch that follows, with the weight gradients the optimizer steps on (after the
            DDP all-reduce, before clipping).
        monitor: fixed examples ``x`` or ``(x, y)`` for the probe's own pass; ``None`` takes the first
            ``monitor_size`` examples of the validation dataloader (batches ``(x, y, ...)``); ``False``
            records the training batches only. The pass calls ``module(x)`` and scores it with
            ``loss_fn(output, y)`` (cross-entropy by default), so the module needs a ``forward``.
        sinks: more sinks for the probe's rows (``WandbSink``, ``MLflowSink``, ``TensorBoardSink``, ...).
        diagnose: at the end of training, print the findings and write the HTML report into
            ``trainer.log_dir`` (``deepscope-report.html``).
        log: log the statistics through the Trainer's loggers as ``deepscope/{source}/{quantity}/{stat}/
            {layer}`` (histograms too for TensorBoard), plus ``deepscope/loss``, the mean training loss
            since the previous record.
        guard: ``True`` or a dict of options: a :class:`~deepscope.Guard` watches every optimizer step (skips
            spikes, rolls back on divergence, names the examples of ``(x, y)`` batches; events through the loggers
            as ``deepscope/guard/{action}/{number}/{kind}``); ``callback.guard.events`` after training.
        probe_kwargs: passed to :class:`~deepscope.probe.Probe` (``layers``, ``bins``, ``jacobian_every``...).

    Under DDP only global rank 0 records. After training, ``records``, ``histograms``, ``scalars``
    (``train/loss`` per update), ``findings`` and ``report_path`` hold the results.
    """

    def __init__(self, every: int = 100, monitor: Any = None, sinks: Iterable[Any] = (), diagnose: bool = True, *,
                 monitor_size: int = MONITOR, loss_fn: Callable[[Any, Tensor], Tensor] | None = None,
                 log: bool = True, guard: bool | dict = False, **probe_kwargs: Any):
        set_options(self, every, monitor, sinks, diagnose, monitor_size, loss_fn, log, probe_kwargs)
        self.guard_options, self.guard, self._unguard = guard_options(guard), None, None
        self._guard_state: dict | None = None  # from a checkpoint: put back when the guard starts
        self._batches: deque[Any] = deque(maxlen=1)  # the training batches of the coming update (the guard ranks them)
        self._grads: dict[str, Tensor] = {}
        self._losses = LossWindow()
        self._last_step = -1
        self._loss_sum: Tensor | None = None
        self._loss_n = 0

    @property
    def scalars(self) -> list[dict]:
        return self._losses.rows()

    # ------------------------------------------------------------------ Lightning hooks

    def on_train_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if self.guard_options is not None:  # guard=: on every rank (each takes the same decision)
            self._start_guard(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        from deepscope.probe import Probe

        step = trainer.global_step
        self._last_step, self._losses, self._grads, self._loss_sum, self._loss_n = step, LossWindow(), {}, None, 0
        self.probe = Probe(pl_module, self.every, monitor=self._monitor(trainer, pl_module), loss_fn=self.loss_fn,
                           sinks=[_LoggerSink(self, trainer), *self.sinks], start_step=step, **self.probe_kwargs)
        self.probe.__enter__()
        self._open = True

    def on_before_optimizer_step(self, trainer: Any, pl_module: LightningModule, optimizer: Any) -> None:
        if self.probe is None or not self._open or trainer.global_step % self.every != 0:
            return
        from deepscope.probe.stats import weight_gradient_stats

        with torch.no_grad():  # the gradients this step applies: all-reduced under DDP, unscaled under AMP
            self._grads.update({w.name: weight_gradient_stats(w.param.grad, self.probe.bins).cpu()
                                for w in self.probe.weights if w.param.grad is not None})

    def on_train_batch_end(self, trainer: Any, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.probe is None or not self._open:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            loss = loss.detach()
            if pl_module.automatic_optimization:  # Lightning hands callbacks the loss / accumulate_grad_batches
                loss = loss * trainer.accumulate_grad_batches
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_n += 1
        step = trainer.global_step
        if step == self._last_step:  # accumulating: no optimizer step yet
            return
        self._last_step = step
        if self._loss_sum is not None:
            self._losses.add(step, self._loss_sum / self._loss_n)
            self._loss_sum, self._loss_n = None, 0
        self.probe.step(step)
        if step % self.every == 0 and self.log:
            mean = self._losses.window_mean()
            if mean is not None:
                for logger in trainer.loggers:
                    logger.log_metrics({LOSS: mean}, step=step)

    # ------------------------------------------------------------------ guard (deepscope.training.guard)

    def _start_guard(self, trainer: Any, pl_module: LightningModule) -> None:
        """Lightning steps the optimizer with a closure (training step + backward): the guard runs it, checks the
        loss and the gradients, then steps or skips. A skip leaves the optimizer untouched, but Lightning still
        counts the batch in ``global_step`` and steps a step-interval scheduler; a rollback restores that too.
        With a ``GradScaler`` (16-bit mixed precision) Lightning runs the closure itself and the scaler calls
        ``optimizer.step()`` only when the gradients are finite: the guard then checks the loss (taken before the
        backward pass, divided by the scale) and the unscaled gradients' norm."""
        from deepscope.training.guard import Guard
        from deepscope.training.guard_adapters import route_steps

        configs = trainer.lr_scheduler_configs
        self.guard = Guard(pl_module, trainer.optimizers[0], configs[0].scheduler if configs else None,
                           step_scheduler=False, loss_fn=self.loss_fn, sinks=[_LoggerSink(self, trainer), *self.sinks],
                           **self.guard_options).__enter__()
        if self._guard_state is not None:  # resumed from a checkpoint: the window, counters and events go on
            self.guard.load_state_dict(self._guard_state)
            self._guard_state = None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._loss = None

        def unscaled_loss() -> Any:  # the scaler's step, or manual optimization: the loss of the last backward pass
            loss, self._loss = self._loss, None
            return loss / scaler.get_scale() if scaler is not None and loss is not None else loss

        def unchecked() -> None:  # no loss seen: training_step returned None, or a backward pass not through Lightning
            if not pl_module.automatic_optimization and not self._told:
                self._told = True
                print("deepscope guard: an update with no loss seen was applied unchecked; in manual optimization "
                      "call self.manual_backward(loss) (not loss.backward()) so the guard can check it")
            self._batches.clear()

        self._told = False
        self._batches = deque(maxlen=trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1)
        if len(trainer.optimizers) > 1:
            print(f"deepscope guard: {len(trainer.optimizers)} optimizers; the guard watches the first one only, "
                  "the others step unchecked")
        # the scaler unscales the gradients before its step: the guard's norm, taken at the step, is the unscaled one
        self._unguard = route_steps(self.guard, unscaled_loss, self._update_batch, unchecked=unchecked)

    def state_dict(self) -> dict[str, Any]:
        """What Lightning saves in a checkpoint: the guard's state (:meth:`deepscope.Guard.state_dict`)."""
        return {"guard": self.guard.state_dict()} if self.guard is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._guard_state = state_dict.get("guard")

    def _update_batch(self) -> Any:
        """The batches of this update (accumulated: concatenated, so the examples a spike names are positions in
        the whole update), for the guard to rank."""
        parts = list(self._batches)
        self._batches.clear()
        if len(parts) <= 1:
            return parts[0] if parts else None
        try:
            return _take(parts, sum(len(p[0] if isinstance(p, tuple | list) else p) for p in parts))
        except Exception:  # batches that do not concatenate (not tensors): the last one
            return parts[-1]

    def on_before_backward(self, trainer: Any, pl_module: LightningModule, loss: Any) -> None:
        if self.guard is not None:
            self._loss = loss.detach()  # scaled by a GradScaler, if there is one

    def on_train_batch_start(self, trainer: Any, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.guard is not None:
            self._batches.append(batch)  # ranked by the guard on a spike
        self._loss = None  # a loss from an earlier batch is never this batch's

    def _stop_guard(self) -> None:
        if self._unguard is not None:
            self._unguard()
            self._unguard = None
            self._batches.clear()
            self.guard.__exit__(None, None, None)

    def on_train_end(self, trainer: Any, pl_module: LightningModule) -> None:
        self._stop_guard()
        if self.probe is None:
            return
        self._close()
        if self.diagnose:
            name = type(pl_module).__name__
            self.findings, self.report_path = finish(name, self.records, self.histograms, self.scalars,
                                                     trainer.log_dir or trainer.default_root_dir)

    def on_exception(self, trainer: Any, pl_module: LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        self._stop_guard()
        if self._open:
            self._open = False
            self.probe.__exit__(None, None, None)

    # ------------------------------------------------------------------ monitor set

    def _monitor(self, trainer: Any, pl_module: LightningModule) -> Any:
        if self.monitor is not None:
            return None if self.monitor is False else self.monitor  # False: training batches only
        if self.monitor_size == 0:
            return None
        if type(pl_module).forward is LightningModule.forward:
            print(f"deepscope: {type(pl_module).__name__} has no forward(x); recording the training batches only "
                  "(define forward, or pass monitor=False to silence this)")
            return None
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined():
            trainer.fit_loop.epoch_loop.val_loop.setup_data()  # not loaded yet without a sanity check
            loaders = trainer.val_dataloaders
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        batch = take_examples(loaders, self.monitor_size)
        if batch is None:
            print("deepscope: no validation dataloader, so no monitor set; recording the training batches only "
                  "(pass monitor=(x, y), or monitor=False to silence this)")
            return None
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, tuple) and len(batch) >= 2:
            return batch[0], batch[1]
        print("deepscope: validation batches are not (x, y) tensors; pass monitor=(x, y) to record a monitor set")
        return None
