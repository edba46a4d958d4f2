"""Opt-in JSON logs for the scheduler's own lines (``safe_redbeat_log_format = "json"``).

Every record of the ``safe_redbeat`` loggers becomes one JSON object per line
(``ts``, ``level``, ``logger``, ``message``, ``instance``). Events — leadership changes,
reconciles, parked entries, dead occurrences — are logged once more by logger
``safe_redbeat.events`` with ``event`` and the fields of the signal that reported them,
so a log pipeline can alert on them without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import IO, Any

from .. import signals

__all__ = ["JsonFormatter", "install"]

EVENTS_LOGGER = "safe_redbeat.events"
_HANDLER_NAME = "safe_redbeat.json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``record.event_fields`` (a dict) is merged in."""

    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "instance": self.instance,
        }
        fields = getattr(record, "event_fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, separators=(",", ":"))


def _event(level: int, event: str, message: str, **fields: Any) -> None:
    logging.getLogger(EVENTS_LOGGER).log(
        level, message, extra={"event_fields": {"event": event, **fields}}
    )


def _on_leadership(
    sender: Any, change: str, fence: int | None, reason: str | None, cause: str | None, **_: Any
) -> None:
    level = logging.WARNING if change == signals.LOST else logging.INFO
    _event(
        level,
        "leadership_changed",
        f"leadership {change}",
        change=change,
        fence=fence,
        reason=reason,
        cause=cause,
    )


def _on_reconciled(sender: Any, result: Any, removals_held: int | None = None, **_: Any) -> None:
    level = logging.ERROR if result.errors else logging.INFO
    _event(
        level,
        "reconciled",
        result.summary(),
        source=result.source,
        created=len(result.created),
        updated=len(result.updated),
        removed=len(result.removed),
        unchanged=result.unchanged,
        conflicts=len(result.conflicts),
        errors=list(result.errors[:20]),
        complete=result.complete,
        seconds=round(result.seconds, 3),
        removals_held=removals_held,
    )


def _on_parked(sender: Any, entry: str, reason: str, **_: Any) -> None:
    _event(logging.ERROR, "entry_parked", f"entry {entry!r} parked", entry=entry, reason=reason)


def _on_dead(
    sender: Any,
    entry: str,
    scheduled: int,
    task_id: str,
    attempts: int,
    error: str,
    **_: Any,
) -> None:
    _event(
        logging.ERROR,
        "occurrence_dead",
        f"occurrence of {entry!r} at {scheduled} dead-lettered",
        entry=entry,
        scheduled=scheduled,
        task_id=task_id,
        attempts=attempts,
        error=error,
    )


_RECEIVERS = (
    (signals.leadership_changed, _on_leadership),
    (signals.reconciled, _on_reconciled),
    (signals.entry_parked, _on_parked),
    (signals.occurrence_dead, _on_dead),
)


def install(instance: str, stream: IO[str] | None = None) -> logging.Handler:
    """Log the ``safe_redbeat`` loggers as JSON lines to ``stream``; idempotent.

    The default is the process' real stderr: Celery replaces ``sys.stderr`` with a proxy
    that would log each JSON line again, inside its own format.
    """
    logger = logging.getLogger("safe_redbeat")
    for existing in logger.handlers:
        if existing.get_name() == _HANDLER_NAME:
            return existing
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter(instance))
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False, dispatch_uid=f"safe_redbeat.jsonlog.{signal.name}")
    return handler


def uninstall() -> None:
    """Undo :func:`install` (tests)."""
    logger = logging.getLogger("safe_redbeat")
    for existing in list(logger.handlers):
        if existing.get_name() == _HANDLER_NAME:
            logger.removeHandler(existing)
    logger.propagate = True
    for signal, receiver in _RECEIVERS:
        signal.disconnect(receiver, dispatch_uid=f"safe_redbeat.jsonlog.{signal.name}")
