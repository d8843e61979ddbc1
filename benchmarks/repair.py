"""The repair benchmark: ``deepscope doctor --fix`` on the labelled set-ups of benchmarks/cases.py.

For each case: the diagnosis run, then the trials of the candidate fixes (see deepscope.workflows.repair).
Prints one line per case -- what doctor found, the best verified fix, the validation error before -> after,
the number of trials and the whole repair's time as a multiple of its diagnosis run (a diagnosis run that
diverges stops early, so its multiple is large) -- then the share of
broken set-ups repaired (target >= 90 %), the healthy set-ups for which a fix was proposed (target 0) and those
whose diagnosis raised a false alarm (trials run, but only a verified fix is proposed).
``--heldout`` runs the held-out set-ups of benchmarks/heldout.py (no threshold was tuned on them) instead.

    python benchmarks/repair.py [--only NAME ...] [--threads 1] [--jobs 2] [--heldout] [--tasks all]

``--tasks`` adds the set-ups of other tasks (benchmarks/task_cases.py); then, per task, the share of broken set-ups
whose repaired run trains: its validation error 20 % below the task's baseline, or R^2 >= 0.2 for a regression
(deepscope.metrics.beats_baseline); the plateau set-ups (random targets: nothing to learn) are left out of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from cases import CASES, Case  # noqa: E402
from heldout import HELDOUT  # noqa: E402
from task_cases import TASK_CASES  # noqa: E402

from deepscope.metrics import baseline, beats_baseline, task_of  # noqa: E402
from deepscope.workflows.repair import repair  # noqa: E402


def run_case(case: Case, jobs: int, out: Path):
    data = case.data()
    r = repair(case.spec, model=case.build_model(), dataset=data, updates=case.updates, jobs=jobs,
               report=False, fixed_path=out / f"{case.name}-fixed.toml")
    # the "trains" bar: the repaired run (or the baseline when nothing was verified) clearly past the task's baseline
    loss = case.spec["train"].get("loss", "cross_entropy")
    task = task_of(loss, data.valid[1], num_classes=data.num_classes)
    chance = baseline(task, data.valid[1], loss, data.num_classes)
    run = r.best if r.best is not None else r.baseline
    return r, beats_baseline(task, run.metrics, chance) and run.status == "finished"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only the cases of these names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the diagnosis run (default 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel trial processes (default: repair's choice, see SPAWN_SECONDS)")
    parser.add_argument("--tasks", default="classification",
                        help="comma-separated tasks: classification (benchmarks/cases.py), regression, binary, "
                        "multilabel, tokens (benchmarks/task_cases.py), or 'all'")
    parser.add_argument("--heldout", action="store_true",
                        help="run the held-out set-ups (benchmarks/heldout.py) instead of benchmarks/cases.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    pool = HELDOUT if args.heldout else [c for c in [*CASES, *TASK_CASES] if "all" in tasks or c.task in tasks]
    cases = [c for c in pool if not args.only or c.name in args.only]
    trains: dict[str, list[bool]] = defaultdict(list)  # per task: the broken set-ups the repair makes train
    per_class: dict[str, list[bool]] = defaultdict(list)
    proposed, alarms, ratios, started = [], [], [], time.perf_counter()
    print(f"{'case':<24} {'kind':<6} {'found (top two)':<38} {'best verified fix':<30} {'valid error':<16} "
          f"{'trials':>6} {'x diag':>7}  verdict")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            r, trained = run_case(case, args.jobs, Path(tmp))
            codes = list(dict.fromkeys(f.code for f in r.baseline.findings if f.severity in ("error", "warning")))
            measure = "valid/r2" if case.task == "regression" else "valid/error"  # R^2 for a regression
            before = r.baseline.metrics.get(measure, float("nan"))
            after = r.best.metrics.get(measure, float("nan")) if r.best else before
            shown = (lambda v: f"R²{v:5.2f}") if measure == "valid/r2" else (lambda v: f"{v:6.1%}")
            start = shown(before) if r.baseline.status == "finished" else "diverged"
            errors = f"{start} -> {shown(after)}"
            ratio = r.seconds / r.diagnosis_seconds
            ratios.append(ratio)
            if case.healthy:  # a false alarm runs trials; a fix is proposed only when one is verified
                verdict = "ok" if r.healthy else "PROPOSED" if r.repaired else "FALSE ALARM (nothing proposed)"
                proposed.append(r.repaired)
                alarms.append(not r.healthy)
            else:
                verdict = ("repaired" if r.repaired else "NOT REPAIRED") + ("" if trained else ", does not train")
                per_class[case.problem].append(r.repaired)
                if case.problem != "plateau":  # random targets: nothing to learn, no fix can make it train
                    trains[case.task].append(trained)
            print(f"{case.name:<24} {case.kind:<6} {','.join(codes[:2]) or '-':<38} "
                  f"{r.best.name if r.best else '-':<30} {errors:<16} {len(r.trials):>6} "
                  f"{ratio:6.1f}x  {verdict}{' (interrupted)' if r.interrupted else ''}", flush=True)
    print()
    print(f"{'problem class':<24} {'repaired':>9}")
    for problem, hits in sorted(per_class.items()):
        print(f"{problem:<24} {sum(hits):>4}/{len(hits):<4}")
    broken = [h for hits in per_class.values() for h in hits]
    share = sum(broken) / len(broken) if broken else 1.0
    print(f"{'broken set-ups repaired':<24} {sum(broken):>4}/{len(broken):<4} {share:.0%} (target >= 90%)")
    print(f"{'healthy with a proposal':<24} {sum(proposed):>4}/{len(proposed):<4} (target 0)")
    print(f"{'healthy with trials':<24} {sum(alarms):>4}/{len(alarms):<4} (a false alarm of the diagnosis)")
    if list(trains) != ["classification"]:
        print(f"\n{'task':<16} {'repaired runs that train (past the baseline)':>46}")
        for task, hits in trains.items():
            print(f"{task:<16} {sum(hits):>4}/{len(hits):<4} {sum(hits) / len(hits):.0%} (target >= 90%)")
    print(f"repair time / diagnosis run: median {statistics.median(ratios):.1f}x, max {max(ratios):.1f}x; "
          f"all cases {time.perf_counter() - started:.0f} s (jobs={args.jobs})")
    sys.exit(0 if share >= 0.9 and not any(proposed) else 1)


if __name__ == "__main__":
    main()
