"""An external benchmark: AUTOTRAINER's Circle and Blob models, in PyTorch, through ``deepscope.doctor(..., fix=True)``.

The models are the Keras code of the AUTOTRAINER benchmark (Zhang et al., ICSE 2021) as published with DeepDiagnosis
(Wardat et al., ICSE 2022), translated in benchmarks/external/autotrainer_toy_models.py (the initializers and
layers of autotrainer_models.py; exp activations as a module; Circle's sigmoid left to ``bce_with_logits``, Blob's
sigmoid under Keras's categorical cross-entropy as ``LogSigmoid`` into ``cross_entropy``).

The data are AUTOTRAINER's (``AutoTrainer/data/simplednn.py`` of shiningrain/AUTOTRAINER), generated in-process by
deepscope's ``circles`` and ``blobs`` datasets, which reproduce scikit-learn's ``make_circles`` / ``make_blobs``
point for point: Circle ``make_circles(n_samples=1000, noise=0.1, random_state=1)`` (factor 0.8, scikit-learn's
default), Blob ``make_blobs(n_samples=1000, centers=3, n_features=2, cluster_std=2, random_state=2)``; the first 700
points train and the last 300 validate (AUTOTRAINER multiplies by 100 and its ``preprocess`` divides by 100: the raw
points). The training configuration is the one of the tasks' published normal runs (see
``autotrainer_toy_models.CONFIG``): Adam lr 0.001 (Keras's epsilon 1e-7), batch 128 (Circle) or 256 (Blob), 300
epochs = 1,800 / 900 updates; the buggy models' own configurations are not published. Runs here are shorter
(``--updates``, default 600) so that the 51 models fit in about 15 minutes on two shared cores.

For each model: DeepDiagnosis's published diagnosis, deepscope's findings and cause, the fix, the validation error
before and after ``--fix`` and whether the network trains by the rule of the MNIST benchmark: a validation error at
least 10 points below the chance error (the majority class's complement on the validation set: 49.7 % for Circle's
151/149 points, 64.3 % for Blob's 107/101/92) and better than the unrepaired run's (or that run diverged); a healthy
model trains when its own run is 10 points below chance. Then the rates beside the published ones.

    python benchmarks/external/autotrainer_toy.py [--task circle|blob] [--only NAME ...] [--updates 600] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from autotrainer import cause_of, trains  # noqa: E402
from autotrainer_models import scratch_dir  # noqa: E402
from autotrainer_toy_models import CONFIG, MODELS, ToyModel  # noqa: E402

import deepscope  # noqa: E402
from deepscope.data import get_dataset  # noqa: E402

# The published rates. AUTOTRAINER's per-model table (Supplement_data/Rebuttal-ICSE2021/All_models_detail.csv of
# shiningrain/AUTOTRAINER): Circle 71 buggy models, 71 repaired (36 normal); Blob 48 buggy, 46 repaired, 2 failed
# (39 normal). DeepDiagnosis (DeepDiagnosis Result/Circle_Result.txt, Blob_Result.txt of DeepDiagnosis/ICSE2022):
# a diagnosis for 47 of Circle's 71 repaired runs and 1 of its 36 normal ones; for Blob 32 of 46 repaired, 2 of 2
# failed, 8 of 39 normal.
PUBLISHED = {
    "found": "DeepDiagnosis: Circle 47/71 66%, Blob 34/48 71%",
    "repaired": "AUTOTRAINER: Circle 71/71 100%, Blob 46/48 96%",
    "alarms": "DeepDiagnosis normal flagged: Circle 1/36 3%, Blob 8/39 21%",
}
QUICK = ("circle/model_0ae2cd88", "circle/simplednn")


def spec_for(m: ToyModel, updates: int) -> dict:
    """The run spec of model ``m``: its task's data, loss, optimizer and batch size (autotrainer_toy_models.CONFIG)."""
    cfg = CONFIG[m.task]
    return {"name": m.name, "data": {"name": cfg["data"]}, "optim": dict(cfg["optim"]),
            "train": {"updates": updates, "batch_size": cfg["batch_size"], "loss": cfg["loss"], "device": "cpu",
                      "seed": 0}}


def chance_error(data) -> float:
    """1 - the majority class's share of the validation labels (deepscope's baseline for both tasks)."""
    y = data.valid[1].long()
    return 1.0 - float(torch.bincount(y).max()) / len(y)


def run(m: ToyModel, data, updates: int, monitor: int):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = m.build()
    return deepscope.doctor(spec_for(m, updates), model=model, dataset=data, updates=updates, monitor=monitor,
                            fix=True, report=False).repair


def _codes(r) -> set[str]:
    return {f.code for f in r.baseline.findings if f.severity in ("error", "warning")}


def row(m: ToyModel, r, chance: float) -> tuple[bool, bool, str]:
    """Whether the model trains after doctor --fix (no proposal: as it is), whether it trains as it is (10 points
    below chance), and its printed line."""
    base = r.baseline
    diverged = base.status != "finished"
    before = base.metrics.get("valid/error", math.nan)
    after = r.best.metrics["valid/error"] if r.best else before
    ok = trains(after, before, diverged, chance) if r.best else trains(before, 1.0, False, chance)
    codes = list(dict.fromkeys(f.code for f in base.findings if f.severity in ("error", "warning")))
    start = "diverged" if diverged or not math.isfinite(before) else f"{before:6.1%}"
    errors = f"{start} -> {after:6.1%}" if r.best else start
    fix = r.best.name if r.best else "-"
    line = (f"{m.task + '/' + m.name:<25} {m.deepdiagnosis[:58]:<58} {','.join(codes[:2]) or 'healthy':<40} "
            f"{cause_of(r)[:20]:<20} {fix[:34]:<34} {errors:<18} {'yes' if ok else 'NO'}")
    return ok, trains(before, 1.0, False, chance), line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["circle", "blob"], help="run one task's models only")
    parser.add_argument("--only", nargs="*", help="run only these models (task/name, as in MODELS)")
    parser.add_argument("--updates", type=int, default=600, help="updates per run (diagnosis and each trial)")
    parser.add_argument("--quick", action="store_true", help="CI-size smoke run: two Circle models, 60 updates")
    parser.add_argument("--monitor", type=int, default=100, help="monitor examples of the probe (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or [k for k, m in MODELS.items() if args.task in (None, m.task)]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: not known; choose from {', '.join(MODELS)}")
    updates = args.updates
    if args.quick:
        names, updates = list(QUICK), 60
    datasets = {task: get_dataset(cfg["data"]) for task, cfg in CONFIG.items()}
    chances = {task: chance_error(d) for task, d in datasets.items()}
    print(f"AUTOTRAINER's Circle (make_circles, 700 train / 300 valid, chance error {chances['circle']:.1%}) and Blob "
          f"(make_blobs, 3 classes, chance error {chances['blob']:.1%}); {updates} updates per run; Adam lr 0.001, "
          "batch 128 / 256 (the tasks' published normal runs)")
    print(f"{'model':<25} {'published (DeepDiagnosis)':<58} {'deepscope: found':<40} {'cause':<20} {'fix':<34} "
          f"{'valid error':<18} trains")
    rows, started = [], time.perf_counter()
    with scratch_dir():  # repair writes <run>-fixed.toml into the working directory
        for name in names:
            m = MODELS[name]
            r = run(m, datasets[m.task], updates, args.monitor)
            ok, as_is, line = row(m, r, chances[m.task])
            rows.append((m, r, ok, as_is))
            print(line, flush=True)
    print()
    print(f"{'rate':<48} {'deepscope':>12}   published")
    for task in ("circle", "blob"):
        buggy = [(r, ok) for m, r, ok, _ in rows if m.buggy and m.task == task]
        healthy = [(r, as_is) for m, r, _, as_is in rows if not m.buggy and m.task == task]
        if not buggy and not healthy:
            continue
        named = sum(1 for r, _ in buggy if not r.healthy)
        repaired = sum(1 for r, ok in buggy if ok and r.best is not None)
        proposals = sum(1 for r, _ in healthy if r.best is not None)
        flagged = sum(1 for r, _ in healthy if not r.healthy)
        twins = sum(1 for _, ok in healthy if ok)
        nb, nh = len(buggy) or 1, len(healthy) or 1
        print(f"{task + ': buggy models with a finding':<48} {named:>4}/{len(buggy):<4} {named / nb:4.0%}   "
              f"{PUBLISHED['found']}")
        print(f"{task + ': buggy models repaired (trains)':<48} {repaired:>4}/{len(buggy):<4} {repaired / nb:4.0%}   "
              f"{PUBLISHED['repaired']}")
        print(f"{task + ': normal models with a proposal':<48} {proposals:>4}/{len(healthy):<4} "
              f"{proposals / nh:4.0%}   {PUBLISHED['alarms']}")
        print(f"{task + ': normal models with a finding':<48} {flagged:>4}/{len(healthy):<4} {flagged / nh:4.0%}")
        if task == "blob":  # every Blob model ends in Keras's sigmoid under categorical cross-entropy
            other = sum(1 for r, _ in healthy if _codes(r) - {"output_activation"})
            print(f"{'blob: ... besides output_activation (the ending)':<48} {other:>4}/{len(healthy):<4} "
                  f"{other / nh:4.0%}")
        print(f"{task + ': normal models that train as they are':<48} {twins:>4}/{len(healthy):<4} {twins / nh:4.0%}")
    print(f"all models {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
