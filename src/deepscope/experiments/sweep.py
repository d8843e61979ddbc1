"""Run a grid of run specs in parallel: local processes by default, Ray (the ``[ray]`` extra) on a cluster.

Each run is ``deepscope.trainer.train(spec, store=Store(root), quiet=True)`` in a fresh worker; every run is
a deterministic function of its spec and seed, so both backends (and ``jobs=1``, which runs in this
process) give the same numbers for the same seeds -- up to float rounding, since a multi-threaded BLAS
may split its sums differently from one process to the next.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "RunOutcome", "default_jobs", "init_worker", "run_grid", "run_one"]

BACKENDS = ("local", "ray")


@dataclass
class RunOutcome:
    """One run of a grid: its id in the store (``None`` without a store), its final metrics
    ("test/error", "valid/loss", ...), how it ended ("finished", "diverged", ...) and its spec."""

    run_id: str | None
    metrics: dict[str, float]
    status: str = "finished"
    step: int = 0
    spec: dict[str, Any] = field(default_factory=dict)


def default_jobs() -> int:
    """min(2, cpu count): the machine is shared, and one torch process already uses several threads."""
    return max(1, min(2, os.cpu_count() or 1))


def init_worker(workers: int) -> None:
    """Pool initializer: each of ``workers`` processes gets its share of the cores as intra-op threads. With
    torch's default (every process one thread per core) two workers on 2 cores ran ~10x slower, spin-waiting."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def run_one(spec: Any, store_root: str | None = None) -> RunOutcome:
    """Train one spec (a RunSpec or its dict) and return its run id and final metrics."""
    from deepscope.config import RunSpec, validate_spec
    from deepscope.store import Store
    from deepscope.trainer import train

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
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known; choose one of: {', '.join(BACKENDS)}")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs={jobs!r}: the number of parallel workers must be >= 1")
    root = None if store_root is None else str(store_root)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    from deepscope.config import RunSpec, validate_spec

    # a bad spec fails here, before any worker starts
    specs = [spec if isinstance(spec, RunSpec) else validate_spec(spec, source=f"grid spec {i}")
             for i, spec in enumerate(specs)]
    if not specs:
        return []
    if backend == "ray":
        return _run_ray(specs, root, jobs)
    if jobs == 1 or len(specs) == 1:
        return [run_one(spec, root) for spec in specs]
    workers = min(jobs, len(specs))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(workers,)) as pool:
        futures = [pool.submit(run_one, spec, root) for spec in specs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _run_ray(specs: list[Any], root: str | None, jobs: int) -> list[RunOutcome]:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "backend='ray' needs Ray: pip install 'deepscope[ray]' (or use backend='local')"
        ) from None
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=jobs, include_dashboard=False)
    task = ray.remote(num_cpus=1)(run_one)
    return ray.get([task.remote(spec, root) for spec in specs])
