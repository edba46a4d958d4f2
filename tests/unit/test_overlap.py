"""The overlap policy without Redis: its fields, what the plan asks the claim to decide,
the headers a worker reads, and the worker hook's reading of them."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.schedules import schedule

from safe_redbeat.dispatch.plan import plan_batch
from safe_redbeat.errors import InvalidEntry
from safe_redbeat.model.decide import decide
from safe_redbeat.model.entry import StoredEntry, to_timestamp
from safe_redbeat.model.lifecycle import EXPIRED, FINISHED, Lifecycle
from safe_redbeat.model.occurrence import HEADER_MAX_RUNTIME, HEADER_PREFIX, Occurrence
from safe_redbeat.model.specs import EntrySpec
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout
from safe_redbeat.store.running import decode_runs
from safe_redbeat.sync.loader import parse_specs
from safe_redbeat.worker import RunTracker

NOW = datetime(2026, 6, 1, 14, 0, 0, tzinfo=timezone.utc)
T = to_timestamp(NOW)
KEYS = Keys("redbeat:", "redbeat::lock")
SKIP = Lifecycle(overlap="skip", max_runtime=90)


def entry(lc: Lifecycle = SKIP, *, runs: int = 3, run_now: int | None = None) -> StoredEntry:
    every = schedule(timedelta(minutes=1))
    every.nowfun = lambda: NOW
    return StoredEntry(
        key="redbeat:e", name="e", task="t", schedule=every, args=[], kwargs={}, options={},
        enabled=True, last_run_at=NOW - timedelta(minutes=1), total_run_count=runs,
        version="1", score=T, lifecycle=lc, run_now=run_now,
        run_now_raw=None if run_now is None else str(run_now),
    )  # fmt: skip


def test_skip_and_replace_need_max_runtime_and_allow_takes_none() -> None:
    assert EntrySpec.build("e", "t", 60, overlap="skip", max_runtime=3600).lifecycle == (
        Lifecycle(overlap="skip", max_runtime=3600)
    )
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"overlap": "replace"}, "max_runtime", "is needed with overlap 'replace'"),
        ({"max_runtime": 60}, "max_runtime", "applies only with overlap 'skip' or 'replace'"),
        ({"overlap": "forbid", "max_runtime": 60}, "overlap", "must be one of"),
        ({"overlap": "skip", "max_runtime": 0}, "max_runtime", "from 0.001"),
        ({"overlap": "skip", "max_runtime": float("nan")}, "max_runtime", "from 0.001"),
        ({"overlap": "skip", "max_runtime": "1h"}, "max_runtime", "a number of seconds"),
    ]
    for fields, field, problem in cases:
        with pytest.raises(InvalidEntry) as caught:
            EntrySpec.build("e", "t", 60, **fields)
        assert caught.value.field == field and problem in caught.value.problem


def test_the_policy_is_stored_in_the_lifecycle_field_and_checked_when_read() -> None:
    assert SKIP.encode() == '{"max_runtime":90,"overlap":"skip"}'
    assert Lifecycle.decode("k", SKIP.encode()) == SKIP
    assert Lifecycle().encode() == ""  # allow, the default, is not stored
    for raw, field in [
        ('{"overlap": "skip"}', "lifecycle.max_runtime"),
        ('{"overlap": 1, "max_runtime": 5}', "lifecycle.overlap"),
        ('{"overlap": "skip", "max_runtime": -1}', "lifecycle.max_runtime"),
    ]:
        with pytest.raises(InvalidEntry) as caught:
            Lifecycle.decode("k", raw)
        assert caught.value.field == field


def test_loader_rows_and_beat_schedule_keys_carry_the_policy() -> None:
    load = parse_specs(
        [{"name": "e", "task": "t", "schedule": 60, "overlap": "replace", "max_runtime": 30}]
    )
    (spec,) = load.specs
    assert spec.lifecycle.overlap == "replace" and spec.lifecycle.max_runtime == 30


def test_an_occurrence_under_a_policy_carries_what_the_claim_decides_with() -> None:
    (op,) = plan_batch([entry()], now=NOW, fence=7, recheck_seconds=300, keys=KEYS).ops
    assert op.occurrence is not None and op.overlap is not None
    assert op.overlap.policy == "skip" and op.overlap.max_runtime_ms == 90_000
    assert op.overlap.running_key == "redbeat::running:e"
    assert op.overlap.running_index == "redbeat::running"
    assert op.overlap.task_id == op.occurrence.task_id
    assert op.overlap.unsent_score == op.new_score == T + 60
    headers = op.occurrence.headers(7)
    assert headers[HEADER_PREFIX] == "redbeat:" and headers[HEADER_MAX_RUNTIME] == 90


def test_allow_asks_the_claim_for_nothing_more() -> None:
    (op,) = plan_batch([entry(Lifecycle())], now=NOW, fence=7, recheck_seconds=300, keys=KEYS).ops
    assert op.occurrence is not None and op.overlap is None
    assert HEADER_PREFIX not in op.occurrence.headers(7)
    assert "max_runtime" not in op.occurrence.to_json()


def test_a_skipped_last_run_leaves_the_entry_running_its_schedule() -> None:
    lc = dataclasses.replace(SKIP, max_runs=4)
    step = decide(entry(lc, runs=3), NOW)
    assert step.send and step.state == FINISHED and step.new_score == -1
    assert step.unsent_state == "" and step.unsent_score == T + 60  # if skipped: next slot
    once = dataclasses.replace(SKIP, at=NOW)
    step = decide(dataclasses.replace(entry(once, runs=0), last_run_at=None), NOW)
    assert step.send and step.unsent_state == EXPIRED and step.unsent_score == -1


def test_a_manual_run_is_subject_to_the_policy_and_keeps_the_regular_slot() -> None:
    (op,) = plan_batch([entry(run_now=T - 5)], now=NOW, fence=7, recheck_seconds=300, keys=KEYS).ops
    assert op.occurrence is not None and op.overlap is not None
    assert op.overlap.unsent_score == op.new_score and op.overlap.unsent_state == ""


def test_a_sharded_entry_is_tracked_under_its_shards_prefix() -> None:
    layout = Layout(KEYS, 3)
    keys = layout.keys_for("e")
    (op,) = plan_batch([entry()], now=NOW, fence=7, recheck_seconds=300, keys=keys).ops
    assert op.overlap is not None and op.occurrence is not None
    assert op.overlap.running_key == keys.prefix + ":running:e"
    assert op.occurrence.prefix == keys.prefix


def test_the_record_of_a_tracked_occurrence_round_trips() -> None:
    o = Occurrence("id", "e", "t", [], {}, {}, T, 7, prefix="{redbeat:#1/3}:", max_runtime=90)
    back = Occurrence.from_json("id", o.to_json())
    assert (back.prefix, back.max_runtime) == ("{redbeat:#1/3}:", 90)
    with pytest.raises(ValueError, match="max_runtime"):
        Occurrence.from_json("id", json.dumps({**json.loads(o.to_json()), "max_runtime": 0}))


def test_run_records_that_are_not_ours_are_no_runs() -> None:
    now = T * 1000
    runs = decode_runs(
        {"a": f"{now + 5} {now - 5} running", "b": f"{now - 1} {now - 9} sent", "c": "x 1 y"},
        now,
    )
    assert [(r.task_id, r.state) for r in runs] == [("a", "running")]


@pytest.fixture
def tracker() -> RunTracker:
    app = Celery("overlap-unit", set_as_current=False)
    app.conf.update(broker_url="redis://127.0.0.1:1/0", redbeat_redis_url="redis://127.0.0.1:1/0")
    return RunTracker(app)


def test_the_worker_tracks_only_beats_messages_for_this_apps_schedule(
    tracker: RunTracker,
) -> None:
    headers = {
        HEADER_PREFIX: "redbeat:",
        HEADER_MAX_RUNTIME: 1.5,
        "safe_redbeat_entry": "nightly",
    }
    run = tracker.run_of("id", headers)
    assert run is not None and (run.prefix, run.entry, run.max_runtime_ms) == (
        "redbeat:",
        "nightly",
        1500,
    )
    shard = Layout(tracker.binding.keys, 4).keys(2).prefix
    assert tracker.run_of("id", {**headers, HEADER_PREFIX: shard}) is not None
    assert tracker.run_of("id", {"safe_redbeat_entry": "nightly"}) is None  # no policy
    for bad in (
        {HEADER_PREFIX: "other:"},  # another app's keys: never written
        {HEADER_PREFIX: "{redbeat:#5/4}:"},
        {HEADER_MAX_RUNTIME: "soon"},
        {"safe_redbeat_entry": "a::b"},
    ):
        assert tracker.run_of("id", {**headers, **bad}) is None, bad
