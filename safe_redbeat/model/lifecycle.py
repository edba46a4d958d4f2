"""When an entry runs: its lifetime fields and the states they give it.

An entry's lifetime fields (``start_time``, ``expires``, ``max_runs``, a one-off's ``at``,
``tz``, ``run_immediately``, and the overlap policy ``overlap`` with its ``max_runtime``)
live in the hash field ``lifecycle`` (JSON), and the states
the leader records (``finished``, ``expired``) in the hash field ``state``: stock RedBeat
reads neither, so it still reads our entries. See docs/storage-format.md. Where the next
run lies is :mod:`.slots`; what the leader does with a due entry is :mod:`.decide`.

Everything here is pure: time comes in as arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from datetime import datetime, timezone, tzinfo
from typing import Any, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redbeat.schedules import rrule

from ..errors import InvalidEntry

__all__ = [
    "ACTIVE",
    "DISABLED",
    "EXPIRED",
    "FINISHED",
    "LIFETIME_FIELDS",
    "MAX_RUNTIME_LIMIT",
    "NOT_STARTED",
    "OVERLAP_ALLOW",
    "OVERLAP_POLICIES",
    "OVERLAP_REPLACE",
    "OVERLAP_SKIP",
    "PARKED",
    "STATES",
    "TERMINAL",
    "Lifecycle",
    "Lifetime",
    "check_max_runs",
    "check_max_runtime",
    "check_zone",
    "decode_state",
    "lifetime_fields",
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

#: What the leader does with an occurrence while the entry's previous run still goes:
#: send it anyway (the default, Celery's behaviour), skip it, or revoke the running one
#: and send it (Kubernetes CronJob's ``concurrencyPolicy`` Allow, Forbid, Replace).
OVERLAP_ALLOW, OVERLAP_SKIP, OVERLAP_REPLACE = "allow", "skip", "replace"
OVERLAP_POLICIES = (OVERLAP_ALLOW, OVERLAP_SKIP, OVERLAP_REPLACE)
#: The longest ``max_runtime`` (ten years, in seconds): it becomes a Redis expiry in ms.
MAX_RUNTIME_LIMIT = 10 * 366 * 86400


# -- the value --------------------------------------------------------------------------


#: How a lifetime field is checked, stored and shown (the ``kind`` of its metadata).
TIME, COUNT, ZONE, FLAG, CHOICE, SECONDS = "time", "count", "zone", "flag", "choice", "seconds"


def _meta(kind: str, label: str, help: str, flag: str = "") -> dict[str, str]:
    """A lifetime field's metadata: ``kind`` (how it is checked and stored), ``label``
    (``show``), ``help`` and ``flag`` (the CLI option; default ``--<name>``)."""
    return {"kind": kind, "label": label, "help": help, "flag": flag}


@dataclass(frozen=True)
class Lifecycle:
    """An entry's lifetime fields; all optional. Datetimes are aware (UTC once stored).

    The one declaration of the lifetime fields: the ``lifecycle`` hash field, loader items,
    ``beat_schedule`` entries, :class:`~safe_redbeat.model.specs.EntrySpec`,
    ``Schedule.upsert``, the CLI's options and ``show`` all derive theirs from it
    (:data:`LIFETIME_FIELDS`, :func:`lifetime_fields`); :class:`Lifetime` types them as
    keyword arguments.
    """

    start_time: datetime | None = field(
        default=None, metadata=_meta(TIME, "start", "no run before WHEN", "--start")
    )
    expires: datetime | None = field(
        default=None, metadata=_meta(TIME, "expires", "no run after WHEN; then `expired`")
    )
    max_runs: int | None = field(
        default=None, metadata=_meta(COUNT, "max runs", "after N runs the entry is `finished`")
    )
    tz: str | None = field(
        default=None,
        metadata=_meta(ZONE, "time zone", "IANA zone of --cron (default: the app's timezone)"),
    )
    run_immediately: bool = field(
        default=False,
        metadata=_meta(
            FLAG, "first run", "run at the leader's next tick instead of at its next slot", "--now"
        ),
    )
    #: a one-off entry: runs once at this time (``max_runs`` is then 1)
    at: datetime | None = field(
        default=None, metadata=_meta(TIME, "at", "a one-off: run once at WHEN (ISO 8601)")
    )
    #: while the entry's previous run still goes: ``allow`` another, ``skip`` this
    #: occurrence, or ``replace`` the running one (revoked) with it
    overlap: str = field(
        default=OVERLAP_ALLOW,
        metadata=_meta(
            CHOICE,
            "overlap",
            "while the last run still goes: allow another, skip this one, or replace the "
            "running one (needs --max-runtime for skip and replace)",
        ),
    )
    #: seconds after which a run that never reported its end no longer counts as running
    max_runtime: float | None = field(
        default=None,
        metadata=_meta(
            SECONDS,
            "max runtime",
            "after this long a run that never reported its end (a killed worker) no longer "
            "counts as running",
        ),
    )

    @property
    def is_default(self) -> bool:
        return self is _DEFAULT or self == _DEFAULT

    @classmethod
    def build(cls, key: str, **values: Any) -> Lifecycle:
        """Lifetime fields from loose input, checked (InvalidEntry naming the field).

        Naive datetimes are kept as they are: the writer takes them in the app's timezone.
        """
        unknown = sorted(set(values) - set(LIFETIME_FIELDS))
        if unknown:
            raise InvalidEntry(key, unknown[0], f"is not a lifetime field ({_KNOWN})")
        for name, value in values.items():
            if value is not None:
                _check(key, name, _KINDS[name], value, name)
        start, expires = values.get("start_time"), values.get("expires")
        if start is not None and expires is not None and _aware(expires) <= _aware(start):
            raise InvalidEntry(key, "expires", f"must be after start_time ({start.isoformat()})")
        if values.get("overlap") is None:
            values.pop("overlap", None)  # None: the default policy
        _check_overlap(key, values.get("overlap", OVERLAP_ALLOW), values.get("max_runtime"))
        return cls(**values) if values else _DEFAULT

    def encode(self) -> str:
        """The ``lifecycle`` hash field: sorted JSON, ``''`` when every field is default."""
        if self.is_default:
            return ""
        data: dict[str, Any] = {}
        for name in LIFETIME_FIELDS:
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                if _KINDS[name] == TIME:
                    value = _epoch_number(value)
                elif _KINDS[name] == SECONDS:
                    value = _number(value)
                data[name] = value
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
        values: dict[str, Any] = {}
        for name, value in data.items():
            if _KINDS[name] == TIME:
                values[name] = _decode_time(key, name, value)
            elif value is not None:
                values[name] = _check(key, name, _KINDS[name], value, f"lifecycle.{name}")
        overlap = values.get("overlap", OVERLAP_ALLOW)
        _check_overlap(key, overlap, values.get("max_runtime"), "lifecycle.")
        return cls(**values)

    @property
    def has_overlap_policy(self) -> bool:
        """Whether runs of the entry are tracked (``overlap`` is ``skip`` or ``replace``)."""
        return self.overlap != OVERLAP_ALLOW

    def in_zone(self, zone: tzinfo, resolve: Callable[[datetime, tzinfo], datetime]) -> Lifecycle:
        """These fields with naive datetimes taken in ``zone`` (by ``resolve``)."""
        changes: dict[str, Any] = {
            name: resolve(value, zone)
            for name in _TIME_FIELDS
            if (value := getattr(self, name)) is not None and value.tzinfo is None
        }
        return replace(self, **changes) if changes else self

    def to_json(self) -> dict[str, Any]:
        """ISO 8601 form for the CLI's ``--json``."""
        return {
            name: _iso(getattr(self, name)) if _KINDS[name] == TIME else getattr(self, name)
            for name in _JSON_ORDER
        }


class Lifetime(TypedDict, total=False):
    """The lifetime fields as keyword arguments (``EntrySpec.build``, ``Schedule.upsert``);
    the same names and types as :class:`Lifecycle` (a unit test holds them equal)."""

    start_time: datetime | None
    expires: datetime | None
    max_runs: int | None
    tz: str | None
    run_immediately: bool
    at: datetime | None
    overlap: str
    max_runtime: float | None


_DEFAULT = Lifecycle()
#: The lifetime fields, by name: loader items, ``beat_schedule`` entries, the CLI and
#: ``Schedule.upsert`` take exactly these (and derive their lists from here).
LIFETIME_FIELDS: tuple[str, ...] = tuple(sorted(f.name for f in fields(Lifecycle)))
_KINDS = {f.name: f.metadata["kind"] for f in fields(Lifecycle)}
_DEFAULTS = {f.name: f.default for f in fields(Lifecycle)}
_TIME_FIELDS = tuple(name for name in LIFETIME_FIELDS if _KINDS[name] == TIME)
_JSON_ORDER = tuple(f.name for f in fields(Lifecycle))
_KNOWN = ", ".join(LIFETIME_FIELDS)


def lifetime_fields() -> tuple[Field[Any], ...]:
    """The lifetime fields with their metadata (``kind``, ``label``, ``help``, ``flag``)."""
    return fields(Lifecycle)


def _check(key: str, name: str, kind: str, value: Any, where: str) -> Any:
    if kind == TIME:
        if not isinstance(value, datetime):
            raise InvalidEntry(key, where, f"must be a datetime or None, got {value!r}")
    elif kind == COUNT:
        check_max_runs(key, value, where)
    elif kind == ZONE:
        check_zone(key, value, where)
    elif kind == CHOICE:
        if value not in OVERLAP_POLICIES:
            choices = ", ".join(repr(p) for p in OVERLAP_POLICIES)
            raise InvalidEntry(key, where, f"must be one of {choices}, got {value!r}")
    elif kind == SECONDS:
        return check_max_runtime(key, value, where)
    elif not isinstance(value, bool):
        raise InvalidEntry(key, where, f"must be True or False, got {value!r}")
    return value


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(_UTC).isoformat()


def _epoch_number(value: datetime) -> int | float:
    return _number(value.timestamp())


def _number(seconds: float) -> int | float:
    return int(seconds) if float(seconds).is_integer() else float(seconds)


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


def check_max_runtime(key: str, value: Any, field_name: str = "max_runtime") -> int | float:
    """``value`` as a number of seconds from 0.001 to :data:`MAX_RUNTIME_LIMIT`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.001 <= value <= MAX_RUNTIME_LIMIT  # NaN fails too
    ):
        raise InvalidEntry(
            key,
            field_name,
            f"must be a number of seconds from 0.001 to {MAX_RUNTIME_LIMIT}, got {value!r}",
        )
    return value


def _check_overlap(key: str, overlap: str, max_runtime: float | None, where: str = "") -> None:
    """``skip`` and ``replace`` need ``max_runtime``; ``allow`` tracks no run to bound."""
    if overlap != OVERLAP_ALLOW and max_runtime is None:
        raise InvalidEntry(
            key,
            where + "max_runtime",
            f"is needed with overlap {overlap!r}: the seconds after which a run that never "
            "reported its end (its worker was killed) no longer counts as running",
        )
    if overlap == OVERLAP_ALLOW and max_runtime is not None:
        raise InvalidEntry(
            key,
            where + "max_runtime",
            "applies only with overlap 'skip' or 'replace' (with 'allow' no run is tracked); "
            "leave it unset",
        )


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
