"""SafeRedBeatScheduler driven tick by tick in this process, against the real Redis.

The monotonic clock is injected, so a pause (GC, SIGSTOP, VM freeze) is a jump of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from safe_redbeat import SafeRedBeatScheduler
from safe_redbeat.model.occurrence import Occurrence, task_id_for
from testbed.beat import QueueAuditor
from tests.support import KEYS
from tests.support.inprocess import FAST, FakeClock, add_due, celery_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("inprocess", redis_url) as app:
        yield app


def make(app: Celery, clock: FakeClock | None = None, **settings: Any) -> SafeRedBeatScheduler:
    app.conf.update(settings)
    return SafeRedBeatScheduler(app=app, monotonic=clock or FakeClock())


def test_a_stale_leader_is_rejected_by_redis_not_by_its_own_check(
    app: Celery, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    leader = make(app)
    leader.tick()
    assert leader.is_leader
    # Another replica took over while this one was paused; the pause was short enough
    # that the old leader's own deadline check still passes.
    redis_client.set(KEYS.lease, '99999999999999 {"host":"x","pid":1,"name":"other"}')
    add_due(app, ["a", "b"])
    schedule_before = redis_client.zrange("redbeat::schedule", 0, -1, withscores=True)
    leader.tick()
    assert not leader.is_leader
    assert auditor.drain() == []
    assert redis_client.zrange("redbeat::schedule", 0, -1, withscores=True) == schedule_before
    assert not redis_client.exists("redbeat::pending")


def test_lock_loss_never_raises_and_the_replica_reacquires(
    app: Celery, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    scheduler = make(app, clock)
    scheduler.tick()
    first = scheduler.shards[0].leadership.lease.fence
    redis_client.delete(KEYS.lease)
    clock.now += 1  # renewal due
    delay = scheduler.tick()  # finds out, demotes
    assert not scheduler.is_leader and 0 < delay <= 0.5
    scheduler.tick()  # reacquires
    assert scheduler.is_leader and scheduler.shards[0].leadership.lease.fence != first


def test_a_paused_leader_reverifies_before_claiming(app: Celery, redis_client: redis.Redis) -> None:
    clock = FakeClock()
    scheduler = make(app, clock)
    scheduler.tick()
    redis_client.set(KEYS.lease, "taken by someone else")
    add_due(app, ["a"])
    clock.now += 60  # a long pause: far past the renew deadline
    scheduler.tick()
    assert not scheduler.is_leader
    assert not redis_client.exists("redbeat::pending")
    assert QueueAuditor(redis_client).drain() == []


def test_a_crash_between_claim_and_publish_is_republished_with_the_same_id(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    auditor = QueueAuditor(redis_client)
    add_due(app, ["a", "b", "c"])
    crashed = make(app, safe_redbeat_enqueue="publish")

    def die(claimed: object) -> None:
        raise SystemExit(1)

    monkeypatch.setattr(crashed.shards[0], "_publish_claimed", die)  # the process dies here
    with pytest.raises(SystemExit):
        crashed.tick()
    pending = redis_client.hgetall("redbeat::pending")
    assert len(pending) == 3 and auditor.drain() == []
    redis_client.delete(KEYS.lease)  # its lease expires
    monkeypatch.undo()
    successor = make(app)
    successor.tick()
    sent = {m.task_id for m in auditor.wait_for(lambda msgs: len(msgs) >= 3, timeout=5)}
    assert sent == set(pending)
    entries = {Occurrence.from_json(str(k), str(v)).entry for k, v in pending.items()}
    assert entries == {"a", "b", "c"}
    assert not redis_client.exists("redbeat::pending")
    successor.tick()
    assert len(auditor.drain()) == 0, "an occurrence was sent twice"


def test_a_crash_right_after_an_atomic_claim_sends_nothing_again(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    auditor = QueueAuditor(redis_client)
    add_due(app, ["a", "b", "c"])
    crashed = make(app)
    settle = crashed.shards[0]._settle

    def settle_then_die(*args: Any, **kwargs: Any) -> None:
        settle(*args, **kwargs)
        raise SystemExit(1)

    monkeypatch.setattr(crashed.shards[0], "_settle", settle_then_die)
    with pytest.raises(SystemExit):
        crashed.tick()
    assert crashed.enqueuer.decided is not None and crashed.enqueuer.decided.atomic
    first = {m.task_id for m in auditor.drain()}
    assert len(first) == 3 and not redis_client.exists("redbeat::pending")
    redis_client.delete(KEYS.lease)  # its lease expires
    successor = make(app)
    successor.tick()
    successor.tick()
    assert auditor.drain() == [], "an occurrence was enqueued twice"


@pytest.mark.parametrize("mode", ["atomic", "publish"])
def test_a_long_tick_renews_between_batches(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    clock = FakeClock()
    scheduler = make(app, clock, safe_redbeat_batch_size=10, safe_redbeat_enqueue=mode)
    scheduler.tick()
    add_due(app, [f"e{i}" for i in range(45)])
    renewals = []
    lease = scheduler.shards[0].leadership.lease
    real_renew = lease.renew

    def counting_renew() -> None:
        renewals.append(clock.now)
        real_renew()

    monkeypatch.setattr(lease, "renew", counting_renew)
    # each message takes 100 ms to publish, or to build: the tick lasts 4.5 s
    if mode == "publish":
        real_apply = scheduler.publisher._apply

        def slow_apply(occurrence: Occurrence, fence: int) -> Any:
            clock.now += 0.1
            return real_apply(occurrence, fence)

        monkeypatch.setattr(scheduler.publisher, "_apply", slow_apply)
    else:
        builder = scheduler.enqueuer.builder
        real_commands = builder.commands

        def slow_commands(*args: Any) -> Any:
            clock.now += 0.1
            return real_commands(*args)

        monkeypatch.setattr(builder, "commands", slow_commands)
    scheduler.tick()
    assert len(QueueAuditor(redis_client).drain()) == 45
    assert len(renewals) >= 8, renewals  # every retry period (0.5 s) of the 4.5 s tick
    assert scheduler.is_leader


def test_nothing_is_written_before_the_lease_is_held(
    app: Celery, redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.lease, "held by a stock RedBeat replica")
    app.conf.beat_schedule = {"s": {"task": "noop", "schedule": 1.0}}
    redis_client.sadd("redbeat::statics", "removed-static")
    standby = make(app)
    standby.tick()
    assert not standby.is_leader
    written = {str(k) for k in redis_client.keys("*")} - {
        str(k) for k in redis_client.keys("redbeat::replica*")
    }
    assert written == {KEYS.lease, "redbeat::statics"}
    assert redis_client.smembers("redbeat::statics") == {"removed-static"}
    redis_client.delete(KEYS.lease)
    standby.tick()
    assert standby.is_leader
    assert redis_client.smembers("redbeat::statics") == {"s"}
    assert redis_client.hget("redbeat:s", "version") == "1"


def test_close_releases_the_lease(app: Celery, redis_client: redis.Redis) -> None:
    scheduler = make(app)
    scheduler.tick()
    assert redis_client.exists(KEYS.lease)
    scheduler.close()
    assert not redis_client.exists(KEYS.lease)


def test_replicas_publish_heartbeats_with_their_role(
    app: Celery, redis_client: redis.Redis
) -> None:
    from safe_redbeat.leader.heartbeat import read_heartbeats
    from safe_redbeat.store.keys import Keys

    leader = make(app, safe_redbeat_instance_name="pod-a")
    leader.tick()
    standby = make(app, safe_redbeat_instance_name="pod-b")
    standby.tick()
    replicas = {r.heartbeat.instance: r for r in read_heartbeats(redis_client, leader.keys)}
    assert replicas["pod-a"].heartbeat.role == "leader"
    assert replicas["pod-a"].heartbeat.fence == leader.shards[0].leadership.lease.fence
    assert replicas["pod-b"].heartbeat.role == "standby"
    assert all(0 <= r.age < 1 for r in replicas.values())
    leader.close()
    remaining = [r.heartbeat.instance for r in read_heartbeats(redis_client, Keys.from_app(app))]
    assert remaining == ["pod-b"]


def test_an_unset_redbeat_lock_key_still_leases_the_default_key(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="safe_redbeat")  # whatever ran before set it
    app.conf.redbeat_lock_key = None  # stock RedBeat would run unlocked
    first, second = make(app), make(app)
    first.tick()
    second.tick()
    assert first.is_leader and not second.is_leader
    assert redis_client.exists(KEYS.lease)
    assert "redbeat_lock_key is unset" in caplog.text


def test_a_broker_outage_keeps_claimed_occurrences_pending_until_it_answers(
    redis_url: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    from testbed.redis_server import RedisServer

    with RedisServer(workdir=tmp_path / "broker") as broker:
        app = Celery("broker-outage", set_as_current=False)
        app.conf.update(
            broker_url=broker.url_for(0),
            redbeat_redis_url=redis_url,
            timezone="UTC",
            result_expires=None,
            beat_max_loop_interval=5,
            task_publish_retry=False,
            broker_connection_retry=False,
            broker_connection_max_retries=0,
            **FAST,
        )
        clock = FakeClock()
        scheduler = make(app, clock)
        scheduler.tick()  # leads; the producer connects
        add_due(app, ["a", "b"])
        broker.stop()
        scheduler.tick()  # claims both, the broker refuses them
        assert redis_client.hlen("redbeat::pending") == 2
        assert scheduler.is_leader
        broker.start()
        clock.now += 60  # past any backoff
        deadline = clock.now + 120
        sent: list[Any] = []
        auditor = QueueAuditor(broker.client(0))
        while len(sent) < 2 and clock.now < deadline:
            scheduler.tick()
            sent += auditor.drain()
            clock.now += 5
        assert sorted(m.headers["safe_redbeat_entry"] for m in sent) == ["a", "b"]
        assert redis_client.hlen("redbeat::pending") == 0
        scheduler.close()
        app.close()


def test_celery_options_and_headers_reach_the_message(
    app: Celery, redis_client: redis.Redis
) -> None:
    entry = RedBeatSchedulerEntry(
        "report",
        "noop",
        timedelta(seconds=60),
        args=[1],
        kwargs={"fmt": "pdf"},
        options={"queue": "reports", "priority": 3, "headers": {"tenant": "acme"}},
        app=app,
    )
    entry.last_run_at = datetime.now(timezone.utc) - timedelta(minutes=5)
    entry.save()
    make(app).tick()
    (message,) = QueueAuditor(redis_client, queue="reports").drain()
    assert (message.args, message.kwargs) == ([1], {"fmt": "pdf"})
    assert message.headers["tenant"] == "acme"
    assert message.headers["celery_beat_task"] is True
    assert message.headers["safe_redbeat_entry"] == "report"
    assert message.properties["priority"] == 3
    assert message.task_id == task_id_for(
        "redbeat:report", message.headers["safe_redbeat_scheduled"]
    )


def test_a_hash_tagged_key_prefix_keeps_every_key_in_one_slot(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.conf.redbeat_key_prefix = "{billing}:"
    app.conf.beat_schedule = {
        "invoice": {"task": "noop", "schedule": 60.0, "run_immediately": True}
    }
    scheduler = make(app)
    scheduler.tick()
    keys = {str(k) for k in redis_client.keys("*")}
    assert "{billing}::lock" in keys and "{billing}:invoice" in keys
    assert len(QueueAuditor(redis_client).drain()) == 1
    broker = {"celery", "_kombu.binding.celery", "_kombu.binding_permanent.celery"}
    assert all(k.startswith("{billing}:") for k in keys - broker), keys
