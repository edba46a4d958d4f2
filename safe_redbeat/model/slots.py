"""Where an entry's next run lies: slots of intervals, crontabs and rrules in a time zone.

Crontabs and rrules run in the entry's zone (``tz``, default the app's timezone). A local
time skipped by a spring-forward transition runs once, at the first valid instant after
it; a local time repeated by a fall-back transition runs once, at its first instance.
Solar events are instants (no zone, no DST): the next one as Celery's ``solar`` finds it,
searching on past days the event does not happen (polar day and night) for up to a year.
Every search is bounded (:data:`SLOT_SEARCH_SECONDS`).

Everything here is pure: time comes in as arguments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

from celery.schedules import BaseSchedule, crontab, solar
from celery.schedules import schedule as interval
from celery.utils.time import remaining
from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, SECONDLY, WEEKLY, YEARLY
from redbeat.schedules import dateutil_rrule, rrule

from ..errors import ScheduleTooCostly
from .entry import NEVER
from .lifecycle import Lifecycle, zone_of

__all__ = [
    "SLOT_SEARCH_SECONDS",
    "SOLAR_SEARCH_DAYS",
    "first_slot",
    "new_entry_anchor",
    "resolve_local",
    "score_of",
    "slot_after",
    "writer_score",
]

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


#: Days a solar search goes on past days without the event (Celery's ``max_search_days``).
SOLAR_SEARCH_DAYS = 366


def _solar_after(schedule: solar, after: datetime, budget: _Budget) -> float | None:
    """UTC seconds of the first ``schedule`` event strictly after ``after``; None if it
    does not happen within :data:`SOLAR_SEARCH_DAYS`.

    Celery's own search (``solar._next_event``): the observer, horizon and method of the
    schedule; on a day the event does not happen (``ephem.CircumpolarError``: polar night
    or day) the search goes on from the next anti-transit of the sun.
    """
    import ephem

    observer = schedule.cal.copy()  # the schedule's own observer is shared: not mutated
    sun = ephem.Sun()
    options = {"use_center": True} if schedule.use_center else {}
    find = getattr(observer, schedule.method)
    cutoff = after.timestamp()
    start = ephem.Date(after.astimezone(_UTC).replace(tzinfo=None))
    for _ in range(SOLAR_SEARCH_DAYS + 2):
        budget.spend()
        try:
            event = find(sun, start=start, **options)
        except ephem.CircumpolarError:
            start = observer.next_antitransit(sun, start=start)
            continue
        moment = float(ephem.Date(event).datetime().replace(tzinfo=_UTC).timestamp())
        if moment > cutoff:
            return moment
        start = ephem.Date(event + ephem.second)
    return None


def slot_after(
    schedule: BaseSchedule, after: datetime, now: datetime, zone: tzinfo
) -> float | None:
    """UTC seconds of the schedule's first slot strictly after ``after``; None: no more.

    Crontabs and rrules are evaluated in ``zone`` with the DST policy of
    :func:`resolve_local`; intervals and solar events are zone-free. A search that takes
    longer than
    :data:`SLOT_SEARCH_SECONDS` raises :class:`~safe_redbeat.errors.ScheduleTooCostly`.
    """
    if isinstance(schedule, solar):
        return _solar_after(schedule, after, _Budget())
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


def score_of(slot: float | None) -> int:
    """The ZSET score of a slot (:data:`~safe_redbeat.store.wire.NEVER` for none)."""
    return NEVER if slot is None else math.floor(slot)


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
