"""Human tables and the JSON forms of values (documented in ``docs/cli.md``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval
from redbeat.decoder import RedBeatJSONEncoder

from ..errors import InvalidEntry
from ..model.lifecycle import FLAG, PARKED, TIME, lifetime_fields
from ..model.specs import CRONTAB_FIELDS, EntryInfo

__all__ = [
    "emit",
    "entry_json",
    "entry_text",
    "iso",
    "last_run",
    "local_when",
    "parked_json",
    "schedule_json",
    "schedule_text",
    "seconds",
    "table",
    "when",
    "zone_name",
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


def zone_name(info: EntryInfo) -> str:
    """The zone an entry's times are shown in: its ``tz``, else the app's timezone."""
    if info.lifecycle.tz:
        return info.lifecycle.tz
    zone = getattr(info.schedule, "tz", None)
    return str(getattr(zone, "key", None) or zone or "UTC")


def local_when(value: datetime | None, zone: str) -> str:
    """``2026-12-24 18:30:00 CET (Europe/Berlin)``; ``-`` for None."""
    if value is None:
        return "-"
    try:
        local = value.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        return when(value)
    return f"{local.strftime('%Y-%m-%d %H:%M:%S %Z')} ({zone})"


def last_run(info: EntryInfo) -> datetime | None:
    """The last run; None for an entry that never ran (``last_run_at`` is then the time
    its schedule counts from)."""
    return info.last_run_at if info.total_run_count else None


def parked_json(name: str, error: InvalidEntry) -> dict[str, Any]:
    return {"name": name, "state": PARKED, "reason": str(error), "field": error.field}


def entry_json(info: EntryInfo) -> dict[str, Any]:
    zone = zone_name(info)
    local_next = None
    if info.next_run_at is not None:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
            local_next = info.next_run_at.astimezone(ZoneInfo(zone)).isoformat()
    return {
        "state": info.state,
        "run_count": info.total_run_count,
        "next_run_local": local_next,
        "zone": zone,
        **info.lifecycle.to_json(),
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
    zone = zone_name(info)
    schedule = "once" if info.lifecycle.at is not None else schedule_text(info.schedule)
    pairs: list[tuple[str, object]] = [
        ("name", info.name),
        ("state", info.state),
        ("task", info.task),
        ("schedule", schedule),
        ("args", json.dumps(list(info.args))),
        ("kwargs", json.dumps(info.kwargs, sort_keys=True)),
        ("options", json.dumps(info.options, sort_keys=True)),
        ("enabled", "yes" if info.enabled else "no"),
        ("version", info.version),
        ("next run", f"{local_when(info.next_run_at, zone)}, {when(info.next_run_at)}"),
        ("last run", when(last_run(info)) if info.total_run_count else "never"),
        ("run count", info.total_run_count),
    ]
    pairs += [(label, value) for label, value in _lifetime_pairs(info, zone)]
    if info.run_now_at is not None:
        pairs.append(("run now", f"requested {when(info.run_now_at)}"))
    return "\n".join(f"{label + ':':<11}{value}" for label, value in pairs)


def _lifetime_pairs(info: EntryInfo, zone: str) -> list[tuple[str, object]]:
    """``show``'s lines for the lifetime fields that are set: times first, as declared."""
    times: list[tuple[str, object]] = []
    others: list[tuple[str, object]] = []
    for spec in lifetime_fields():
        value = getattr(info.lifecycle, spec.name)
        label, kind = spec.metadata["label"], spec.metadata["kind"]
        if value is None or value is False:
            continue
        if kind == TIME and isinstance(value, datetime):
            times.append((label, local_when(value, zone)))
        elif kind == FLAG:
            others.append((label, f"at once ({spec.name})"))
        else:
            others.append((label, value))
    order = {"at": 0, "start": 1, "expires": 2}
    return sorted(times, key=lambda pair: order.get(str(pair[0]), 3)) + others
