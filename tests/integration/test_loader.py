"""The loader hook reconciles the user's source of truth with Redis, never by wipe."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from safe_redbeat import InvalidEntry, SafeRedBeatScheduler, Schedule
from safe_redbeat.sync.loader import parse_specs
from safe_redbeat.sync.reconcile import Reconciler
from safe_redbeat.writethrough import remove_after_commit, sync_once, upsert_after_commit
from testbed.beat import QueueAuditor
from tests.apps import loaders
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = pytest.mark.integration

#: on top of FAST, which celery_app() applies
SETTINGS = {
    "safe_redbeat_loader": "tests.apps.loaders:load",
    "safe_redbeat_loader_timeout_seconds": 2.0,
}


def row(name: str, every: float = 60, **extra: Any) -> dict[str, Any]:
    return {"name": name, "task": "noop", "schedule": every, **extra}


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("loader", redis_url, **SETTINGS) as app:
        yield app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def leader(app: Celery, clock: FakeClock) -> SafeRedBeatScheduler:
    return SafeRedBeatScheduler(app=app, monotonic=clock)


def names(client: redis.Redis) -> set[str]:
    return {str(k).removeprefix("redbeat:") for k in client.zrange("redbeat::schedule", 0, -1)}


def test_first_acquisition_creates_the_loaded_entries(
    leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a"), row("b", kwargs={"x": 1})]
    leader.tick()
    assert names(redis_client) == {"a", "b"}
    assert redis_client.smembers("redbeat::loader") == {"a", "b"}
    assert redis_client.hget("redbeat:a", "version") == "1"
    assert '"created":2' in (redis_client.get("redbeat::reconcile") or "")


def test_unchanged_rows_write_nothing_and_changed_rows_keep_last_run(
    leader: SafeRedBeatScheduler, clock: FakeClock, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a", 60), row("b", 60)]
    leader.tick()  # creates and, being new, runs both
    last_run = redis_client.hget("redbeat:a", "meta")
    assert last_run and "last_run_at" in last_run
    loaders.RESULT = [row("a", 120), row("b", 60)]
    clock.now += 61  # past safe_redbeat_reconcile_seconds
    leader.tick()
    assert redis_client.hget("redbeat:a", "version") == "2"
    assert redis_client.hget("redbeat:b", "version") == "1"
    assert redis_client.hget("redbeat:a", "meta") == last_run
    assert '"every": 120' in (redis_client.hget("redbeat:a", "definition") or "")


def test_only_loader_owned_entries_are_removed_when_a_load_no_longer_returns_them(
    app: Celery, leader: SafeRedBeatScheduler, clock: FakeClock, redis_client: redis.Redis
) -> None:
    app.conf.beat_schedule = {"static": {"task": "noop", "schedule": 60.0}}
    loaders.RESULT = [row("a"), row("b")]
    leader.tick()
    with Schedule(app) as schedules:
        schedules.upsert("by-app", task="noop", schedule=60)
    loaders.RESULT = [row("a")]
    clock.now += 61
    leader.tick()
    assert names(redis_client) == {"a", "static", "by-app"}
    assert redis_client.smembers("redbeat::loader") == {"a"}


@pytest.mark.parametrize(
    "result",
    [
        RuntimeError("database is down"),
        None,
        {"name": "not a list"},
        lambda: [row("a"), row("a")],  # a duplicate
        lambda: [row("a"), {"task": "noop", "schedule": 60}],  # no name
        lambda: [row("a"), {"name": "::x", "task": "noop", "schedule": 60}],  # a bad name
    ],
    ids=["raises", "none", "mapping", "duplicate", "no-name", "bad-name"],
)
def test_a_failing_or_garbage_load_removes_nothing_and_names_the_problem(
    leader: SafeRedBeatScheduler,
    clock: FakeClock,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    result: Any,
) -> None:
    loaders.RESULT = [row("a"), row("b")]
    leader.tick()
    loaders.RESULT = result
    clock.now += 61
    with caplog.at_level(logging.ERROR):
        assert leader.tick() >= 0
    assert names(redis_client) == {"a", "b"}, "an incomplete load removed entries"
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert errors, "the failure was not logged"
    assert any(word in errors for word in ("loader", "'a'", "'bad'", "'x'"))
    assert leader.is_leader


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "bad", "task": "noop", "schedule": "61 * * * *"},
        {"name": "bad", "task": "noop", "schedule": 1, "colour": "red"},
        {"name": "bad", "task": "noop", "schedule": 60, "kwargs": {"when": object()}},
    ],
    ids=["bad-cron", "unknown-field", "not-json"],
)
def test_a_row_that_cannot_be_scheduled_is_skipped_and_the_rest_reconciles_in_full(
    leader: SafeRedBeatScheduler,
    clock: FakeClock,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    bad: dict[str, Any],
) -> None:
    loaders.RESULT = [row("a"), row("b"), row("c"), row("bad")]
    leader.tick()
    definition = redis_client.hget("redbeat:bad", "definition")
    loaders.RESULT = [row("a"), row("c", 30), bad]  # b deleted, c changed, bad broken
    clock.now += 61
    with caplog.at_level(logging.ERROR):
        leader.tick()
    assert names(redis_client) == {"a", "c", "bad"}, "b was not removed: the load was incomplete"
    assert '"every": 30' in (redis_client.hget("redbeat:c", "definition") or "")
    assert redis_client.hget("redbeat:bad", "definition") == definition, "bad was touched"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "entry 'bad'" in errors[0], errors
    record = json.loads(redis_client.get("redbeat::reconcile") or "{}")
    assert record["complete"] is True and record["rejected"] == ["bad"]
    assert record["removed"] == 1 and "entry 'bad'" in record["errors"][0]
    clock.now += 61
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        leader.tick()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "logged again"


def test_a_hanging_loader_times_out_and_the_lease_is_kept(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.safe_redbeat_loader = "tests.apps.loaders:hang"
    app.conf.safe_redbeat_loader_timeout_seconds = 1.0
    scheduler = SafeRedBeatScheduler(app=app)
    with caplog.at_level(logging.ERROR):
        scheduler.tick()
    assert "did not return within 1.0s" in caplog.text
    assert scheduler.is_leader


def test_one_bad_row_does_not_block_the_good_ones(
    leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("good"), {"name": "", "task": "noop", "schedule": 1}]
    leader.tick()
    assert names(redis_client) == {"good"}


def test_flushdb_under_a_running_leader_is_reseeded_within_one_tick(
    app: Celery, leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    app.conf.beat_schedule = {"static": {"task": "noop", "schedule": 60.0}}
    loaders.RESULT = [row("a")]
    leader.tick()
    redis_client.flushdb()
    leader.tick()  # finds the lease gone, demotes
    leader.tick()  # reacquires and re-seeds
    assert names(redis_client) == {"a", "static"}


def test_keys_deleted_but_the_lease_kept_is_reseeded_at_the_next_tick(
    app: Celery, leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a"), row("b")]
    leader.tick()
    redis_client.delete("redbeat:a", "redbeat:b", "redbeat::schedule", "redbeat::seeded")
    leader.tick()
    assert names(redis_client) == {"a", "b"}
    assert leader.is_leader


def test_an_evicted_entry_comes_back_at_the_next_tick(
    leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a", 1)]
    leader.tick()
    redis_client.zadd("redbeat::schedule", {"redbeat:a": 0})
    redis_client.delete("redbeat:a")  # as eviction does: the slot stays, the hash is gone
    leader.tick()  # the claim finds the hash gone
    leader.tick()  # re-seeds
    assert redis_client.hget("redbeat:a", "definition")


def test_a_standby_never_reconciles(app: Celery, redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.lease, "someone else")
    loaders.CALLS.clear()
    loaders.RESULT = [row("a")]
    SafeRedBeatScheduler(app=app).tick()
    assert loaders.CALLS == []
    assert not redis_client.exists("redbeat:a")


def test_sync_from_any_process_is_versioned_and_reports(
    app: Celery, leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a"), row("b")]
    leader.tick()
    loaders.RESULT = [row("a", 30), row("c")]
    with Schedule(app) as schedules:
        preview = sync_once(schedules, "tests.apps.loaders:load", dry_run=True)
        assert (preview.created, preview.updated, preview.removed) == (["c"], ["a"], ["b"])
        assert names(redis_client) == {"a", "b"}
        done = sync_once(schedules, "tests.apps.loaders:load")
    assert (done.created, done.updated, done.removed) == (["c"], ["a"], ["b"])
    assert names(redis_client) == {"a", "c"}


def test_write_through_creates_updates_and_removes_without_the_leader(
    app: Celery, redis_client: redis.Redis
) -> None:
    with Schedule(app) as schedules:
        assert upsert_after_commit(schedules, row("w", 10))
        assert upsert_after_commit(schedules, row("w", 20))
        assert schedules.get("w").version == 2
        assert redis_client.sismember("redbeat::loader", "w")
        assert not upsert_after_commit(schedules, {"name": "w", "task": ""})
        assert remove_after_commit(schedules, "w")
    assert not redis_client.exists("redbeat:w")


def test_reconcile_keeps_an_app_update_that_raced_with_it(
    app: Celery, leader: SafeRedBeatScheduler, clock: FakeClock, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a", 60)]
    leader.tick()

    def load_then_app_writes() -> list[dict[str, Any]]:
        snapshot = [row("a", 90)]  # read from the DB before the app's commit
        with Schedule(app) as schedules:  # the app commits and writes through meanwhile
            upsert_after_commit(schedules, row("a", 120))
        return snapshot

    loaders.RESULT = load_then_app_writes
    clock.now += 61
    leader.tick()
    assert '"every": 120' in (redis_client.hget("redbeat:a", "definition") or "")
    assert '"conflicts":1' in (redis_client.get("redbeat::reconcile") or "")


def test_due_loaded_entries_are_dispatched(
    leader: SafeRedBeatScheduler, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("a", 1, run_immediately=True), row("b", 1, run_immediately=True)]
    leader.tick()
    sent = QueueAuditor(redis_client).drain()
    assert sorted(m.headers["safe_redbeat_entry"] for m in sent) == ["a", "b"]


#: ``version`` values another program may have stored, none of them a version
ODD_VERSIONS = ["abc", "1 2", "", "-1", "7" * 16, "1.5", "\u0663", "x" * 10_000]


def test_a_snapshot_leaves_alone_only_the_entries_whose_version_is_unreadable(
    app: Celery, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = [row("good1"), row("good2")]
    odd = [row(f"odd{i}") for i in range(len(ODD_VERSIONS))]
    with Schedule(app) as schedules:
        reconciler = Reconciler(
            schedules.client,
            schedules.keys,
            schedules.shards()[0].scripts,
            app,
            source="loader",
            owned_key=schedules.keys.loader,
        )
        reconciler.run(parse_specs([*good, *odd]).specs)
        for i, version in enumerate(ODD_VERSIONS):
            raw.hset(f"redbeat:odd{i}", "version", version.encode())
        raw.hset("redbeat:good2", "version", b"007")
        raw.delete("redbeat:odd0")
        raw.set("redbeat:odd0", b"\xff not a hash")
        raw.sadd("redbeat::loader", b"gone", b"odd-bytes")
        raw.hset("redbeat:odd-bytes", mapping={"version": b"\xff\xfe", "definition": b"{}"})
        before = {key: raw.dump(key) for key in raw.keys(b"redbeat:odd*")}
        with caplog.at_level(logging.WARNING, logger="safe_redbeat.reconcile"):
            versions = reconciler.snapshot()
        assert versions == {"good1": 1, "good2": 7, "gone": 0}
        unreadable = {"odd-bytes", *(f"odd{i}" for i in range(len(ODD_VERSIONS)))}
        warned = [r.getMessage() for r in caplog.records if "unreadable version" in r.getMessage()]
        assert len(warned) == len(unreadable)
        assert {
            name for name in unreadable for m in warned if f"entry {name!r} " in m
        } == unreadable
        # odd0's key holds a string now: not an entry a reconcile can write
        desired = [row("good1", 30), good[1], *odd[1:]]
        result = reconciler.run(parse_specs(desired).specs, versions=versions)
    assert (result.updated, result.removed, result.errors) == (["good1"], ["gone"], [])
    assert {key: raw.dump(key) for key in raw.keys(b"redbeat:odd*")} == before


def test_a_row_whose_key_holds_another_type_is_reported_and_the_rest_is_written(
    app: Celery, raw: redis.Redis
) -> None:
    raw.set("redbeat:squatter", b"someone else's string")
    raw.rpush("redbeat:listed", b"x")
    with Schedule(app) as schedules:
        shard = schedules.shards()[0]
        reconciler = Reconciler(
            schedules.client,
            shard.keys,
            shard.scripts,
            app,
            source="loader",
            owned_key=shard.keys.loader,
        )
        result = reconciler.run(parse_specs([row("a"), row("squatter"), row("listed")]).specs)
        assert result.created == ["a"]
        assert len(result.errors) == 2
        assert "'redbeat:squatter' holds another Redis type" in result.errors[0]
        assert raw.get("redbeat:squatter") == b"someone else's string"
        assert raw.lrange("redbeat:listed", 0, -1) == [b"x"]
        with pytest.raises(InvalidEntry, match="another Redis type") as error:
            schedules.upsert("squatter", "noop", 60)
        assert error.value.field == "key"
        assert raw.get("redbeat:squatter") == b"someone else's string"
