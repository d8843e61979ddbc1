"""The run store: every number of every run in one SQLite file, ``<root>/deepscope.db``.

Tables: ``runs`` (spec, seed, status, timings, owner, versions), ``scalars`` (loss and error
curves), ``layer_stats`` (the probe's per-layer statistics) and ``histograms``. The database is in
WAL mode with a busy timeout, so several processes (the runs of a sweep) can write at once.

Rows are buffered in memory and written in one short transaction by :meth:`Store.flush`; the
trainer flushes at every evaluation, so a run killed with SIGKILL keeps everything up to its last
flush. A run has one writer: :meth:`Store.create_run` and :meth:`Store.claim` make this process its
owner in one transaction (owner token, pid, host, heartbeat), and a second claim of a run whose owner
is alive is refused with :class:`RunBusyError`. While a store owns runs, a background thread refreshes
their ``heartbeat`` every ``timeout / 4`` seconds. A ``running`` run counts as ``interrupted`` (and is
recorded so on the next read) when its heartbeat is older than :func:`heartbeat_timeout` seconds
(``$DEEPSCOPE_HEARTBEAT_TIMEOUT``, default 60), or when its process is gone on this host; the owner
of a run on another host that died can thus be replaced after the timeout, or at once with ``force``.

``Store(root, read_only=True)`` opens an existing store without writing anything (no WAL switch, no
schema, no status updates), so the read commands work on a read-only disk. Every SQLite or disk error
becomes a :class:`StoreError`, one line naming the file and what to do.
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
import uuid
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from deepscope.records import HISTOGRAM_COLUMNS, STAT_COLUMNS, restored_at
from deepscope.store_safety import (
    RunBusyError,
    RunTakenOver,
    StoreError,
    TakenMessage,
    _explain,
    _guarded,
    _Heartbeat,
    _open_read_only,
    check_name,
    heartbeat_timeout,
)

__all__ = ["CHECKPOINT_FILE", "CHECKS_FILE", "DB_NAME", "REPORT_FILE", "STATUSES", "RunBusyError", "RunTakenOver",
           "Store", "StoreError", "TakenMessage", "default_root", "heartbeat_timeout"]

STATUSES = ("running", "finished", "diverged", "interrupted")
DB_NAME = "deepscope.db"
# the files of a run's folder (Store.run_dir): the last checkpoint, doctor's model/input checks, the report
CHECKPOINT_FILE = "checkpoint.pt"
CHECKS_FILE = "checks.json"
REPORT_FILE = "report.html"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    pid INTEGER,
    host TEXT,
    versions TEXT NOT NULL,
    owner TEXT,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS scalars (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL
);
CREATE INDEX IF NOT EXISTS scalars_run ON scalars (run_id, name, step);
CREATE TABLE IF NOT EXISTS layer_stats (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, source TEXT NOT NULL, layer TEXT NOT NULL,
    quantity TEXT NOT NULL, stat TEXT NOT NULL, value REAL
);
CREATE INDEX IF NOT EXISTS layer_stats_run ON layer_stats (run_id, layer, quantity, stat, step);
CREATE TABLE IF NOT EXISTS histograms (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, source TEXT NOT NULL, layer TEXT NOT NULL,
    quantity TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, counts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS histograms_run ON histograms (run_id, layer, quantity, step);
"""

_STATS_COLUMNS = STAT_COLUMNS
_HIST_COLUMNS = HISTOGRAM_COLUMNS
_RUN_FIELDS = ("id", "name", "spec", "seed", "status", "created", "updated", "finished", "pid", "host", "versions",
               "owner", "heartbeat")
_ADDED_COLUMNS = {"owner": "TEXT", "heartbeat": "REAL"}  # columns newer than the first stores


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _float(value: Any) -> float:
    """SQLite stores NaN as NULL; read it back as NaN."""
    return math.nan if value is None else float(value)


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
        self._token = uuid.uuid4().hex  # this Store's owner token for the runs it creates or claims
        self._owned: set[str] = set()
        self._heartbeat: _Heartbeat | None = None
        self._scalars: list[tuple] = []
        self._stats: list[tuple] = []
        self._histograms: list[tuple] = []
        self._touched: set[str] = set()
        self._db = self._connect(timeout)

    def _connect(self, timeout: float) -> sqlite3.Connection:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the store {self.root} is a file, not a directory; give --store DIR")
        if self.path.is_dir():
            raise _explain(IsADirectoryError(str(self.path)), self.path)
        if self.read_only and not self.path.is_file():
            raise StoreError(f"no run store at {self.root} (train a run first, or give --store DIR)")
        db = None
        try:
            if self.read_only:
                db = _open_read_only(self.path, timeout)
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
                db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if not columns:
                raise sqlite3.DatabaseError("no such table: runs")
            for column, kind in _ADDED_COLUMNS.items():
                if column not in columns and not self.read_only:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            missing = [c for c in _ADDED_COLUMNS if c not in columns] if self.read_only else []
            self._fields = ", ".join(f"NULL AS {f}" if f in missing else f for f in _RUN_FIELDS)
            db.execute("SELECT count(*) FROM runs").fetchone()
        except (sqlite3.Error, OSError) as e:
            if db is not None:
                db.close()
            raise _explain(e, self.path) from None
        return db

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
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
            self._db.close()

    def _write(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        """One statement in its own immediate transaction (takes the write lock up front)."""
        with self._transaction():
            return self._db.execute(sql, params)

    @contextmanager
    def _transaction(self):
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only; open it with Store(root) to write")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already (a full disk does)
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error is the one to report
            raise

    # --- runs -------------------------------------------------------------------------------

    @_guarded
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
                 json.dumps(_versions()), self._token, now),
            )
        self._own(run_id)
        return run_id

    @_guarded
    def claim(self, run_id: str, *, force: bool = False) -> dict:
        """Make this process the one writer of a stored run (status ``running``), in one transaction.

        Refused with :class:`RunBusyError` while the run is ``running`` and its owner alive (see
        :meth:`owner_alive`), unless ``force``. Returns the run as it was before (for :meth:`release`).
        """
        run_id = self.resolve(run_id)
        self.flush()
        with self._transaction():
            row = self._db.execute(f"SELECT {self._fields} FROM runs WHERE id = ?", (run_id,)).fetchone()
            run = dict(zip(_RUN_FIELDS, row, strict=True))
            if run["status"] == "running" and not force and self.owner_alive(run):
                beat = run["heartbeat"] if run["heartbeat"] is not None else run["updated"]
                raise RunBusyError(
                    f"run {run_id} is being trained by pid {run['pid']} on {run['host']} (last heartbeat "
                    f"{time.time() - beat:.0f} s ago): one writer per run; wait for it to end, or if that process is "
                    f"gone, add --force (a run without heartbeat for {heartbeat_timeout():g} s counts as interrupted)")
            now = time.time()
            self._db.execute(
                "UPDATE runs SET status = 'running', updated = ?, finished = NULL, pid = ?, host = ?, owner = ?,"
                " heartbeat = ? WHERE id = ?", (now, os.getpid(), socket.gethostname(), self._token, now, run_id))
        self._own(run_id)
        return run

    @_guarded
    def release(self, run_id: str, previous: dict) -> None:
        """Give up a claimed run, restoring the status it had before :meth:`claim` (``previous``)."""
        self._disown(run_id)
        status = "interrupted" if previous["status"] == "running" else previous["status"]
        self._write("UPDATE runs SET status = ?, finished = ? WHERE id = ? AND owner = ?",
                    (status, previous["finished"], run_id, self._token))

    @_guarded
    def owns(self, run_id: str) -> bool:
        """Whether this store is still the writer of ``run_id`` (another process may have taken it with force)."""
        row = self._db.execute("SELECT owner FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is not None and row[0] == self._token

    def _own(self, run_id: str) -> None:
        self._owned.add(run_id)
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self._token, self._owned, heartbeat_timeout() / 4)
            self._heartbeat.start()

    def _disown(self, run_id: str) -> None:
        """This process no longer writes ``run_id``; the heartbeat thread stops with the last owned run."""
        self._owned.discard(run_id)
        if not self._owned and self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    @_guarded
    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status; ``running`` also makes this process its owner (use :meth:`claim` to be safe).

        A run another process has taken over (with ``force``) is left to that process."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is not known; choose one of: {', '.join(STATUSES)}")
        run_id = self.resolve(run_id)
        self.flush()
        now = time.time()
        if status == "running":
            self._write(
                "UPDATE runs SET status = ?, updated = ?, finished = NULL, pid = ?, host = ?, owner = ?, heartbeat = ?"
                " WHERE id = ?", (status, now, os.getpid(), socket.gethostname(), self._token, now, run_id),
            )
            self._own(run_id)
        else:
            self._disown(run_id)
            self._write("UPDATE runs SET status = ?, updated = ?, finished = ? WHERE id = ?"
                        " AND (owner IS NULL OR owner = ? OR status != 'running')",
                        (status, now, now, run_id, self._token))

    @_guarded
    def update_spec(self, run_id: str, spec: dict) -> None:
        """Replace a run's stored spec (e.g. when a resume extends its length)."""
        self._write("UPDATE runs SET spec = ? WHERE id = ?", (json.dumps(spec), self.resolve(run_id)))

    @_guarded
    def resolve(self, prefix: str) -> str:
        """The id of the run named exactly ``prefix``, else of the one run whose id starts with it."""
        rows = self._db.execute(
            "SELECT id FROM runs WHERE id = ? OR substr(id, 1, ?) = ? ORDER BY created",
            (prefix, len(prefix), prefix),
        ).fetchall()
        ids = [r[0] for r in rows]
        if prefix in ids:
            return prefix
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise ValueError(f"run {prefix!r} not found in {self.path}; see `deepscope runs ls`")
        raise ValueError(f"run {prefix!r} is ambiguous; it matches: {', '.join(ids)}")

    @_guarded
    def runs(self) -> list[dict]:
        """Every run, oldest first, with its last value of every scalar under ``"last"``."""
        rows = self._db.execute(f"SELECT {self._fields} FROM runs ORDER BY created").fetchall()
        last = self._last_scalars()
        return [self._run_dict(row, last.get(row[0], {})) for row in rows]

    @_guarded
    def get_run(self, run_id: str) -> dict:
        """One run (id or unique prefix) as a dict: id, name, spec, seed, status, timings, versions, last."""
        run_id = self.resolve(run_id)
        row = self._db.execute(f"SELECT {self._fields} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._run_dict(row, self._last_scalars(run_id).get(run_id, {}))

    def run_dir(self, run_id: str) -> Path:
        """The directory of a run's files (checkpoints): ``<root>/<run_id>``."""
        return self.root / run_id

    def _run_dict(self, row: tuple, last: dict) -> dict:
        run = dict(zip(_RUN_FIELDS, row, strict=True))
        run["spec"], run["versions"] = json.loads(run["spec"]), json.loads(run["versions"])
        if run["status"] == "running" and not self.owner_alive(run):
            run["status"] = "interrupted"
            if not self.read_only:
                self._write("UPDATE runs SET status = 'interrupted' WHERE id = ? AND status = 'running'"
                            " AND owner IS ?", (run["id"], run["owner"]))
        run["last"] = last
        return run

    @staticmethod
    def owner_alive(run: dict) -> bool:
        """Whether the process training a ``running`` run still is: its heartbeat is fresh (less than
        :func:`heartbeat_timeout` seconds old) and, on this host, its pid exists."""
        beat = run.get("heartbeat") if run.get("heartbeat") is not None else run["updated"]
        if time.time() - beat > heartbeat_timeout():
            return False
        if run["host"] != socket.gethostname() or run["pid"] is None:
            return True  # cannot tell from here: the heartbeat decides
        return _pid_alive(run["pid"])

    def _last_scalars(self, run_id: str | None = None) -> dict[str, dict[str, dict]]:
        self.flush()
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        rows = self._db.execute(
            f"SELECT s.run_id, s.name, s.step, s.value FROM scalars s JOIN ("
            f"  SELECT run_id, name, MAX(step) AS step FROM scalars {where} GROUP BY run_id, name"
            f") m ON s.run_id = m.run_id AND s.name = m.name AND s.step = m.step ORDER BY s.rowid",
            params,
        ).fetchall()
        out: dict[str, dict[str, dict]] = {}
        for rid, name, step, value in rows:
            out.setdefault(rid, {})[name] = {"step": step, "value": _float(value)}
        for rid, last in out.items():  # after train.restore_best: the evaluation of the weights the run ended with
            restored = restored_at({name: (v["step"], v["value"]) for name, v in last.items()})
            if restored is not None:
                at = self._db.execute("SELECT name, value FROM scalars WHERE run_id = ? AND step = ?", (rid, restored))
                last |= {name: {"step": restored, "value": _float(value)} for name, value in at if "/" in name}
        return out

    @_guarded
    def delete_after(self, run_id: str, step: int) -> None:
        """Drop every record of a run logged after ``step`` (a resume re-computes them)."""
        run_id = self.resolve(run_id)
        self.flush()
        with self._transaction():
            for table in ("scalars", "layer_stats", "histograms"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", (run_id, step))

    def delete_probe_records(self, run_id: str, step: int) -> None:
        """Drop a run's probe records (stats and histograms) from ``step`` on: a probe resumed at ``step``
        records that step again."""
        run_id = self.resolve(run_id)
        self.flush()
        with self._transaction():
            for table in ("layer_stats", "histograms"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step >= ?", (run_id, step))

    # --- records (buffered until flush) -----------------------------------------------------

    def log_scalars(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Buffer scalar values ``{name: value}`` at ``step``."""
        self._scalars.extend((run_id, int(step), name, float(value)) for name, value in values.items())
        self._touched.add(run_id)

    def log_stats(self, run_id: str, rows: list[dict]) -> None:
        """Buffer per-layer statistics rows ``dict(step, source, layer, quantity, stat, value)``."""
        self._stats.extend(
            (run_id, int(r["step"]), r["source"], r["layer"], r["quantity"], r["stat"], float(r["value"]))
            for r in rows
        )
        self._touched.add(run_id)

    def log_histograms(self, run_id: str, rows: list[dict]) -> None:
        """Buffer histogram rows ``dict(step, source, layer, quantity, lo, hi, counts)``; a row whose range is not
        finite (the values of a diverged network) has no bins to keep and is left out."""
        self._histograms.extend(
            (run_id, int(r["step"]), r["source"], r["layer"], r["quantity"], float(r["lo"]), float(r["hi"]),
             json.dumps([float(c) for c in r["counts"]]))
            for r in rows if math.isfinite(float(r["lo"])) and math.isfinite(float(r["hi"]))
        )
        self._touched.add(run_id)

    @_guarded
    def flush(self) -> None:
        """Write the buffered records in one transaction and refresh the owners' ``updated`` time."""
        if not self._touched:
            return
        with self._transaction():
            self._db.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?)", self._scalars)
            self._db.executemany("INSERT INTO layer_stats VALUES (?, ?, ?, ?, ?, ?, ?)", self._stats)
            self._db.executemany("INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._histograms)
            now = time.time()
            self._db.executemany("UPDATE runs SET updated = ? WHERE id = ?", [(now, r) for r in self._touched])
        self._scalars, self._stats, self._histograms, self._touched = [], [], [], set()

    def discard(self) -> None:
        """Drop the records buffered since the last flush (after a store error, say)."""
        self._scalars, self._stats, self._histograms, self._touched = [], [], [], set()

    # --- queries ----------------------------------------------------------------------------

    @_guarded
    def scalars(self, run_id: str, name: str | None = None) -> list[dict]:
        """A run's scalars (all, or one name) as ``dict(step, name, value)``, in logging order."""
        run_id = self.resolve(run_id)
        self.flush()
        sql, params = "SELECT step, name, value FROM scalars WHERE run_id = ?", [run_id]
        if name is not None:
            sql, params = sql + " AND name = ?", [*params, name]
        rows = self._db.execute(sql + " ORDER BY step, rowid", params).fetchall()
        return [{"step": s, "name": n, "value": _float(v)} for s, n, v in rows]

    def stats(self, run_id: str, **filters) -> list[dict]:
        """Per-layer statistics rows; filter on step, source, layer, quantity or stat (a value or a list)."""
        rows = self._select("layer_stats", _STATS_COLUMNS, run_id, filters)
        return [dict(zip(_STATS_COLUMNS[:-1], r[:-1], strict=True), value=_float(r[-1])) for r in rows]

    def histograms(self, run_id: str, **filters) -> list[dict]:
        """Histogram rows; filter on step, source, layer or quantity (a value or a list)."""
        rows = self._select("histograms", _HIST_COLUMNS, run_id, filters)
        return [dict(zip(_HIST_COLUMNS[:-1], r[:-1], strict=True), counts=json.loads(r[-1])) for r in rows]

    @_guarded
    def _select(self, table: str, columns: tuple[str, ...], run_id: str, filters: dict) -> list[tuple]:
        run_id = self.resolve(run_id)
        self.flush()
        allowed = [c for c in columns if c not in ("value", "lo", "hi", "counts")]
        sql, params = f"SELECT {', '.join(columns)} FROM {table} WHERE run_id = ?", [run_id]
        for key, value in filters.items():
            if key not in allowed:
                raise ValueError(f"filter {key}={value!r} is not known; choose one of: {', '.join(allowed)}")
            values = list(value) if isinstance(value, list | tuple | set) else [value]
            sql += f" AND {key} IN ({', '.join('?' * len(values))})"
            params += values
        return self._db.execute(sql + " ORDER BY step, rowid", params).fetchall()

