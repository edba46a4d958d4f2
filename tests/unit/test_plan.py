"""plan_batch: what each due entry turns into, at a fixed ``now``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from celery.schedules import crontab, schedule

from safe_redbeat.dispatch.plan import Plan, plan_batch
from safe_redbeat.leader.lease import parse_token
from safe_redbeat.model.entry import StoredEntry, to_timestamp
from safe_redbeat.model.lifecycle import Lifecycle
from safe_redbeat.model.occurrence import task_id_for

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def entry(
    name: str = "e",
    every: float | None = 60,
    cron: crontab | None = None,
    last_run_at: datetime | None = None,
    score: float | None = None,
    enabled: bool = True,
    run_now: int | None = None,
) -> StoredEntry:
    sched = cron if cron is not None else schedule(timedelta(seconds=every or 60))
    sched.nowfun = lambda: NOW
    return StoredEntry(
        key=f"redbeat:{name}",
        name=name,
        task="t",
        schedule=sched,
        args=[1],
        kwargs={"k": 2},
        options={"queue": "q"},
        enabled=enabled,
        last_run_at=last_run_at,
        total_run_count=4,
        version="2",
        score=to_timestamp(NOW) if score is None else score,
        run_now=run_now,
    )


def plan(*entries: StoredEntry, **kwargs: Any) -> Plan:
    return plan_batch(entries, now=NOW, fence=7, recheck_seconds=300, **kwargs)


def test_a_due_entry_is_claimed_with_a_deterministic_task_id() -> None:
    e = entry(last_run_at=NOW - timedelta(seconds=61), score=to_timestamp(NOW) - 1)
    (op,) = plan(e).ops
    assert op.occurrence is not None
    assert op.occurrence.task_id == task_id_for("redbeat:e", to_timestamp(NOW) - 1)
    again = plan(e).ops[0].occurrence
    assert again is not None and op.occurrence.task_id == again.task_id
    assert op.new_score == to_timestamp(NOW) + 60
    assert '"total_run_count": 5' in op.new_meta
    assert op.expected_version == "2"


def test_task_ids_differ_per_entry_and_per_scheduled_time() -> None:
    ids = {task_id_for("redbeat:a", 1), task_id_for("redbeat:a", 2), task_id_for("redbeat:b", 1)}
    assert len(ids) == 3


def test_an_entry_not_yet_due_is_only_moved_to_its_real_due_time() -> None:
    e = entry(last_run_at=NOW - timedelta(seconds=10), score=to_timestamp(NOW) - 50)
    p = plan(e)
    (op,) = p.ops
    assert op.occurrence is None and op.new_meta == ""
    assert op.new_score == to_timestamp(NOW) + 50
    assert p.next_due_in is not None and 49 <= p.next_due_in <= 50


def test_a_disabled_entry_is_parked_not_sent() -> None:
    (op,) = plan(entry(enabled=False)).ops
    assert op.occurrence is None and op.new_score == to_timestamp(NOW) + 300


def test_catch_up_skip_advances_a_late_occurrence_without_sending() -> None:
    late = entry(last_run_at=NOW - timedelta(hours=2), score=to_timestamp(NOW) - 3600)
    p = plan(late, catch_up="skip", catch_up_grace_seconds=60)
    (op,) = p.ops
    assert op.occurrence is None and p.skipped == ["e"]
    assert '"total_run_count": 4' in op.new_meta
    (sent,) = plan(late, catch_up="run_once").ops
    assert sent.occurrence is not None


def test_catch_up_skip_still_sends_an_occurrence_within_the_grace() -> None:
    recent = entry(last_run_at=NOW - timedelta(seconds=70), score=to_timestamp(NOW) - 10)
    (op,) = plan(recent, catch_up="skip", catch_up_grace_seconds=60).ops
    assert op.occurrence is not None


def test_run_now_sends_once_and_keeps_the_regular_schedule() -> None:
    requested = to_timestamp(NOW) - 1
    e = entry(last_run_at=NOW - timedelta(seconds=10), score=requested, run_now=requested)
    (op,) = plan(e).ops
    assert op.occurrence is not None and op.new_meta == ""
    assert op.occurrence.task_id != task_id_for("redbeat:e", requested)
    assert op.new_score == to_timestamp(NOW) + 50


def test_crontab_next_score_is_the_next_cron_time() -> None:
    e = entry(cron=crontab(minute="*/15"), last_run_at=NOW - timedelta(minutes=15))
    (op,) = plan(e).ops
    assert op.occurrence is not None
    assert op.new_score == to_timestamp(NOW + timedelta(minutes=15))


def test_parse_token_reads_our_tokens_and_tolerates_redbeats() -> None:
    holder = parse_token('17 {"host":"h","pid":3,"name":"pod"}')
    assert (holder.fence, holder.pid, holder.name) == (17, 3, "pod")
    stock = parse_token("0b5e4c2a9f6e11ee8c1b0242ac120002")
    assert stock.fence is None and "not a safe_redbeat token" in stock.describe()


def test_meta_encoder_matches_encode_meta() -> None:
    from safe_redbeat.model.codec import encode_meta, meta_encoder

    assert meta_encoder(NOW)(5) == encode_meta(NOW, 5)


def test_an_rrule_that_ended_is_parked_forever_instead_of_crashing() -> None:
    from redbeat.schedules import rrule

    once = rrule("MINUTELY", dtstart=NOW - timedelta(minutes=10), count=1)
    once.nowfun = lambda: NOW
    ended = entry(last_run_at=NOW - timedelta(minutes=9), score=to_timestamp(NOW) - 5)
    ended.schedule = once
    (op,) = plan(ended).ops
    assert op.occurrence is None and op.new_score == -1
    # never ran, and asked to run at once: its single occurrence is due
    last = entry(score=to_timestamp(NOW) - 5)
    last.schedule = once
    last.lifecycle = Lifecycle(run_immediately=True)
    (op,) = plan(last).ops
    assert op.occurrence is not None and op.new_score == -1
