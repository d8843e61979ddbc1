"""One writer per run: claims (owner token, pid, host), the heartbeat thread, and when an owner counts as gone.

A run's owner is recorded in its row (``owner``, ``pid``, ``host``, ``heartbeat``); a claim of a ``running`` run
whose owner is alive is refused with :class:`RunBusyError`. While a store owns runs, a background thread refreshes
their ``heartbeat`` every ``timeout / 4`` seconds; a run without a heartbeat for :func:`heartbeat_timeout`
seconds, or whose process is gone on this host, counts as interrupted.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from deepscope.registry import MAX_NAME, check_name  # noqa: F401 - re-exported for the store
from deepscope.store.db import RUN_FIELDS, StoreError

__all__ = ["MAX_NAME", "Claims", "RunBusyError", "RunTakenOver", "TakenMessage", "check_name", "claim",
           "heartbeat_timeout", "mark_interrupted", "owner_alive", "take"]


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def owner_alive(run: dict) -> bool:
    """Whether the process training a ``running`` run still is: its heartbeat is fresh (less than
    :func:`heartbeat_timeout` seconds old) and, on this host, its pid exists."""
    beat = run.get("heartbeat") if run.get("heartbeat") is not None else run["updated"]
    if time.time() - beat > heartbeat_timeout():
        return False
    if run["host"] != socket.gethostname() or run["pid"] is None:
        return True  # cannot tell from here: the heartbeat decides
    return _pid_alive(run["pid"])


def take(db: sqlite3.Connection, run_id: str, token: str) -> None:
    """Record this process (owner ``token``) as the writer of ``run_id``, now ``running``."""
    now = time.time()
    db.execute("UPDATE runs SET status = 'running', updated = ?, finished = NULL, pid = ?, host = ?, owner = ?,"
               " heartbeat = ? WHERE id = ?", (now, os.getpid(), socket.gethostname(), token, now, run_id))


def claim(db: sqlite3.Connection, fields: str, run_id: str, token: str, *, force: bool = False) -> dict:
    """Take ``run_id`` for ``token`` unless it is ``running`` with a live owner (and not ``force``); call inside a
    transaction. Returns the run's row as it was before."""
    row = db.execute(f"SELECT {fields} FROM runs WHERE id = ?", (run_id,)).fetchone()
    run = dict(zip(RUN_FIELDS, row, strict=True))
    if run["status"] == "running" and not force and owner_alive(run):
        beat = run["heartbeat"] if run["heartbeat"] is not None else run["updated"]
        raise RunBusyError(
            f"run {run_id} is being trained by pid {run['pid']} on {run['host']} (last heartbeat "
            f"{time.time() - beat:.0f} s ago): one writer per run; wait for it to end, or if that process is "
            f"gone, add --force (a run without heartbeat for {heartbeat_timeout():g} s counts as interrupted)")
    take(db, run_id, token)
    return run


def mark_interrupted(db: sqlite3.Connection, run: dict) -> None:
    """Record a ``running`` run whose owner is gone as ``interrupted`` (unless someone claimed it meanwhile)."""
    db.execute("UPDATE runs SET status = 'interrupted' WHERE id = ? AND status = 'running' AND owner IS ?",
               (run["id"], run["owner"]))


class Claims:
    """The runs one store writes: its owner token, the ids it owns, and the heartbeat thread that beats for them
    (started with the first owned run, stopped with the last)."""

    def __init__(self, path: Path):
        self.path = path
        self.token = uuid.uuid4().hex  # this store's owner token for the runs it creates or claims
        self.owned: set[str] = set()
        self.heartbeat: _Heartbeat | None = None

    def own(self, run_id: str) -> None:
        self.owned.add(run_id)
        if self.heartbeat is None:
            self.heartbeat = _Heartbeat(self.path, self.token, self.owned, heartbeat_timeout() / 4)
            self.heartbeat.start()

    def disown(self, run_id: str) -> None:
        """This process no longer writes ``run_id``; the heartbeat thread stops with the last owned run."""
        self.owned.discard(run_id)
        if not self.owned:
            self.stop()

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    def owns(self, db: sqlite3.Connection, run_id: str) -> bool:
        """Whether the row of ``run_id`` still names this token (another process may have taken it with force)."""
        row = db.execute("SELECT owner FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is not None and row[0] == self.token


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
