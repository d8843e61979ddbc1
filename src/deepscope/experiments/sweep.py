"""Run a grid of run specs in parallel: local processes by default, Ray (the ``[ray]`` extra) on a cluster.

Each run is ``deepscope.training.loop.train(spec, store=Store(root), quiet=True)`` in a fresh worker; every run is
a deterministic function of its spec and seed, so both backends (and ``jobs=1``, which runs in this
process) give the same numbers for the same seeds -- up to float rounding, since a multi-threaded BLAS
may split its sums differently from one process to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscope.parallel import BACKENDS, check_backend, run_many

__all__ = ["BACKENDS", "RunOutcome", "run_grid", "run_one"]


@dataclass
class RunOutcome:
    """One run of a grid: its id in the store (``None`` without a store), its final metrics
    ("test/error", "valid/loss", ...), how it ended ("finished", "diverged", ...) and its spec."""

    run_id: str | None
    metrics: dict[str, float]
    status: str = "finished"
    step: int = 0
    spec: dict[str, Any] = field(default_factory=dict)


def run_one(spec: Any, store_root: str | None = None) -> RunOutcome:
    """Train one spec (a RunSpec or its dict) and return its run id and final metrics."""
    from deepscope.config import RunSpec, validate_spec
    from deepscope.store import Store
    from deepscope.training.loop import train

    spec = spec if isinstance(spec, RunSpec) else validate_spec(spec)
    if store_root is None:
        result = train(spec, quiet=True)
    else:
        with Store(store_root) as store:
            result = train(spec, store=store, quiet=True)
    metrics = {key: float(value) for key, value in result.metrics.items()}
    return RunOutcome(result.run_id, metrics, result.status, result.step, spec.to_dict())


def run_grid(
    specs: Sequence[Any],
    *,
    store_root: str | Path | None = None,
    jobs: int | None = None,
    backend: str = "local",
) -> list[RunOutcome]:
    """Train every spec of ``specs`` and return their outcomes in the same order.

    ``backend="local"`` uses a ``ProcessPoolExecutor`` (spawn context) with ``jobs`` workers (default
    :func:`default_jobs`; ``jobs=1`` or a single spec runs in this process). ``backend="ray"`` runs each
    spec as a Ray task: on the cluster named by ``RAY_ADDRESS`` or by an earlier ``ray.init(...)``, else on
    a local Ray instance with ``jobs`` CPUs. On a cluster ``store_root`` must be a path every node sees.
    """
    check_backend(backend, jobs)
    root = None if store_root is None else str(store_root)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    from deepscope.config import RunSpec, validate_spec

    # a bad spec fails here, before any worker starts
    specs = [spec if isinstance(spec, RunSpec) else validate_spec(spec, source=f"grid spec {i}")
             for i, spec in enumerate(specs)]
    outcomes, interrupted = run_many(run_one, [(spec, root) for spec in specs], workers=jobs, backend=backend)
    if interrupted:
        raise KeyboardInterrupt
    return outcomes
