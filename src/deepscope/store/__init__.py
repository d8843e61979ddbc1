"""The run store: every number of every run in one SQLite file (see :mod:`deepscope.store.runs`).

``db`` holds the schema and the queries, ``ownership`` the one-writer rules (claims, heartbeat), ``runs`` the
:class:`Store` (run lifecycle, buffered writes).
"""

from deepscope.store.db import DB_NAME, StoreError
from deepscope.store.ownership import MAX_NAME, RunBusyError, RunTakenOver, TakenMessage, check_name, heartbeat_timeout
from deepscope.store.runs import CHECKPOINT_FILE, CHECKS_FILE, REPORT_FILE, STATUSES, Store, default_root

__all__ = ["CHECKPOINT_FILE", "CHECKS_FILE", "DB_NAME", "MAX_NAME", "REPORT_FILE", "STATUSES", "RunBusyError",
           "RunTakenOver", "Store", "StoreError", "TakenMessage", "check_name", "default_root", "heartbeat_timeout"]
