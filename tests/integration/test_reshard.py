"""``safe-redbeat reshard``: moving the schedule between layouts next to running replicas."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler, Schedule
from safe_redbeat.errors import SafeRedBeatError
from safe_redbeat.model.codec import encode_meta
from safe_redbeat.store.layout import Layout
from safe_redbeat.sync import reshard as reshard_module
from safe_redbeat.sync.reshard import reshard
from testbed.beat import BeatCluster, QueueAuditor
from tests.integration.test_cli import cli, cli_json, env_for
from tests.support import KEYS
from tests.support.inprocess import FAST, FakeClock, celery_app

pytestmark = pytest.mark.integration

NAMES = [f"tenant-{i}" for i in range(60)]


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("reshard", redis_url) as app:
        yield app


def entries_of(client: redis.Redis, layout: Layout) -> dict[str, dict[str, str]]:
    """Every entry hash of ``layout`` by name, and check each sits in its own shard."""
    found = {}
    for index, keys in enumerate(layout.all_keys()):
        for key in client.zrange(keys.schedule, 0, -1):
            name = keys.name_of(str(key))
            assert layout.shard_of(name) == index, f"{name!r} is in shard {index}"
            found[name] = {str(f): str(v) for f, v in client.hgetall(str(key)).items()}
    return found


class Replicas:
    """In-process replicas sharing one fake clock; ``step`` is one poll period for all."""

    def __init__(self, app: Celery, count: int) -> None:
        self.clock = FakeClock()
        self.all = []
        for index in range(count):
            app.conf.safe_redbeat_instance_name = f"r{index}"
            self.all.append(SafeRedBeatScheduler(app=app, monotonic=self.clock))

    def step(self, _seconds: float = 0.0) -> None:
        self.clock.now += 0.6
        for scheduler in self.all:
            scheduler.tick()

    def led(self) -> list[int]:
        return sorted(s.index for r in self.all for s in r.balancer.led())

    def close(self) -> None:
        for scheduler in self.all:
            scheduler.close()


def test_one_to_three_and_back_keeps_versions_run_history_and_pending_records(
    app: Celery, redis_client: redis.Redis
) -> None:
    replicas = Replicas(app, 2)
    replicas.step()
    ran = datetime.now(timezone.utc) - timedelta(seconds=30)
    with Schedule(app) as schedule:
        for name in NAMES:
            schedule.upsert(name, "noop", 3600)
        schedule.update("tenant-7", enabled=False)
    redis_client.hset(KEYS.entry("tenant-3"), "meta", encode_meta(ran, 41))
    redis_client.sadd(KEYS.loader, "tenant-5")
    redis_client.hset(KEYS.pending, "tid-1", '{"entry":"tenant-9","not":"decodable"}')
    before = entries_of(redis_client, Layout(KEYS))
    assert len(before) == len(NAMES)

    report = reshard(redis_client, KEYS, 3, sleep=replicas.step, wait_seconds=10)

    three = Layout(KEYS, 3)
    assert (report.source, report.target, report.entries) == (1, 3, len(NAMES))
    assert entries_of(redis_client, three) == before  # every field, version and meta
    assert redis_client.get(KEYS.layout) == '{"shards":3}'
    assert redis_client.get(KEYS.lease) == "retired 3"
    assert not redis_client.exists(KEYS.schedule, KEYS.entry("tenant-3"), KEYS.pending)
    assert redis_client.sismember(three.keys_for("tenant-5").loader, "tenant-5")
    assert redis_client.hget(three.keys(0).pending, "tid-1")  # undecodable: kept, shard 0
    for _ in range(6):
        replicas.step()
    assert replicas.led() == [0, 1, 2]
    with Schedule(app) as schedule:
        assert schedule.get("tenant-3").total_run_count == 41
        assert not schedule.get("tenant-7").spec.enabled
        versions = {info.name: info.version for info in schedule.list()}

    back = reshard(redis_client, KEYS, 1, sleep=replicas.step, wait_seconds=10)
    assert back.entries == len(NAMES)
    assert entries_of(redis_client, Layout(KEYS)) == before
    with Schedule(app) as schedule:
        assert {info.name: info.version for info in schedule.list()} == versions
    assert redis_client.get(KEYS.layout) == '{"shards":1}'
    assert all(redis_client.get(k.lease) == "retired 1" for k in three.all_keys())
    for _ in range(4):
        replicas.step()
    assert replicas.led() == [0]
    replicas.close()


def test_dispatch_goes_on_after_the_move_and_no_occurrence_changes_its_id(
    app: Celery, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    replicas = Replicas(app, 2)
    replicas.step()
    with Schedule(app) as schedule:
        for name in NAMES:
            schedule.upsert(name, "noop", 3600, run_immediately=True)
    replicas.step()  # sends every entry once
    first = auditor.drain()
    assert Counter(m.headers["safe_redbeat_entry"] for m in first) == Counter(NAMES)
    reshard(redis_client, KEYS, 2, sleep=replicas.step, wait_seconds=10)
    for _ in range(6):
        replicas.step()
    assert replicas.led() == [0, 1]
    assert auditor.drain() == []  # nothing due again: the run history moved along
    with Schedule(app) as schedule:
        schedule.run_now("tenant-1")
    replicas.step()
    assert [m.headers["safe_redbeat_entry"] for m in auditor.drain()] == ["tenant-1"]
    replicas.close()


def test_a_lease_nobody_releases_undoes_the_move_and_names_the_holder(
    app: Celery, redis_client: redis.Redis
) -> None:
    with Schedule(app) as schedule:
        schedule.upsert("kept", "noop", 60)
    redis_client.set(KEYS.lease, "a-stock-redbeat-token", px=60_000)
    with pytest.raises(SafeRedBeatError, match="a-stock-redbeat-token"):
        reshard(redis_client, KEYS, 2, wait_seconds=0.3)
    assert redis_client.get(KEYS.layout) == '{"shards":1}'
    assert redis_client.get(KEYS.lease) == "a-stock-redbeat-token"
    assert redis_client.exists(KEYS.entry("kept"))
    with Schedule(app) as schedule:
        assert schedule.get("kept").name == "kept"


def test_an_interrupted_move_resumes_and_only_its_own_target_is_accepted(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_client.set(KEYS.layout, '{"shards":2}')
    with Schedule(app) as schedule:
        for name in NAMES:
            schedule.upsert(name, "noop", 60)
    copy = reshard_module._copy_shard
    calls: list[Any] = []

    def dies_after_one_shard(*args: Any) -> None:
        if calls:
            raise ConnectionError("the operator's laptop went to sleep")
        calls.append(args)
        copy(*args)

    monkeypatch.setattr(reshard_module, "_copy_shard", dies_after_one_shard)
    with pytest.raises(ConnectionError):
        reshard(redis_client, KEYS, 3, wait_seconds=1)
    assert redis_client.get(KEYS.layout) == '{"shards":2,"moving_to":3}'
    with Schedule(app) as schedule, pytest.raises(SafeRedBeatError, match="being resharded"):
        schedule.upsert("new", "noop", 60)
    monkeypatch.setattr(reshard_module, "_copy_shard", copy)
    with pytest.raises(SafeRedBeatError, match="--to 3"):
        reshard(redis_client, KEYS, 4)
    report = reshard(redis_client, KEYS, 3, wait_seconds=1)
    assert report.resumed
    assert report.entries + report.skipped == len(NAMES)
    assert set(entries_of(redis_client, Layout(KEYS, 3))) == set(NAMES)
    assert redis_client.get(KEYS.layout) == '{"shards":3}'


def test_the_cli_moves_the_schedule_and_says_what_it_did(
    app: Celery, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with Schedule(app) as schedule:
        schedule.upsert("one", "noop", 60)
    env = env_for(redis_url, tmp_path)
    moved = cli_json(env, "reshard", "--to", "2")
    assert (moved["from"], moved["to"], moved["entries"]) == (1, 2, 1)
    assert cli_json(env, "show", "one")["name"] == "one"
    refused = cli(env, "reshard", "--to", "0")
    assert refused.returncode == 8, refused.stderr
    assert "--to must be an integer from 1 to 256" in refused.stderr


@pytest.mark.chaos
def test_reshard_next_to_running_beat_replicas_sends_each_occurrence_once(
    beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    """Two real replicas dispatch 1 s entries while the schedule moves from 1 to 3 shards."""
    schedule = {f"every-{i}": {"task": "noop", "every": 1} for i in range(12)}
    procs = beat_procs.start(2, schedule=schedule, settings=FAST)
    auditor = QueueAuditor(redis_client)
    # either replica may lead: wait for the messages of two rounds
    auditor.wait_for(lambda ms: len(ms) >= 24, timeout=30)
    moved_at = time.monotonic()
    report = reshard(redis_client, KEYS, 3, wait_seconds=6)
    assert report.target == 3
    deadline = time.monotonic() + 15
    led: set[int] = set()
    while time.monotonic() < deadline and led != {0, 1, 2}:
        led = {i for i, k in enumerate(Layout(KEYS, 3).all_keys()) if redis_client.exists(k.lease)}
        time.sleep(0.1)
    assert led == {0, 1, 2}, "the new shards were not all led"
    resumed_at = time.monotonic()
    auditor.wait_for(
        lambda ms: (
            {m.headers["safe_redbeat_entry"] for m in ms if m.received_at > time.time() - 1}
            >= set(schedule)
        ),
        timeout=10,
    )
    time.sleep(2.0)
    auditor.drain()
    ids_of: dict[tuple[str, str], set[str]] = {}
    for m in auditor.messages:
        occurrence = (m.headers["safe_redbeat_entry"], m.headers["safe_redbeat_scheduled"])
        ids_of.setdefault(occurrence, set()).add(m.task_id)
    different_ids = [o for o, ids in ids_of.items() if len(ids) > 1]
    assert different_ids == [], f"sent under two task ids: {different_ids}"
    assert resumed_at - moved_at < 10
    for proc in procs:
        assert proc.alive(), proc.log()[-2000:]
        assert "Traceback" not in proc.log()
