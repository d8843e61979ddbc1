"""The run store: every number of every run in one SQLite file, ``<root>/deepscope.db``.

The database (:mod:`deepscope.store.db`) is in WAL mode with a busy timeout, so several processes (the runs of a
sweep) can write at once. Rows are buffered in memory (:class:`Buffer`) and written in one short transaction by
:meth:`Store.flush`; the trainer flushes at every evaluation, so a run killed with SIGKILL keeps everything up to
its last flush. A run has one writer (:mod:`deepscope.store.ownership`): :meth:`Store.create_run` and
:meth:`Store.claim` make this process its owner in one transaction (owner token, pid, host, heartbeat), and a second
claim of a run whose owner is alive is refused with :class:`~deepscope.store.RunBusyError`. While a store owns runs,
a background thread refreshes their ``heartbeat`` every ``timeout / 4`` seconds. A ``running`` run counts as
``interrupted`` (and is recorded so on the next read) when its heartbeat is older than
:func:`~deepscope.store.heartbeat_timeout` seconds (``$DEEPSCOPE_HEARTBEAT_TIMEOUT``, default 60), or when its
process is gone on this host; the owner of a run on another host that died can thus be replaced after the timeout,
or at once with ``force``.

``Store(root, read_only=True)`` opens an existing store without writing anything (no WAL switch, no schema, no
status updates), so the read commands work on a read-only disk. Every SQLite or disk error becomes a
:class:`~deepscope.store.StoreError`, one line naming the file and what to do.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sqlite3
import sys
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from deepscope.registry import check_name, unknown
from deepscope.store import db, ownership
from deepscope.store.db import DB_NAME, StoreError, guarded

__all__ = ["CHECKPOINT_FILE", "CHECKS_FILE", "REPORT_FILE", "STATUSES", "Buffer", "Store", "default_root"]

STATUSES = ("running", "finished", "diverged", "interrupted")
# the files of a run's folder (Store.run_dir): the last checkpoint, doctor's model/input checks, the report
CHECKPOINT_FILE = "checkpoint.pt"
CHECKS_FILE = "checks.json"
REPORT_FILE = "report.html"
_RECORDS = ("scalars", "layer_stats", "histograms")


def default_root() -> Path:
    """The store directory: ``$DEEPSCOPE_STORE`` if set, else ``./runs``."""
    return Path(os.environ.get("DEEPSCOPE_STORE") or "runs")


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for package in ("deepscope", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "run"


class Buffer:
    """Records waiting for the next flush: scalar, statistics and histogram rows, and the runs they touch."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.scalars: list[tuple] = []
        self.stats: list[tuple] = []
        self.histograms: list[tuple] = []
        self.touched: set[str] = set()

    def add_scalars(self, run_id: str, step: int, values: dict[str, float]) -> None:
        self.scalars.extend((run_id, int(step), name, float(value)) for name, value in values.items())
        self.touched.add(run_id)

    def add_stats(self, run_id: str, rows: list[dict]) -> None:
        self.stats.extend(
            (run_id, int(r["step"]), r["source"], r["layer"], r["quantity"], r["stat"], float(r["value"]))
            for r in rows
        )
        self.touched.add(run_id)

    def add_histograms(self, run_id: str, rows: list[dict]) -> None:
        self.histograms.extend(
            (run_id, int(r["step"]), r["source"], r["layer"], r["quantity"], float(r["lo"]), float(r["hi"]),
             json.dumps([float(c) for c in r["counts"]]))
            for r in rows if math.isfinite(float(r["lo"])) and math.isfinite(float(r["hi"]))
        )
        self.touched.add(run_id)

    def write(self, connection: sqlite3.Connection) -> None:
        """Insert the rows and refresh the touched runs' ``updated`` time (call inside a transaction)."""
        connection.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?)", self.scalars)
        connection.executemany("INSERT INTO layer_stats VALUES (?, ?, ?, ?, ?, ?, ?)", self.stats)
        connection.executemany("INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.histograms)
        now = time.time()
        connection.executemany("UPDATE runs SET updated = ? WHERE id = ?", [(now, r) for r in self.touched])


class Store:
    """A run store rooted at ``root`` (default: :func:`default_root`).

    >>> store = Store("runs")
    >>> run = store.create_run("tanh", spec={"model": {"activation": "tanh"}}, seed=0)
    >>> store.log_scalars(run, 100, {"train/loss": 0.7}); store.flush()
    """

    def __init__(self, root: str | os.PathLike | None = None, *, timeout: float = 60.0, read_only: bool = False):
        self.root = Path(root) if root is not None else default_root()
        self.path = self.root / DB_NAME
        self.read_only = read_only
        self._claims = ownership.Claims(self.path)
        self._buffer = Buffer()
        self._db, self._fields = db.connect(self.path, timeout, read_only)

    @property
    def _heartbeat(self):
        """The thread beating for the runs this store owns (None while it owns none)."""
        return self._claims.heartbeat

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Flush, stop the heartbeat and close; a store error while flushing is still raised (once)."""
        try:
            self.flush()
        finally:
            self._claims.stop()
            self._db.close()

    def _write(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        """One statement in its own immediate transaction (takes the write lock up front)."""
        with self._transaction():
            return self._db.execute(sql, params)

    @contextmanager
    def _transaction(self):
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only; open it with Store(root) to write")
        with db.transaction(self._db):
            yield

    # --- runs -------------------------------------------------------------------------------

    @guarded
    def create_run(self, name: str, spec: dict, seed: int | None) -> str:
        """Record a new run with status ``running``, owned by this process; returns its id, ``<name>-<n>``."""
        slug, now = _slug(check_name(name)), time.time()
        with self._transaction():
            rows = self._db.execute("SELECT id FROM runs WHERE id LIKE ?", (f"{slug}-%",)).fetchall()
            numbers = [int(r[0][len(slug) + 1 :]) for r in rows if r[0][len(slug) + 1 :].isdigit()]
            run_id = f"{slug}-{max(numbers, default=0) + 1}"
            self._db.execute(
                "INSERT INTO runs (id, name, spec, seed, status, created, updated, pid, host, versions, owner,"
                " heartbeat) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, json.dumps(spec), seed, now, now, os.getpid(), socket.gethostname(),
                 json.dumps(_versions()), self._claims.token, now),
            )
        self._claims.own(run_id)
        return run_id

    @guarded
    def claim(self, run_id: str, *, force: bool = False) -> dict:
        """Make this process the one writer of a stored run (status ``running``), in one transaction.

        Refused with :class:`~deepscope.store.RunBusyError` while the run is ``running`` and its owner alive (see
        :meth:`owner_alive`), unless ``force``. Returns the run as it was before (for :meth:`release`).
        """
        run_id = self.resolve(run_id)
        self.flush()
        with self._transaction():
            run = ownership.claim(self._db, self._fields, run_id, self._claims.token, force=force)
        self._claims.own(run_id)
        return run

    @guarded
    def release(self, run_id: str, previous: dict) -> None:
        """Give up a claimed run, restoring the status it had before :meth:`claim` (``previous``)."""
        self._claims.disown(run_id)
        status = "interrupted" if previous["status"] == "running" else previous["status"]
        self._write("UPDATE runs SET status = ?, finished = ? WHERE id = ? AND owner = ?",
                    (status, previous["finished"], run_id, self._claims.token))

    @guarded
    def owns(self, run_id: str) -> bool:
        """Whether this store is still the writer of ``run_id`` (another process may have taken it with force)."""
        return self._claims.owns(self._db, run_id)

    @guarded
    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status; ``running`` also makes this process its owner (use :meth:`claim` to be safe).

        A run another process has taken over (with ``force``) is left to that process."""
        if status not in STATUSES:
            raise unknown("status", status, STATUSES)
        run_id = self.resolve(run_id)
        self.flush()
        if status == "running":
            with self._transaction():
                ownership.take(self._db, run_id, self._claims.token)
            self._claims.own(run_id)
        else:
            self._claims.disown(run_id)
            now = time.time()
            self._write("UPDATE runs SET status = ?, updated = ?, finished = ? WHERE id = ?"
                        " AND (owner IS NULL OR owner = ? OR status != 'running')",
                        (status, now, now, run_id, self._claims.token))

    @guarded
    def update_spec(self, run_id: str, spec: dict) -> None:
        """Replace a run's stored spec (e.g. when a resume extends its length)."""
        self._write("UPDATE runs SET spec = ? WHERE id = ?", (json.dumps(spec), self.resolve(run_id)))

    @guarded
    def resolve(self, prefix: str) -> str:
        """The id of the run named exactly ``prefix``, else of the one run whose id starts with it."""
        return db.resolve(self._db, self.path, prefix)

    @guarded
    def runs(self) -> list[dict]:
        """Every run, oldest first, with its last value of every scalar under ``"last"``."""
        rows = db.run_rows(self._db, self._fields)
        self.flush()
        last = db.last_scalars(self._db)
        return [self._run_dict(row, last.get(row[0], {})) for row in rows]

    @guarded
    def get_run(self, run_id: str) -> dict:
        """One run (id or unique prefix) as a dict: id, name, spec, seed, status, timings, versions, last."""
        run_id = self.resolve(run_id)
        (row,) = db.run_rows(self._db, self._fields, run_id)
        self.flush()
        return self._run_dict(row, db.last_scalars(self._db, run_id).get(run_id, {}))

    def run_dir(self, run_id: str) -> Path:
        """The directory of a run's files (checkpoints): ``<root>/<run_id>``."""
        return self.root / run_id

    def _run_dict(self, row: tuple, last: dict) -> dict:
        """A run as read: a ``running`` run whose owner is gone reads (and is recorded, if writable) as interrupted."""
        run = db.run_dict(row)
        if run["status"] == "running" and not self.owner_alive(run):
            run["status"] = "interrupted"
            if not self.read_only:
                with self._transaction():
                    ownership.mark_interrupted(self._db, run)
        run["last"] = last
        return run

    owner_alive = staticmethod(ownership.owner_alive)

    @guarded
    def delete_after(self, run_id: str, step: int) -> None:
        """Drop every record of a run logged after ``step`` (a resume re-computes them)."""
        run_id = self.resolve(run_id)
        self.flush()
        with self._transaction():
            db.delete_records(self._db, run_id, _RECORDS, step)

    @guarded
    def delete_probe_records(self, run_id: str, step: int) -> None:
        """Drop a run's probe records (stats and histograms) from ``step`` on: a probe resumed at ``step``
        records that step again."""
        run_id = self.resolve(run_id)
        self.flush()
        with self._transaction():
            db.delete_records(self._db, run_id, ("layer_stats", "histograms"), step, inclusive=True)

    # --- records (buffered until flush) -----------------------------------------------------

    def log_scalars(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Buffer scalar values ``{name: value}`` at ``step``."""
        self._buffer.add_scalars(run_id, step, values)

    def log_stats(self, run_id: str, rows: list[dict]) -> None:
        """Buffer per-layer statistics rows ``dict(step, source, layer, quantity, stat, value)``."""
        self._buffer.add_stats(run_id, rows)

    def log_histograms(self, run_id: str, rows: list[dict]) -> None:
        """Buffer histogram rows ``dict(step, source, layer, quantity, lo, hi, counts)``; a row whose range is not
        finite (the values of a diverged network) has no bins to keep and is left out."""
        self._buffer.add_histograms(run_id, rows)

    @guarded
    def flush(self) -> None:
        """Write the buffered records in one transaction and refresh the owners' ``updated`` time."""
        if not self._buffer.touched:
            return
        with self._transaction():
            self._buffer.write(self._db)
        self._buffer.clear()

    def discard(self) -> None:
        """Drop the records buffered since the last flush (after a store error, say)."""
        self._buffer.clear()

    # --- queries ----------------------------------------------------------------------------

    @guarded
    def scalars(self, run_id: str, name: str | None = None) -> list[dict]:
        """A run's scalars (all, or one name) as ``dict(step, name, value)``, in logging order."""
        run_id = self.resolve(run_id)
        self.flush()
        return db.scalars(self._db, run_id, name)

    @guarded
    def stats(self, run_id: str, **filters) -> list[dict]:
        """Per-layer statistics rows; filter on step, source, layer, quantity or stat (a value or a list)."""
        run_id = self.resolve(run_id)
        self.flush()
        return db.stats(self._db, run_id, filters)

    @guarded
    def histograms(self, run_id: str, **filters) -> list[dict]:
        """Histogram rows; filter on step, source, layer or quantity (a value or a list)."""
        run_id = self.resolve(run_id)
        self.flush()
        return db.histograms(self._db, run_id, filters)
