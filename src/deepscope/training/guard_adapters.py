"""Where :class:`~deepscope.training.guard.Guard` plugs into loops it does not own: the deepscope trainer
(``train.guard``: the trainer calls ``guard.step`` in place of ``optimizer.step()``) and the trainers that step the
optimizer themselves (Lightning, Hugging Face: their ``optimizer.step`` is routed through the guard)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from deepscope.training.guard import Guard

__all__ = ["for_trainer", "route_steps"]


# --- the deepscope trainer (train.guard): a thin adapter ---------------------------------------------------------


def for_trainer(trainer: Any) -> Guard | None:
    """The open guard of a :func:`deepscope.train` run when its spec says ``train.guard``, else None. It steps the
    optimizer and the per-update schedule in place of the trainer; a recorder callback logs the events to the
    store (scalars ``guard/<action>``) at each evaluation and writes them, with the examples, to ``guard.json``. The
    guard's state goes into the trainer's checkpoint (``checkpoint.run_state``), and a resume puts it back."""
    from deepscope.optim import schedule_steps_on
    from deepscope.training.callbacks import Callback
    from deepscope.training.guard_examples import trainer_ids, write_events

    options = trainer.spec.train.guard
    if options is False:
        return None
    options = {} if options is True else options.model_dump()
    schedule = trainer.schedule if trainer.schedule is not None and schedule_steps_on(trainer.schedule) == "update" \
        else None
    guard = Guard(trainer.model, trainer.optimizer, schedule, loss_fn=trainer.parts.loss_fn, **options)
    guard.batch_ids = lambda t: trainer_ids(trainer.parts.next_batch, t)
    if getattr(trainer, "guard_state", None) is not None:  # a resume: the window and the events go on
        guard.load_state_dict(trainer.guard_state)

    class Recorder(Callback):
        def on_eval(self, ctx: Any) -> None:
            new, guard.logged = guard.events[guard.logged:], len(guard.events)
            if ctx.store is not None and ctx.run_id is not None:
                for e in new:
                    ctx.store.log_scalars(ctx.run_id, e.step, {f"guard/{e.action}": e.loss})

        def on_end(self, ctx: Any) -> None:
            self.on_eval(ctx)
            if ctx.store is not None and ctx.run_id is not None:
                ctx.store.flush()
                write_events(ctx.store.run_dir(ctx.run_id) / "guard.json", guard)
            guard.__exit__(None, None, None)

    trainer.callbacks = (*trainer.callbacks, Recorder())
    return guard.__enter__()


# --- trainers that step the optimizer themselves (Lightning, Hugging Face) ----------------------------------------


def route_steps(guard: Guard, get_loss: Callable[[], Any], get_batch: Callable[[], Any] = lambda: None,
                skipped: Callable[[bool], None] = lambda s: None,
                get_grad_norm: Callable[[], Any] = lambda: None,
                unchecked: Callable[[], None] = lambda: None) -> Callable[[], None]:
    """Make ``guard.optimizer.step(closure=None)`` go through ``guard.step``: a closure (Lightning's: the training
    step and the backward pass) is run first and its loss checked (if it returns None, ``get_loss()``: Lightning's
    manual optimization); without one the loss is ``get_loss()`` and the gradient norm ``get_grad_norm()`` (None:
    the guard's own). ``skipped(bool)`` hears whether the update was skipped. With no loss at all (a training step
    that returned None, a backward pass the adapter did not see) the optimizer steps unchecked, as it would without
    the guard, and ``unchecked()`` is told. Returns the function that undoes the wrapping."""
    optimizer = guard.optimizer

    def step(closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        loss = norm = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            loss, norm = get_loss(), get_grad_norm()
        if loss is None:  # nothing to check: the step the framework asked for, unguarded
            unchecked()
            return guard._optimizer_step(**kwargs)
        skipped(not guard.step(loss, batch=get_batch(), grad_norm=norm))
        return loss

    step._wrapped_by_lr_sched = True  # torch's schedulers check that the step they wrapped is still in place
    optimizer.step = step
    return lambda: vars(optimizer).pop("step", None)
