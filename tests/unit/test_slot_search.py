"""The slot search of rrules: the same answer as walking the rule from its start, at a
cost that does not grow with the rule's age, and a bound for rules that cost too much."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrule as dateutil_rrule
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redbeat.schedules import rrule

from safe_redbeat.dispatch import plan_batch
from safe_redbeat.entries import StoredEntry, to_timestamp
from safe_redbeat.errors import ScheduleTooCostly
from safe_redbeat.lifecycle import Lifecycle, decide, resolve_local, slot_after

UTC = timezone.utc
NOW = datetime(2026, 6, 1, 14, 0, 7, tzinfo=UTC)
FREQS = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY"]
#: how far back a rule's start may lie, per frequency (the reference walks all of it)
AGE = {
    "YEARLY": timedelta(days=366 * 12),
    "MONTHLY": timedelta(days=366 * 3),
    "WEEKLY": timedelta(days=366),
    "DAILY": timedelta(days=120),
    "HOURLY": timedelta(days=10),
    "MINUTELY": timedelta(hours=30),
    "SECONDLY": timedelta(minutes=40),
}


def reference(rule: rrule, after: datetime, zone: tzinfo) -> float | None:
    """The rule walked from its own start, one occurrence at a time (the definition)."""
    local = dateutil_rrule(
        rule.freq,
        dtstart=rule.dtstart.astimezone(zone).replace(tzinfo=None),
        interval=rule.interval,
        count=rule.count,
        bymonth=rule.bymonth,
        bymonthday=rule.bymonthday,
        byweekday=rule.byweekday,
        byhour=rule.byhour,
        byminute=rule.byminute,
        bysecond=rule.bysecond,
        bysetpos=rule.bysetpos,
    )
    cutoff = after.timestamp()
    for wall in local:
        moment = resolve_local(wall, zone).timestamp()
        if moment > cutoff:
            return moment
    return None


@st.composite
def rules(draw: st.DrawFn) -> rrule:
    freq = draw(st.sampled_from(FREQS))
    age = draw(st.floats(min_value=0, max_value=AGE[freq].total_seconds()))
    start = (NOW - timedelta(seconds=age)).replace(microsecond=0)
    by: dict[str, object] = {}
    if draw(st.booleans()):
        by["byhour"] = draw(st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        by["byminute"] = draw(st.lists(st.integers(0, 59), min_size=1, max_size=3, unique=True))
    if freq in ("YEARLY", "MONTHLY", "WEEKLY") and draw(st.booleans()):
        by["byweekday"] = draw(st.lists(st.integers(0, 6), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            by["bysetpos"] = draw(st.sampled_from([1, -1, 2]))
    if freq in ("YEARLY", "MONTHLY") and "byweekday" not in by and draw(st.booleans()):
        by["bymonthday"] = draw(st.lists(st.integers(1, 31), min_size=1, max_size=2, unique=True))
    if freq == "YEARLY" and draw(st.booleans()):
        by["bymonth"] = draw(st.lists(st.integers(1, 12), min_size=1, max_size=2, unique=True))
    try:
        return rrule(freq, dtstart=start, interval=draw(st.integers(1, 5)), **by)
    except ValueError:  # by-values the interval can never reach (dateutil refuses them)
        assume(False)
        raise


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=rules(),
    zone=st.sampled_from([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("Australia/Lord_Howe")]),
    before=st.floats(min_value=0, max_value=3 * 86400),
)
def test_the_next_slot_is_the_one_the_rule_defines(
    rule: rrule, zone: tzinfo, before: float
) -> None:
    after = NOW - timedelta(seconds=before)
    try:
        expected: object = reference(rule, after, zone)
    except ValueError as exc:  # in the entry's zone the rule's hours are out of reach
        expected = str(exc)
    try:
        found: object = slot_after(rule, after, NOW, zone)
    except ValueError as exc:
        found = str(exc)
    assert found == expected


@pytest.mark.parametrize(
    "freq",
    ["SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"],
)
def test_a_rule_started_years_ago_is_as_cheap_as_a_new_one(freq: str) -> None:
    """Walking a MINUTELY rule from a start 5 years back takes seconds (2.6 million
    occurrences), SECONDLY hours; past the search budget that raises ScheduleTooCostly."""
    old = rrule(freq, dtstart=NOW - timedelta(days=5 * 366))
    assert slot_after(old, NOW, NOW, UTC) is not None


def test_a_rule_that_costs_too_much_is_refused_and_parks_only_its_entry() -> None:
    # a count counts from the rule's start, which therefore cannot move: 2.6 million
    # occurrences to walk before the next one
    costly = rrule("SECONDLY", dtstart=NOW - timedelta(days=30), count=10**9)
    with pytest.raises(ScheduleTooCostly, match="took more than"):
        slot_after(costly, NOW, NOW, UTC)

    def stored(name: str, schedule: object) -> StoredEntry:
        return StoredEntry(
            key=f"redbeat:{name}", name=name, task="t", schedule=schedule, args=[], kwargs={},
            options={}, enabled=True, last_run_at=NOW - timedelta(minutes=1),
            total_run_count=1, version="1", score=to_timestamp(NOW), lifecycle=Lifecycle(),
        )  # fmt: skip

    good = rrule("MINUTELY", dtstart=NOW - timedelta(days=30))
    plan = plan_batch(
        [stored("costly", costly), stored("good", good)],
        now=NOW,
        fence=1,
        disabled_recheck_seconds=300,
    )
    assert [key for key, _problem in plan.parked] == ["redbeat:costly"]
    assert "ScheduleTooCostly" in plan.parked[0][1]
    assert [op.key for op in plan.ops if op.occurrence is not None] == ["redbeat:good"]


def test_decide_on_a_month_old_minutely_rule_sends_and_moves_to_the_next_minute() -> None:
    rule = rrule("MINUTELY", dtstart=NOW - timedelta(days=30, seconds=7))
    entry = StoredEntry(
        key="redbeat:m", name="m", task="t", schedule=rule, args=[], kwargs={}, options={},
        enabled=True, last_run_at=NOW - timedelta(seconds=60), total_run_count=5,
        version="1", score=to_timestamp(NOW) - 7, lifecycle=Lifecycle(),
    )  # fmt: skip
    step = decide(entry, NOW)
    assert step.send
    assert step.new_score == to_timestamp(NOW) - 7 + 60


def test_a_writer_refuses_a_rule_that_costs_too_much_naming_the_entry() -> None:
    from safe_redbeat import EntrySpec, InvalidEntry

    costly = rrule("SECONDLY", dtstart=datetime.now(UTC) - timedelta(days=30), count=10**9)
    with pytest.raises(InvalidEntry) as caught:
        EntrySpec.build("hot", "t", costly)
    assert caught.value.key == "hot" and caught.value.field == "schedule"
    assert "took more than" in caught.value.problem
    EntrySpec.build("fine", "t", rrule("MINUTELY", dtstart=datetime.now(UTC) - timedelta(days=400)))
