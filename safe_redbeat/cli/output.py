"""Human tables and the JSON forms of values (documented in ``docs/cli.md``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval
from redbeat.decoder import RedBeatJSONEncoder

from ..specs import CRONTAB_FIELDS, EntryInfo

__all__ = [
    "emit",
    "entry_json",
    "entry_text",
    "iso",
    "schedule_json",
    "schedule_text",
    "seconds",
    "table",
    "when",
]


def emit(as_json: bool, data: Any, text: str) -> None:
    """Print ``data`` as one line of JSON, or ``text``."""
    print(json.dumps(data, sort_keys=True) if as_json else text)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (``2025-01-31T03:00:00+00:00``), or None."""
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    """``4.2s``, ``12m05s``, ``3h07m``, ``2d04h``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 0:
        return "-" + seconds(-value)
    if value < 120:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 172800:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "") -> str:
    """Left-aligned columns; None shows as ``-``."""
    cells = [list(headers)] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def schedule_json(value: BaseSchedule) -> Any:
    """RedBeat's JSON form of a schedule (what the entry's ``definition`` stores)."""
    return json.loads(json.dumps(value, cls=RedBeatJSONEncoder))


def schedule_text(value: BaseSchedule) -> str:
    """``every 30s``, a cron expression, or ``rrule freq=...`` for anything else."""
    if isinstance(value, crontab):
        return " ".join(str(getattr(value, f"_orig_{name}")) for name in CRONTAB_FIELDS)
    if isinstance(value, interval):
        text = f"every {value.run_every.total_seconds():g}s"
        return text + " (relative)" if value.relative else text
    form = schedule_json(value)
    if isinstance(form, dict):
        kind = form.pop("__type__", type(value).__name__)
        body = ",".join(f"{k}={v}" for k, v in form.items() if v is not None)
        return f"{kind} {body}"
    return repr(value)


def entry_json(info: EntryInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "task": info.task,
        "schedule": schedule_json(info.schedule),
        "schedule_text": schedule_text(info.schedule),
        "args": list(info.args),
        "kwargs": info.kwargs,
        "options": info.options,
        "enabled": info.enabled,
        "version": info.version,
        "last_run_at": iso(info.last_run_at),
        "next_run_at": iso(info.next_run_at),
        "total_run_count": info.total_run_count,
        "run_now_at": iso(info.run_now_at),
    }


def entry_text(info: EntryInfo) -> str:
    pairs: list[tuple[str, object]] = [
        ("name", info.name),
        ("task", info.task),
        ("schedule", schedule_text(info.schedule)),
        ("args", json.dumps(list(info.args))),
        ("kwargs", json.dumps(info.kwargs, sort_keys=True)),
        ("options", json.dumps(info.options, sort_keys=True)),
        ("enabled", "yes" if info.enabled else "no"),
        ("version", info.version),
        ("next run", when(info.next_run_at)),
        ("last run", when(info.last_run_at)),
        ("run count", info.total_run_count),
    ]
    if info.run_now_at is not None:
        pairs.append(("run now", f"requested {when(info.run_now_at)}"))
    return "\n".join(f"{label + ':':<11}{value}" for label, value in pairs)
