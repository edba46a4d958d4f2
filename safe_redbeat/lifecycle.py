"""When an entry runs: first run, lifetime fields, states, time zones and DST.

An entry's lifetime fields (``start_time``, ``expires``, ``max_runs``, a one-off's ``at``,
``tz``, ``run_immediately``) live in the hash field ``lifecycle`` (JSON), and the states
the leader records (``finished``, ``expired``) in the hash field ``state``: stock RedBeat
reads neither, so it still reads our entries. See docs/storage-format.md.

Rules (README, "When entries run"):

* An entry with no run history runs at its next slot, counted from when it was created
  (Celery's ``ScheduleEntry``): writers record the creation time as ``meta.last_run_at``
  with ``total_run_count`` 0; an entry found without any (stock RedBeat, another
  language) is anchored at the leader's ``now``. ``run_immediately`` opts out.
* Crontabs and rrules run in the entry's zone (``tz``, default the app's timezone). A
  local time skipped by a spring-forward transition runs once, at the first valid instant
  after it; a local time repeated by a fall-back transition runs once, at its first
  instance.

Everything here is pure: time comes in as arguments.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval
from celery.utils.time import remaining
from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, SECONDLY, WEEKLY, YEARLY
from redbeat.schedules import dateutil_rrule, rrule

from .errors import InvalidEntry, ScheduleTooCostly

if TYPE_CHECKING:
    from .entries import StoredEntry

__all__ = [
    "ACTIVE",
    "DISABLED",
    "EXPIRED",
    "FINISHED",
    "NOT_STARTED",
    "PARKED",
    "SLOT_SEARCH_SECONDS",
    "STATES",
    "TERMINAL",
    "Lifecycle",
    "Step",
    "decide",
    "decode_state",
    "first_slot",
    "new_entry_anchor",
    "once_schedule",
    "resolve_local",
    "slot_after",
    "state_of",
    "writer_score",
    "zone_of",
]

NEVER = -1

ACTIVE = "active"
DISABLED = "disabled"
NOT_STARTED = "not_started"
EXPIRED = "expired"
FINISHED = "finished"
PARKED = "parked"
STATES = (ACTIVE, DISABLED, NOT_STARTED, EXPIRED, FINISHED, PARKED)
#: states the leader records in the hash field ``state``; such an entry never runs again
#: until a write changes its definition or lifetime fields (which clears the field)
TERMINAL = frozenset({EXPIRED, FINISHED})

_FIELDS = ("at", "expires", "max_runs", "run_immediately", "start_time", "tz")
_UTC = timezone.utc
#: crontabs that never match (``30 2 31 2 *``) stop the search after this many days
_MAX_DAYS = 366 * 8
#: Longest one slot search may take. Past it the search raises ScheduleTooCostly: the
#: leader parks that entry (one WARNING) instead of holding its tick past the renew
#: deadline, and a writer refuses the schedule.
SLOT_SEARCH_SECONDS = 0.25
#: the largest shift of a zone's wall clock at a transition (Lord Howe: 30 min, most: 1 h)
_MAX_SHIFT = timedelta(hours=3)
#: rrule frequencies whose periods have one length in wall-clock time, in seconds
_FIXED_PERIOD = {WEEKLY: 7 * 86400, DAILY: 86400, HOURLY: 3600, MINUTELY: 60, SECONDLY: 1}


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
        unknown = sorted(set(data) - set(_FIELDS))
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


# -- slots in a time zone ----------------------------------------------------------------


def resolve_local(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC instant of the naive local time ``wall`` in ``zone``, by our DST policy.

    Repeated by a fall-back transition: its first instance. Skipped by a spring-forward
    transition: the first valid instant after it (the transition itself).
    """
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    early = first.astimezone(_UTC)
    if first.utcoffset() == second.utcoffset():
        return early
    if early.astimezone(zone).replace(tzinfo=None) == wall:
        return early  # exists twice: fold=0 is the first instance
    # skipped: the transition lies between the two readings of `wall`
    lo = int(second.astimezone(_UTC).timestamp())  # before the transition
    hi = math.ceil(early.timestamp())  # after it
    after_offset = second.utcoffset()
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz=_UTC).astimezone(zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, tz=_UTC)


class _Budget:
    """Wall time left for one slot search (checked every 64 steps)."""

    __slots__ = ("_steps", "_until")

    def __init__(self) -> None:
        self._until = time.perf_counter() + SLOT_SEARCH_SECONDS
        self._steps = 0

    def spend(self) -> None:
        self._steps += 1
        if not self._steps & 63 and time.perf_counter() > self._until:
            raise ScheduleTooCostly(
                f"finding the next run took more than {SLOT_SEARCH_SECONDS} s "
                f"({self._steps} candidate times); use a rule with fewer occurrences, or "
                "an rrule with a recent dtstart and no large count"
            )


def _crontab_walls(cron: crontab, after: datetime, budget: _Budget) -> Iterator[datetime]:
    """Naive local times matching ``cron`` strictly after the naive ``after``, in order."""
    minutes = sorted(cron.minute)
    hours = sorted(cron.hour)
    day: date = after.date()
    for _ in range(_MAX_DAYS):
        budget.spend()
        if (
            day.month in cron.month_of_year
            and day.day in cron.day_of_month
            and day.isoweekday() % 7 in cron.day_of_week
        ):
            for hour in hours:
                if day == after.date() and hour < after.hour:
                    continue
                for minute in minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    if wall > after:
                        yield wall
        day += timedelta(days=1)


def _moved_start(rule: rrule, dtstart: datetime, after: datetime) -> datetime:
    """A start for ``rule`` one to two intervals before ``after``, with the same occurrences
    from there on: ``dtstart`` moved by a whole multiple of the rule's interval.

    Moved by whole days, hours, minutes or seconds of wall time, the fields dateutil derives
    from ``dtstart`` (time of day, weekday, the hours an HOURLY rule can reach) stay as
    they are; monthly and yearly rules move to the first day of their month or year, with
    the day derived from ``dtstart`` given explicitly (:func:`_day_defaults`). A rule with
    a ``count`` counts from its own start and is not moved.
    """
    if rule.count is not None or after <= dtstart:
        return dtstart
    interval = max(int(rule.interval or 1), 1)
    period = _FIXED_PERIOD.get(rule.freq)
    if period is not None:
        step = timedelta(seconds=period * interval)
        steps = (after - dtstart) // step - 1
        return dtstart + steps * step if steps > 0 else dtstart
    if rule.freq == MONTHLY:
        months = (after.year - dtstart.year) * 12 + after.month - dtstart.month
        steps = months // interval - 1
        if steps <= 0:
            return dtstart
        total = dtstart.month - 1 + steps * interval
        return dtstart.replace(year=dtstart.year + total // 12, month=total % 12 + 1, day=1)
    if rule.freq == YEARLY:
        steps = (after.year - dtstart.year) // interval - 1
        if steps <= 0:
            return dtstart
        return dtstart.replace(year=dtstart.year + steps * interval, month=1, day=1)
    return dtstart


def _day_defaults(rule: rrule, dtstart: datetime) -> dict[str, Any]:
    """``bymonth``/``bymonthday``/``byweekday`` as dateutil derives them from ``dtstart``
    when the rule names no day at all (so that a moved start does not change them)."""
    if (
        rule.byweekno is not None
        or rule.byyearday is not None
        or rule.bymonthday is not None
        or rule.byweekday is not None
        or rule.byeaster is not None
    ):
        return {}
    if rule.freq == YEARLY:
        month = rule.bymonth if rule.bymonth is not None else dtstart.month
        return {"bymonth": month, "bymonthday": dtstart.day}
    if rule.freq == MONTHLY:
        return {"bymonthday": dtstart.day}
    if rule.freq == WEEKLY:
        return {"byweekday": dtstart.weekday()}
    return {}


def _rrule_walls(rule: rrule, zone: tzinfo, after: datetime, budget: _Budget) -> Iterator[datetime]:
    """The rrule's occurrences as naive local times in ``zone``, strictly after ``after``.

    The rule is walked once, from a start moved close to ``after`` (:func:`_moved_start`),
    so the cost does not grow with the rule's age.
    """
    dtstart = rule.dtstart.astimezone(zone).replace(tzinfo=None)
    until = None if rule.until is None else rule.until.astimezone(zone).replace(tzinfo=None)
    by: dict[str, Any] = {
        "bysetpos": rule.bysetpos,
        "bymonth": rule.bymonth,
        "bymonthday": rule.bymonthday,
        "byyearday": rule.byyearday,
        "byeaster": rule.byeaster,
        "byweekno": rule.byweekno,
        "byweekday": rule.byweekday,
        "byhour": rule.byhour,
        "byminute": rule.byminute,
        "bysecond": rule.bysecond,
    }
    by.update(_day_defaults(rule, dtstart))
    local = dateutil_rrule(
        rule.freq,
        dtstart=_moved_start(rule, dtstart, after),
        interval=rule.interval,
        wkst=rule.wkst,
        count=rule.count,
        until=until,
        **by,
    )
    for wall in local:
        budget.spend()
        if wall > after:
            yield wall


def slot_after(
    schedule: BaseSchedule, after: datetime, now: datetime, zone: tzinfo
) -> float | None:
    """UTC seconds of the schedule's first slot strictly after ``after``; None: no more.

    Crontabs and rrules are evaluated in ``zone`` with the DST policy of
    :func:`resolve_local`; intervals are zone-free. A search that takes longer than
    :data:`SLOT_SEARCH_SECONDS` raises :class:`~safe_redbeat.errors.ScheduleTooCostly`.
    """
    if isinstance(schedule, interval):
        if not schedule.relative:
            return after.timestamp() + float(schedule.run_every.total_seconds())
        left = remaining(after, schedule.run_every, now, relative=True)
        return float((now + left).timestamp())
    budget = _Budget()
    walls: Iterator[datetime]
    wall_after = after.astimezone(zone).replace(tzinfo=None)
    if isinstance(schedule, crontab):
        walls = _crontab_walls(schedule, wall_after, budget)
    elif isinstance(schedule, rrule):
        if after.astimezone(zone).utcoffset() != (after - _MAX_SHIFT).astimezone(zone).utcoffset():
            # a transition just passed: an occurrence in a repeated hour may lie before
            # `after`'s wall time and still after `after`
            wall_after -= _MAX_SHIFT
        walls = _rrule_walls(schedule, zone, wall_after, budget)
    else:
        left = schedule.remaining_estimate(after)
        return None if left is None else float((now + left).timestamp())
    cutoff = after.timestamp()
    for wall in walls:
        moment = resolve_local(wall, zone).timestamp()
        if moment > cutoff:
            return moment
    return None


def first_slot(
    schedule: BaseSchedule,
    lifecycle: Lifecycle,
    after: datetime,
    now: datetime,
    zone: tzinfo,
) -> float | None:
    """:func:`slot_after` ``after``, but never before ``lifecycle.start_time``.

    With a start time still ahead of ``after``, an interval's first slot is the start time
    itself (however long the interval); a crontab's or rrule's is its first matching time
    at or after it.
    """
    start = lifecycle.start_time
    if start is not None and isinstance(schedule, interval) and after < start:
        return start.timestamp()
    slot = slot_after(schedule, after, now, zone)
    if slot is not None and start is not None and slot < start.timestamp():
        slot = slot_after(schedule, start - timedelta(seconds=1), now, zone)
    return slot


# -- the leader's decision ---------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What the leader does with one due, enabled entry (see :func:`decide`)."""

    send: bool = False
    new_score: int = NEVER
    #: ``(last_run_at, total_run_count)`` to write as ``meta``; None leaves it alone
    meta: tuple[datetime, int] | None = None
    #: a terminal state to record in the same claim; ``''`` records nothing
    state: str = ""
    #: the occurrence was not sent because of ``catch_up="skip"``
    skipped: bool = False
    #: seconds until the entry is due, when it is not due yet
    next_due_in: float | None = None


def _score(slot: float | None) -> int:
    return NEVER if slot is None else math.floor(slot)


def decide(
    entry: StoredEntry,
    now: datetime,
    *,
    catch_up: str = "run_once",
    grace: float = 60.0,
) -> Step:
    """Send, move or retire one enabled entry read as due at ``now``.

    Claimed occurrences are scheduled at the entry's score (their task id derives from
    it); ``meta`` then records ``now`` as the last run.
    """
    lc = entry.lifecycle
    runs = entry.total_run_count
    if entry.state in TERMINAL:
        return Step(new_score=NEVER)
    if lc.at is not None:
        return _decide_once(entry, lc, now, catch_up, grace)
    if lc.max_runs is not None and runs >= lc.max_runs:
        return Step(new_score=NEVER, state=FINISHED)
    schedule = entry.schedule
    zone = zone_of(lc, schedule.tz)
    now_epoch = now.timestamp()
    last = entry.last_run_at
    anchor: tuple[datetime, int] | None = None
    slot: float | None
    if last is None and not lc.run_immediately:
        # no run history: counted from now, as if created now (Celery's ScheduleEntry)
        anchor = (now, runs)
        slot = first_slot(schedule, lc, now, now, zone)
    elif last is None:
        start = lc.start_time
        slot = now_epoch if start is None or start <= now else start.timestamp()
    else:
        slot = first_slot(schedule, lc, last, now, zone)
    expires = None if lc.expires is None else lc.expires.timestamp()
    if slot is None:
        return Step(new_score=NEVER, meta=anchor)
    if expires is not None and slot > expires:
        return Step(new_score=NEVER, meta=anchor, state=EXPIRED)
    if slot > now_epoch:
        return Step(new_score=_score(slot), meta=anchor, next_due_in=slot - now_epoch)
    if expires is not None and now_epoch > expires + grace:
        return Step(new_score=NEVER, state=EXPIRED)
    scheduled = int(entry.score)
    following = first_slot(schedule, lc, now, now, zone)
    state = ""
    new_score = _score(following)
    if following is not None and expires is not None and following > expires:
        new_score, state = NEVER, EXPIRED
    elif new_score != NEVER and new_score <= scheduled:
        new_score = scheduled + 1
    if catch_up == "skip" and now_epoch - scheduled > grace:
        return Step(new_score=new_score, meta=(now, runs), state=state, skipped=True)
    if lc.max_runs is not None and runs + 1 >= lc.max_runs:
        new_score, state = NEVER, FINISHED
    return Step(send=True, new_score=new_score, meta=(now, runs + 1), state=state)


def _decide_once(
    entry: StoredEntry, lc: Lifecycle, now: datetime, catch_up: str, grace: float
) -> Step:
    assert lc.at is not None
    if entry.total_run_count >= 1:
        return Step(new_score=NEVER, state=FINISHED)
    at = lc.at.timestamp()
    now_epoch = now.timestamp()
    last = entry.last_run_at
    if now_epoch < at:
        # record when it was first seen, so a late read knows it existed before its time
        anchor = (now, 0) if last is None and not lc.run_immediately else None
        return Step(new_score=math.floor(at), meta=anchor, next_due_in=at - now_epoch)
    if (lc.expires is not None and at > lc.expires.timestamp()) or (
        lc.start_time is not None and at < lc.start_time.timestamp()
    ):
        return Step(new_score=NEVER, state=EXPIRED)
    if not lc.run_immediately:
        created = now_epoch if last is None else last.timestamp()
        if created >= at:
            # created, or re-seeded after data loss, after its time: not re-run unless
            # that was within the grace (or asked for with run_immediately)
            if created - at > grace:
                return Step(new_score=NEVER, state=EXPIRED)
        elif catch_up == "skip" and now_epoch - at > grace:
            return Step(new_score=NEVER, meta=(now, 0), state=EXPIRED, skipped=True)
    return Step(send=True, new_score=NEVER, meta=(now, 1), state=FINISHED)


def writer_score(
    schedule: BaseSchedule,
    lifecycle: Lifecycle,
    last_run_at: datetime | None,
    total_run_count: int,
    now: datetime,
) -> int:
    """The ZSET score a writer stores: the next slot, or ``now`` for the leader to decide.

    ``last_run_at`` is the last run, or the creation time of an entry that never ran;
    None only with ``run_immediately`` (due at once, or at its start time).
    """
    now_ts = math.floor(now.timestamp())
    if lifecycle.at is not None:
        if total_run_count >= 1:
            return NEVER
        return max(math.floor(lifecycle.at.timestamp()), now_ts)
    if lifecycle.max_runs is not None and total_run_count >= lifecycle.max_runs:
        return now_ts  # the leader records it as finished
    if last_run_at is None:
        start = lifecycle.start_time
        return now_ts if start is None else max(math.floor(start.timestamp()), now_ts)
    zone = zone_of(lifecycle, schedule.tz)
    slot = first_slot(schedule, lifecycle, last_run_at, now, zone)
    if slot is None:
        return NEVER
    if lifecycle.expires is not None and slot > lifecycle.expires.timestamp():
        return now_ts  # the leader records it as expired
    return max(math.floor(slot), now_ts)


def new_entry_anchor(
    lifecycle: Lifecycle, source_last_run_at: datetime | None, now: datetime
) -> datetime | None:
    """``meta.last_run_at`` written for a new entry: when its schedule counts from.

    The source's last run (a loader's ``last_run_at``) if known, else ``now`` (Celery's
    ``ScheduleEntry``: a new entry runs at its next slot); None with ``run_immediately``.
    """
    if source_last_run_at is not None:
        return source_last_run_at
    return None if lifecycle.run_immediately else now
