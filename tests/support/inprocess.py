"""Driving SafeRedBeatScheduler tick by tick in the test process, with a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from testbed.settings import FAST

__all__ = ["FAST", "FakeClock", "add_due", "celery_app", "make_app"]


class FakeClock:
    """A monotonic clock the test moves by hand: a pause is ``clock.now += seconds``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(name: str, redis_url: str, **settings: Any) -> Celery:
    """An app whose broker and RedBeat schedule both live in ``redis_url``, FAST settings."""
    app = Celery(name, set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        redbeat_redis_url=redis_url,
        timezone="UTC",
        result_expires=None,
        beat_max_loop_interval=5,
        **{**FAST, **settings},
    )
    return app


@contextmanager
def celery_app(name: str, redis_url: str, **settings: Any) -> Iterator[Celery]:
    """:func:`make_app`, closed on exit."""
    app = make_app(name, redis_url, **settings)
    try:
        yield app
    finally:
        app.close()


def add_due(app: Celery, names: list[str], every: int = 60, task: str = "noop") -> None:
    """Save RedBeat entries running ``task`` every ``every`` seconds, each due now."""
    past = datetime.now(timezone.utc) - timedelta(seconds=every * 2)
    for name in names:
        entry = RedBeatSchedulerEntry(name, task, timedelta(seconds=every), app=app)
        entry.last_run_at = past
        entry.save()
