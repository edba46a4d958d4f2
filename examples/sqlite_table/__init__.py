"""Periodic tasks kept in a stdlib ``sqlite3`` table, loaded by safe_redbeat's loader hook.

Settings::

    safe_redbeat_loader = "examples.sqlite_table:load"
    sqlite_schedule_path = "/data/schedule.db"   # or $SQLITE_SCHEDULE_PATH

The application adds, changes and deletes rows (:func:`put`, :func:`delete`); after the
transaction commits it calls :func:`safe_redbeat.writethrough.upsert_after_commit` so the
running beat sees the change at once, and the leader's periodic reconcile repairs any
write that did not reach Redis.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

__all__ = ["connect", "delete", "load", "put", "rows"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS periodic_task (
    name     TEXT PRIMARY KEY,
    task     TEXT NOT NULL,
    schedule TEXT NOT NULL,             -- seconds ("30") or a cron expression ("0 3 * * *")
    args     TEXT NOT NULL DEFAULT '[]',
    kwargs   TEXT NOT NULL DEFAULT '{}',
    queue    TEXT,
    enabled  INTEGER NOT NULL DEFAULT 1
)
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA)
    return conn


def put(
    conn: sqlite3.Connection,
    name: str,
    task: str,
    schedule: str | float,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    enabled: bool = True,
) -> None:
    """Insert or update one row (commit is the caller's)."""
    conn.execute(
        "INSERT INTO periodic_task (name, task, schedule, args, kwargs, queue, enabled) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET task=excluded.task, "
        "schedule=excluded.schedule, args=excluded.args, kwargs=excluded.kwargs, "
        "queue=excluded.queue, enabled=excluded.enabled",
        (
            name,
            task,
            str(schedule),
            json.dumps(args or []),
            json.dumps(kwargs or {}),
            queue,
            int(enabled),
        ),
    )


def delete(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM periodic_task WHERE name = ?", (name,))


def rows(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Each row as a loader entry (a mapping safe_redbeat validates)."""
    cursor = conn.execute(
        "SELECT name, task, schedule, args, kwargs, queue, enabled FROM periodic_task"
    )
    for name, task, schedule, args, kwargs, queue, enabled in cursor:
        yield {
            "name": name,
            "task": task,
            "schedule": float(schedule) if _is_number(schedule) else schedule,
            "args": json.loads(args),
            "kwargs": json.loads(kwargs),
            "options": {"queue": queue} if queue else {},
            "enabled": bool(enabled),
        }


def load(app: Any) -> list[dict[str, Any]]:
    """The loader hook: every row of the table."""
    path = app.conf.get("sqlite_schedule_path") or os.environ["SQLITE_SCHEDULE_PATH"]
    conn = connect(path)
    try:
        return list(rows(conn))
    finally:
        conn.close()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
