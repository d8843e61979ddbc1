"""The run store (see :mod:`deepscope.store.runs`)."""

from deepscope.store.ownership import (
    MAX_NAME,
    RunBusyError,
    RunTakenOver,
    StoreError,
    TakenMessage,
    check_name,
    heartbeat_timeout,
)
from deepscope.store.runs import (
    CHECKPOINT_FILE,
    CHECKS_FILE,
    DB_NAME,
    REPORT_FILE,
    STATUSES,
    Store,
    default_root,
)

__all__ = ["CHECKPOINT_FILE", "CHECKS_FILE", "DB_NAME", "MAX_NAME", "REPORT_FILE", "STATUSES", "RunBusyError",
           "RunTakenOver", "Store", "StoreError", "TakenMessage", "check_name", "default_root", "heartbeat_timeout"]
