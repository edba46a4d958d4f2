"""An rrule that has been running for a while costs what a new one costs.

Before, the slot search walked an rrule from its dtstart once per occurrence in a window:
a MINUTELY rule a month old made every tick take tens of seconds, so the leader lost its
lease every tick and no replica sent anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis
from celery import Celery
from redbeat.schedules import rrule

from safe_redbeat import SafeRedBeatScheduler, Schedule
from tests.support import KEYS
from tests.support.inprocess import FAST, celery_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("old-rules", redis_url) as app:
        yield app


@pytest.mark.parametrize("freq", ["MINUTELY", "SECONDLY"])
def test_a_year_old_rrule_is_dispatched_within_the_renew_deadline(
    app: Celery, redis_client: redis.Redis, freq: str
) -> None:
    now = datetime.now(timezone.utc)
    schedules = Schedule(app)
    started = time.perf_counter()
    schedules.upsert("old-rule", "noop", rrule(freq, dtstart=now - timedelta(days=365)))
    schedules.upsert("good", "noop", 60.0)
    assert time.perf_counter() - started < 1.0
    # both due now, with a run history (as after weeks of running)
    for name in ("old-rule", "good"):
        redis_client.zadd(KEYS.schedule, {KEYS.entry(name): int(now.timestamp()) - 1})
        redis_client.hset(
            KEYS.entry(name),
            "meta",
            f'{{"last_run_at": {{"__type__": "datetime", "year": {now.year}, "month": '
            f'{now.month}, "day": {now.day}, "hour": 0, "minute": 0, "second": 0, '
            '"microsecond": 0, "timezone": "UTC"}, "total_run_count": 9}',
        )
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        scheduler.tick()  # acquires
        started = time.perf_counter()
        scheduler.tick()
        took = time.perf_counter() - started
    finally:
        scheduler.close()
    assert took < FAST["safe_redbeat_renew_seconds"] / 4, f"one tick took {took:.2f} s"
    sent = redis_client.llen("celery")
    assert sent == 2, f"{sent} messages sent; the old rule and the good entry were due"
