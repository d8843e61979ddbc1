"""deepscope inside the Hugging Face ``Trainer``: a ``TrainerCallback`` that records with a
:class:`~deepscope.probe.Probe`.

```python
from deepscope.integrations.transformers import DeepscopeCallback
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=valid)
DeepscopeCallback(every=100).attach(trainer)     # or Trainer(..., callbacks=[DeepscopeCallback(monitor=...)])
trainer.train()                                  # findings printed, report in args.output_dir
```

Needs the extra ``deepscope[transformers]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.integrations._common import (
    MONITOR,
    _take,
    finish,
    guard_options,
    metrics_by_step,
    set_options,
    take_examples,
)
from deepscope.training.probe import ProbeRecords

try:
    from transformers import TrainerCallback
except ImportError as e:  # one line naming the extra, not a traceback through transformers
    raise ImportError("deepscope.integrations.transformers needs the transformers package: "
                      "pip install 'deepscope[transformers]'") from e

__all__ = ["DeepscopeCallback", "logits_loss"]

GUARD_FILE = "deepscope-guard.pt"  # the guard's state, in each checkpoint folder


def _field(output: Any, name: str) -> Any:
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def logits_loss(output: Any, y: Tensor) -> Tensor:
    """Cross-entropy of ``output.logits`` against ``y`` (one label per example, or per token with -100 ignored)."""
    logits = _field(output, "logits")
    if logits is None:
        logits = output if isinstance(output, Tensor) else output[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-100)


def _loss_of(output: Any) -> Tensor | None:
    """The loss a model computed from its ``labels``: ``output.loss``, or the first element of a tuple output
    (``return_dict=False``; what the Trainer's ``compute_loss`` takes); None when there is none."""
    loss = _field(output, "loss")
    if loss is None and isinstance(output, tuple | list) and output and isinstance(output[0], Tensor) \
            and output[0].ndim == 0:
        loss = output[0]
    return loss


def _own_loss(output: Any, y: Tensor) -> Tensor:
    """The loss the model computed itself from the ``labels`` of the monitor batch (``output.loss``)."""
    loss = _loss_of(output)
    if loss is None:
        raise ValueError("the model returned no loss for the monitor batch's labels; pass loss_fn=(output, y) -> "
                         "loss, or monitor=False")
    return loss


@contextmanager
def _forward_on(model: nn.Module, inputs: dict[str, Tensor]):
    """While the probe takes a record, ``model(index)`` runs the model on those monitor examples of ``inputs``
    (the probe passes one tensor; a Hugging Face model takes keyword inputs)."""
    had = "forward" in model.__dict__
    saved = model.__dict__.get("forward")
    forward = model.forward
    model.forward = lambda index: forward(**{k: v[index] for k, v in inputs.items()})
    try:
        yield
    finally:
        if had:
            model.forward = saved
        else:
            del model.forward


class _TrainerLogSink:
    """Sends the statistics through ``trainer.log`` (log history, TensorBoard / W&B / MLflow reporters)
    at the record's step, without the console printers; histograms to the TensorBoard reporter."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def write(self, stats: list[dict], histograms: list[dict]) -> None:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        handler, state, control = self.trainer.callback_handler, self.trainer.state, self.trainer.control
        callbacks, step, flags = handler.callbacks, state.global_step, dict(vars(control))
        handler.callbacks = [c for c in callbacks if not isinstance(c, PrinterCallback | ProgressCallback)]
        try:
            for record_step, metrics in metrics_by_step(stats).items():
                state.global_step = record_step  # reporters log at state.global_step: the record's own step
                self.trainer.log(dict(metrics))
        finally:  # logging clears control.should_log: the Trainer's own log of this step must still happen
            handler.callbacks, state.global_step = callbacks, step
            vars(control).update(flags)
        writer = next((getattr(c, "tb_writer", None) for c in callbacks if type(c).__name__ == "TensorBoardCallback"),
                      None)
        if histograms and writer is not None:
            from deepscope.probe.sinks import TensorBoardSink

            TensorBoardSink(writer=writer).write([], histograms)


class DeepscopeCallback(ProbeRecords, TrainerCallback):
    """Records Glorot & Bengio's instruments every ``every`` optimizer steps of a Hugging Face ``Trainer`` run.

    Args:
        every: record when ``state.global_step`` (optimizer steps) is a multiple of ``every``.
        monitor: fixed examples for the probe's own pass: a batch dict (``input_ids``, ``attention_mask``,
            ``labels``...; scored with the model's own ``output.loss``), a dataset (collated with the
            Trainer's collator), or tensors ``x`` / ``(x, y)`` (scored with ``loss_fn``, cross-entropy of
            ``output.logits`` by default). ``None``: the first ``monitor_size`` examples of the evaluation
            set when the callback is attached to the Trainer; ``False``: training batches only.
        sinks: more sinks for the probe's rows.
        diagnose: at the end of training, print the findings and write ``deepscope-report.html`` into
            ``args.output_dir``.
        log: (attached callback) log the statistics through ``trainer.log`` as
            ``deepscope/{source}/{quantity}/{stat}/{layer}`` at the record's step.
        guard: ``True`` or a dict of options: a :class:`~deepscope.Guard` watches every optimizer step (skips
            spikes, rolls back on divergence; ``callback.guard.events`` after training).
        probe_kwargs: passed to :class:`~deepscope.probe.Probe`.

    Only the main process records; its weight gradients are read as the backward pass accumulates them
    (before clipping; under multi-process training, that process's own gradients). After training:
    ``records``, ``histograms``, ``scalars`` (the Trainer's logged training loss as ``train/loss``),
    ``findings``, ``report_path``.
    """

    def __init__(self, every: int = 100, monitor: Any = None, sinks: Iterable[Any] = (), diagnose: bool = True, *,
                 monitor_size: int = MONITOR, loss_fn: Callable[[Any, Tensor], Tensor] | None = None,
                 log: bool = True, guard: bool | dict = False, **probe_kwargs: Any):
        set_options(self, every, monitor, sinks, diagnose, monitor_size, loss_fn, log, probe_kwargs)
        self.guard_options, self.guard, self._unguard, self._losses = guard_options(guard), None, None, []
        self.trainer = None
        self.scalars: list[dict] = []
        self._inputs: dict[str, Tensor] | None = None

    def attach(self, trainer: Any) -> DeepscopeCallback:
        """Add this callback to ``trainer``, so it can log through ``trainer.log`` and read its evaluation set."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if self.guard_options is not None and model is not None and kwargs.get("optimizer") is not None:
            self._start_guard(model, kwargs["optimizer"], kwargs.get("lr_scheduler"))  # every process
            self._resume_guard(args, state)
        if not state.is_world_process_zero or model is None:
            return
        from deepscope.probe import Probe

        monitor, loss_fn = self._monitor(model, train_dataloader)
        sinks = ([_TrainerLogSink(self.trainer)] if self.trainer is not None and self.log else []) + self.sinks
        self.probe = Probe(model, self.every, monitor=monitor, loss_fn=loss_fn, sinks=sinks,
                           start_step=state.global_step, **self.probe_kwargs)
        with self._monitor_forward():
            self.probe.__enter__()
        self._open = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._open:
            with self._monitor_forward(state.global_step):
                self.probe.step(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self._open and logs and isinstance(logs.get("loss"), int | float):
            self.scalars.append({"step": state.global_step, "name": "train/loss", "value": float(logs["loss"])})

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                     **kwargs: Any) -> None:
        self._stop_guard()
        if self.probe is None:
            return
        self.close()
        if self.diagnose:
            name = type(model).__name__ if model is not None else "model"
            self.findings, self.report_path = finish(name, self.records, self.histograms, self.scalars,
                                                     args.output_dir)

    # ------------------------------------------------------------------ guard (deepscope.training.guard)

    def _start_guard(self, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        """The Trainer calls ``optimizer.step()`` without a closure: the guard checks the loss the model computed
        (``output.loss`` of the training forward passes since the last step, read by a forward hook) and the
        gradients, then steps or skips. A skipped step reads as the Trainer's "optimizer step was skipped", so
        the schedule does not advance; ``state.global_step`` still counts it. On a spike the examples of the last
        training batch (its keyword inputs, kept by the same hook) are ranked by the model's own loss."""
        from deepscope.training.guard import Guard
        from deepscope.training.guard_adapters import route_steps

        def keep_loss(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            loss = _loss_of(output)
            if module.training and torch.is_grad_enabled() and isinstance(loss, Tensor):
                self._losses.append(loss.detach().float().reshape(()))
                self._batches.append(kwargs if not args else None)  # keyword inputs: ranked by the guard on a spike

        self._batches: list[Any] = []

        def take_batch() -> Any:  # the update's batches (accumulated: concatenated; examples are positions in it)
            parts, self._batches = self._batches, []
            if not parts or any(p is None for p in parts):
                return None
            try:
                return parts[0] if len(parts) == 1 else _take(parts, sum(len(next(iter(p.values()))) for p in parts))
            except Exception:  # inputs that do not concatenate (not tensors, or of different lengths): the last one
                return parts[-1]

        def take_loss() -> Tensor:
            losses, self._losses = self._losses, []
            if not losses and not told:
                told.append(True)
                print(f"deepscope guard: {type(model).__name__}'s forward returned no loss (a custom compute_loss, "
                      "or no labels); the guard checks the gradient norm only")
            return torch.stack(losses).mean() if losses else torch.ones(())

        told: list[bool] = []

        def skipped(skip: bool) -> None:
            if skip or getattr(optimizer, "scaler", None) is None:
                optimizer._is_overflow = skip  # accelerate's step_was_skipped: the Trainer holds the schedule

        self.guard = Guard(model, optimizer, scheduler, step_scheduler=False, sinks=self.sinks,
                           **self.guard_options).__enter__()
        hook = model.register_forward_hook(keep_loss, with_kwargs=True)
        unroute = route_steps(self.guard, take_loss, take_batch, skipped=skipped)
        self._unguard = lambda: (hook.remove(), unroute())

    def _resume_guard(self, args: Any, state: Any) -> None:
        """A resumed run (``state.global_step`` > 0): put back the guard's state saved with that checkpoint."""
        if state.global_step == 0:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / GUARD_FILE
        if path.is_file():
            self.guard.load_state_dict(torch.load(path, weights_only=True))
        else:
            print(f"deepscope guard: resumed at update {state.global_step} without the guard's state ({path} not "
                  "found); its window starts again with a warm-up, its events from the first run are not kept")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Next to each checkpoint, the guard's state (``deepscope-guard.pt``): a resume goes on from it."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.guard is not None and self._unguard is not None and state.is_world_process_zero and folder.is_dir():
            torch.save(self.guard.state_dict(), folder / GUARD_FILE)

    def _stop_guard(self) -> None:
        if self._unguard is not None:
            self._unguard()
            self._unguard = None
            self.guard.__exit__(None, None, None)

    def close(self) -> None:
        """Remove the probe's hooks (safe twice, and after an error)."""
        self._stop_guard()
        if self._open:
            self._open = False
            self.probe.__exit__(None, None, None)

    # ------------------------------------------------------------------ monitor set

    @contextmanager
    def _monitor_forward(self, step: int | None = None):
        if self._inputs is None or (step is not None and step % self.every != 0):
            yield
        else:
            with _forward_on(self.probe.model, self._inputs):
                yield

    def _monitor(self, model: nn.Module, train_dataloader: Any) -> tuple[Any, Callable | None]:
        monitor = self.monitor
        if monitor is False or self.monitor_size == 0:
            return None, self.loss_fn
        collate = getattr(train_dataloader, "collate_fn", None)
        if monitor is None and self.trainer is not None and self.trainer.eval_dataset is not None:
            monitor = take_examples(self.trainer.get_eval_dataloader(), self.monitor_size)
        elif monitor is not None and not isinstance(monitor, Tensor | tuple | list | Mapping):  # a dataset
            examples = [monitor[i] for i in range(min(len(monitor), self.monitor_size))]
            monitor = collate(examples) if collate is not None else torch.utils.data.default_collate(examples)
        if monitor is None:
            print("deepscope: no monitor set (" + ("no evaluation dataset" if self.trainer is not None else
                  "callback not attached: use DeepscopeCallback(...).attach(trainer) to read the evaluation set")
                  + "); recording the training batches only (pass monitor=..., or monitor=False to silence this)")
            return None, self.loss_fn
        if not isinstance(monitor, Mapping):
            return monitor, self.loss_fn or logits_loss
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._inputs = {k: v[: self.monitor_size].to(device) for k, v in monitor.items() if isinstance(v, Tensor)}
        index = torch.arange(len(next(iter(self._inputs.values()))))
        if "labels" not in self._inputs:
            return index, self.loss_fn
        if self.loss_fn is None:  # the model scores itself; the probe only needs to know that there are targets
            return (index, index.clone()), _own_loss
        return (index, self._inputs.pop("labels")), self.loss_fn
