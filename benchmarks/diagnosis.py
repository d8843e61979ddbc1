"""The diagnosis benchmark: ``deepscope doctor`` on labelled set-ups (benchmarks/cases.py), recall and false alarms.

Each case is a short doctor run (a few hundred updates) with a known answer: healthy, or the finding codes
that name its problem. A broken case counts as named when doctor reports one of its codes as a warning or
an error; a healthy case is a false alarm when doctor reports any warning or error. Prints one line per
case, then recall per problem class, false alarms, and the time per case; then the speed of doctor itself
on a 4 x 128 MLP with 600 updates: the whole run, the time from the end of training to the findings, and
the time to write the report (figures included). ``--heldout`` runs benchmarks/heldout.py's set-ups instead.

    python benchmarks/diagnosis.py [--only NAME ...] [--threads 1] [--no-speed] [--heldout]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from cases import CASES, HEALTHY, Case  # noqa: E402
from heldout import HELDOUT  # noqa: E402

from deepscope.workflows.doctor import doctor  # noqa: E402


def run_case(case: Case) -> tuple[set[str], float, str]:
    """(codes of the warnings and errors, seconds, status) of one doctor run of ``case``."""
    start = time.perf_counter()
    result = doctor(case.spec, model=case.build_model(), dataset=case.data(), updates=case.updates, report=False)
    seconds = time.perf_counter() - start
    return {f.code for f in result.findings if f.severity in ("error", "warning")}, seconds, result.status


def verdict(case: Case, found: set[str]) -> str:
    if case.healthy:
        return "ok" if not found else "FALSE ALARM"
    return "named" if found & set(case.expected) else "MISSED"


def benchmark(cases: list[Case]) -> bool:
    per_class: dict[str, list[bool]] = defaultdict(list)
    alarms, times = [], []
    print(f"{'case':<26} {'family':<12} {'expected':<40} {'found':<48} {'s':>5}  verdict")
    for case in cases:
        found, seconds, status = run_case(case)
        times.append(seconds)
        v = verdict(case, found)
        expected = HEALTHY if case.healthy else "|".join(case.expected)
        print(f"{case.name:<26} {case.family:<12} {expected:<40} {','.join(sorted(found)) or '-':<48} "
              f"{seconds:5.1f}  {v}{'' if status == 'finished' else f' ({status})'}", flush=True)
        if case.healthy:
            alarms.append(bool(found))
        else:
            per_class[case.problem].append(v == "named")
    print()
    print(f"{'problem class':<26} {'named':>7} {'recall':>7}")
    for problem, hits in sorted(per_class.items()):
        print(f"{problem:<26} {sum(hits):>3}/{len(hits):<3} {sum(hits) / len(hits):>7.0%}")
    named = [h for hits in per_class.values() for h in hits]
    recall = sum(named) / len(named) if named else 1.0
    print(f"{'all broken set-ups':<26} {sum(named):>3}/{len(named):<3} {recall:>7.0%}")
    print(f"{'false alarms (healthy)':<26} {sum(alarms):>3}/{len(alarms):<3}")
    print(f"time per case: median {statistics.median(times):.1f} s, max {max(times):.1f} s, "
          f"total {sum(times):.0f} s")
    return recall >= 0.95 and not any(alarms)


SPEED_SPEC = {
    "name": "mlp-4x128",
    "data": {"name": "shapeset", "options": {"n_valid": 300, "n_test": 300, "size": 16},
             "preprocess": "standardize"},
    "model": {"depth": 4, "width": 128, "activation": "tanh"},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"updates": 600, "device": "cpu"},
}


SPEED_TOML = """name = "mlp-4x128"
[data]
name = "shapeset"
options = { n_valid = 300, n_test = 300, size = 16 }
preprocess = "standardize"
[model]
depth = 4
width = 128
activation = "tanh"
[optim]
name = "sgd"
lr = 0.05
[train]
updates = 600
device = "cpu"
"""


def speed(out_dir: Path) -> None:
    """Doctor on a 4 x 128 MLP, 600 updates: the whole command in a fresh process (imports included), then
    in this process the training, the time from the end of training to the findings, and the report."""
    import os
    import subprocess

    spec_file = out_dir / "mlp.toml"
    spec_file.write_text(SPEED_TOML)
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

    def timed(args: list[str]) -> tuple[float, int]:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
        return time.perf_counter() - start, done.returncode

    floor, _ = timed(["-c", "import torch, torch._dynamo"])  # every torch optimizer imports torch._dynamo
    print(f"python -c 'import torch, torch._dynamo' (the floor of any doctor run): {floor:5.2f} s")
    for extra in (["--no-report"], []):
        total, code = timed(["-m", "deepscope.cli", "doctor", str(spec_file), "--updates", "600", "-q", "--store",
                             str(out_dir / "runs"), *extra])
        print(f"deepscope doctor (4x128 MLP, 600 updates{', --no-report' if extra else ', with report'}, "
              f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}): whole command {total:5.2f} s (exit {code})")
    for _ in range(2):  # the second round runs with every module already imported
        result = doctor(SPEED_SPEC, updates=600, report=True, report_path=out_dir / "doctor-report.html")
        t = result.timings
        print(f"doctor() in process: training {t['train']:5.2f} s, end of training -> findings {t['findings']:5.2f} s,"
              f" report {t['report']:5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only the cases of these names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the cases (default 1: stable "
                        "on a shared box); the doctor command of the speed test uses torch's default")
    parser.add_argument("--no-speed", action="store_true", help="skip the doctor speed measurement")
    parser.add_argument("--heldout", action="store_true",
                        help="run the held-out set-ups (benchmarks/heldout.py) instead of benchmarks/cases.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c for c in (HELDOUT if args.heldout else CASES) if not args.only or c.name in args.only]
    ok = benchmark(cases)
    if not args.no_speed:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            speed(Path(tmp))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
