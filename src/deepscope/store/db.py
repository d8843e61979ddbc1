"""The run store's SQLite file: its schema, opening it (read-write in WAL mode, or read-only), one-line errors, and
the queries, as plain functions of a connection.

Tables: ``runs`` (spec, seed, status, timings, owner, versions), ``scalars`` (loss and error curves),
``layer_stats`` (the probe's per-layer statistics) and ``histograms``.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepscope.records import HISTOGRAM_COLUMNS, STAT_COLUMNS, restored_at
from deepscope.registry import unknown

DB_NAME = "deepscope.db"

SCHEMA = """
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

RUN_FIELDS = ("id", "name", "spec", "seed", "status", "created", "updated", "finished", "pid", "host", "versions",
              "owner", "heartbeat")
_ADDED_COLUMNS = {"owner": "TEXT", "heartbeat": "REAL"}  # columns newer than the first stores


# --- errors -----------------------------------------------------------------------------------

class StoreError(ValueError):
    """A store that cannot be opened, read or written; the message names the file and what to do."""


def explain(error: BaseException, path: Path) -> StoreError:
    """One line for an SQLite or OS error on the store file ``path``: what is wrong and what to do."""
    text = str(error).lower()
    other = "or give --store DIR (or $DEEPSCOPE_STORE) for another store"
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "disk is full" in text:
        return StoreError(f"the store's disk is full: {path} cannot be written; free some space {other}")
    if path.is_dir():
        return StoreError(f"{path} is a directory, not a run store file; move it away {other}")
    if "not a database" in text or "no such table" in text:
        return StoreError(f"{path} is not a deepscope run store (not an SQLite database of runs); move it away {other}")
    if "malformed" in text or "corrupt" in text:
        return StoreError(f"{path} is damaged ({error}); move it away (keep a copy to recover what you can) {other}")
    unwritable = not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK))
    if "readonly" in text or "read-only" in text or (isinstance(error, OSError) and error.errno in (
            errno.EROFS, errno.EACCES)) or ("unable to open" in text and path.parent.is_dir() and unwritable):
        return StoreError(f"{path} is read-only and training writes to its store: make it writable, {other} on a "
                          "writable disk")
    if "locked" in text or "busy" in text:
        return StoreError(f"{path} is locked by another process for too long ({error}); try again")
    return StoreError(f"cannot use the run store {path} ({error}): check the file and its directory, {other}")


def guarded(method):
    """Turn SQLite and disk errors of a Store method into one-line :class:`StoreError` s (``self.path`` named)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            raise explain(e, self.path) from None

    return wrapper


# --- opening ----------------------------------------------------------------------------------

def connect(path: Path, timeout: float, read_only: bool) -> tuple[sqlite3.Connection, str]:
    """Open the store file ``path`` (its directory made if needed) with its schema; read-only: write nothing.

    Returns the connection and the column list that reads a run's :data:`RUN_FIELDS` (``NULL AS owner`` for a
    read-only store older than the owner columns)."""
    root = path.parent
    if root.exists() and not root.is_dir():
        raise StoreError(f"the store {root} is a file, not a directory; give --store DIR")
    if path.is_dir():
        raise explain(IsADirectoryError(str(path)), path)
    if read_only and not path.is_file():
        raise StoreError(f"no run store at {root} (train a run first, or give --store DIR)")
    db = None
    try:
        if read_only:
            db = _open_read_only(path, timeout)
        else:
            root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        if not columns:
            raise sqlite3.DatabaseError("no such table: runs")
        for column, kind in _ADDED_COLUMNS.items():
            if column not in columns and not read_only:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        missing = [c for c in _ADDED_COLUMNS if c not in columns] if read_only else []
        fields = ", ".join(f"NULL AS {f}" if f in missing else f for f in RUN_FIELDS)
        db.execute("SELECT count(*) FROM runs").fetchone()
    except (sqlite3.Error, OSError) as e:
        if db is not None:
            db.close()
        raise explain(e, path) from None
    return db, fields


def _open_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """Open ``path`` without writing to it; on a read-only directory, where SQLite cannot make the WAL index
    file, as an immutable file (what the last writer committed and checkpointed)."""
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as e:
        db.close()
        if os.access(path.parent, os.W_OK) and "unable to open" not in str(e) and "readonly" not in str(e):
            raise
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


@contextmanager
def transaction(db: sqlite3.Connection):
    """An immediate transaction (takes the write lock up front), rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk does)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
        raise


# --- queries ----------------------------------------------------------------------------------

def as_float(value: Any) -> float:
    """SQLite stores NaN as NULL; read it back as NaN."""
    return math.nan if value is None else float(value)


def resolve(db: sqlite3.Connection, path: Path, prefix: str) -> str:
    """The id of the run named exactly ``prefix``, else of the one run whose id starts with it."""
    rows = db.execute(
        "SELECT id FROM runs WHERE id = ? OR substr(id, 1, ?) = ? ORDER BY created",
        (prefix, len(prefix), prefix),
    ).fetchall()
    ids = [r[0] for r in rows]
    if prefix in ids:
        return prefix
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise ValueError(f"run {prefix!r} not found in {path}; see `deepscope runs ls`")
    raise ValueError(f"run {prefix!r} is ambiguous; it matches: {', '.join(ids)}")


def run_rows(db: sqlite3.Connection, fields: str, run_id: str | None = None) -> list[tuple]:
    """The ``runs`` rows (:data:`RUN_FIELDS`, read with ``fields``): one run, or all of them oldest first."""
    if run_id is not None:
        return db.execute(f"SELECT {fields} FROM runs WHERE id = ?", (run_id,)).fetchall()
    return db.execute(f"SELECT {fields} FROM runs ORDER BY created").fetchall()


def run_dict(row: tuple) -> dict:
    """A ``runs`` row as a dict, its spec and versions parsed."""
    run = dict(zip(RUN_FIELDS, row, strict=True))
    run["spec"], run["versions"] = json.loads(run["spec"]), json.loads(run["versions"])
    return run


def last_scalars(db: sqlite3.Connection, run_id: str | None = None) -> dict[str, dict[str, dict]]:
    """``{run: {name: dict(step, value)}}``: the last value of every scalar of one run (or of all); after
    ``train.restore_best``, the evaluation of the weights the run ended with."""
    where, params = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
    rows = db.execute(
        f"SELECT s.run_id, s.name, s.step, s.value FROM scalars s JOIN ("
        f"  SELECT run_id, name, MAX(step) AS step FROM scalars {where} GROUP BY run_id, name"
        f") m ON s.run_id = m.run_id AND s.name = m.name AND s.step = m.step ORDER BY s.rowid",
        params,
    ).fetchall()
    out: dict[str, dict[str, dict]] = {}
    for rid, name, step, value in rows:
        out.setdefault(rid, {})[name] = {"step": step, "value": as_float(value)}
    for rid, last in out.items():
        restored = restored_at({name: (v["step"], v["value"]) for name, v in last.items()})
        if restored is not None:
            at = db.execute("SELECT name, value FROM scalars WHERE run_id = ? AND step = ?", (rid, restored))
            last |= {name: {"step": restored, "value": as_float(value)} for name, value in at if "/" in name}
    return out


def scalars(db: sqlite3.Connection, run_id: str, name: str | None = None) -> list[dict]:
    """A run's scalars (all, or one name) as ``dict(step, name, value)``, in logging order."""
    sql, params = "SELECT step, name, value FROM scalars WHERE run_id = ?", [run_id]
    if name is not None:
        sql, params = sql + " AND name = ?", [*params, name]
    rows = db.execute(sql + " ORDER BY step, rowid", params).fetchall()
    return [{"step": s, "name": n, "value": as_float(v)} for s, n, v in rows]


def stats(db: sqlite3.Connection, run_id: str, filters: dict) -> list[dict]:
    """A run's per-layer statistics rows, filtered on step, source, layer, quantity or stat (a value or a list)."""
    rows = _select(db, "layer_stats", STAT_COLUMNS, run_id, filters)
    return [dict(zip(STAT_COLUMNS[:-1], r[:-1], strict=True), value=as_float(r[-1])) for r in rows]


def histograms(db: sqlite3.Connection, run_id: str, filters: dict) -> list[dict]:
    """A run's histogram rows, filtered on step, source, layer or quantity (a value or a list)."""
    rows = _select(db, "histograms", HISTOGRAM_COLUMNS, run_id, filters)
    return [dict(zip(HISTOGRAM_COLUMNS[:-1], r[:-1], strict=True), counts=json.loads(r[-1])) for r in rows]


def _select(db: sqlite3.Connection, table: str, columns: tuple[str, ...], run_id: str, filters: dict) -> list[tuple]:
    allowed = [c for c in columns if c not in ("value", "lo", "hi", "counts")]
    sql, params = f"SELECT {', '.join(columns)} FROM {table} WHERE run_id = ?", [run_id]
    for key, value in filters.items():
        if key not in allowed:
            raise unknown(f"filter {key}", value, allowed)
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        sql += f" AND {key} IN ({', '.join('?' * len(values))})"
        params += values
    return db.execute(sql + " ORDER BY step, rowid", params).fetchall()


def delete_records(db: sqlite3.Connection, run_id: str, tables: tuple[str, ...], step: int, *,
                   inclusive: bool = False) -> None:
    """Delete a run's rows of ``tables`` logged after ``step`` (or at it, if ``inclusive``); inside a transaction."""
    op = ">=" if inclusive else ">"
    for table in tables:
        db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step {op} ?", (run_id, step))
