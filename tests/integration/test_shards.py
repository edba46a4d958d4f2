"""A sharded schedule (``safe_redbeat_shards``), in process against the real Redis."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler, Schedule
from safe_redbeat.errors import Resharding
from safe_redbeat.model.occurrence import task_id_for
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout, shard_of
from testbed.beat import QueueAuditor
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = pytest.mark.integration

K = 3


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("shards", redis_url, safe_redbeat_shards=K) as app:
        yield app


def replica(app: Celery, name: str, clock: FakeClock | None = None) -> SafeRedBeatScheduler:
    app.conf.safe_redbeat_instance_name = name
    return SafeRedBeatScheduler(app=app, monotonic=clock or FakeClock())


def layout() -> Layout:
    return Layout(KEYS, K)


def test_shard_of_is_crc32_of_the_utf8_name_mod_k() -> None:
    for name in ["report", "tenant-17:nightly", "überweisung", "x" * 300]:
        assert shard_of(name, K) == zlib.crc32(name.encode()) % K
    assert shard_of("anything", 1) == 0
    # the documented example: stable across processes and versions
    assert [shard_of(n, 3) for n in ("a", "b", "c")] == [
        zlib.crc32(b"a") % 3,
        zlib.crc32(b"b") % 3,
        zlib.crc32(b"c") % 3,
    ]


def test_each_shard_has_its_own_hash_tag_and_layouts_share_no_key() -> None:
    three, two = Layout(KEYS, 3), Layout(KEYS, 2)
    assert [k.lease for k in three.all_keys()] == [
        "{redbeat:#0/3}::lock",
        "{redbeat:#1/3}::lock",
        "{redbeat:#2/3}::lock",
    ]
    assert (
        three.keys_for("report").entry("report") == f"{{redbeat:#{shard_of('report', 3)}/3}}:report"
    )
    assert not {k.prefix for k in three.all_keys()} & {k.prefix for k in two.all_keys()}
    tagged = Layout(Keys("{app}:", "{app}::lock"), 2)
    assert tagged.keys(1).prefix == "{%7Bapp%7D:#1/2}:"


def test_a_fresh_redis_takes_the_configured_layout_and_one_replica_leads_every_shard(
    app: Celery, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    scheduler = replica(app, "solo")
    scheduler.tick()
    assert redis_client.get(KEYS.layout) == '{"shards":3}'
    assert [s.index for s in scheduler.balancer.led()] == [0, 1, 2]
    names = [f"job-{i}" for i in range(30)]
    with Schedule(app) as schedule:
        for name in names:
            schedule.upsert(name, "noop", 60, run_immediately=True)
        assert {info.name for info in schedule.list()} == set(names)
    for name in names:  # each entry lives in its shard's keys only
        keys = layout().keys_for(name)
        assert redis_client.hexists(keys.entry(name), "definition")
        assert redis_client.zscore(keys.schedule, keys.entry(name)) is not None
        assert not redis_client.exists(KEYS.entry(name))
    assert not redis_client.exists(KEYS.schedule)
    scheduler.tick()
    messages = auditor.drain()
    assert Counter(m.headers["safe_redbeat_entry"] for m in messages) == Counter(names)
    for m in messages:  # the id of the unsharded key: a reshard keeps every id
        entry, scheduled = m.headers["safe_redbeat_entry"], m.headers["safe_redbeat_scheduled"]
        assert m.task_id == task_id_for(KEYS.entry(entry), int(scheduled))
    scheduler.close()


def test_replicas_share_the_shards_and_each_occurrence_is_sent_once(
    app: Celery, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    clock = FakeClock()
    first = replica(app, "a", clock)
    first.tick()  # takes all three
    second, third = replica(app, "b", clock), replica(app, "c", clock)
    for scheduler in (second, third):
        scheduler.tick()  # heartbeats: three live replicas, nothing free yet
    assert len(first.balancer.led()) == K
    for _ in range(12):  # polls: the first hands over its surplus, the others take it
        clock.now += 1.0
        for scheduler in (first, second, third):
            scheduler.tick()
        if all(len(s.balancer.led()) == 1 for s in (first, second, third)):
            break
    led = [tuple(s.index for s in scheduler.balancer.led()) for scheduler in (first, second, third)]
    assert sorted(i for shards in led for i in shards) == [0, 1, 2], led
    assert all(len(shards) == 1 for shards in led), led
    names = [f"e{i}" for i in range(40)]
    with Schedule(app) as schedule:
        for name in names:
            schedule.upsert(name, "noop", 3600, run_immediately=True)
    for scheduler in (first, second, third):
        scheduler.tick()
    sent = auditor.drain()
    assert Counter(m.headers["safe_redbeat_entry"] for m in sent) == Counter(names)
    for scheduler in (first, second, third):
        scheduler.close()


def test_a_closed_replica_s_shards_are_taken_at_the_next_poll(
    app: Celery, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    first, second = replica(app, "a", clock), replica(app, "b", clock)
    first.tick()
    second.tick()
    for _ in range(10):
        clock.now += 1.0
        first.tick()
        second.tick()
    assert {len(first.balancer.led()), len(second.balancer.led())} == {1, 2}
    first.close()  # releases its leases and removes its heartbeat
    clock.now += 1.0
    second.tick()
    assert [s.index for s in second.balancer.led()] == [0, 1, 2]
    second.close()


def test_a_replica_follows_the_layout_in_redis_not_its_setting(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set(KEYS.layout, '{"shards":2}')
    scheduler = replica(app, "a")
    scheduler.tick()
    assert scheduler.layout.shards == 2
    assert [s.keys.prefix for s in scheduler.balancer.led()] == [
        "{redbeat:#0/2}:",
        "{redbeat:#1/2}:",
    ]
    assert "safe_redbeat_shards = 3 is not used" in caplog.text
    scheduler.close()


def test_an_unsharded_schedule_in_redis_is_kept_until_it_is_resharded(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.zadd(KEYS.schedule, {KEYS.entry("old"): 1})
    scheduler = replica(app, "a")
    scheduler.tick()
    assert scheduler.layout.shards == 1 and scheduler.is_leader
    assert not redis_client.exists(KEYS.layout)
    assert "reshard --to 3" in caplog.text
    scheduler.close()


def test_a_garbage_layout_keeps_the_replica_running_on_what_it_had(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    scheduler = replica(app, "a", clock)
    scheduler.tick()
    assert scheduler.layout.shards == K
    redis_client.set(KEYS.layout, "not json")
    clock.now += 5
    scheduler.tick()
    assert scheduler.layout.shards == K and scheduler.is_leader
    assert "not a JSON object" in caplog.text
    with Schedule(app) as schedule, pytest.raises(ValueError, match="not a JSON object"):
        schedule.upsert("x", "noop", 60)
    scheduler.close()


def test_writes_wait_for_a_move_and_a_retired_shard_refuses_them(
    app: Celery, redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.layout, '{"shards":3,"moving_to":2}')
    with Schedule(app) as schedule:
        with pytest.raises(Resharding, match="being resharded"):
            schedule.upsert("x", "noop", 60)
        redis_client.set(KEYS.layout, '{"shards":3}')
        info = schedule.upsert("x", "noop", 60)
        keys = layout().keys_for("x")
        redis_client.set(keys.lease, "retired 2")
        # a writer that read the old layout: the script refuses, the call reads it again
        redis_client.set(KEYS.layout, '{"shards":3,"moving_to":2}')
        with pytest.raises(Resharding):
            schedule.delete("x")
        assert redis_client.hget(keys.entry("x"), "version") == str(info.version)


def test_a_sharded_replica_never_touches_the_unsharded_keys(
    app: Celery, redis_client: redis.Redis
) -> None:
    scheduler = replica(app, "a")
    app.conf.beat_schedule = {"static": {"task": "noop", "schedule": 60.0}}
    scheduler.tick()
    touched: set[Any] = set(redis_client.keys("redbeat:*")) - set(
        redis_client.keys("redbeat::replica*")
    )
    assert touched == {KEYS.layout}
    owner = layout().keys_for("static")
    assert redis_client.sismember(owner.statics, "static")
    scheduler.close()


@pytest.mark.parametrize("mode", ["atomic", "publish"])
def test_a_long_dispatch_in_one_shard_keeps_the_other_shards_leases(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    clock = FakeClock()
    app.conf.safe_redbeat_batch_size = 5
    app.conf.safe_redbeat_enqueue = mode
    scheduler = replica(app, "a", clock)
    scheduler.tick()
    busy, other = scheduler.shards[0], scheduler.shards[1]
    names = [n for n in (f"n{i}" for i in range(200)) if shard_of(n, K) == 0][:30]
    with Schedule(app) as schedule:
        for name in names:
            schedule.upsert(name, "noop", 3600, run_immediately=True)
    claim = busy._settle

    def slow(*args: Any, **kwargs: Any) -> Any:
        clock.now += 1.0  # each batch of 5 takes a second: 6 s, past the renew deadline
        return claim(*args, **kwargs)

    renewed_at: list[float] = []
    renew = other.leadership.lease.renew

    def recording() -> None:
        renewed_at.append(clock.now)
        renew()

    monkeypatch.setattr(busy, "_settle", slow)
    monkeypatch.setattr(other.leadership.lease, "renew", recording)
    started = clock.now
    scheduler.tick()
    assert clock.now - started >= 6
    assert any(at < clock.now for at in renewed_at), "renewed only after the busy shard"
    assert [s.index for s in scheduler.balancer.led()] == [0, 1, 2]
    assert all(s.leadership.elected for s in scheduler.shards)
    scheduler.close()
