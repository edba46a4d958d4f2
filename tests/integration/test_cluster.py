"""The schedule on a real Redis Cluster (3 primaries, 1 replica each), driven in-process.

The cluster is the session's ``redis_cluster``; each test has its own hash-tagged
``redbeat_key_prefix`` (cluster mode has only database 0). The broker stays the suite's
single-node Redis: only the schedule lives on the cluster.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib.resources import files
from typing import Any

import pytest
import redis
from celery import Celery
from redbeat.schedulers import ensure_conf
from redis.cluster import RedisCluster
from redis.crc import key_slot

from safe_redbeat import ConfigurationError, SafeRedBeatScheduler, Schedule, VersionConflict
from safe_redbeat.config import Settings
from safe_redbeat.leader.lease import Lease
from safe_redbeat.model.occurrence import HEADER_ENTRY, HEADER_SCHEDULED, task_id_for
from safe_redbeat.store.connection import scheduler_client
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.scripts import Adopt, Registered, Scripts
from testbed.beat import QueueAuditor
from testbed.cluster import LocalCluster
from tests.apps import loaders
from tests.support.inprocess import FAST, FakeClock

#: every Lua script the package ships
NAMES = sorted(
    f.name.removesuffix(".lua")
    for f in files("safe_redbeat.store.scripts").iterdir()
    if f.name.endswith(".lua")
)

pytestmark = pytest.mark.integration


@contextmanager
def cluster_app(
    cluster: LocalCluster, prefix: str, broker_url: str, **settings: Any
) -> Iterator[Celery]:
    """An app whose schedule lives on ``cluster`` under ``prefix``, its broker elsewhere."""
    app = Celery("cluster", set_as_current=False)
    app.conf.update(
        {
            "broker_url": broker_url,
            "redbeat_redis_url": cluster.url,
            "redbeat_redis_options": {"cluster": True},
            "redbeat_key_prefix": prefix,
            "timezone": "UTC",
            "result_expires": None,
            "beat_max_loop_interval": 5,
            **FAST,
            **settings,
        }
    )
    ensure_conf(app)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def app(redis_cluster: LocalCluster, cluster_prefix: str, redis_url: str) -> Iterator[Celery]:
    with cluster_app(redis_cluster, cluster_prefix, redis_url) as app:
        yield app


class Recorder:
    """Wraps every registered script of a :class:`Scripts` and records the KEYS of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def wrap(self, scripts: Scripts) -> None:
        raw: Registered = scripts.raw
        for name in NAMES:
            setattr(raw, name, self._recording(name, getattr(raw, name)))

    def _recording(self, name: str, script: Any) -> Any:
        def call(keys: Any = (), args: Any = (), client: Any = None) -> Any:
            self.calls.append((name, [str(k) for k in keys]))
            return script(keys=keys, args=args, client=client)

        return call


def slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


@pytest.mark.parametrize("form", ["cluster-option", "redis-cluster-url"])
def test_the_cluster_client_has_socket_timeouts_and_no_retries(
    redis_cluster: LocalCluster, cluster_prefix: str, redis_url: str, form: str
) -> None:
    """Both ways RedBeat reads a cluster from its settings give the bounded client."""
    settings: dict[str, Any] = {}
    if form == "redis-cluster-url":
        settings = {
            "redbeat_redis_url": "redis-cluster://",
            "redbeat_redis_options": {"startup_nodes": redis_cluster.startup_nodes[:2]},
        }
    with cluster_app(redis_cluster, cluster_prefix, redis_url, **settings) as app:
        client = scheduler_client(app, 1.0)
        try:
            assert isinstance(client, RedisCluster)
            assert client.retry.get_retries() == 0
            kwargs = client.nodes_manager.connection_kwargs
            assert kwargs["socket_timeout"] == 1.0
            assert kwargs["socket_connect_timeout"] == 1.0
            assert kwargs["decode_responses"] is True
            assert client.ping()
        finally:
            client.close()
        with Schedule(app) as schedule:
            assert schedule.upsert("x", task="noop", schedule=5).version == 1
            assert [e.name for e in schedule.list()] == ["x"]


def test_every_script_call_hashes_all_its_keys_to_the_prefix_slot(
    app: Celery, redis_url: str, redis_cluster: LocalCluster, cluster_prefix: str
) -> None:
    """Every Lua script, with KEYS as its Python caller builds them, on one slot: lease,
    claim (with an overlap policy), due, sent, upsert, remove, run_now, versions, diff,
    move, adopt, a worker's run_started and run_ended; and every other key of Keys."""
    keys = Keys.from_app(app)
    slot = key_slot(keys.schedule.encode())
    fixed = [
        keys.lease, keys.schedule, keys.statics, keys.fence, keys.pending, keys.loader,
        keys.seeded, keys.reconcile, keys.replica("beat-0"), keys.entry("any:name{x}"),
        keys.dead, keys.running("any:name{x}"), keys.running_index,
    ]  # fmt: skip
    assert slots(fixed) == {slot}

    loaders.RESULT = [
        {"name": "from-loader", "task": "noop", "schedule": 1},
        {"name": "doomed", "task": "noop", "schedule": 3600},
    ]
    app.conf.beat_schedule = {
        "static": {"task": "noop", "schedule": 1.0, "overlap": "skip", "max_runtime": 60}
    }
    app.conf.safe_redbeat_loader = "tests.apps.loaders:load"
    recorder = Recorder()
    clock = FakeClock()
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
    schedule = Schedule(app)
    try:
        recorder.wrap(scheduler.shards[0].scripts)
        recorder.wrap(schedule.shards()[0].scripts)
        scheduler.tick()  # acquire, seed statics and the loader (versions, diff, upsert)
        assert scheduler.is_leader
        schedule.upsert("api", task="noop", schedule=1)
        schedule.run_now("api")
        loaders.RESULT = [{"name": "from-loader", "task": "noop", "schedule": 1}]
        clock.now += 100  # reconcile is due: "doomed" is removed by the loader
        scheduler.client.hset(keys.pending, "junk", "not a record")  # moved to the dead letters
        time.sleep(1.1)  # the 1 s entries fall due by Redis' clock
        scheduler.tick()  # renew, reconcile (remove), due, claim
        # sent: what a publish that went out late records (sent_at)
        assert scheduler.shards[0].scripts.sent_late([keys.entry("static")]) == 1
        # a worker's records of a run (overlap policy): the claim recorded "static" sent
        assert scheduler.client.hlen(keys.running("static")) == 1
        assert schedule.shards()[0].scripts.run_started("static", "t-1", 5000)
        assert schedule.shards()[0].scripts.run_ended("static", "t-1")
        schedule.delete("api")
        scheduler.close()  # release
        shard = schedule.shards()[0]  # reshard's copy into a shard (its keys: one slot)
        batch = shard.scripts.adoptions()
        shard.scripts.adopt(Adopt(keys.entry("copied"), 5, {"version": "1"}), batch=batch)
        assert batch.execute() == [True]
    finally:
        loaders.RESULT = []
        schedule.close()

    called = {name for name, _ in recorder.calls}
    assert called == set(NAMES), f"not exercised: {set(NAMES) - called}"
    for name, call_keys in recorder.calls:
        assert call_keys, name
        assert slots(call_keys) == {slot}, (name, call_keys)
    auditor = QueueAuditor(redis.Redis.from_url(redis_url, decode_responses=True))
    sent = {m.headers[HEADER_ENTRY] for m in auditor.drain()}
    assert {"static", "api", "from-loader"} <= sent
    with redis_cluster.client() as check:
        assert check.exists(keys.entry("doomed")) == 0
        assert check.hget(keys.dead, "junk") == "not a record"


def test_lease_and_fenced_claims_on_the_cluster(
    app: Celery, redis_url: str, redis_cluster: LocalCluster
) -> None:
    keys = Keys.from_app(app)
    auditor = QueueAuditor(redis.Redis.from_url(redis_url, decode_responses=True))
    clock = FakeClock()
    leader = SafeRedBeatScheduler(app=app, monotonic=clock)
    standby = SafeRedBeatScheduler(app=app, monotonic=clock)
    schedule = Schedule(app)
    check = redis_cluster.client()
    try:
        leader.tick()
        standby.tick()
        assert leader.is_leader and not standby.is_leader
        fence = leader.shards[0].leadership.lease.fence
        ttl = check.pttl(keys.lease)
        clock.now += 1.0
        time.sleep(0.2)
        leader.tick()  # renews to a full lease
        assert leader.is_leader and check.pttl(keys.lease) > ttl - 150

        info = schedule.upsert("every-second", task="noop", schedule=1)
        due_at = info.next_run_at
        assert due_at is not None
        # scores are whole seconds: the first run is due up to 1 s after its score
        time.sleep(max(0.0, due_at.timestamp() - time.time()) + 1.1)
        leader.tick()
        (message,) = auditor.drain()
        scheduled = int(message.headers[HEADER_SCHEDULED])
        assert message.task_id == task_id_for(keys.entry("every-second"), scheduled)
        assert check.hlen(keys.pending) == 0  # acknowledged

        # another replica took the lease while this one was paused, inside its deadline:
        # Redis (the claim script) refuses the claim, nothing is sent or moved
        check.set(keys.lease, '99999999999999 {"host":"x","pid":1,"name":"other"}', px=3000)
        score = check.zscore(keys.schedule, keys.entry("every-second"))
        time.sleep(1.1)
        leader.tick()
        assert not leader.is_leader
        assert auditor.drain() == []
        assert check.zscore(keys.schedule, keys.entry("every-second")) == score

        check.delete(keys.lease)
        clock.now += 1.0
        standby.tick()
        assert standby.is_leader and standby.shards[0].leadership.lease.fence > fence
        standby.close()  # releases
        assert check.exists(keys.lease) == 0
    finally:
        check.close()
        schedule.close()
        leader.close()


def test_schedule_crud_with_versions_on_the_cluster(app: Celery) -> None:
    with Schedule(app) as schedule:
        first = schedule.upsert("report", task="noop", schedule=60, kwargs={"fmt": "pdf"})
        assert first.version == 1
        assert schedule.upsert("report", task="noop", schedule=60, kwargs={"fmt": "pdf"}) == first
        second = schedule.put(replace(first.spec, kwargs={"fmt": "csv"}), expected_version=1)
        assert second.version == 2
        with pytest.raises(VersionConflict) as conflict:
            schedule.put(first.spec, expected_version=1)
        assert conflict.value.current_version == 2
        assert schedule.disable("report").enabled is False
        assert schedule.enable("report", expected_version=3).version == 4
        requested = schedule.run_now("report")
        assert schedule.get("report").run_now_at == requested
        schedule.upsert("other", task="noop", schedule=30)
        assert sorted(e.name for e in schedule.list()) == ["other", "report"]
        assert schedule.delete("report", expected_version=4) == 4
        assert [e.name for e in schedule.list()] == ["other"]


def test_a_prefix_without_hash_tag_is_refused_on_a_cluster(
    redis_cluster: LocalCluster, redis_url: str
) -> None:
    with cluster_app(redis_cluster, "redbeat:", redis_url) as app:
        with pytest.raises(ConfigurationError) as scheduler_error:
            SafeRedBeatScheduler(app=app)
        with pytest.raises(ConfigurationError) as schedule_error:
            Schedule(app)
    for error in (scheduler_error.value, schedule_error.value):
        assert error.settings == ("redbeat_key_prefix",)
        assert "redbeat_key_prefix = '{redbeat}:'" in str(error)
    # a lock key on another slot (the scheduler's lock_key argument is taken as given)
    with (
        cluster_app(redis_cluster, "{ok}:", redis_url) as app,
        pytest.raises(ConfigurationError) as lock_error,
    ):
        SafeRedBeatScheduler(app=app, lock_key="{elsewhere}:lock")
    assert lock_error.value.settings == ("redbeat_lock_key",)


def test_a_stalled_primary_costs_one_socket_timeout_not_a_blocked_renewal(
    redis_cluster: LocalCluster, cluster_prefix: str, redis_url: str
) -> None:
    """redis-py's cluster client retries a timed-out command 10 times by default; the
    scheduler's client must give up after one socket timeout."""
    timeout = 0.3  # far below the cluster's 1 s node timeout: no failover starts
    with cluster_app(
        redis_cluster, cluster_prefix, redis_url, safe_redbeat_socket_timeout=timeout
    ) as app:
        keys = Keys.from_app(app)
        client = scheduler_client(app, timeout)
        try:
            lease = Lease(client, keys, Settings.from_app(app), scripts=Scripts(client, keys))
            assert lease.try_acquire() is None
            primary = redis_cluster.primary_of(keys.lease)
            os.kill(primary.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises((redis.RedisError, OSError)):
                    lease.renew()
                elapsed = time.monotonic() - started
            finally:
                os.kill(primary.pid, signal.SIGCONT)
        finally:
            client.close()
    redis_cluster.wait_ok(10)
    print(f"\nstalled primary: renew failed after {elapsed:.2f}s (socket timeout {timeout}s)")
    assert elapsed < 2 * timeout + 0.5, (
        f"a stalled node blocked a renewal for {elapsed:.1f}s: retried or unbounded"
    )
