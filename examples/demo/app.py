"""The demo's Celery app: one entry every second, RedBeat settings from the environment."""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("demo", broker=REDIS_URL)
app.conf.update(
    redbeat_redis_url=REDIS_URL,
    beat_scheduler="safe_redbeat.SafeRedBeatScheduler",
    beat_schedule={"say-hello": {"task": "demo.hello", "schedule": 1.0}},
    timezone="UTC",
    result_expires=None,
    beat_enable_remote_control=False,
    # short lease so the demo fails over in seconds; production defaults are 15/10/2
    safe_redbeat_lease_seconds=4,
    safe_redbeat_renew_seconds=3,
    safe_redbeat_retry_seconds=1,
    safe_redbeat_socket_timeout=1,
)


def hello() -> str:
    return "hello"


app.task(name="demo.hello")(hello)
