"""The probe inside :func:`deepscope.train.train`: a callback that attaches on "start" and detaches on "end".

The trainer builds its model itself, so this callback creates the :class:`~deepscope.probe.Probe` when
training starts, on a fixed monitor set taken from the run's (preprocessed) validation split, and sends
its records to the run store. The probe still knows nothing of the trainer: it only reads the context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MONITOR = 300  # fixed monitor examples, as in Glorot & Bengio (2010)
_CHECKED = ("bins", "jacobian_examples", "jacobian_every", "jacobian_method")


class TrainerProbe:
    """A trainer callback that records with a :class:`Probe` every ``every`` updates.

    ``monitor`` is the number of validation examples the probe runs its own pass on (0 = training
    batches only). After training, ``records`` and ``histograms`` hold what was recorded.
    """

    def __init__(self, every: int = 100, monitor: int = MONITOR, **probe_kwargs: Any):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"probe every={every!r} is not allowed; give an integer >= 1")
        if not isinstance(monitor, int) or isinstance(monitor, bool) or monitor < 0:
            raise ValueError(f"probe monitor={monitor!r} is not allowed; give an integer >= 0")
        from deepscope.probe import check_options

        # bad options fail now, before a run is created (layer names can only be checked on the model)
        check_options(every, **{k: v for k, v in probe_kwargs.items() if k in _CHECKED})
        self.every, self.monitor, self.kwargs = every, monitor, probe_kwargs
        self.probe = None
        self._open = False

    @property
    def records(self) -> list[dict]:
        return self.probe.records if self.probe is not None else []

    @property
    def histograms(self) -> list[dict]:
        return self.probe.histograms if self.probe is not None else []

    def __call__(self, ctx: Any) -> None:
        if ctx.event == "start":
            self._start(ctx)
        elif not self._open:
            return
        elif ctx.event == "step":
            self.probe.step(ctx.step)
        elif ctx.event == "eval":
            self.probe.flush()
        elif ctx.event == "end":
            self.close()

    def _start(self, ctx: Any) -> None:
        from deepscope.optim import make_loss
        from deepscope.probe import Probe, StoreSink

        monitor = None
        valid = ctx.eval_sets.get("valid")
        if self.monitor and valid is not None:
            monitor = (valid[0][: self.monitor], valid[1][: self.monitor])
        sinks = [StoreSink(ctx.store, ctx.run_id)] if ctx.store is not None and ctx.run_id is not None else []
        self.probe = Probe(ctx.model, every=self.every, monitor=monitor, loss_fn=make_loss(ctx.spec.train.loss),
                           sinks=sinks, start_step=ctx.step, **self.kwargs).__enter__()
        self._open = True

    def close(self) -> None:
        """Remove the hooks (also safe after an error, and twice)."""
        if self._open:
            self._open = False
            self.probe.__exit__(None, None, None)


def trainer_probe(every: int = 100, monitor: int = MONITOR, **probe_kwargs: Any) -> Callable[[Any], None]:
    """A :class:`TrainerProbe` callback for ``train(spec, callbacks=[trainer_probe(100)])``."""
    return TrainerProbe(every, monitor, **probe_kwargs)


def probe_callback(probe: Any) -> Callable[[Any], None]:
    """A trainer callback: ``probe.step(ctx.step)`` on "step" events, ``probe.flush()`` on "eval"/"end".

    The probe must already be active (``with probe:`` around the training call), so its hooks are
    removed whatever happens.
    """

    def callback(ctx: Any) -> None:
        if ctx.event == "step":
            probe.step(ctx.step)
        elif ctx.event in ("eval", "end"):
            probe.flush()

    return callback
