"""What keeps a run store safe: one-line errors naming the file, read-only opening, run heartbeats, name checks.

Used by :mod:`deepscope.store`; see its docstring for the rules (one writer per run, heartbeat timeout).
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import threading
import time
from pathlib import Path

from deepscope.registry import MAX_NAME, check_name  # noqa: F401 - re-exported for the store

__all__ = ["MAX_NAME", "RunBusyError", "RunTakenOver", "StoreError", "TakenMessage", "check_name",
           "heartbeat_timeout"]



class StoreError(ValueError):
    """A store that cannot be opened, read or written; the message names the file and what to do."""


class RunBusyError(StoreError):
    """A run that another live process is training (its one writer)."""


class RunTakenOver(Exception):  # noqa: N818 -- an event the trainer acts on, not a failure
    """Raised before a checkpoint write when another process has claimed the run (with force)."""

    def __init__(self, run_id: str):
        super().__init__(f"Run {run_id} was taken over by another process (--resume --force); this one stops "
                         "without writing its checkpoint.")


class TakenMessage(str):
    """The message of a run taken over: its status is the new owner's to set."""


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a ``running`` run counts as interrupted."""
    try:
        return max(0.1, float(os.environ.get("DEEPSCOPE_HEARTBEAT_TIMEOUT") or 60.0))
    except ValueError:
        return 60.0


def _explain(error: BaseException, path: Path) -> StoreError:
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


def _guarded(method):
    """Turn SQLite and disk errors of a Store method into one-line :class:`StoreError` s."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            raise _explain(e, self.path) from None

    return wrapper


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


class _Heartbeat(threading.Thread):
    """Refreshes ``heartbeat`` of the runs a store owns every ``interval`` seconds, on its own connection."""

    def __init__(self, path: Path, token: str, owned: set[str], interval: float):
        super().__init__(name="deepscope-heartbeat", daemon=True)
        self.path, self.token, self.owned, self.interval = path, token, owned, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        db = None
        while not self._stop_event.wait(self.interval):
            try:
                db = db or sqlite3.connect(self.path, timeout=self.interval, isolation_level=None)
                for run_id in list(self.owned):
                    db.execute("UPDATE runs SET heartbeat = ? WHERE id = ? AND owner = ?",
                               (time.time(), run_id, self.token))
            except sqlite3.Error:
                pass  # a busy or full store: the next beat tries again; the trainer reports store errors
        if db is not None:
            db.close()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)
