"""Crontabs across DST transitions, over whole years, against an independent oracle.

Policy (README, "When entries run"): a local time skipped by spring-forward runs once at
the first valid instant after it; a local time repeated by fall-back runs once, at its
first instance. The oracle below finds those instants by scanning minutes, not with the
code under test.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from hypothesis import given, settings
from hypothesis import strategies as st

from safe_redbeat.model.slots import resolve_local, slot_after

UTC = timezone.utc
YEAR = 2026
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
CRONS = {
    "hourly": ("0", "*"),
    "02:30 daily": ("30", "2"),
    "every 15 minutes": ("*/15", "*"),
}


def walls(minute: str, hour: str) -> Iterator[datetime]:
    """Every local slot of the crontab in YEAR, as naive wall-clock times."""
    cron = crontab(minute=minute, hour=hour)
    day = date(YEAR, 1, 1)
    while day.year == YEAR:
        for h in sorted(cron.hour):
            for m in sorted(cron.minute):
                yield datetime(day.year, day.month, day.day, h, m)
        day += timedelta(days=1)


def local(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def oracle(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant ``wall`` runs at, by brute force over whole minutes."""
    plain = wall.replace(tzinfo=zone)
    day_start, day_end = wall.replace(hour=0, minute=0), wall.replace(hour=23, minute=59)
    offsets = {day_start.replace(tzinfo=zone).utcoffset(), day_end.replace(tzinfo=zone).utcoffset()}
    if len(offsets) == 1:
        return plain.astimezone(UTC)  # no transition that day
    low = wall.replace(tzinfo=UTC) - max(o for o in offsets if o is not None) - timedelta(hours=1)
    candidates = [low + timedelta(minutes=k) for k in range(4 * 60)]
    exact = [u for u in candidates if local(u, zone) == wall]
    if exact:
        return min(exact)  # the first instance of a repeated time
    return min(u for u in candidates if local(u, zone) > wall)  # the gap's end


@cache
def expected(zone_name: str, cron_name: str) -> tuple[datetime, ...]:
    zone = ZoneInfo(zone_name)
    return tuple(sorted({oracle(w, zone) for w in walls(*CRONS[cron_name])}))


@cache
def produced(zone_name: str, cron_name: str) -> tuple[datetime, ...]:
    """A leader that runs each slot exactly at its time, for the whole year."""
    zone = ZoneInfo(zone_name)
    cron = crontab(*CRONS[cron_name])
    last = datetime(YEAR, 1, 1, tzinfo=zone).astimezone(UTC) - timedelta(seconds=1)
    end = datetime(YEAR + 1, 1, 1, tzinfo=zone).astimezone(UTC)
    runs: list[datetime] = []
    while True:
        slot = slot_after(cron, last, last, zone)
        assert slot is not None
        moment = datetime.fromtimestamp(slot, tz=UTC)
        if moment >= end:
            return tuple(runs)
        runs.append(moment)
        last = moment


@pytest.mark.parametrize("cron_name", CRONS)
@pytest.mark.parametrize("zone_name", ZONES)
def test_one_run_per_local_slot_over_a_whole_year(zone_name: str, cron_name: str) -> None:
    zone = ZoneInfo(zone_name)
    runs = produced(zone_name, cron_name)
    assert all(a < b for a, b in itertools.pairwise(runs)), "scores must strictly increase"
    assert runs == expected(zone_name, cron_name)
    # a wall time that exists runs exactly once, even when the clock shows it twice
    seen: dict[datetime, int] = {}
    for moment in runs:
        seen[local(moment, zone)] = seen.get(local(moment, zone), 0) + 1
    assert max(seen.values()) == 1
    existing = [w for w in walls(*CRONS[cron_name]) if local(oracle(w, zone), zone) == w]
    assert all(seen.get(w) == 1 for w in existing)
    # the year really had both transitions in it
    offsets = {datetime(YEAR, m, 1, tzinfo=zone).utcoffset() for m in range(1, 13)}
    assert len(offsets) == 2


@pytest.mark.parametrize(
    ("zone_name", "wall", "utc"),
    [
        # spring forward: 02:30 does not exist, runs at 03:00 CEST
        ("Europe/Berlin", datetime(2026, 3, 29, 2, 30), datetime(2026, 3, 29, 1, 0)),
        # fall back: 02:30 happens twice, runs at the first (CEST)
        ("Europe/Berlin", datetime(2026, 10, 25, 2, 30), datetime(2026, 10, 25, 0, 30)),
        ("America/New_York", datetime(2026, 3, 8, 2, 30), datetime(2026, 3, 8, 7, 0)),
        ("America/New_York", datetime(2026, 11, 1, 1, 30), datetime(2026, 11, 1, 5, 30)),
        # Lord Howe moves by 30 minutes: 02:00-02:30 is skipped, 01:30-02:00 repeated
        ("Australia/Lord_Howe", datetime(2026, 10, 4, 2, 0), datetime(2026, 10, 3, 15, 30)),
        ("Australia/Lord_Howe", datetime(2026, 4, 5, 1, 45), datetime(2026, 4, 4, 14, 45)),
    ],
)
def test_resolve_local_follows_the_policy(zone_name: str, wall: datetime, utc: datetime) -> None:
    assert resolve_local(wall, ZoneInfo(zone_name)) == utc.replace(tzinfo=UTC)
    assert oracle(wall, ZoneInfo(zone_name)) == utc.replace(tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    cron_name=st.sampled_from(list(CRONS)),
    offset=st.integers(min_value=0, max_value=360 * 86400),
)
def test_the_next_slot_after_any_moment_is_the_first_later_one(
    zone_name: str, cron_name: str, offset: int
) -> None:
    """From any last run (also inside a repeated hour), the next slot is the oracle's."""
    zone = ZoneInfo(zone_name)
    runs = expected(zone_name, cron_name)
    last = runs[0] + timedelta(seconds=offset)
    index = bisect.bisect_right(runs, last)
    if index >= len(runs):
        return
    slot = slot_after(crontab(*CRONS[cron_name]), last, last, zone)
    assert slot is not None
    assert datetime.fromtimestamp(slot, tz=UTC) == runs[index]


@settings(max_examples=100, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    offset=st.integers(min_value=0, max_value=360 * 86400),
)
def test_an_rrule_in_a_zone_follows_the_same_policy(zone_name: str, offset: int) -> None:
    from redbeat.schedules import rrule

    zone = ZoneInfo(zone_name)
    runs = expected(zone_name, "02:30 daily")
    daily = rrule("DAILY", dtstart=datetime(YEAR - 1, 12, 31, 2, 30, tzinfo=zone))
    last = runs[0] + timedelta(seconds=offset)
    index = bisect.bisect_right(runs, last)
    if index >= len(runs):
        return
    slot = slot_after(daily, last, last, zone)
    assert slot is not None
    assert datetime.fromtimestamp(slot, tz=UTC) == runs[index]
