"""Run many jobs at once: worker processes on this machine, Ray tasks on a cluster, or one after the other here.

:func:`run_many` is the one runner of the package: the experiments' sweeps, the paper's figure runs and the
trials of ``doctor --fix`` all go through it. Every run is a deterministic function of its arguments (spec and
seed), so every backend gives the same numbers -- up to float rounding, since a multi-threaded BLAS may split its
sums differently from one process to the next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from deepscope.registry import integer, unknown

__all__ = ["BACKENDS", "check_backend", "default_jobs", "init_worker", "picklable", "run_many"]

BACKENDS = ("local", "ray")


def default_jobs() -> int:
    """min(2, cpu count): the machine is shared, and one torch process already uses several threads."""
    return max(1, min(2, os.cpu_count() or 1))


def init_worker(workers: int) -> None:
    """Each of ``workers`` processes gets its share of the cores as torch intra-op threads. With torch's default
    (every process one thread per core) two workers on 2 cores ran ~10x slower, spin-waiting."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def check_backend(backend: Any, jobs: Any) -> None:
    """``backend`` one of :data:`BACKENDS` and ``jobs`` None or an integer >= 1, or a ValueError naming them."""
    if backend not in BACKENDS:
        raise unknown("backend", backend, BACKENDS)
    if jobs is not None:
        integer("jobs", jobs)


def picklable(obj: Any) -> bool:
    """Whether ``obj`` can be sent to a worker process (a class defined in a function, a lambda attribute ... not)."""
    import pickle

    try:
        pickle.dumps(obj)
    except Exception:  # pickling raises whatever the object's __reduce__ raises
        return False
    return True


def run_many(fn: Callable[..., Any], jobs: Sequence[tuple], *, workers: int | None = None, backend: str = "local",
             on_result: Callable[[int, Any], None] | None = None, stop: Callable[[Any], bool] | None = None,
             share_cores: bool = False) -> tuple[list[Any], bool]:
    """``fn(*args)`` for every ``args`` of ``jobs``: (the results in the order of ``jobs``, None for a job that did
    not run; whether Ctrl-C interrupted them).

    ``backend="local"`` uses a ``ProcessPoolExecutor`` (spawn context) with ``workers`` processes (default
    :func:`default_jobs`); one worker, one job or arguments that cannot be pickled run here, one after the other
    (with ``share_cores`` at a worker's share of the cores, as in the pool). ``backend="ray"`` runs each job as a
    Ray task: on the cluster of ``RAY_ADDRESS`` or of an earlier ``ray.init(...)``, else on a local Ray instance
    with ``workers`` CPUs. ``on_result(index, result)`` is called as each job finishes; a result for which
    ``stop(result)`` is true ends the run of this process's remaining jobs (the trainer took a Ctrl-C). An
    exception of ``fn`` propagates; a job that must fail alone catches its own.
    """
    check_backend(backend, workers)
    results: list[Any] = [None] * len(jobs)
    if not jobs:
        return results, False

    def done(index: int, result: Any) -> None:
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    workers = min(default_jobs() if workers is None else workers, len(jobs))
    try:
        if backend == "ray":
            return results, _run_ray(fn, jobs, workers, done)
        if workers == 1 or not picklable((fn, list(jobs))):
            return results, _run_here(fn, jobs, done, stop, share_cores)
        return results, _run_pool(fn, jobs, workers, done)
    except KeyboardInterrupt:
        return results, True


def _run_here(fn, jobs, done, stop, share_cores: bool) -> bool:
    import torch

    threads = torch.get_num_threads()
    if share_cores:
        init_worker(default_jobs())
    try:
        for index, args in enumerate(jobs):
            result = fn(*args)
            done(index, result)
            if stop is not None and stop(result):
                return True
    finally:
        torch.set_num_threads(threads)
    return False


def _run_pool(fn, jobs, workers: int, done) -> bool:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(workers,)) as pool:
        futures = {pool.submit(fn, *args): index for index, args in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                done(futures[future], future.result())
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            for future, index in futures.items():  # keep what finished meanwhile
                if future.done() and not future.cancelled() and future.exception() is None:
                    done(index, future.result())
            return True
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return False


def _run_ray(fn, jobs, workers: int, done) -> bool:
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray: pip install 'deepscope[ray]' (or use backend='local')") from None
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=workers, include_dashboard=False)
    task = ray.remote(num_cpus=1)(fn)
    refs = {task.remote(*args): index for index, args in enumerate(jobs)}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done(refs[ready[0]], ray.get(ready[0]))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        return True
    return False
