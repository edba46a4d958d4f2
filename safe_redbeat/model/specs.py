"""Entry definitions as the management API takes and returns them, validated up front.

:class:`EntrySpec` is what to write (cleaned up and validated by ``EntrySpec.build`` and
again by ``Schedule.put``: InvalidEntry names the entry and the field before anything
reaches Redis); :class:`EntryInfo` is what Redis holds: an EntrySpec plus version and run
metadata. Schedules must survive RedBeat's JSON: intervals, crontabs, RedBeat rrules, and
Celery's ``solar`` (in a JSON form of ours, docs/storage-format.md; it needs ``ephem``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

from celery.schedules import BaseSchedule, crontab, solar
from celery.schedules import schedule as interval
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder
from redbeat.schedules import rrule

from ..errors import InvalidEntry, ScheduleTooCostly
from .codec import encode_definition, encode_schedule, solar_schedule
from .entry import StoredEntry
from .lifecycle import ACTIVE, LIFETIME_FIELDS, Lifecycle, Lifetime, once_schedule, state_of
from .slots import resolve_local, slot_after
from .validation import check_json, check_name, check_options

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: no lifetime fields: the one shared instance, so ``is_default`` is an identity check
_NO_LIFECYCLE = Lifecycle.build("")


class EntryFields(Lifetime, total=False):
    """An entry's fields besides its name, task and schedule, as keyword arguments
    (``EntrySpec.build``, ``Schedule.upsert``): message arguments and options, whether it
    is enabled, and the lifetime fields."""

    args: Iterable[Any]
    kwargs: Mapping[str, Any] | None
    options: Mapping[str, Any] | None
    enabled: bool


__all__ = [
    "CRONTAB_FIELDS",
    "EntryFields",
    "EntryInfo",
    "EntrySpec",
    "ScheduleLike",
    "check_expected_version",
    "check_name",
    "to_schedule",
]

#: What ``schedule=`` accepts: a Celery ``schedule``, a ``timedelta`` or a number of
#: seconds (an interval), a ``crontab`` or a 5-field cron expression string, a RedBeat
#: ``rrule``, a Celery ``solar``, or the JSON form of any of them as a mapping
#: (``{"__type__": ...}``).
ScheduleLike: TypeAlias = BaseSchedule | timedelta | float | int | str | Mapping[str, Any]

#: crontab's fields, in the order of a cron expression.
CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

_SUPPORTED = (
    "a celery schedule, timedelta or seconds, crontab, cron string, RedBeat rrule, or solar"
)


def _invalid(key: str, field_name: str, problem: str) -> InvalidEntry:
    return InvalidEntry(key, field_name, problem)


# -- validation ------------------------------------------------------------------------


def _positive_seconds(key: str, seconds: Any) -> timedelta:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise _invalid(key, "schedule", f"an interval needs a number of seconds, got {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise _invalid(key, "schedule", f"an interval must be positive, got {seconds!r} seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise _invalid(key, "schedule", f"interval of {seconds!r} seconds is too large") from None


def _crontab(key: str, fields: Mapping[str, Any]) -> crontab:
    """Build a crontab field by field so an error names the field that is wrong."""
    unknown = set(fields) - set(CRONTAB_FIELDS)
    if unknown:
        raise _invalid(key, "schedule", f"unknown crontab fields {sorted(unknown)}")
    for name, value in fields.items():
        try:
            crontab(**{name: value})
        except Exception as exc:  # ValueError, celery's ParseException, TypeError
            raise _invalid(
                key, f"schedule.{name}", f"invalid crontab field {value!r}: {exc}"
            ) from None
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise _invalid(
                key,
                f"schedule.{name}",
                f"must be a string or an int to be stored as JSON, got {value!r} "
                "(write a list as '0,30')",
            )
    try:
        cron = crontab(**fields)
        # Celery before 5.7 accepts a date that never comes (30 February) and fails only
        # when beat asks for the next run: ask once here.
        cron.remaining_estimate(_PROBE)
    except Exception as exc:
        raise _invalid(key, "schedule.day_of_month", str(exc)) from None
    return cron


_PROBE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _from_json_form(key: str, value: Mapping[str, Any]) -> BaseSchedule:
    kind = value.get("__type__")
    body = {k: v for k, v in value.items() if k != "__type__"}
    if kind == "interval":
        unknown = set(body) - {"every", "relative"}
        if unknown:
            raise _invalid(key, "schedule", f"unknown interval fields {sorted(unknown)}")
        every = _positive_seconds(key, body.get("every"))
        return interval(every, relative=bool(body.get("relative", False)))
    if kind == "crontab":
        return _crontab(key, body)
    if kind == "solar":
        unknown = set(body) - {"event", "lat", "lon"}
        if unknown:
            raise _invalid(key, "schedule", f"unknown solar fields {sorted(unknown)}")
        return solar_schedule(key, body.get("event"), body.get("lat"), body.get("lon"))
    if kind == "rrule":
        try:
            decoded = json.loads(json.dumps(dict(value)), cls=RedBeatJSONDecoder)
        except Exception as exc:
            raise _invalid(key, "schedule", f"invalid rrule: {exc}") from None
        if not isinstance(decoded, rrule):
            raise _invalid(key, "schedule", "invalid rrule")
        return decoded
    raise _invalid(
        key,
        "schedule",
        f"unknown schedule type {kind!r} in JSON form (known: interval, crontab, rrule, solar)",
    )


#: Converted schedules by input (seconds, cron string, timedelta, crontab fields): a
#: loader returning 100k rows repeats a few hundred distinct schedules at most, and
#: building a crontab costs ~0.2 ms. The cached objects are shared: never mutate them.
_CONVERTED: dict[Hashable, BaseSchedule] = {}
_CONVERTED_MAX = 4096
#: The RedBeat JSON of each schedule in _CONVERTED, by id (the object itself is kept
#: beside it, so an id is never taken for another object's)
_ENCODED: dict[int, tuple[BaseSchedule, str]] = {}


def _conversion_key(value: object) -> Hashable | None:
    kind = type(value)
    if kind is str or kind is int or kind is float:  # the usual: exact types first
        return (kind.__name__, value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str | timedelta):
        return (type(value).__name__, value)
    if type(value) is crontab:
        return ("crontab", *(repr(getattr(value, f"_orig_{f}")) for f in CRONTAB_FIELDS))
    return None


def to_schedule(value: ScheduleLike, key: str = "") -> BaseSchedule:
    """Convert and validate a schedule; raise InvalidEntry naming the bad part.

    The result is one RedBeat can store as JSON and decode again (checked by a round trip).
    Equal inputs return the same (shared, not to be mutated) schedule object.
    """
    cache_key = _conversion_key(value)
    if cache_key is not None:
        cached = _CONVERTED.get(cache_key)
        if cached is not None:
            return cached
    result = _convert_schedule(value, key)
    if cache_key is not None:
        if len(_CONVERTED) >= _CONVERTED_MAX:
            _CONVERTED.clear()
            _ENCODED.clear()
        _CONVERTED[cache_key] = result
        _ENCODED[id(result)] = (result, encode_schedule(result))
    return result


def _encoded_schedule(schedule: BaseSchedule) -> str | None:
    """The RedBeat JSON of a schedule :func:`to_schedule` converted and shares, else None."""
    known = _ENCODED.get(id(schedule))
    return known[1] if known is not None and known[0] is schedule else None


def _convert_schedule(value: ScheduleLike, key: str) -> BaseSchedule:
    result: BaseSchedule
    if isinstance(value, solar):
        fields = (getattr(value, name, None) for name in ("event", "lat", "lon"))
        return solar_schedule(key, *fields)
    if isinstance(value, bool):
        raise _invalid(key, "schedule", f"unsupported schedule {value!r} (use {_SUPPORTED})")
    if isinstance(value, int | float):
        result = interval(_positive_seconds(key, value))
    elif isinstance(value, timedelta):
        result = interval(_positive_seconds(key, value.total_seconds()))
    elif isinstance(value, str):
        parts = value.split()
        if len(parts) != len(CRONTAB_FIELDS):
            raise _invalid(
                key,
                "schedule",
                f"a cron expression needs 5 fields (minute hour day_of_month month_of_year "
                f"day_of_week), got {value!r}",
            )
        result = _crontab(key, dict(zip(CRONTAB_FIELDS, parts, strict=True)))
    elif isinstance(value, Mapping):
        result = _from_json_form(key, value)
    elif isinstance(value, crontab):
        result = _crontab(key, {f: getattr(value, f"_orig_{f}") for f in CRONTAB_FIELDS})
    elif isinstance(value, interval):
        _positive_seconds(key, value.run_every.total_seconds())
        result = value
    elif isinstance(value, rrule):
        result = value
    else:
        raise _invalid(
            key,
            "schedule",
            f"unsupported schedule type {type(value).__name__} (use {_SUPPORTED})",
        )
    if isinstance(result, solar):
        return result  # checked by solar_schedule; its JSON form is ours (codec)
    try:
        decoded = json.loads(json.dumps(result, cls=RedBeatJSONEncoder), cls=RedBeatJSONDecoder)
    except Exception as exc:
        raise _invalid(key, "schedule", f"cannot be stored as RedBeat JSON: {exc}") from None
    if not isinstance(decoded, BaseSchedule):
        raise _invalid(key, "schedule", f"does not decode back to a schedule: {decoded!r}")
    if isinstance(result, rrule):
        _check_rrule(key, result)
    return result


def _check_rrule(key: str, rule: rrule) -> None:
    """The leader must be able to find the rule's next run within the search budget."""
    now = datetime.now(timezone.utc)
    try:
        slot_after(rule, now, now, timezone.utc)
    except ScheduleTooCostly as exc:
        raise _invalid(key, "schedule", str(exc)) from None
    except Exception as exc:  # dateutil's ValueError for by-values the rule never reaches
        raise _invalid(key, "schedule", f"invalid rrule: {exc}") from None


def check_expected_version(name: str, expected_version: int | None) -> None:
    """Raise InvalidEntry unless ``expected_version`` is None or an int >= 0."""
    if expected_version is None:
        return
    if (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or expected_version < 0
    ):
        raise _invalid(
            name, "expected_version", f"must be None or an int >= 0, got {expected_version!r}"
        )


# -- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EntrySpec:
    """The definition of one entry.

    Build it from loose input with :meth:`build`, which cleans it up and validates it
    (raises InvalidEntry); change fields with :meth:`replace`; write it with
    :meth:`Schedule.put` (which validates it again). Its lifetime fields are one
    :class:`~safe_redbeat.model.lifecycle.Lifecycle` (``spec.lifecycle.start_time``).
    """

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    #: when the entry may run: start time, expiry, most runs, zone, one-off time
    lifecycle: Lifecycle = _NO_LIFECYCLE
    #: the last run known to the source (a loader), used only when Redis has no run history
    last_run_at: datetime | None = field(default=None, compare=False)
    #: the runs the source counted (a loader), used only when Redis has no run history:
    #: a new entry starts counting from it (``max_runs`` counts them too)
    total_run_count: int = field(default=0, compare=False)

    @classmethod
    def build(
        cls,
        name: str,
        task: str,
        schedule: ScheduleLike | None,
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
        last_run_at: datetime | None = None,
        total_run_count: int = 0,
        **lifetime: Unpack[Lifetime],
    ) -> EntrySpec:
        """An EntrySpec from loose input, cleaned up and validated (raises InvalidEntry):
        any accepted schedule form (see :data:`ScheduleLike`), and the other fields by
        name (:class:`EntryFields`): ``args`` (any iterable), ``kwargs``, ``options``,
        ``enabled`` and the lifetime fields (:class:`Lifecycle`'s names).

        A one-off gives ``at`` instead of ``schedule``. Naive datetimes are taken in the
        app's timezone when the entry is written.
        """
        at: Any = lifetime.get("at")
        if at is not None and schedule is not None:
            raise _invalid(str(name), "at", "a one-off gives `at` instead of a schedule, not both")
        if at is None and schedule is None:
            raise _invalid(
                str(name), "schedule", "missing (give a schedule, or `at` for a one-off)"
            )
        once = None if at is None else _once(str(name), at)
        name = check_name(name)
        if not isinstance(task, str) or not task.strip():
            raise _invalid(name, "task", f"must be a non-empty task name, got {task!r}")
        converted = to_schedule(schedule if once is None else once, name)
        if type(args) is not tuple and (
            isinstance(args, str | bytes | Mapping) or not isinstance(args, Iterable)
        ):
            raise _invalid(name, "args", f"must be a list or tuple, got {args!r}")
        args = tuple(args)
        if args:
            check_json(name, "args", args)
        kwargs, options = _mapping(name, "kwargs", kwargs), _mapping(name, "options", options)
        check_json(name, "kwargs", kwargs)
        check_options(name, options)  # plain JSON, and what Celery can send
        if not isinstance(enabled, bool):
            raise _invalid(name, "enabled", f"must be True or False, got {enabled!r}")
        if last_run_at is not None and not isinstance(last_run_at, datetime):
            raise _invalid(name, "last_run_at", f"must be a datetime or None, got {last_run_at!r}")
        if (
            isinstance(total_run_count, bool)
            or not isinstance(total_run_count, int)
            or not 0 <= total_run_count <= 2**53
        ):
            raise _invalid(name, "total_run_count", f"must be an int >= 0, got {total_run_count!r}")
        lifecycle = _NO_LIFECYCLE
        if lifetime:
            lifecycle = Lifecycle.build(name, **lifetime)  # names checked there
            _check_with_schedule(name, lifecycle, converted)
        return cls(
            name=name,
            task=task,
            schedule=converted,
            args=args,
            kwargs=kwargs,
            options=options,
            enabled=enabled,
            lifecycle=lifecycle,
            last_run_at=last_run_at,
            total_run_count=total_run_count,
        )

    def replace(self, **changes: Any) -> EntrySpec:
        """This spec with ``changes`` (its fields, or lifetime fields by name, as loose
        input as :meth:`build` takes it), validated again; a one-off's schedule follows
        its ``at``."""
        values: dict[str, Any] = {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            **{name: getattr(self.lifecycle, name) for name in LIFETIME_FIELDS},
        }
        values.pop("lifecycle")
        values.update(changes)
        if values["at"] is not None:
            values["schedule"] = None
        return EntrySpec.build(**values)

    @classmethod
    def once(cls, name: str, task: str, at: datetime, **fields: Any) -> EntrySpec:
        """A one-off entry: sent once at ``at``, then ``finished`` (the other fields as
        :meth:`build` takes them)."""
        return cls.build(name, task, None, at=at, **fields)

    def in_zone(self, default_tz: tzinfo) -> EntrySpec:
        """This spec with naive datetimes taken in ``default_tz`` (the app's timezone)."""
        if self.lifecycle is _NO_LIFECYCLE and self.last_run_at is None:
            return self  # most loader rows: nothing to take
        lifecycle = self.lifecycle.in_zone(default_tz, resolve_local)
        last = self.last_run_at
        if last is not None and last.tzinfo is None:
            last = resolve_local(last, default_tz)
        if lifecycle is self.lifecycle and last is self.last_run_at:
            return self
        return dataclasses.replace(self, lifecycle=lifecycle, last_run_at=last)

    def definition(self) -> str:
        """RedBeat's ``definition`` JSON for this entry (sorted keys)."""
        return encode_definition(
            self.name,
            self.task,
            self.schedule,
            self.args,
            self.kwargs,
            self.options,
            self.enabled,
            schedule_json=_encoded_schedule(self.schedule),
        )


T = TypeVar("T")


class _SpecField(Generic[T]):
    """An :class:`EntryInfo` attribute read from its spec, typed by the spec's own field."""

    def __init__(self, read: Callable[[EntrySpec], T]) -> None:
        self.read = read

    @overload
    def __get__(self, info: None, owner: type[Any]) -> _SpecField[T]: ...

    @overload
    def __get__(self, info: EntryInfo, owner: type[Any]) -> T: ...

    def __get__(self, info: EntryInfo | None, owner: type[Any]) -> _SpecField[T] | T:
        return self if info is None else self.read(info.spec)


@dataclass(frozen=True)
class EntryInfo:
    """One entry as Redis holds it: its definition (``spec``), version and run state.

    ``version`` is 0 for an entry saved by stock RedBeat. ``next_run_at`` is the entry's
    score in the schedule ZSET (None when it will never run again); while a manual run is
    pending (``run_now_at``) that is the request time. Times are aware datetimes. The
    spec's fields read through (``info.name``, ``info.schedule``, ``info.lifecycle`` ...).
    """

    #: the definition, e.g. to change one field with :meth:`EntrySpec.replace`
    spec: EntrySpec
    version: int
    last_run_at: datetime | None
    next_run_at: datetime | None
    total_run_count: int
    run_now_at: datetime | None = None
    #: active, disabled, not_started, expired, finished (``parked`` entries cannot be
    #: decoded: see ``Schedule.list(on_invalid=...)``)
    state: str = ACTIVE

    name = _SpecField(lambda spec: spec.name)
    task = _SpecField(lambda spec: spec.task)
    schedule = _SpecField(lambda spec: spec.schedule)
    args = _SpecField(lambda spec: spec.args)
    kwargs = _SpecField(lambda spec: spec.kwargs)
    options = _SpecField(lambda spec: spec.options)
    enabled = _SpecField(lambda spec: spec.enabled)
    #: the lifetime fields (``info.lifecycle.expires``; ``.at`` of a one-off)
    lifecycle = _SpecField(lambda spec: spec.lifecycle)


def utc_datetime(ts: float | int | None) -> datetime | None:
    """An aware UTC datetime from a timestamp or ZSET score; None for None and ``-1``."""
    if ts is None or ts < 0:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def info_from_stored(
    stored: StoredEntry, score: float | None, now: datetime | None = None
) -> EntryInfo:
    """The EntryInfo of a decoded entry hash and its ZSET score (None: not scheduled).

    ``state`` is computed at ``now`` (default: this machine's clock).
    """
    state = state_of(
        enabled=stored.enabled,
        lifecycle=stored.lifecycle,
        stored_state=stored.state,
        total_run_count=stored.total_run_count,
        now=now or datetime.now(timezone.utc),
    )
    spec = EntrySpec(
        name=stored.name,
        task=stored.task,
        schedule=stored.schedule,
        args=tuple(stored.args),
        kwargs=stored.kwargs,
        options=stored.options,
        enabled=stored.enabled,
        lifecycle=stored.lifecycle,
    )
    return EntryInfo(
        spec,
        version=int(stored.version),
        last_run_at=stored.last_run_at,
        next_run_at=utc_datetime(score),
        total_run_count=stored.total_run_count,
        run_now_at=utc_datetime(stored.run_now),
        state=state,
    )


# -- lifetime fields ------------------------------------------------------------------


def _once(name: str, at: datetime) -> BaseSchedule:
    """A one-off's schedule is derived from ``at`` (an rrule stock RedBeat runs once)."""
    if not isinstance(at, datetime):
        raise _invalid(name, "at", f"must be a datetime, got {at!r}")
    moment = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    return once_schedule(moment)


def _mapping(name: str, part: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict and not isinstance(value, Mapping):
        raise _invalid(name, part, f"must be a mapping, got {value!r}")
    return dict(value)


def _check_with_schedule(name: str, lifecycle: Lifecycle, schedule: BaseSchedule) -> None:
    """The lifetime rules that depend on the schedule."""
    if lifecycle.at is not None and lifecycle.max_runs not in (None, 1):
        raise _invalid(name, "max_runs", "a one-off (`at`) runs once; leave max_runs unset")
    if lifecycle.tz is not None and isinstance(schedule, interval | solar):
        kind = "an interval" if isinstance(schedule, interval) else "a solar event"
        raise _invalid(
            name,
            "tz",
            f"applies to crontab and rrule schedules; {kind} does not depend on a time zone",
        )
