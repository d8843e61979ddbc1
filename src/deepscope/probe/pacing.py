"""When a record's monitor pass moves to the step after it.

A record after the first can run its monitor pass at the next :meth:`~deepscope.probe.Probe.step`, on a copy of the
weights of the recorded step (the same values), so that no single step carries the whole record. That helps only
when the monitor pass takes less than about one training step: then the recorded step and the next each stay under
twice a plain step. When the pass takes several steps (a small training batch, a large monitor set), no split keeps
a step under that, and the copy of the weights and the pass on it only add to the record's cost (on the 5 x 1000 MLP
of ``benchmarks/probe.py`` at batch 10, about one training step per record). :class:`Pacing` times the steps between
records and the monitor passes, and moves the pass only when it took at most ``MOVE_RATIO`` training steps. The
records' values are the same either way.
"""

from __future__ import annotations

import time

__all__ = ["MOVE_RATIO", "Pacing"]

MOVE_RATIO = 1.0  # move the monitor pass when it took at most this many training steps


class Pacing:
    """The last plain training step's and monitor pass's durations, and whether to move the next pass."""

    def __init__(self) -> None:
        self.step_seconds: float | None = None
        self.monitor_seconds: float | None = None
        self._clock: float | None = None

    def lap(self, plain: bool) -> None:
        """At the start of ``Probe.step()``: the time since the end of the last one was a training step (``plain``:
        with no hook of the probe on it)."""
        if plain and self._clock is not None:
            self.step_seconds = time.perf_counter() - self._clock

    def restart(self) -> None:
        """At the end of ``Probe.step()``: the next training step starts."""
        self._clock = time.perf_counter()

    def pause(self) -> None:
        """At the probe's entry: what ran since its last exit was no step of this loop."""
        self._clock = None

    def move_monitor(self) -> bool:
        """Whether the next record's monitor pass should run at the step after it (unknown durations: yes)."""
        if self.monitor_seconds is None or self.step_seconds is None:
            return True
        return self.monitor_seconds <= MOVE_RATIO * self.step_seconds
