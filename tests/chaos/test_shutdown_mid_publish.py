"""SIGTERM while the leader publishes (a rolling restart landing mid-burst).

Celery's SIGTERM handler calls ``Service.sync()`` -> ``scheduler.close()`` (which releases
the broker connection) and then raises SystemExit from whatever frame was running. When
that frame was reading a publish reply, the read fails on the connection just closed and
that error replaces the SystemExit. The scheduler must still stop: a replica that goes
on after close() takes the lease again and ignores the SIGTERM (seen in a chaos run: the
pod kept leading until SIGKILLed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from safe_redbeat import SafeRedBeatScheduler
from testbed.beat import QueueAuditor
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("sigterm", redis_url) as app:
        yield app


@pytest.mark.parametrize("mode", ["atomic", "publish"])
def test_close_during_a_publish_stops_the_scheduler_even_when_the_exit_is_swallowed(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    clock = FakeClock()
    app.conf.safe_redbeat_enqueue = mode  # atomic: close() lands on a message being built
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
    scheduler.tick()
    assert scheduler.is_leader
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    for name in "abcd":
        entry = RedBeatSchedulerEntry(name, "noop", timedelta(hours=1), app=app)
        entry.last_run_at = past
        entry.save()

    real_send = app.send_task
    published: list[str] = []

    def send_task(*args: Any, **kwargs: Any) -> Any:
        published.append(kwargs["headers"]["safe_redbeat_entry"])
        if len(published) == 2:
            scheduler.close()  # the SIGTERM handler, on top of this publish
            raise ValueError("I/O operation on closed file.")  # replaces its SystemExit
        return real_send(*args, **kwargs)

    monkeypatch.setattr(app, "send_task", send_task)
    with pytest.raises(SystemExit):
        for _ in range(3):
            scheduler.tick()
            clock.now += 0.6
    assert len(published) == 2, f"published after close(): {published[2:]}"
    assert not redis_client.exists(KEYS.lease), "the lease was taken again after close()"
    delivered = {m.headers["safe_redbeat_entry"] for m in QueueAuditor(redis_client).drain()}
    pending = {json.loads(raw)["entry"] for raw in redis_client.hvals("redbeat::pending")}
    if mode == "atomic":
        # nothing was claimed: the claim (and enqueue) comes after every message is built
        assert delivered == set() and pending == set(), (delivered, pending)
        due = redis_client.zcount("redbeat::schedule", 0, datetime.now(timezone.utc).timestamp())
        assert due == 4, "the next leader finds all four due"
    else:
        # what did not reach the broker (a discarded broker batch included) stays pending
        # for the next leader; what did was acknowledged
        assert delivered | pending == set("abcd") and not delivered & pending, (
            delivered,
            pending,
        )
