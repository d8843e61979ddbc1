"""The catalogue of experiments: each states a claim of the texts, measures it, and gives a verdict.

    from deepscope.experiments import run_experiment
    verdict = run_experiment("lsuv", profile="quick", out_dir="out")
    verdict.passed, verdict.numbers, verdict.figures

or ``deepscope experiments list`` / ``deepscope experiments run lsuv --profile quick -o out``.

Adding an experiment
--------------------
1. Write ``src/deepscope/experiments/<my_name>.py`` that ends with one module-level
   ``EXPERIMENT = Experiment(...)`` (see :class:`~deepscope.experiments.base.Experiment`):

   - ``name`` (kebab-case, the CLI name), ``claim`` (one sentence), ``source`` (the paper or text and
     figure or section);
   - ``profiles = {"tiny": {...}, "quick": {...}, "paper": {...}}``: plain dicts of sizes and steps that
     your functions read from ``ctx.settings``. ``tiny`` takes seconds (tests check the machinery with
     it), ``quick`` is the real check (minutes on 2 CPU cores), ``paper`` the source's full setup.
     ``"seeds": K`` sets the default number of seeds; ``ctx.seeds`` is ``[0, ..., K-1]``;
   - trainer-based: ``grid(ctx) -> list[RunSpec | dict]``, one spec per (setting, seed). Without a ``run``
     function the framework trains the grid in parallel (:func:`~deepscope.experiments.sweep.run_grid`:
     local processes or Ray, into the run store when there is one) and hands ``verdict`` and ``figure``
     the list of :class:`~deepscope.experiments.sweep.RunOutcome` (``run_id``, final ``metrics``,
     ``status``, ``step``, ``spec``) in grid order. To read more than the final metrics (curves, probe
     stats), write ``run(ctx)``: ``root = ctx.ensure_store(); outcomes = ctx.sweep(grid(ctx))``, then
     ``Store(root).scalars(o.run_id, "valid/error")`` / ``.stats(o.run_id, ...)``;
   - direct measurements (no trainer): only ``run(ctx) -> results`` (any object you like);
   - ``verdict(results, ctx)`` returns ``Verdict.from_checks({"statement with its numbers": bool, ...},
     {"key": float, ...}, "one-line summary")``; the experiment passes when every check holds, and each
     check must be a real measurement that could fail (it would if the init/activation were swapped);
   - ``figure(results, ctx)`` draws with ``new_figure(rows, cols)`` (a matplotlib Figure, no pyplot) and
     returns ``[save_figure(fig, ctx.path())]`` (``ctx.path("part")`` for more files).

   A trainer-based skeleton::

       def grid(ctx):
           cfg = ctx.settings
           return [{"name": f"{act}-s{seed}", "train": {"updates": cfg["updates"], "seed": seed},
                    "model": {"activation": act, "depth": cfg["depth"], "width": cfg["width"]}}
                   for act in ("sigmoid", "tanh") for seed in ctx.seeds]

       def verdict(outcomes, ctx):
           err = {a: mean(o.metrics["test/error"] for o in outcomes if o.spec["model"]["activation"] == a)
                  for a in ("sigmoid", "tanh")}
           checks = {f"tanh {err['tanh']:.1%} < sigmoid {err['sigmoid']:.1%}": err["tanh"] < err["sigmoid"]}
           return Verdict.from_checks(checks, {f"{a}/test_error": e for a, e in err.items()}, "...")

       EXPERIMENT = Experiment("my-name", "claim.", "source", PROFILES, verdict=verdict, figure=figure, grid=grid)

2. Nothing else: every module of this package that defines ``EXPERIMENT`` is in the catalogue
   (:data:`EXPERIMENTS`, discovered at import). The CLI finds it by name.
3. In ``tests/``, run it on the ``tiny`` profile: a Verdict with the expected number keys and a figure
   (and, where it is cheap and robust, the science).

``run_experiment`` times the whole thing, writes ``<out_dir>/<name>.json`` beside the figures and, when a
store is given, records a run named ``experiment:<name>`` whose scalars (step 0) are the numbers plus
``passed`` and ``duration_s``, and whose spec holds the claim, profile, settings, seeds, checks, figures
and the ids of the training runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepscope.experiments.base import PROFILES, Context, Experiment, Verdict, new_figure, save_figure
from deepscope.experiments.sweep import BACKENDS, RunOutcome, run_grid
from deepscope.parallel import check_backend
from deepscope.registry import discover, lookup

__all__ = [
    "BACKENDS",
    "EXPERIMENTS",
    "PROFILES",
    "Context",
    "Experiment",
    "RunOutcome",
    "Verdict",
    "get_experiment",
    "new_figure",
    "run_experiment",
    "run_grid",
    "save_figure",
]

# every module of this package that ends with ``EXPERIMENT = Experiment(...)`` is in the catalogue
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in discover(sys.modules[__name__], "EXPERIMENT")}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name lists the valid ones."""
    return lookup(EXPERIMENTS, "experiment", name)


def _store_root(store: Any) -> Path | None:
    if store is None:
        return None
    if isinstance(store, str | Path):
        return Path(store)
    return Path(store.root)  # a deepscope.store.Store


def run_experiment(
    name: str,
    profile: str = "quick",
    seeds: int | None = None,
    store: Any = None,
    jobs: int | None = None,
    out_dir: str | Path = "experiments",
    backend: str = "local",
    overrides: Sequence[str] = (),
) -> Verdict:
    """Run experiment ``name`` on ``profile`` over ``seeds`` seeds (0..K-1; default: the profile's) and
    return its :class:`Verdict`, with figures written under ``out_dir``.

    ``store`` (a directory or a ``deepscope.store.Store``) receives the training runs, if any, and a
    summary run ``experiment:<name>``. ``jobs`` and ``backend`` ("local" or "ray") drive the sweep.
    ``overrides`` change settings of the profile (``["updates=2000", "widths=[64, 128]"]``).
    """
    experiment = get_experiment(name)
    settings = experiment.settings(profile, overrides)
    n_seeds = settings.get("seeds", 1) if seeds is None else seeds
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"seeds={n_seeds!r}: the number of seeds must be an integer >= 1")
    check_backend(backend, None)
    ctx = Context(
        name=name,
        profile=profile,
        settings=settings,
        seeds=list(range(n_seeds)),
        out_dir=Path(out_dir),
        store_root=_store_root(store),
        jobs=jobs,
        backend=backend,
    )
    start = time.perf_counter()
    results = experiment.measure(ctx)
    verdict = experiment.verdict(results, ctx)
    figures = experiment.figure(results, ctx)
    verdict.figures = [Path(path) for path in ([figures] if isinstance(figures, str | Path) else figures)]
    verdict.duration = time.perf_counter() - start
    verdict.name, verdict.profile, verdict.seeds, verdict.run_ids = name, profile, ctx.seeds, list(ctx.run_ids)
    verdict.settings, verdict.overrides = settings, list(overrides)
    verdict.save(ctx.path(ext="json"))
    if ctx.store_root is not None:
        _record(verdict, experiment, ctx)
    return verdict


def _record(verdict: Verdict, experiment: Experiment, ctx: Context) -> str:
    """Add the summary run ``experiment:<name>`` to the store; returns its run id."""
    from deepscope.store import Store

    spec = {
        "experiment": experiment.name,
        "claim": experiment.claim,
        "source": experiment.source,
        "profile": ctx.profile,
        "settings": ctx.settings,
        "overrides": verdict.overrides,
        "seeds": ctx.seeds,
        "passed": verdict.passed,
        "summary": verdict.summary,
        "checks": verdict.checks,
        "figures": [str(path) for path in verdict.figures],
        "run_ids": verdict.run_ids,
    }
    scalars = {**verdict.numbers, "passed": float(verdict.passed), "duration_s": verdict.duration}
    with Store(ctx.store_root) as store:
        run_id = store.create_run(f"experiment:{experiment.name}", spec, ctx.seeds[0])
        store.log_scalars(run_id, 0, scalars)
        store.set_status(run_id, "finished")
        store.flush()
    return run_id
