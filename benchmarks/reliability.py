"""Reliability checks too slow for every CI run (`make reliability`): SIGKILL at random moments then resume,
concurrent resumes of one run, concurrent writers of one store. Prints one line per check and exits 1 if any fails.

1. A run is SIGKILLed at random moments and resumed until it finishes; after every kill the store passes
   ``PRAGMA integrity_check``, no temporary checkpoint is left once the run finishes, and the final weights
   and every recorded scalar equal those of the same run trained without interruption (bit for bit).
2. Four ``deepscope train --resume`` of one run start at once: exactly one trains, the others exit 2 naming
   the owner; no (step, name) record is duplicated.
3. Four processes write new runs into one store at once: every run finishes, no record is lost or duplicated.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SPEC = """\
name = "rel"
[data]
name = "shapeset"
options = { n_valid = 100, n_test = 100, size = 16 }
[model]
depth = 3
width = 32
[optim]
name = "momentum"
lr = 0.05
[train]
updates = 1500
eval_every = 150
checkpoint_every = 50
batch_size = 10
device = "cpu"
"""
KILLS = 6
CLI = [sys.executable, "-m", "deepscope.cli"]


def _integrity(store: Path) -> str:
    db = sqlite3.connect(store / "deepscope.db")
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def _scalars(store: Path, run: str) -> list[tuple]:
    db = sqlite3.connect(store / "deepscope.db")
    try:
        return db.execute("SELECT step, name, value FROM scalars WHERE run_id = ? ORDER BY step, name",
                          (run,)).fetchall()
    finally:
        db.close()


def _weights(store: Path, run: str) -> dict:
    return torch.load(store / run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def kills_and_resumes(work: Path, rng: random.Random) -> bool:
    spec = work / "rel.toml"
    spec.write_text(SPEC)
    reference, killed = work / "reference", work / "killed"
    t0 = time.perf_counter()
    subprocess.run([*CLI, "train", str(spec), "--store", str(reference), "-q"], check=True, capture_output=True)
    full = time.perf_counter() - t0
    args, delays, ok = ["train", str(spec)], [], True
    for attempt in range(KILLS + 50):
        proc = subprocess.Popen([*CLI, *args, "--store", str(killed), "-q"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if len(delays) < KILLS:
            delay = rng.uniform(0.05, 0.25) * full  # start-up included: some kills land in it
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                delays.append(delay)
        out, err = proc.communicate()
        if (killed / "deepscope.db").exists() and (check := _integrity(killed)) != "ok":
            print(f"  integrity_check after kill {len(delays)}: {check}")
            ok = False
        if proc.returncode == 0 or "has already done" in err:  # finished (a kill may land after the last update)
            break
        if proc.returncode not in (-signal.SIGKILL, 2) or "Traceback" in err:
            print(f"  attempt {attempt}: exit {proc.returncode}: {err.strip()[-300:]}")
            ok = False
        if (killed / "rel-1" / "checkpoint.pt").exists():
            args = ["train", "--resume", "rel-1"]
        else:  # killed before the first checkpoint: nothing to resume, start again
            shutil.rmtree(killed, ignore_errors=True)
            args = ["train", str(spec)]
    landed = len(delays)
    same_scalars = _scalars(reference, "rel-1") == _scalars(killed, "rel-1")
    a, b = _weights(reference, "rel-1"), _weights(killed, "rel-1")
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = list(killed.rglob("*.tmp"))
    print(f"sigkill/resume: {landed} SIGKILLs ({', '.join(f'{d:.1f}' for d in delays)} s after a start) of a "
          f"{full:.1f} s run, each then resumed; "
          f"integrity_check ok after each: {ok}; "
          f"final weights bit-identical: {same_weights}; scalars identical: {same_scalars}; "
          f"temporary files left: {len(leftovers)}")
    return ok and same_weights and same_scalars and not leftovers


def concurrent_resumes(work: Path, n: int = 4) -> bool:
    spec = work / "rel.toml"
    store = work / "resumes"
    subprocess.run([*CLI, "train", str(spec), "--updates", "300", "--store", str(store), "-q"], check=True,
                   capture_output=True)
    procs = [subprocess.Popen([*CLI, "train", "--resume", "rel-1", "--updates", "1500", "--store", str(store), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    trained = sum(code == 0 for code, _ in results)
    refused = [err for code, err in results if code == 2]
    named = all("is being trained by pid" in err or "has already done 1500 updates" in err for err in refused)
    rows = _scalars(store, "rel-1")
    duplicates = len(rows) - len({(s, n) for s, n, _ in rows})
    print(f"concurrent resumes: {n} started, {trained} trained, {len(refused)} refused with one line "
          f"(owner named: {named}), duplicated records: {duplicates}, integrity_check: {_integrity(store)}")
    return trained == 1 and len(refused) == n - 1 and named and duplicates == 0


def concurrent_writers(work: Path, n: int = 4) -> bool:
    spec = work / "rel.toml"
    store = work / "writers"
    procs = [subprocess.Popen([*CLI, "train", str(spec), "--updates", "300", "--set", f"train.seed={i}",
                               "--store", str(store), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    codes = [p.wait() for p in procs]
    db = sqlite3.connect(store / "deepscope.db")
    runs = db.execute("SELECT id, status FROM runs").fetchall()
    per_run = db.execute("SELECT run_id, count(*), count(DISTINCT step || '/' || name) FROM scalars"
                         " GROUP BY run_id").fetchall()
    db.close()
    complete = all(total == distinct and total > 0 for _, total, distinct in per_run) and len(per_run) == n
    print(f"concurrent writers: {n} runs, exit codes {codes}, statuses {sorted(s for _, s in runs)}, "
          f"every run's records complete and unique: {complete}, integrity_check: {_integrity(store)}")
    return codes == [0] * n and len(runs) == n and all(s == "finished" for _, s in runs) and complete


def main() -> int:
    rng = random.Random(int(os.environ.get("SEED", "0")))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = [kills_and_resumes(work, rng), concurrent_resumes(work), concurrent_writers(work)]
    print("reliability:", "PASSED" if all(results) else "FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
