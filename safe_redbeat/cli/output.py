"""Human tables and the JSON forms of values (documented in ``docs/cli.md``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, crontab, solar
from celery.schedules import schedule as interval

from ..errors import InvalidEntry
from ..leader.heartbeat import ReplicaStatus
from ..leader.lease import Holder
from ..model.codec import encode_schedule
from ..model.lifecycle import FLAG, PARKED, SECONDS, TIME, lifetime_fields
from ..model.specs import CRONTAB_FIELDS, EntryInfo
from ..store.keys import Keys
from ..store.layout import Layout
from ..store.running import Run

__all__ = [
    "emit",
    "entry_json",
    "entry_text",
    "holder_json",
    "iso",
    "last_run",
    "layout_json",
    "local_when",
    "parked_json",
    "replica_json",
    "running_lines",
    "schedule_json",
    "schedule_text",
    "seconds",
    "status_text",
    "stored_json",
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
    return json.loads(encode_schedule(value))  # RedBeat's encoder, plus solar


def schedule_text(value: BaseSchedule) -> str:
    """``every 30s``, a cron expression, ``sunset at 52.37, 4.89``, or ``rrule freq=...``
    for anything else."""
    if isinstance(value, solar):
        return f"{value.event} at {value.lat:g}, {value.lon:g}"
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


def running_lines(info: EntryInfo, runs: Sequence[Run]) -> list[str]:
    """``show``'s lines for the runs an overlap policy counts as going."""
    if not info.lifecycle.has_overlap_policy:
        return []
    if not runs:
        return [f"{'running:':<11}none"]
    return [
        f"{'running:':<11}{run.task_id} {run.state} since {when(run.since)}, "
        f"counts until {when(run.until)}"
        for run in runs
    ]


def holder_json(holder: Holder | None, beat: ReplicaStatus | None) -> dict[str, Any] | None:
    """A lease holder, with the age of its heartbeat ``beat`` (None: none is live)."""
    if holder is None:
        return None
    return {
        "instance": holder.name,
        "host": holder.host or None,
        "pid": holder.pid,
        "fence": holder.fence,
        "heartbeat_age": None if beat is None else round(beat.age, 3),
    }


def replica_json(r: ReplicaStatus, shared: frozenset[str], *, shard_info: bool) -> dict[str, Any]:
    """A live replica (``shared``: the instance names several use; ``shard_info``: which
    shards it leads)."""
    beat = r.heartbeat
    data: dict[str, Any] = {
        "instance": beat.instance,
        "role": beat.role,
        "age": round(r.age, 3),
        "fence": beat.fence,
        "leading_for": beat.leading_for,
        "host": beat.host,
        "pid": beat.pid,
        "token": beat.token,
        #: "atomic" or "publish" ("" before its first dispatch)
        "enqueue": beat.enqueue,
        #: another live replica uses the same instance name (an ERROR in both logs)
        "shared_name": beat.instance in shared,
    }
    if shard_info:
        data.update(shards=list(beat.shards), shard_count=beat.shard_count)
    return data


def layout_json(layout: Layout) -> dict[str, Any]:
    return {"shards": layout.shards, "moving_to": layout.moving_to}


def stored_json(raw: str | None) -> Any:
    """A value Redis keeps as JSON text (None if absent; ``{"unreadable": ...}``)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:200]}


def status_text(status: dict[str, Any]) -> str:
    """The text of ``status``: the leader, or the layout and a table of the shards; then
    the replicas, the counts and what is due (over all shards)."""
    by_shard = "shards" in status
    lines = [f"Redis:          {status['redis_url']} (prefix {status['key_prefix']!r})"]
    lines += _shard_lines(status) if by_shard else _leader_lines(status["leader"])
    replicas = status["replicas"]
    lines.append(f"Replicas:       {len(replicas)} live")
    if replicas:
        middle = ("SHARDS", "LAST TICK") if by_shard else ("LAST TICK", "FENCE")
        rows = [
            (
                r["instance"],
                r["role"],
                *_replica_cells(r, by_shard),
                r["enqueue"] or "-",
                r["host"],
                r["pid"],
            )
            for r in replicas
        ]
        header = ("INSTANCE", "ROLE", *middle, "ENQUEUE", "HOST", "PID")
        lines.append(table(header, rows, "  "))
    lines += _shared_lines(replicas) + _count_lines(status)
    if not by_shard:
        lines.append(f"Last reconcile: {_reconcile_text(status['last_reconcile'])}")
    return "\n".join(lines)


def _persistence_text(status: dict[str, Any]) -> str:
    """``aof``, or what a restart of Redis costs: the entries nothing writes again."""
    persistence, only = status["persistence"], status["redis_only_entries"]
    mode = str(persistence["mode"])
    if persistence["persists"]:
        return mode + (" (snapshots: writes since the last one are lost)" if mode == "rdb" else "")
    why = "Redis persists nothing" if mode == "none" else "INFO or CONFIG GET denied"
    if not only:
        return f"{mode} ({why}); beat_schedule and the loader write every entry again"
    entries = "1 entry only Redis holds is" if only == 1 else f"{only} entries only Redis holds are"
    return f"{mode} ({why}); {entries} lost if it restarts: back up with safe-redbeat export"


def _replica_cells(r: dict[str, Any], by_shard: bool) -> tuple[object, object]:
    tick = f"{seconds(r['age'])} ago"
    return (",".join(map(str, r["shards"])) or "-", tick) if by_shard else (tick, r["fence"])


def _leader_lines(leader: dict[str, Any] | None) -> list[str]:
    if leader is None:
        return ["Leader:         none (the lease is free)"]
    who = leader["instance"]
    if leader["fence"] is None:
        who += " (not a safe_redbeat lease token, e.g. stock RedBeat)"
    else:
        who += f" (host {leader['host']}, pid {leader['pid']})"
    return [
        f"Leader:         {who}",
        f"Fence:          {'-' if leader['fence'] is None else leader['fence']}",
        f"Lease TTL:      {seconds(leader['lease_ttl'])}",
        f"Leading for:    {seconds(leader['leading_for'])}",
    ]


def _shard_lines(status: dict[str, Any]) -> list[str]:
    layout, shards = status["layout"], status["shards"]
    described = Layout(Keys("", ""), layout["shards"], layout["moving_to"]).describe()
    if layout["moving_to"] is not None:
        described += " (being resharded: no shard is led until the move ends)"
    unled = [s["index"] for s in shards if s["leader"] is None]
    without = f"; without a leader: {', '.join(map(str, unled))}" if unled else ""
    now = datetime.now(timezone.utc)
    rows: list[tuple[object, ...]] = [
        (
            s["index"],
            *_holder_cells(s),
            seconds(s["lease_ttl"]),
            s["entries"],
            s["pending"],
            s["dead"],
            seconds(s["lag"]),
            _reconcile_short(s["last_reconcile"], now),
        )
        for s in shards
    ]
    rows.append(("total", "", "", "", status["entries"], status["pending"], status["dead"],
                 seconds(status["lag"]), ""))  # fmt: skip
    headers = ("SHARD", "LEADER", "FENCE", "LEASE TTL", "ENTRIES", "PENDING", "DEAD", "LAG",
               "LAST RECONCILE")  # fmt: skip
    return [
        f"Layout:         {described}",
        f"Shards:         {len(shards) - len(unled)} of {len(shards)} led{without}",
        table(headers, rows, "  "),
    ]


def _holder_cells(shard: dict[str, Any]) -> tuple[str, object]:
    leader = shard["leader"]
    if shard["retired"]:
        return "retired", "-"
    if leader is None:
        return "none", "-"
    if leader["fence"] is None:
        return leader["instance"] + " (not a safe_redbeat lease)", "-"
    return leader["instance"], leader["fence"]


def _reconcile_text(data: Any) -> str:
    if not isinstance(data, dict):
        return "-"
    if "unreadable" in data:
        return f"unreadable: {data['unreadable']!r}"
    counts = ", ".join(
        f"{k} {data.get(k, 0)}" for k in ("created", "updated", "removed", "unchanged", "conflicts")
    )
    errors = data.get("errors") or []
    text = f"{data.get('source', '?')}: {counts}, errors {len(errors)} at {data.get('at', '?')}"
    if data.get("complete") is False:
        text += " (incomplete load: nothing removed)"
    if held := data.get("removals_held"):
        text += f"; removals held: {held} (safe-redbeat sync --allow-removals)"
    return text


def _reconcile_short(data: Any, now: datetime) -> str:
    """One shard's last reconcile in a table cell: ``loader 4.2s ago``, plus problems."""
    if not isinstance(data, dict):
        return "-"
    if "unreadable" in data:
        return "unreadable"
    try:
        at = datetime.fromisoformat(str(data.get("at")))
        text = f"{data.get('source', '?')} {seconds((now - at).total_seconds())} ago"
    except (TypeError, ValueError):
        text = f"{data.get('source', '?')} at {data.get('at', '?')}"
    problems = [f"errors {len(data.get('errors') or [])}"] if data.get("errors") else []
    if data.get("complete") is False:
        problems.append("incomplete")
    if data.get("removals_held"):
        problems.append(f"removals held {data['removals_held']}")
    return ", ".join([text, *problems])


def _shared_lines(replicas: list[dict[str, Any]]) -> list[str]:
    """A warning per instance name that several live replicas use."""
    shared: dict[str, int] = {}
    for r in replicas:
        if r.get("shared_name"):
            shared[r["instance"]] = shared.get(r["instance"], 0) + 1
    return [
        f"WARNING: {count} live replicas use the instance name {name!r}: give each its own "
        "safe_redbeat_instance_name (or leave it unset)"
        for name, count in sorted(shared.items())
    ]


def _count_lines(status: dict[str, Any]) -> list[str]:
    """Entries, pending, dead letters and what is due next (totals over the shards)."""
    dead = status["dead"]
    lines = [
        f"Entries:        {status['entries']} ({status['not_scheduled']} will not run again)",
        f"Pending:        {status['pending']} (claimed, not yet published)",
        f"Dead letters:   {dead}" + (" (safe-redbeat dead list)" if dead else ""),
        *_running_lines(status["running"]),
        f"Persistence:    {_persistence_text(status)}",
    ]
    due = status["next_due"]
    if not due:
        return [*lines, "Next due:       nothing scheduled"]
    rows = [
        (
            d["name"],
            d["due"].replace("T", " ").replace("+00:00", " UTC"),
            seconds(d["due_in"]) if d["due_in"] >= 0 else f"overdue {seconds(-d['due_in'])}",
            d.get("state", "-"),
        )
        for d in due
    ]
    return [*lines, "Next due:", table(("NAME", "DUE", "IN", "STATE"), rows, "  ")]


def _running_lines(running: dict[str, Any]) -> list[str]:
    """``status``'s lines for the entries with runs going (overlap policy)."""
    count, runs = running["entries"], running["runs"]
    if not count:
        return []
    word = "entry has" if count == 1 else "entries have"
    rows = [
        (
            r["name"],
            r["task_id"],
            r["state"],
            r["since"].replace("T", " ").split(".")[0].replace("+00:00", "") + " UTC",
            r["until"].replace("T", " ").split(".")[0].replace("+00:00", "") + " UTC",
        )
        for r in runs
    ]
    header = ("NAME", "TASK ID", "STATE", "SINCE", "COUNTS UNTIL")
    return [
        f"Running:        {count} {word} a run going (overlap policy)",
        table(header, rows, "  "),
    ]


def _lifetime_pairs(info: EntryInfo, zone: str) -> list[tuple[str, object]]:
    """``show``'s lines for the lifetime fields that are set: times first, as declared."""
    times: list[tuple[str, object]] = []
    others: list[tuple[str, object]] = []
    for spec in lifetime_fields():
        value = getattr(info.lifecycle, spec.name)
        label, kind = spec.metadata["label"], spec.metadata["kind"]
        if value is None or value is False or value == spec.default:
            continue
        if kind == TIME and isinstance(value, datetime):
            times.append((label, local_when(value, zone)))
        elif kind == FLAG:
            others.append((label, f"at once ({spec.name})"))
        elif kind == SECONDS:
            others.append((label, f"{seconds(value)} ({value:g} s)"))
        else:
            others.append((label, value))
    order = {"at": 0, "start": 1, "expires": 2}
    return sorted(times, key=lambda pair: order.get(str(pair[0]), 3)) + others
