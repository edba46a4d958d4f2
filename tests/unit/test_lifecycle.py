"""decide(): first run, one-offs, max_runs, start_time, expires, at a fixed ``now``."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery.schedules import crontab, schedule

from safe_redbeat.errors import InvalidEntry
from safe_redbeat.model.decide import decide
from safe_redbeat.model.entry import StoredEntry, to_timestamp
from safe_redbeat.model.lifecycle import EXPIRED, FINISHED, Lifecycle, once_schedule
from safe_redbeat.model.slots import writer_score
from safe_redbeat.model.specs import EntrySpec

NOW = datetime(2026, 6, 1, 14, 0, 0, tzinfo=timezone.utc)
T = to_timestamp(NOW)


def entry(
    sched: Any = None,
    *,
    last: datetime | None = None,
    runs: int = 0,
    score: int = T,
    lc: Lifecycle | None = None,
    state: str = "",
) -> StoredEntry:
    s = sched if sched is not None else schedule(timedelta(hours=1))
    s.nowfun = lambda: NOW
    return StoredEntry(
        key="redbeat:e", name="e", task="t", schedule=s, args=[], kwargs={}, options={},
        enabled=True, last_run_at=last, total_run_count=runs, version="1", score=score,
        lifecycle=lc or Lifecycle(), state=state,
    )  # fmt: skip


def test_an_entry_without_run_history_is_anchored_now_and_waits_for_its_next_slot() -> None:
    daily = decide(entry(crontab(minute=0, hour=3)), NOW)
    assert not daily.send and daily.meta == (NOW, 0)
    assert daily.new_score == to_timestamp(datetime(2026, 6, 2, 3, tzinfo=timezone.utc))
    hourly = decide(entry(), NOW)
    assert not hourly.send and hourly.new_score == T + 3600


def test_run_immediately_sends_an_entry_without_history_at_once() -> None:
    step = decide(entry(lc=Lifecycle(run_immediately=True)), NOW)
    assert step.send and step.new_score == T + 3600 and step.meta == (NOW, 1)


def test_max_runs_finishes_in_the_claim_of_the_last_run() -> None:
    last = NOW - timedelta(hours=1)
    second = decide(entry(last=last, runs=1, lc=Lifecycle(max_runs=3)), NOW)
    assert second.send and second.state == "" and second.new_score == T + 3600
    third = decide(entry(last=last, runs=2, lc=Lifecycle(max_runs=3)), NOW)
    assert third.send and third.state == FINISHED and third.new_score == -1
    after = decide(entry(last=last, runs=3, lc=Lifecycle(max_runs=3)), NOW)
    assert not after.send and after.state == FINISHED


def test_a_one_off_runs_once_and_is_finished_in_the_same_claim() -> None:
    lc = Lifecycle(at=NOW - timedelta(seconds=5))
    sched = once_schedule(lc.at or NOW)
    step = decide(entry(sched, last=NOW - timedelta(hours=1), lc=lc), NOW)
    assert step.send and step.state == FINISHED and step.new_score == -1
    again = decide(entry(sched, last=NOW, runs=1, lc=lc), NOW)
    assert not again.send and again.state == FINISHED


def test_a_one_off_written_after_its_time_runs_only_within_the_grace_or_when_asked() -> None:
    past = Lifecycle(at=NOW - timedelta(minutes=10))
    sched = once_schedule(NOW - timedelta(minutes=10))
    reseeded = decide(entry(sched, last=NOW - timedelta(seconds=1), lc=past), NOW, grace=60)
    assert not reseeded.send and reseeded.state == EXPIRED
    asked = Lifecycle(at=past.at, run_immediately=True)
    assert decide(entry(sched, lc=asked), NOW).send
    recent = Lifecycle(at=NOW - timedelta(seconds=30))
    assert decide(entry(once_schedule(NOW), lc=recent), NOW, grace=60).send
    # existed before its time, missed during an outage: the catch-up rule runs it once
    missed = decide(entry(sched, last=NOW - timedelta(hours=2), lc=past), NOW)
    assert missed.send
    # its run asked for at once missed during an outage: catch_up="skip" skips it too
    written = T - 120
    late = decide(entry(sched, lc=asked, score=written), NOW, catch_up="skip", grace=60)
    assert not late.send and late.skipped and late.state == EXPIRED
    in_time = decide(entry(sched, lc=asked, score=T - 30), NOW, catch_up="skip", grace=60)
    assert in_time.send and in_time.state == FINISHED
    assert decide(entry(sched, lc=asked, score=written), NOW, grace=60).send  # run_once
    # written within the grace after its time, then missed during an outage: skipped too
    soon = Lifecycle(at=NOW - timedelta(seconds=150))
    written_at = NOW - timedelta(seconds=120)
    outage = entry(once_schedule(NOW), last=written_at, score=written, lc=soon)
    assert decide(outage, NOW, catch_up="skip", grace=60).skipped
    assert decide(outage, NOW, grace=60).send  # run_once


def test_start_time_and_expires_bound_the_runs() -> None:
    start = NOW + timedelta(days=2, hours=5, minutes=30)
    waiting = decide(entry(lc=Lifecycle(start_time=start)), NOW)
    assert not waiting.send and waiting.new_score == to_timestamp(start)
    cron = decide(entry(crontab(minute=0, hour=3), lc=Lifecycle(start_time=start)), NOW)
    assert cron.new_score == to_timestamp(datetime(2026, 6, 4, 3, tzinfo=timezone.utc))
    ending = Lifecycle(expires=NOW + timedelta(minutes=30))
    last = decide(entry(last=NOW - timedelta(hours=1), lc=ending), NOW)
    assert last.send and last.state == EXPIRED and last.new_score == -1
    late = Lifecycle(expires=NOW - timedelta(hours=1))
    gone = decide(entry(last=NOW - timedelta(hours=3), lc=late), NOW)
    assert not gone.send and gone.state == EXPIRED


def test_an_intervals_start_time_is_its_first_run_however_long_the_interval() -> None:
    soon = NOW + timedelta(seconds=60)
    hourly = Lifecycle(start_time=soon)
    created = decide(entry(lc=hourly), NOW)  # no run history: anchored now
    assert not created.send and created.new_score == to_timestamp(soon)
    anchored = decide(entry(last=NOW - timedelta(seconds=1), lc=hourly), NOW)
    assert anchored.new_score == to_timestamp(soon)
    assert writer_score(schedule(timedelta(hours=1)), hourly, NOW, 0, NOW) == to_timestamp(soon)
    # once it ran at its start time, every interval from that run
    ran = decide(entry(last=soon, runs=1, lc=hourly), NOW + timedelta(hours=2))
    assert ran.send and ran.new_score == to_timestamp(NOW + timedelta(hours=3))


def test_a_recorded_terminal_state_is_never_sent() -> None:
    step = decide(entry(last=NOW - timedelta(hours=2), state=FINISHED), NOW)
    assert not step.send and step.new_score == -1


def test_lifecycle_round_trips_and_malformed_values_name_the_field() -> None:
    lc = Lifecycle(start_time=NOW, max_runs=2, tz="Europe/Berlin", run_immediately=True)
    assert Lifecycle.decode("k", lc.encode()) == lc
    assert Lifecycle().encode() == ""
    for raw, field in [
        ('{"max_runs": 0}', "lifecycle.max_runs"),
        ('{"tz": "Mars/Olympus"}', "lifecycle.tz"),
        ('{"expires": "soon"}', "lifecycle.expires"),
        ('{"colour": 1}', "lifecycle"),
        ("{not json", "lifecycle"),
    ]:
        with pytest.raises(InvalidEntry) as caught:
            Lifecycle.decode("redbeat:e", raw)
        assert caught.value.field == field


def test_entry_spec_checks_lifetime_fields() -> None:
    with pytest.raises(InvalidEntry, match="tz"):
        EntrySpec.build("e", "t", 60, tz="Europe/Berlin")
    with pytest.raises(InvalidEntry, match="expires"):
        EntrySpec.build("e", "t", 60, start_time=NOW, expires=NOW)
    with pytest.raises(InvalidEntry, match="not both"):
        EntrySpec.build("e", "t", 60, at=NOW)
    once = EntrySpec.once("e", "t", at=NOW)
    assert (
        once.lifecycle.at == NOW and once.definition() == EntrySpec.once("e", "t", NOW).definition()
    )


def test_the_lifetime_fields_are_declared_once() -> None:
    """Keyword arguments (``Lifetime``), the CLI, loader items and ``show`` derive their
    lists from ``Lifecycle``; the typed keyword form must name the same fields."""
    from dataclasses import fields

    from safe_redbeat.model.lifecycle import LIFETIME_FIELDS, Lifetime
    from safe_redbeat.sync.loader import ITEM_FIELDS

    assert set(Lifetime.__annotations__) == {f.name for f in fields(Lifecycle)}
    assert set(LIFETIME_FIELDS) <= ITEM_FIELDS
    spec = EntrySpec.build("e", "t", 60, start_time=NOW, max_runs=2)
    assert spec.lifecycle == Lifecycle(start_time=NOW, max_runs=2)
    assert spec.replace(max_runs=3).lifecycle.max_runs == 3


def test_a_slot_that_passed_while_the_previous_message_was_sent_late_is_not_sent_again() -> None:
    """The previous run was claimed at NOW - 5 s and its message went out at NOW - 1 s
    (``sent_at``: a broker that hung); the slots that came meanwhile are that run's."""
    every_second = schedule(timedelta(seconds=1))
    claimed = NOW - timedelta(seconds=5)
    late = entry(every_second, last=claimed, runs=3, score=T - 4)
    late = dataclasses.replace(late, sent_at=float(T - 1))
    step = decide(late, NOW)
    assert not step.send and step.coalesced and step.new_score > T
    assert step.meta == (NOW, 3)
    # once skipped (meta moved past sent_at), the next slot runs as usual
    after = dataclasses.replace(late, last_run_at=NOW, score=T + 1)
    assert decide(after, NOW + timedelta(seconds=1)).send
    # a slot well after the late message is not its run
    an_hour_ago = NOW - timedelta(hours=1, seconds=5)
    hourly = entry(last=an_hour_ago, runs=3, score=T - 5)
    hourly = dataclasses.replace(hourly, sent_at=float(T - 3000))
    assert decide(hourly, NOW).send
