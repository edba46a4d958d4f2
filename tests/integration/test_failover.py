"""Real `celery beat` replicas with SafeRedBeatScheduler, and real faults on the lease.

Fast lease settings keep each test short: lease 3 s, renew deadline 2 s, retry 0.5 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testbed.beat import BeatCluster, BeatProcess, Message, QueueAuditor
from testbed.redis_server import RedisServer
from testbed.settings import FAST, LEASE, RETRY
from tests.support import KEYS

pytestmark = pytest.mark.integration

EVERY_SECOND = {"tick": {"task": "noop", "every": 1}}
#: a 1 s entry is sent at most this long after the replica that leads can dispatch
INTERVAL_SLACK = 1.5


def fence_of(message: Message) -> int:
    return int(message.headers["safe_redbeat_fence"])


def leader_of(procs: list[BeatProcess], client: redis.Redis) -> BeatProcess:
    """The replica whose pid is in the lease value."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        value = client.get(KEYS.lease)
        if value:
            for proc in procs:
                if f'"pid":{proc.pid},' in value:
                    return proc
        time.sleep(0.05)
    raise AssertionError(f"no replica holds the lease: {client.get(KEYS.lease)!r}")


def first_with_new_fence(
    auditor: QueueAuditor, old_fence: int, timeout: float
) -> tuple[Message, float]:
    """Wait for the first message sent under a fence other than ``old_fence``."""
    deadline = time.monotonic() + timeout
    seen = len(auditor.messages)
    while time.monotonic() < deadline:
        auditor.drain()
        for message in auditor.messages[seen:]:
            if fence_of(message) != old_fence:
                return message, time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"no message with a fence other than {old_fence} in {timeout}s")


def assert_no_duplicates(messages: list[Message]) -> None:
    occurrences = [
        (m.headers["safe_redbeat_entry"], m.headers["safe_redbeat_scheduled"]) for m in messages
    ]
    assert len(occurrences) == len(set(occurrences)), "an occurrence was sent twice"
    ids = [m.task_id for m in messages]
    assert len(ids) == len(set(ids)), "a task id was sent twice"


@pytest.fixture
def auditor(redis_client: redis.Redis) -> QueueAuditor:
    return QueueAuditor(redis_client)


def start_two(beat_procs: BeatCluster, auditor: QueueAuditor) -> list[BeatProcess]:
    procs = beat_procs.start(2, settings=FAST, schedule=EVERY_SECOND)
    auditor.wait_for(lambda msgs: len(msgs) >= 2, timeout=15)
    return procs


def leader_and_fence(
    beat_procs: BeatCluster, auditor: QueueAuditor, client: redis.Redis
) -> tuple[list[BeatProcess], BeatProcess, int]:
    """Two replicas, the leader, and the fence of the last message it sent."""
    procs = start_two(beat_procs, auditor)
    leader = leader_of(procs, client)
    auditor.drain()
    return procs, leader, fence_of(auditor.messages[-1])


def test_two_replicas_exactly_one_dispatches(
    beat_procs: BeatCluster, auditor: QueueAuditor, redis_client: redis.Redis
) -> None:
    procs = start_two(beat_procs, auditor)
    auditor.wait_for(lambda msgs: len(msgs) >= 5, timeout=15)
    leader = leader_of(procs, redis_client)
    fences = {fence_of(m) for m in auditor.messages}
    assert len(fences) == 1, f"more than one leader sent: fences {fences}"
    assert {m.headers["origin"] for m in auditor.messages} == {
        f"gen{leader.pid}@" + (auditor.messages[0].headers["origin"].split("@", 1)[1])
    }
    standby = next(p for p in procs if p is not leader)
    assert "acquired the lease" not in standby.log()
    assert "standby; the lease is held by" in standby.log()
    assert_no_duplicates(auditor.messages)
    assert all(p.alive() for p in procs)


def test_deleting_the_lock_key_does_not_crash_and_dispatch_resumes(
    beat_procs: BeatCluster, auditor: QueueAuditor, redis_client: redis.Redis
) -> None:
    procs = start_two(beat_procs, auditor)
    old_fence = fence_of(auditor.messages[-1])
    for _ in range(3):
        redis_client.delete(KEYS.lease)
        deleted_at = time.monotonic()
        message, seen_at = first_with_new_fence(auditor, old_fence, timeout=10)
        assert seen_at - deleted_at < RETRY + INTERVAL_SLACK + 1.0
        old_fence = fence_of(message)
    assert all(p.alive() for p in procs), beat_procs.report()
    assert_no_duplicates(auditor.messages)


def test_deleting_every_key_reinstalls_static_entries(
    beat_procs: BeatCluster, auditor: QueueAuditor, redis_client: redis.Redis
) -> None:
    procs = start_two(beat_procs, auditor)
    old_fence = fence_of(auditor.messages[-1])
    keys = list(redis_client.scan_iter("redbeat:*"))
    assert "redbeat:tick" in keys
    redis_client.delete(*keys)
    first_with_new_fence(auditor, old_fence, timeout=10)
    assert redis_client.hget("redbeat:tick", "definition")
    assert redis_client.sismember("redbeat::statics", "tick")
    assert all(p.alive() for p in procs), beat_procs.report()


def test_sigkill_of_the_leader_standby_takes_over_within_lease_plus_retry(
    beat_procs: BeatCluster, auditor: QueueAuditor, redis_client: redis.Redis
) -> None:
    procs, leader, old_fence = leader_and_fence(beat_procs, auditor, redis_client)
    leader.kill()
    killed_at = time.monotonic()
    _message, seen_at = first_with_new_fence(auditor, old_fence, timeout=LEASE + 10)
    took = seen_at - killed_at
    assert took < LEASE + RETRY + INTERVAL_SLACK, f"takeover took {took:.2f}s"
    standby = next(p for p in procs if p is not leader)
    assert standby.alive()
    assert_no_duplicates(auditor.messages)


def test_sigterm_of_the_leader_hands_over_in_about_the_retry_period(
    beat_procs: BeatCluster, auditor: QueueAuditor, redis_client: redis.Redis
) -> None:
    _procs, leader, old_fence = leader_and_fence(beat_procs, auditor, redis_client)
    leader.terminate()
    terminated_at = time.monotonic()
    assert leader.wait(10) == 0
    assert "released the lease" in leader.log()
    _message, seen_at = first_with_new_fence(auditor, old_fence, timeout=10)
    took = seen_at - terminated_at
    assert took < 2 * RETRY + INTERVAL_SLACK, f"handover took {took:.2f}s"
    assert_no_duplicates(auditor.messages)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path / "redis") as server:
        yield server


def test_redis_restart_without_persistence_no_crash_and_resumes(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    cluster = BeatCluster(tmp_path / "logs", redis_url=own_redis.url_for(0))
    client = own_redis.client(0)
    auditor = QueueAuditor(client)
    try:
        procs = cluster.start(2, settings=FAST, schedule=EVERY_SECOND)
        auditor.wait_for(lambda msgs: len(msgs) >= 2, timeout=15)
        old_fence = fence_of(auditor.messages[-1])
        own_redis.restart()
        restarted_at = time.monotonic()
        message, seen_at = first_with_new_fence(auditor, old_fence, timeout=30)
        assert fence_of(message) > old_fence, "a fence handed out after data loss must grow"
        assert all(p.alive() for p in procs), cluster.report()
        assert client.hget("redbeat:tick", "definition"), "statics were not reinstalled"
        assert seen_at - restarted_at < LEASE + 5
    finally:
        cluster.cleanup()
        client.close()
