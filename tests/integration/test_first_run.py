"""When new entries first run, with a real beat process: at their next slot, not at once.

One beat replica, every kind of new entry (static, API, loader), observed for 10 s after
start and again for 10 s after FLUSHDB of the schedule database (Redis lost its data, so
every entry is re-seeded as one that never ran).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis
from celery import Celery

from safe_redbeat import Schedule
from testbed.beat import BeatCluster, BeatProcess, QueueAuditor
from tests.support.inprocess import FAST, celery_app

pytestmark = pytest.mark.integration

OBSERVE = 10.0
#: a daily slot 12 hours away from now: never inside the observation windows
CRON = f"0 {(datetime.now(timezone.utc).hour + 12) % 24} * * *"
STATICS = {
    "static-daily": {"task": "noop", "cron": CRON},
    "static-hourly": {"task": "noop", "every": 3600},
    "static-2s": {"task": "noop", "every": 2},
    "static-now": {"task": "noop", "every": 3600, "run_immediately": True},
}
LOADED = [
    {"name": "loaded-daily", "task": "noop", "schedule": CRON},
    {"name": "loaded-now", "task": "noop", "schedule": 3600, "run_immediately": True},
]
WAITING = {"static-daily", "static-hourly", "api-daily", "loaded-daily"}
AT_ONCE = {"static-now", "api-now", "loaded-now"}


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("first-run", redis_url) as app:
        yield app


def add_api_entries(app: Celery) -> None:
    with Schedule(app) as schedules:
        schedules.upsert("api-daily", "noop", CRON)
        schedules.upsert("api-now", "noop", 3600, run_immediately=True)


def observe(auditor: QueueAuditor, beat: BeatProcess) -> Counter[str]:
    auditor.messages.clear()
    deadline = time.monotonic() + OBSERVE
    while time.monotonic() < deadline:
        auditor.drain()
        time.sleep(0.1)
    auditor.drain()
    assert beat.alive(), beat.log_tail()
    return Counter(str(m.headers.get("safe_redbeat_entry")) for m in auditor.messages)


def check(sent: Counter[str], when: str) -> None:
    text = f"{when}: {dict(sent)}"
    assert not WAITING & set(sent), f"an entry ran before its next slot, {text}"
    assert all(sent[name] == 1 for name in AT_ONCE), f"run_immediately entries, {text}"
    # every 2 s: first at creation + 2 s, then every 2 s
    assert 3 <= sent["static-2s"] <= 6, text


def test_new_entries_run_at_their_next_slot_also_after_redis_lost_its_data(
    beat_procs: BeatCluster, redis_client: redis.Redis, app: Celery
) -> None:
    settings = {
        **FAST,
        "beat_max_loop_interval": 1,
        "safe_redbeat_loader": "tests.apps.loaders:from_env",
        "safe_redbeat_reconcile_seconds": 2.0,
    }
    env = {"SRB_LOADER_ENTRIES": json.dumps(LOADED)}
    auditor = QueueAuditor(redis_client)
    (beat,) = beat_procs.start(settings=settings, schedule=STATICS, extra_env=env)
    beat.wait_for_log(r"acquired the lease", timeout=20)
    add_api_entries(app)
    check(observe(auditor, beat), "after the first start")

    redis_client.flushdb()
    beat.wait_for_log(r"acquired the lease[^\n]*\n(.|\n)*acquired the lease", timeout=20)
    add_api_entries(app)  # the application writes its entries again
    check(observe(auditor, beat), "after FLUSHDB")
