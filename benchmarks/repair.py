"""The repair benchmark: ``deepscope doctor --fix`` on the labelled set-ups of benchmarks/cases.py.

For each case: the diagnosis run, then the trials of the candidate fixes (see deepscope.workflows.repair).
Prints one line per case -- what doctor found, the cause it names (the change the user must make), the best verified
fix, the validation error before -> after (and the healthy twin's, where the case has one), whether the repaired
network *trains* (validation error at least 10 points below the chance error and better than the baseline, or the
baseline diverged), the number of trials and the whole repair's time as a multiple of its diagnosis run -- then the
targets: the share of broken set-ups that end with a network that trains (>= 95 %), the healthy set-ups with a
proposal (0), the cause column against the case's label (>= 90 %), the healthy set-ups that train by the same rule
in their budget (all: a repair of a broken twin can only show "trains" when its healthy twin does; per family), the
broken set-ups whose baseline already trains by the rule (the bug does not stop training), and the set-ups whose
cause is in the data (reported as "no training change can help").
``--heldout`` runs the held-out set-ups of benchmarks/heldout.py (no threshold was tuned on them) instead, ``--all``
both; ``--external`` adds AUTOTRAINER's buggy MNIST models (benchmarks/external/autotrainer.py, slower).
``--tasks`` adds the set-ups of other tasks (benchmarks/task_cases.py: regression, binary, multi-label, tokens);
their error is the task's (1 - R^2 for a regression, whose chance level is 1) and the per-task share of broken
set-ups that train is printed too.

    python benchmarks/repair.py [--only NAME ...] [--threads 1] [--jobs 2] [--heldout | --all] [--external]
                                [--tasks all|regression,binary,...]
"""

from __future__ import annotations

import argparse
import math
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

from deepscope.diagnosis.causes import DATA_CAUSES, SUSPECTED_DATA_CAUSES  # noqa: E402
from deepscope.workflows.repair import repair, trains  # noqa: E402

PROBLEM = ("error", "warning")


def run_case(case: Case, jobs: int, out: Path):
    return repair(case.spec, model=case.build_model(), dataset=case.data(), updates=case.updates, jobs=jobs,
                  report=False, fixed_path=out / f"{case.name}-fixed.toml")


def cause_of(result) -> str:
    """The cause doctor names: the first problem finding's cause (its own code when no cause explains it)."""
    first = next((f for f in result.baseline.findings if f.severity in PROBLEM), None)
    return "-" if first is None else first.cause or first.code


def external_cases() -> list[Case]:
    """AUTOTRAINER's buggy MNIST models (and the healthy seed LeNet) as module cases on mnist5k."""
    sys.path.insert(0, str(Path(__file__).parent / "external"))
    from autotrainer import spec_for
    from autotrainer_models import ARCHS, DEFAULT

    from deepscope.data import get_dataset

    data = get_dataset("mnist5k")
    labels = {"tmp_lenet5": ("depth_unnormalized", "variance_shrinks", "vanishing_gradients"),
              "model_al_22": ("depth_unnormalized", "lr_too_high", "dead_units")}
    out = []
    for name in DEFAULT:
        m = ARCHS[name]
        expected = "healthy" if not m.buggy else labels.get(name, ("depth_unnormalized", "saturation",
                                                                   "vanishing_gradients"))
        out.append(Case(name, expected, "module", spec_for(m, 300), model=m.build, data=lambda: data,
                        updates=300, family="external", twin="lenet_seed" if m.buggy else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only the cases of these names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the diagnosis run (default 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel trial processes (default: repair's choice, see SPAWN_SECONDS)")
    parser.add_argument("--heldout", action="store_true",
                        help="run the held-out set-ups (benchmarks/heldout.py) instead of benchmarks/cases.py")
    parser.add_argument("--all", action="store_true", help="run benchmarks/cases.py and the held-out set-ups")
    parser.add_argument("--external", action="store_true", help="add AUTOTRAINER's MNIST models (slow)")
    parser.add_argument("--tasks", default="classification",
                        help="comma-separated tasks: classification (benchmarks/cases.py), regression, binary, "
                        "multilabel, tokens (benchmarks/task_cases.py), or 'all'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    own = [c for c in [*CASES, *TASK_CASES] if "all" in tasks or c.task in tasks]
    pool = own + HELDOUT if args.all else HELDOUT if args.heldout else own
    pool = pool + (external_cases() if args.external else [])
    cases = [c for c in pool if not args.only or c.name in args.only]
    twins = {c.name: c for c in CASES + HELDOUT + pool if c.healthy}
    per_class: dict[str, list[bool]] = defaultdict(list)
    per_task: dict[str, list[bool]] = defaultdict(list)  # the broken set-ups of each task the repair makes train
    twins_train: dict[str, list[bool]] = defaultdict(list)  # per family: the healthy set-ups that train by the rule
    trained_before: list[str] = []  # broken set-ups whose baseline already trains by the rule
    proposed, alarms, causes, data_causes, ratios, started = [], [], [], [], [], time.perf_counter()
    print(f"{'case':<26} {'found (top two)':<40} {'cause':<22} {'best verified fix':<28} {'valid error':<17} "
          f"{'trains':<6} {'trials':>6} {'x diag':>7}  verdict")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            r = run_case(case, args.jobs, Path(tmp))
            b = r.baseline
            codes = list(dict.fromkeys(f.code for f in b.findings if f.severity in PROBLEM))
            before = error_of(b.metrics)
            after = error_of(r.best.metrics) if r.best else before
            diverged = b.status != "finished"
            start = f"{before:6.1%}" if not diverged else "diverged"
            errors = f"{start} -> {after:6.1%}"
            ratio = r.seconds / r.diagnosis_seconds
            ratios.append(ratio)
            cause = cause_of(r)
            ok = r.best is not None and trains(after, b.chance_error, before, diverged)
            if case.healthy:  # a false alarm runs trials; a fix is proposed only when one is verified
                verdict = "ok" if r.healthy else "PROPOSED" if r.repaired else "FALSE ALARM (nothing proposed)"
                proposed.append(r.repaired)
                alarms.append(not r.healthy)
                ok = trains(before, b.chance_error, 1.0)
                twins_train[case.family].append(ok)
            else:
                causes.append(cause in case.expected)
                if not diverged and trains(before, b.chance_error, 1.0):
                    trained_before.append(case.name)
                if case.expected[0] in DATA_CAUSES | SUSPECTED_DATA_CAUSES:  # "no training change can help"
                    done = r.data_cause is not None and r.best is None
                    data_causes.append(done)
                    verdict = "no training change can help" if done else "DATA CAUSE MISSED"
                else:
                    done = ok
                    per_task[case.task].append(ok)
                    verdict = "trains" if ok else "repaired, does not train" if r.repaired else "NOT REPAIRED"
                per_class[case.problem].append(done)
            twin = twins.get(case.twin)
            twin_err = f" (twin {twin_err_of(twin):.1%})" if twin is not None else ""
            print(f"{case.name:<26} {','.join(codes[:2]) or '-':<40} {cause:<22} "
                  f"{(r.best.name if r.best else '-')[:28]:<28} {errors + twin_err:<17} {'yes' if ok else 'no':<6} "
                  f"{len(r.trials):>6} {ratio:6.1f}x  {verdict}{' (interrupted)' if r.interrupted else ''}", flush=True)
    print()
    print(f"{'problem class':<26} {'done':>9}")
    for problem, hits in sorted(per_class.items()):
        print(f"{problem:<26} {sum(hits):>4}/{len(hits):<4}")
    broken = [h for hits in per_class.values() for h in hits]
    share = sum(broken) / len(broken) if broken else 1.0
    cause_share = sum(causes) / len(causes) if causes else 1.0
    print(f"{'broken set-ups that train (or data cause named)':<48} {sum(broken):>4}/{len(broken):<4} {share:.0%} "
          "(target >= 95%)")
    print(f"{'healthy with a proposal':<48} {sum(proposed):>4}/{len(proposed):<4} (target 0)")
    print(f"{'healthy with trials':<48} {sum(alarms):>4}/{len(alarms):<4} (a false alarm of the diagnosis)")
    print(f"{'cause column matches the label':<48} {sum(causes):>4}/{len(causes):<4} {cause_share:.0%} "
          "(target >= 90%)")
    twin_hits = [h for hits in twins_train.values() for h in hits]
    print(f"{'healthy twins that train':<48} {sum(twin_hits):>4}/{len(twin_hits):<4} (target: all; "
          + ", ".join(f"{family} {sum(h)}/{len(h)}" for family, h in sorted(twins_train.items())) + ")")
    print(f"{'broken set-ups that train before repair':<48} {len(trained_before):>4}/{len(causes):<4} "
          f"(the bug does not stop training{': ' + ', '.join(trained_before) if trained_before else ''})")
    print(f"{'data causes: no training change can help':<48} {sum(data_causes):>4}/{len(data_causes):<4} "
          "(target: all)")
    if list(per_task) != ["classification"]:
        print(f"\n{'task':<16} {'broken set-ups that train':>26}")
        for task, hits in per_task.items():
            print(f"{task:<16} {sum(hits):>4}/{len(hits):<4} {sum(hits) / len(hits):.0%} (target >= 90%)")
    print(f"repair time / diagnosis run: median {statistics.median(ratios):.1f}x, max {max(ratios):.1f}x; "
          f"all cases {time.perf_counter() - started:.0f} s (jobs={args.jobs})")
    sys.exit(0 if share >= 0.95 and not any(proposed) and cause_share >= 0.9 and all(data_causes) else 1)


_TWIN_ERRORS: dict[str, float] = {}


def error_of(metrics: dict[str, float]) -> float:
    """The validation error of the task: 1 - R^2 for a regression (the mean scores 1), else the error rate."""
    return metrics["valid/error"] if "valid/error" in metrics else 1 - metrics.get("valid/r2", -math.inf)


def twin_err_of(case: Case) -> float:
    """The validation error of a healthy twin's diagnosis run (run once, remembered)."""
    if case.name not in _TWIN_ERRORS:
        from deepscope.workflows.run import diagnosis_run

        r = diagnosis_run(case.spec, model=case.build_model(), dataset=case.data(), updates=case.updates,
                          report=False)
        _TWIN_ERRORS[case.name] = error_of(r.metrics)
    return _TWIN_ERRORS[case.name]


if __name__ == "__main__":
    main()
