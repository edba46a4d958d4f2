"""A reply that Redis sent but the leader never read (connection cut, socket timeout).

Driven in this process, tick by tick, against the real Redis: the claim script (or the
acknowledgement) runs inside Redis, then the connection fails before the reply arrives.
The leader keeps its lease, so no new leader will republish the pending records for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler
from safe_redbeat.model.occurrence import task_id_for
from testbed.beat import QueueAuditor
from tests.support import inprocess
from tests.support.inprocess import FakeClock, celery_app

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("lost-replies", redis_url) as app:
        yield app


def add_due(app: Celery, names: list[str]) -> None:
    inprocess.add_due(app, names, every=3600)


def once_then_fail(real: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``real`` (Redis does the work), then lose the reply — once."""
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == 1:
            raise redis.ConnectionError("connection cut before the reply was read")
        return result

    return wrapper


def tick_until(scheduler: SafeRedBeatScheduler, clock: FakeClock, done: Callable[[], bool]) -> int:
    for ticks in range(1, 21):
        clock.now += 0.6
        scheduler.tick()
        if done():
            return ticks
    return -1


@pytest.mark.parametrize("mode", ["atomic", "publish"])
def test_claimed_occurrences_whose_claim_reply_was_lost_are_still_published(
    app: Celery, redis_client: redis.Redis, mode: str
) -> None:
    clock = FakeClock()
    app.conf.safe_redbeat_enqueue = mode
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
    scheduler.tick()  # elected, nothing due yet
    assert scheduler.is_leader
    add_due(app, ["a", "b", "c"])
    scores: dict[str, float] = dict(
        cast(Any, redis_client.zrange("redbeat::schedule", 0, -1, withscores=True))
    )
    auditor = QueueAuditor(redis_client)
    scheduler.shards[0].scripts.claim = once_then_fail(scheduler.shards[0].scripts.claim)
    scheduler.tick()  # the claim runs in Redis, its reply is lost
    if mode == "atomic":  # the claim was the enqueue: the messages are in the queue
        assert len(auditor.drain()) == 3 and not redis_client.exists("redbeat::pending")
    else:
        assert redis_client.hlen("redbeat::pending") == 3, "the claim did run inside Redis"
    assert scheduler.is_leader, "a lost reply is not a lost lease"

    ticks = tick_until(scheduler, clock, lambda: len(auditor.drain()) == 0 and not
                       redis_client.exists("redbeat::pending"))  # fmt: skip
    auditor.drain()
    sent = sorted(m.task_id for m in auditor.messages)
    expected = sorted(
        task_id_for(f"redbeat:{name}", int(scores[f"redbeat:{name}"])) for name in "abc"
    )
    assert ticks > 0 and sent == expected, (
        f"after a lost claim reply the leader kept its lease; the 3 claimed occurrences "
        f"must still be sent once each: sent {len(sent)} in {ticks} ticks, pending left "
        f"{redis_client.hlen('redbeat::pending')}"
    )


def test_an_acknowledgement_whose_reply_was_lost_is_resent_soon_with_the_same_id(
    app: Celery, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    app.conf.safe_redbeat_enqueue = "publish"  # acknowledgements exist on this path only
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
    scheduler.tick()
    add_due(app, ["a"])
    real_hdel = scheduler.client.hdel
    scheduler.client.hdel = once_then_fail(real_hdel)
    scheduler.tick()  # published, then the ack's reply is lost... the ack did run
    auditor = QueueAuditor(redis_client)
    assert len(auditor.drain()) == 1

    # the ack ran, so nothing is pending; now lose an ack that did NOT run
    scheduler.client.hdel = real_hdel
    add_due(app, ["b"])

    def fail_before(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection cut before the ack was sent")

    scheduler.client.hdel = fail_before
    # the shard backs off after the Redis error, then publishes "b" and fails to ack it
    assert tick_until(scheduler, clock, lambda: bool(redis_client.llen("celery"))) > 0
    assert [m.headers["safe_redbeat_entry"] for m in auditor.drain()] == ["b"]
    assert redis_client.hlen("redbeat::pending") == 1, "the unacknowledged record stays"
    scheduler.client.hdel = real_hdel
    ticks = tick_until(scheduler, clock, lambda: not redis_client.exists("redbeat::pending"))
    copies = [m for m in auditor.drain() if m.headers["safe_redbeat_entry"] == "b"]
    assert ticks > 0, "a pending record left by a failed ack must be cleared by this leader"
    assert len(copies) == 1 and copies[0].task_id == auditor.messages[1].task_id, (
        "the second copy (ack lost) carries the same task id"
    )
