"""Loader hooks for tests: their behaviour is switched through module globals."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any

#: what ``load`` returns (or raises, if an exception instance)
RESULT: Any = []
CALLS: list[float] = []


def load(app: Any) -> Any:
    CALLS.append(time.monotonic())
    if isinstance(RESULT, BaseException):
        raise RESULT
    return RESULT() if callable(RESULT) else RESULT


def hang(app: Any) -> list[Any]:
    time.sleep(3600)
    return []


def from_env(app: Any) -> list[dict[str, Any]]:
    """The entries in ``$SRB_LOADER_ENTRIES`` (JSON list; ``at``, ``start_time``,
    ``expires`` and ``last_run_at`` as ISO 8601): a loader for beat subprocesses."""
    entries: list[dict[str, Any]] = json.loads(os.environ.get("SRB_LOADER_ENTRIES") or "[]")
    for entry in entries:
        for key in ("at", "start_time", "expires", "last_run_at"):
            if isinstance(entry.get(key), str):
                entry[key] = datetime.fromisoformat(entry[key])
    return entries
