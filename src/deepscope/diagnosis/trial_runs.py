"""Running the trials of :func:`deepscope.diagnosis.trials.repair`: one doctor run per trial, in this process,
in local worker processes or on Ray; a trial that raises fails alone, and Ctrl-C keeps the finished ones."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

__all__ = ["run_all", "run_trial"]


def _default_jobs() -> int:
    """min(2, cpu count): the machine is shared, and one torch process already uses several threads."""
    return max(1, min(2, os.cpu_count() or 1))


def _init_worker(workers: int) -> None:
    """Each of ``workers`` processes gets its share of the cores as torch intra-op threads (as the sweep's). Trials
    run in this process take the same share: on 2 busy cores a 500-update trial took 20-35 s with 2 threads
    (spin-waiting) and 3-4 s with 1."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def run_trial(spec: dict, model: Any = None, dataset: Any = None, store_root: str | None = None,
              updates: int = 500, monitor: int = 300) -> dict:
    """One doctor run of ``spec`` (and your ``model``), without a report; a picklable summary of it."""
    from deepscope.diagnosis.session import diagnosis_run as doctor
    from deepscope.store import Store

    start = time.perf_counter()
    store = Store(store_root) if store_root is not None else None
    try:
        r = doctor(spec, model=model, dataset=dataset, store=store, updates=updates, monitor=monitor,
                   report=False, quiet=True)
    except Exception as e:  # a fix the module does not take (a shape it breaks, say): this trial fails, not the repair
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return dict(run_id=None, status="failed", metrics={}, findings=[], seconds=time.perf_counter() - start,
                    records=[], histograms=[], scalars=[], checks=[], spec=spec,
                    error=f"{type(e).__name__}: {first}" if first else type(e).__name__)
    finally:
        if store is not None:
            store.close()
    return dict(run_id=r.run_id, status=r.status, metrics=dict(r.metrics),
                findings=r.findings, seconds=time.perf_counter() - start,
                records=r.records, histograms=r.histograms, scalars=r.scalars, checks=r.checks, spec=r.spec)


def run_all(trials: list, run_args: dict, backend: str, jobs: int, progress) -> bool:
    """Run ``trials`` (filling them in as they finish); True when interrupted (Ctrl-C keeps the finished ones)."""
    def done(trial: Any, out: dict) -> None:
        for key in ("run_id", "status", "metrics", "findings", "seconds"):
            setattr(trial, key, out[key])
        trial.error = out.get("error", "")
        trial.data = {k: out[k] for k in ("records", "histograms", "scalars", "checks", "spec")}
        progress(trial)

    if not trials:
        return False
    jobs = _default_jobs() if jobs is None else jobs
    args = [(_trial_spec(t), copy.deepcopy(t.model)) for t in trials]  # a trial trains its module in place
    if jobs > 1 and not _picklable(args):  # a class defined in a function or a notebook, a lambda attribute...
        jobs = 1  # ... cannot be sent to a worker process: the trials run here, one after the other
    try:
        if backend == "ray":
            return _run_ray(trials, args, run_args, jobs, done)
        if jobs == 1 or len(trials) == 1:
            import torch

            threads = torch.get_num_threads()
            _init_worker(_default_jobs())  # a worker's share of the cores, as in the pool (restored below)
            try:
                for trial, (spec, model) in zip(trials, args, strict=True):
                    done(trial, run_trial(spec, model, **run_args))
                    if trial.status == "interrupted":  # the trainer took the Ctrl-C: stop here
                        return True
            finally:
                torch.set_num_threads(threads)
            return False
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        workers = min(jobs, len(trials))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(workers,)) as pool:
            futures = {pool.submit(run_trial, spec, model, **run_args): t
                       for t, (spec, model) in zip(trials, args, strict=True)}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except KeyboardInterrupt:
                pool.shutdown(cancel_futures=True)
                for future, trial in futures.items():
                    if trial.status == "not run" and future.done() and not future.cancelled() \
                            and future.exception() is None:
                        done(trial, future.result())
                return True
        return any(t.status == "interrupted" for t in trials)
    except KeyboardInterrupt:
        return True


def _picklable(obj: Any) -> bool:
    import pickle

    try:
        pickle.dumps(obj)
    except Exception:  # pickling raises whatever the object's __reduce__ raises
        return False
    return True


def _run_ray(trials, args, run_args, jobs, done) -> bool:
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray: pip install 'deepscope[ray]' (or use backend='local')") from None
    if not ray.is_initialized():
        ray.init(num_cpus=jobs, include_dashboard=False)  # or the cluster of RAY_ADDRESS
    task = ray.remote(num_cpus=1)(run_trial)
    refs = {task.remote(spec, model, **run_args): t for t, (spec, model) in zip(trials, args, strict=True)}
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


def _trial_spec(trial: Any) -> dict:
    name = f"{trial.spec['name'].removesuffix('-fixed')}-{'-'.join(trial.fixes)}"
    return {**trial.spec, "name": name}
