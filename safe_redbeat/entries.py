"""Entries as RedBeat stores them: decode, encode, and compute their next due time.

The hash of an entry keeps RedBeat's fields (``definition``, ``meta``) so stock RedBeat
can read it, and adds ``version`` (grows by one on each change of the definition).
Times are computed against a ``now`` passed in (Redis server time), never the local clock.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import MINYEAR, datetime
from typing import Any

from celery.schedules import BaseSchedule, maybe_schedule
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder

from .errors import InvalidEntry
from .lifecycle import Lifecycle, decode_state

__all__ = [
    "StoredEntry",
    "decode_entry",
    "decode_meta",
    "encode_definition",
    "encode_meta",
    "meta_encoder",
    "next_score",
    "next_score_of",
    "to_timestamp",
]

NEVER = -1

# One instance each: json.loads/dumps(cls=...) would build a new one per call, which
# costs a few microseconds per entry on every tick. Both are stateless.
_DECODER = RedBeatJSONDecoder()
_META_ENCODER = RedBeatJSONEncoder(sort_keys=True)


def _loads(raw: str | bytes) -> Any:
    if isinstance(raw, str):
        return _DECODER.decode(raw)
    return json.loads(raw, cls=RedBeatJSONDecoder)


def to_timestamp(dt: datetime) -> int:
    """Whole UTC seconds since the epoch, as RedBeat scores them."""
    return calendar.timegm(dt.utctimetuple())


@dataclass
class StoredEntry:
    """One entry read from Redis, decoded and validated."""

    key: str
    name: str
    task: str
    schedule: BaseSchedule
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    last_run_at: datetime | None
    total_run_count: int
    version: str
    score: float
    meta_raw: str | None = field(default=None, repr=False)
    #: a pending "run now" request: the Redis time (whole seconds) it was made at
    run_now: int | None = None
    #: lifetime fields (hash field ``lifecycle``) and recorded state (field ``state``)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    state: str = ""

    def is_due(self) -> tuple[bool, float | None]:
        """Celery's answer for this entry at the schedule's ``now``.

        The seconds are those until the next occurrence (counted from ``now``, also when
        due); None when there is none (an ``rrule`` that ended).
        """
        last = self.last_run_at or datetime(MINYEAR, 1, 2, tzinfo=self.schedule.tz)
        due, next_seconds = self.schedule.is_due(last)
        return bool(due), None if next_seconds is None else float(next_seconds)


def _fail(key: str, field_name: str, problem: str) -> InvalidEntry:
    return InvalidEntry(key, field_name, problem)


def decode_entry(
    key: str,
    name: str,
    score: float,
    definition_raw: str | None,
    meta_raw: str | None,
    version_raw: str | None,
    *,
    app: Any,
    nowfun: Any = None,
    run_now_raw: str | None = None,
    lifecycle_raw: str | None = None,
    state_raw: str | None = None,
) -> StoredEntry:
    """Decode an entry hash; raise InvalidEntry naming the key and the bad field."""
    if not definition_raw:
        raise _fail(key, "definition", "missing (the hash has no definition field)")
    try:
        definition = _loads(definition_raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(key, "definition", f"not valid RedBeat JSON ({exc})") from None
    if not isinstance(definition, Mapping):
        raise _fail(key, "definition", "must be a JSON object")
    task = definition.get("task")
    if not isinstance(task, str) or not task:
        raise _fail(key, "definition.task", "must be a non-empty task name")
    raw_schedule = definition.get("schedule")
    if isinstance(raw_schedule, Mapping) and "__type__" in raw_schedule:
        raise _fail(
            key,
            "definition.schedule",
            f"unknown schedule type {raw_schedule['__type__']!r} (known: interval, crontab, rrule)",
        )
    if not isinstance(raw_schedule, BaseSchedule):
        raise _fail(key, "definition.schedule", f"not a schedule: {raw_schedule!r}")
    schedule = maybe_schedule(raw_schedule, app=app)
    if nowfun is not None:
        schedule.nowfun = nowfun
    args = definition.get("args") or []
    kwargs = definition.get("kwargs") or {}
    options = definition.get("options") or {}
    if not isinstance(args, list | tuple):
        raise _fail(key, "definition.args", "must be a JSON array")
    if not isinstance(kwargs, Mapping):
        raise _fail(key, "definition.kwargs", "must be a JSON object")
    if not isinstance(options, Mapping):
        raise _fail(key, "definition.options", "must be a JSON object")
    last_run_at, total_run_count = decode_meta(key, meta_raw)
    version = version_raw if version_raw is not None else "0"
    if not version.isdigit():
        raise _fail(key, "version", f"must be a non-negative integer, got {version!r}")
    run_now: int | None = None
    if run_now_raw:
        try:
            run_now = int(float(run_now_raw))
        except ValueError:
            raise _fail(key, "run_now", f"must be a timestamp, got {run_now_raw!r}") from None
    return StoredEntry(
        lifecycle=Lifecycle.decode(key, lifecycle_raw),
        state=decode_state(key, state_raw),
        run_now=run_now,
        key=key,
        name=name,
        task=task,
        schedule=schedule,
        args=list(args),
        kwargs=dict(kwargs),
        options=dict(options),
        enabled=bool(definition.get("enabled", True)),
        last_run_at=last_run_at,
        total_run_count=total_run_count,
        version=version,
        score=score,
        meta_raw=meta_raw,
    )


def decode_meta(key: str, meta_raw: str | None) -> tuple[datetime | None, int]:
    """``(last_run_at, total_run_count)`` from a ``meta`` field; None/0 when absent."""
    if not meta_raw:
        return None, 0
    try:
        meta = _loads(meta_raw)
        last_run_at = meta.get("last_run_at")
        total_run_count = int(meta.get("total_run_count") or 0)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _fail(key, "meta", f"not valid RedBeat JSON ({exc})") from None
    if last_run_at is not None and not isinstance(last_run_at, datetime):
        raise _fail(key, "meta.last_run_at", f"not a datetime: {last_run_at!r}")
    return last_run_at, total_run_count


def encode_definition(
    name: str,
    task: str,
    schedule: BaseSchedule,
    args: Any = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    enabled: bool = True,
) -> str:
    """RedBeat's ``definition`` JSON for an entry (sorted keys, so equal means equal)."""
    definition = {
        "name": name,
        "task": task,
        "args": list(args or ()),
        "kwargs": dict(kwargs or {}),
        "options": dict(options or {}),
        "schedule": schedule,
        "enabled": bool(enabled),
    }
    return json.dumps(definition, cls=RedBeatJSONEncoder, sort_keys=True)


def encode_meta(last_run_at: datetime | None, total_run_count: int = 0) -> str:
    meta = {"last_run_at": last_run_at, "total_run_count": total_run_count}
    return str(_META_ENCODER.encode(meta))


def meta_encoder(last_run_at: datetime) -> Callable[[int], str]:
    """``encode_meta(last_run_at, n)`` for many ``n``, encoding the datetime once."""
    encoded = _META_ENCODER.encode(last_run_at)

    def encode(total_run_count: int) -> str:
        return f'{{"last_run_at": {encoded}, "total_run_count": {int(total_run_count)}}}'

    return encode


def next_score(schedule: BaseSchedule, last_run_at: datetime | None, now: datetime) -> int:
    """The ZSET score of an entry that last ran at ``last_run_at``, as seen at ``now``.

    Never run, or overdue: ``now``. No more occurrences: ``-1``. Otherwise the due time.
    """
    if last_run_at is None:
        return to_timestamp(now)
    delta = schedule.remaining_estimate(last_run_at)
    if delta is None:
        return NEVER
    if delta.total_seconds() < 0:
        return to_timestamp(now)
    return to_timestamp(now + delta)


def next_score_of(
    schedule: BaseSchedule, last_run_at: datetime | None, now: datetime, app: Any
) -> int:
    """:func:`next_score` computed on a private copy of ``schedule``.

    The copy gets ``now`` as its clock; the caller's object (possibly shared, see
    ``specs.to_schedule``) is left untouched.
    """
    copy = maybe_schedule(_loads(json.dumps(schedule, cls=RedBeatJSONEncoder)), app=app)
    copy.nowfun = lambda: now
    return next_score(copy, last_run_at, now)
