"""When an entry runs: its lifetime fields and the states they give it.

An entry's lifetime fields (``start_time``, ``expires``, ``max_runs``, a one-off's ``at``,
``tz``, ``run_immediately``) live in the hash field ``lifecycle`` (JSON), and the states
the leader records (``finished``, ``expired``) in the hash field ``state``: stock RedBeat
reads neither, so it still reads our entries. See docs/storage-format.md. Where the next
run lies is :mod:`.slots`; what the leader does with a due entry is :mod:`.decide`.

Everything here is pure: time comes in as arguments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redbeat.schedules import rrule

from ..errors import InvalidEntry

__all__ = [
    "ACTIVE",
    "DISABLED",
    "EXPIRED",
    "FINISHED",
    "LIFETIME_FIELDS",
    "NOT_STARTED",
    "PARKED",
    "STATES",
    "TERMINAL",
    "Lifecycle",
    "check_max_runs",
    "check_zone",
    "decode_state",
    "once_schedule",
    "state_of",
    "zone_of",
]

ACTIVE = "active"
DISABLED = "disabled"
NOT_STARTED = "not_started"
EXPIRED = "expired"
FINISHED = "finished"
#: shown for an entry whose stored hash cannot be decoded (the leader parks it)
PARKED = "parked"
STATES = (ACTIVE, DISABLED, NOT_STARTED, EXPIRED, FINISHED, PARKED)
#: states the leader records in the hash field ``state``; such an entry never runs again
#: until a write changes its definition or lifetime fields (which clears the field)
TERMINAL = frozenset({EXPIRED, FINISHED})

_UTC = timezone.utc


# -- the value --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """An entry's lifetime fields; all optional. Datetimes are aware (UTC once stored)."""

    start_time: datetime | None = None
    expires: datetime | None = None
    max_runs: int | None = None
    tz: str | None = None
    run_immediately: bool = False
    #: a one-off entry: runs once at this time (``max_runs`` is then 1)
    at: datetime | None = None

    @property
    def is_default(self) -> bool:
        return self == _DEFAULT

    def encode(self) -> str:
        """The ``lifecycle`` hash field: sorted JSON, ``''`` when every field is default."""
        if self.is_default:
            return ""
        data: dict[str, Any] = {}
        for name in ("at", "expires", "start_time"):
            value = getattr(self, name)
            if value is not None:
                data[name] = _epoch_number(value)
        if self.max_runs is not None:
            data["max_runs"] = self.max_runs
        if self.tz is not None:
            data["tz"] = self.tz
        if self.run_immediately:
            data["run_immediately"] = True
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, key: str, raw: str | bytes | None) -> Lifecycle:
        """Decode the ``lifecycle`` field; InvalidEntry naming the field if malformed."""
        if raw is None or raw in ("", b""):
            return _DEFAULT
        try:
            data = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise InvalidEntry(key, "lifecycle", f"not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise InvalidEntry(key, "lifecycle", "must be a JSON object")
        unknown = sorted(set(data) - set(LIFETIME_FIELDS))
        if unknown:
            raise InvalidEntry(key, "lifecycle", f"unknown fields {unknown}")
        times: dict[str, datetime | None] = {}
        for name in ("at", "expires", "start_time"):
            times[name] = _decode_time(key, name, data.get(name))
        max_runs = data.get("max_runs")
        if max_runs is not None:
            check_max_runs(key, max_runs, f"lifecycle.{'max_runs'}")
        tz = data.get("tz")
        if tz is not None:
            check_zone(key, tz, "lifecycle.tz")
        run_immediately = data.get("run_immediately", False)
        if not isinstance(run_immediately, bool):
            raise InvalidEntry(
                key, "lifecycle.run_immediately", f"must be true or false, got {run_immediately!r}"
            )
        return cls(
            start_time=times["start_time"],
            expires=times["expires"],
            max_runs=max_runs,
            tz=tz,
            run_immediately=run_immediately,
            at=times["at"],
        )

    def to_json(self) -> dict[str, Any]:
        """ISO 8601 form for the CLI's ``--json``."""
        return {
            "start_time": _iso(self.start_time),
            "expires": _iso(self.expires),
            "max_runs": self.max_runs,
            "tz": self.tz,
            "run_immediately": self.run_immediately,
            "at": _iso(self.at),
        }


_DEFAULT = Lifecycle()
#: The lifetime fields, by name: loader items, ``beat_schedule`` entries, the CLI and
#: ``Schedule.upsert`` take exactly these (and derive their lists from here).
LIFETIME_FIELDS: tuple[str, ...] = tuple(sorted(f.name for f in fields(Lifecycle)))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(_UTC).isoformat()


def _epoch_number(value: datetime) -> int | float:
    seconds = value.timestamp()
    return int(seconds) if seconds.is_integer() else seconds


def _decode_time(key: str, name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEntry(key, f"lifecycle.{name}", f"must be UTC seconds, got {value!r}")
    try:
        return datetime.fromtimestamp(value, tz=_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidEntry(key, f"lifecycle.{name}", f"out of range: {value!r} ({exc})") from None


def check_max_runs(key: str, value: Any, field_name: str = "max_runs") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidEntry(key, field_name, f"must be an int >= 1, got {value!r}")
    return value


def check_zone(key: str, value: Any, field_name: str = "tz") -> ZoneInfo:
    """The ZoneInfo named ``value``; InvalidEntry unless it is an IANA zone name."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidEntry(key, field_name, f"must be an IANA time zone name, got {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidEntry(
            key, field_name, f"unknown time zone {value!r} ({exc}); use an IANA name"
        ) from None


def decode_state(key: str, raw: str | bytes | None) -> str:
    """The ``state`` hash field: ``''`` (active) or a terminal state."""
    if raw is None or raw in ("", b""):
        return ""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text not in TERMINAL:
        raise InvalidEntry(key, "state", f"must be one of {sorted(TERMINAL)}, got {text!r}")
    return text


def once_schedule(at: datetime) -> rrule:
    """The schedule stored for a one-off: an rrule with one occurrence at ``at``.

    Stock RedBeat reads it and sends it once at ``at`` too.
    """
    moment = at.astimezone(_UTC).replace(microsecond=0)
    return rrule("MINUTELY", dtstart=moment, count=1)


def zone_of(lifecycle: Lifecycle, default: tzinfo) -> tzinfo:
    return ZoneInfo(lifecycle.tz) if lifecycle.tz else default


def state_of(
    *,
    enabled: bool,
    lifecycle: Lifecycle,
    stored_state: str,
    total_run_count: int,
    now: datetime,
) -> str:
    """The state shown for an entry (``parked`` is decided by whoever failed to decode it)."""
    if stored_state in TERMINAL:
        return stored_state
    if lifecycle.max_runs is not None and total_run_count >= lifecycle.max_runs:
        return FINISHED
    if lifecycle.at is not None and total_run_count >= 1:
        return FINISHED
    if lifecycle.expires is not None and now > lifecycle.expires:
        return EXPIRED
    if not enabled:
        return DISABLED
    if lifecycle.start_time is not None and now < lifecycle.start_time:
        return NOT_STARTED
    return ACTIVE
