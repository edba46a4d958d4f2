"""Ordinary deployments the replicas must survive: several replicas on one host, a name
given to two replicas, and several apps on one Redis with overlapping prefixes.

Before, replicas without a configured name on one host were all called after the host:
with 6 shards and 3 such replicas the balancer counted one live replica, one replica never
led a shard and the shards changed hands about three times a second. Apps whose prefixes
differed only by braces, or by a digit next to the shard number, shared their shard keys,
and an entry name could write another app's internal key.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from safe_redbeat import InvalidEntry, SafeRedBeatScheduler, Schedule
from safe_redbeat.keys import Keys
from safe_redbeat.layout import Layout
from testbed.beat import BeatCluster
from testbed.redis_server import HOST, RedisServer
from tests.chaos.cluster import LeaseMonitor
from tests.integration.test_cli import cli, cli_json, wait_until
from tests.support import KEYS
from tests.support.inprocess import FAST, FakeClock, make_app

pytestmark = pytest.mark.integration

K = 6
LAYOUT = Layout(KEYS, K)
SHARDED = {**FAST, "safe_redbeat_shards": K}
SCHEDULE = {f"job-{i:02d}": {"task": "noop", "every": 1} for i in range(12)}


@pytest.fixture
def monitor(redis_server: RedisServer, redis_db: int) -> Iterator[LeaseMonitor]:
    watcher = LeaseMonitor(
        HOST, redis_server.port, [keys.lease for keys in LAYOUT.all_keys()], db=redis_db
    ).start()
    try:
        yield watcher
    finally:
        watcher.stop()


def holder_pids(monitor: LeaseMonitor) -> list[int | None]:
    return [None if h is None else h.pid for h in monitor.holders()]


def test_unnamed_replicas_on_one_host_are_three_replicas(
    beat_procs: BeatCluster, monitor: LeaseMonitor, redis_client: redis.Redis
) -> None:
    procs = beat_procs.start(3, instance=None, settings=SHARDED, schedule=SCHEDULE)
    pids = {p.pid for p in procs}

    def balanced() -> bool:
        return Counter(holder_pids(monitor)) == dict.fromkeys(pids, 2)

    wait_until(balanced, 40, f"2 shards each for {pids}: {holder_pids(monitor)}")
    settled = holder_pids(monitor)
    changes = 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        now = holder_pids(monitor)
        changes += sum(a != b for a, b in zip(settled, now, strict=True))
        settled = now
        time.sleep(0.1)
    assert changes == 0, f"the shards changed hands {changes} times in 4 s once balanced"

    env = procs[0].env()
    status = cli_json(env, "status")
    names = sorted(r["instance"] for r in status["replicas"])
    assert len(names) == 3 and len(set(names)) == 3, names
    assert {int(name.rsplit(":", 1)[1]) for name in names} == pids
    assert not any(r["shared_name"] for r in status["replicas"])
    cluster = cli(env, "health", "--cluster")
    assert cluster.returncode == 0, cluster.stdout
    local = cli(env, "health")  # three replicas on this host, none named: which one?
    assert local.returncode == 1 and "3 replicas run on host" in local.stdout, local.stdout
    for proc in procs:
        assert "Traceback" not in proc.log_tail(400)


def test_a_name_two_live_replicas_share_is_reported_by_both_status_and_health(
    beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    procs = beat_procs.start(2, instance="twin", settings=FAST, schedule=SCHEDULE)
    message = "another live replica uses this replica's instance name 'twin'"
    wait_until(lambda: all(message in p.log_tail(400) for p in procs), 20, "an ERROR in both logs")
    env = procs[0].env()
    status = cli_json(env, "status")
    assert [r["shared_name"] for r in status["replicas"]] == [True, True]
    text = cli(env, "status").stdout
    assert "WARNING: 2 live replicas use the instance name 'twin'" in text
    health = cli(env, "health")
    assert health.returncode == 1, health.stdout
    assert "2 live replicas use the instance name 'twin'" in health.stdout
    # still one leader: the lease tells them apart by token
    assert sum(r["role"] == "leader" for r in status["replicas"]) == 1


def _app(name: str, redis_url: str, prefix: str, shards: int) -> Celery:
    app = make_app(name, redis_url, safe_redbeat_shards=shards)
    app.conf.redbeat_key_prefix = prefix
    app.conf.task_default_queue = f"queue-of-{name}"
    return app


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("redbeat:", 2), ("{redbeat}:", 2)),
        (("app", 12), ("app1", 12)),
        (("app:", 1), ("app:x:", 1)),
        (("app:", 3), ("app:x:", 1)),
    ],
)
def test_two_apps_on_one_redis_see_and_send_only_their_own(
    redis_url: str, redis_client: redis.Redis, first: tuple[str, int], second: tuple[str, int]
) -> None:
    apps = [_app("a", redis_url, *first), _app("b", redis_url, *second)]
    schedulers: list[SafeRedBeatScheduler] = []
    try:
        schedulers = [SafeRedBeatScheduler(app=app, monotonic=FakeClock()) for app in apps]
        for scheduler in schedulers:
            scheduler.tick()  # each app takes its layout (Redis holds none yet)
        for app, (_prefix, shards) in zip(apps, (first, second), strict=True):
            with Schedule(app) as schedules:
                assert schedules.layout().shards == shards
                for i in range(12):
                    schedules.upsert(f"job-{i}", "noop", 60.0, run_immediately=True)
        for _ in range(2):
            for scheduler in schedulers:
                scheduler.tick()
        for app, scheduler in zip(apps, schedulers, strict=True):
            assert scheduler.is_leader, f"{app.main} leads nothing: the other app holds its lease"
            with Schedule(app) as schedules:
                assert {info.name for info in schedules.list()} == {f"job-{i}" for i in range(12)}
            sent = redis_client.lrange(f"queue-of-{app.main}", 0, -1)
            assert len(sent) == 12, f"{app.main} sent {len(sent)} messages, not its 12"
    finally:
        for scheduler in schedulers:
            scheduler.close()
        for app in apps:
            app.close()


def test_an_entry_name_cannot_write_another_apps_internal_key(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """App a (prefix ``app:``) writes first; app b (prefix ``app:x:``) starts later. Before,
    the name ``x::schedule`` made a hash at b's schedule key: b's leader then failed every
    tick with WRONGTYPE and dispatched nothing."""
    a, b = _app("a", redis_url, "app:", 1), _app("b", redis_url, "app:x:", 1)
    scheduler = None
    try:
        with Schedule(a) as schedules:
            for name in ("x::schedule", "x::lock", "x::pending", "x::replica:1"):
                with pytest.raises(InvalidEntry) as caught:
                    schedules.upsert(name, "noop", 60.0)
                assert caught.value.field == "name"
        assert not redis_client.exists(Keys("app:x:", "app:x::lock").schedule)
        with Schedule(b) as schedules:
            schedules.upsert("report", "noop", 60.0, run_immediately=True)
        scheduler = SafeRedBeatScheduler(app=b, monotonic=FakeClock())
        scheduler.tick()
        assert redis_client.llen("queue-of-b") == 1
    finally:
        if scheduler is not None:
            scheduler.close()
        a.close()
        b.close()
