"""The probe inside :func:`deepscope.training.loop.train`: the one way to attach a probe to training.

The trainer builds (or is given) the model, so this callback creates the :class:`~deepscope.probe.Probe`
when training starts, on a fixed monitor set taken from the run's (preprocessed) validation split, and
sends its records to the run store. The probe still knows nothing of the trainer: it only reads the
context. ``deepscope train --probe-every``, ``deepscope doctor`` and the experiments all use it.
"""

from __future__ import annotations

from typing import Any

from deepscope.registry import unknown
from deepscope.training.callbacks import Callback

__all__ = ["MONITOR", "ProbeRecords", "TrainerProbe"]

MONITOR = 128  # fixed monitor examples (the paper used 300; README "Performance" gives the error of 128)


class ProbeRecords:
    """What a callback's probe recorded: its stats and histogram rows (none before it opens)."""

    probe = None

    @property
    def records(self) -> list[dict]:
        return self.probe.records if self.probe is not None else []

    @property
    def histograms(self) -> list[dict]:
        return self.probe.histograms if self.probe is not None else []


class TrainerProbe(ProbeRecords, Callback):
    """A trainer callback that records with a :class:`Probe` every ``every`` updates.

    ``monitor`` is the number of examples of the run's ``monitor_split`` (``"valid"`` or ``"test"``, as
    preprocessed by the trainer) the probe runs its own pass on (0 = training batches only), or a fixed
    ``(x, y)`` pair of your own. ``probe`` hands over a :class:`Probe` you opened yourself on the model you
    pass as ``train(..., model=...)``: it is stepped, flushed and left open. After training, ``records``
    and ``histograms`` hold what was recorded.
    """

    def __init__(self, every: int = 100, monitor: Any = MONITOR, *, monitor_split: str = "valid",
                 probe: Any = None, **probe_kwargs: Any):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"probe every={every!r} is not allowed; give an integer >= 1")
        if isinstance(monitor, bool) or not (isinstance(monitor, tuple) and len(monitor) == 2
                                             or isinstance(monitor, int) and monitor >= 0):
            raise ValueError(f"probe monitor={monitor!r} is not allowed; give an integer >= 0 or a pair (x, y)")
        if monitor_split not in ("valid", "test"):
            raise unknown("probe monitor_split", monitor_split, ["valid", "test"])
        from deepscope.probe.options import check_probe_kwargs

        # bad options fail now, before a run is created (layer names can only be checked on the model)
        check_probe_kwargs(every, probe_kwargs)
        self.every, self.monitor, self.monitor_split, self.kwargs = every, monitor, monitor_split, probe_kwargs
        self.probe, self._owned = probe, probe is None
        self._open = False

    def on_start(self, ctx: Any) -> None:
        if not self._owned:
            self._open = True
            return
        from deepscope.losses import make_loss
        from deepscope.probe import Probe, StoreSink

        monitor = self.monitor if isinstance(self.monitor, tuple) else None
        split = ctx.eval_sets.get(self.monitor_split)
        if isinstance(self.monitor, int) and self.monitor and split is not None:
            monitor = (split[0][: self.monitor], split[1][: self.monitor])
        sinks = []
        if ctx.store is not None and ctx.run_id is not None:
            if ctx.step > 0:  # resumed: the probe records this step again, so what was kept of it goes
                ctx.store.delete_probe_records(ctx.run_id, ctx.step)
            sinks = [StoreSink(ctx.store, ctx.run_id)]
        self.probe = Probe(ctx.model, every=self.every, monitor=monitor, loss_fn=ctx.loss_fn or make_loss(
                           ctx.spec.train.loss, **ctx.spec.train.loss_options),
                           sinks=sinks, start_step=ctx.step, **self.kwargs).__enter__()
        self._open = True

    def on_step(self, ctx: Any) -> None:
        if self._open:
            self.probe.step(ctx.step)

    def on_eval(self, ctx: Any) -> None:
        if self._open:
            self.probe.flush()

    def on_end(self, ctx: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks of a probe this callback opened, or flush one handed over (safe after errors, twice)."""
        if self._open:
            self._open = False
            if self._owned:
                self.probe.__exit__(None, None, None)
            else:
                self.probe.flush()
