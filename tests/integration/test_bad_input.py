"""Bad input: each case gets one clear log line naming the key or setting, the rest of
the schedule keeps being dispatched, and nothing is deleted that was not already gone.

Driven in this process (``tick()`` called directly) against the real Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
import redis
from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from safe_redbeat import ConfigurationError, SafeRedBeatScheduler
from testbed.beat import QueueAuditor
from testbed.redis_server import free_port
from tests.support.inprocess import FAST, FakeClock, celery_app

pytestmark = pytest.mark.integration

GOOD = ["good-1", "good-2", "good-3"]
VALID_DEFINITION = {
    "name": "x",
    "task": "noop",
    "args": [],
    "kwargs": {},
    "options": {},
    "schedule": {"__type__": "interval", "every": 60.0, "relative": False},
    "enabled": True,
}


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("bad-input", redis_url) as app:
        yield app


def add_due(app: Celery, names: list[str]) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=120)
    for name in names:
        entry = RedBeatSchedulerEntry(name, "noop", timedelta(seconds=60), app=app)
        entry.last_run_at = past
        entry.save()


def write_raw(client: redis.Redis, name: str, fields: dict[str, str]) -> str:
    """An entry hash written by hand (a broken loader, a manual edit), due now."""
    key = f"redbeat:{name}"
    client.hset(key, mapping=cast("dict[Any, Any]", fields))
    client.zadd("redbeat::schedule", {key: int(datetime.now(timezone.utc).timestamp()) - 5})
    return key


def snapshot(client: redis.Redis, keys: list[str]) -> dict[str, Any]:
    return {key: client.hgetall(key) for key in keys}


def run_with_bad_entry(
    app: Celery,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    name: str,
    fields: dict[str, str],
) -> tuple[str, list[str], dict[str, Any]]:
    """Elect a leader, add the bad entry and three good ones, tick twice.

    Returns the bad key, the warnings and errors logged, and the bad hash before the ticks.
    """
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    scheduler.tick()
    assert scheduler.is_leader
    key = write_raw(client, name, fields)
    add_due(app, GOOD)
    before = snapshot(client, [key])
    keys_before = set(client.keys("redbeat:*"))
    auditor = QueueAuditor(client)
    with caplog.at_level(logging.WARNING, logger="safe_redbeat"):
        scheduler.tick()
        scheduler.tick()  # the same bad entry is not reported twice
    sent = sorted(m.headers["safe_redbeat_entry"] for m in auditor.drain())
    assert sent == GOOD, f"the good entries must still be dispatched, sent {sent}"
    assert snapshot(client, [key]) == before, "the bad entry's hash must be left as it was"
    assert client.zscore("redbeat::schedule", key) is not None, "its schedule slot is kept"
    missing = keys_before - set(client.keys("redbeat:*")) - {"redbeat::pending"}
    assert not missing, f"keys deleted: {missing}"
    assert scheduler.is_leader
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return key, errors, before


def test_malformed_json_in_an_entry_is_logged_with_its_key_and_left_alone(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    key, errors, _ = run_with_bad_entry(
        app, redis_client, caplog, "bad-json", {"definition": '{"task": "noop", "sched'}
    )
    assert len(errors) == 1, errors
    assert key in errors[0] and "definition" in errors[0] and "JSON" in errors[0]


def test_an_unknown_schedule_type_is_logged_with_its_key_and_left_alone(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    definition = dict(VALID_DEFINITION, schedule={"__type__": "lunar", "phase": "full"})
    key, errors, _ = run_with_bad_entry(
        app, redis_client, caplog, "bad-type", {"definition": json.dumps(definition)}
    )
    assert len(errors) == 1, errors
    assert key in errors[0] and "'lunar'" in errors[0] and "schedule" in errors[0]


def test_a_non_numeric_version_is_logged_with_its_key_and_left_alone(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    key, errors, _ = run_with_bad_entry(
        app,
        redis_client,
        caplog,
        "bad-version",
        {"definition": json.dumps(VALID_DEFINITION), "version": "seven"},
    )
    assert len(errors) == 1, errors
    assert key in errors[0] and "version" in errors[0] and "'seven'" in errors[0]


def test_a_schedule_slot_without_its_hash_is_dropped_and_nothing_else(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    scheduler.tick()
    add_due(app, GOOD)
    ghost = "redbeat:ghost"
    redis_client.zadd("redbeat::schedule", {ghost: 1})
    keys_before = set(redis_client.keys("redbeat:*"))
    auditor = QueueAuditor(redis_client)
    with caplog.at_level(logging.WARNING, logger="safe_redbeat"):
        scheduler.tick()
        scheduler.tick()
    sent = sorted(m.headers["safe_redbeat_entry"] for m in auditor.drain())
    assert sent == GOOD
    warnings = [r.getMessage() for r in caplog.records if "ghost" in r.getMessage()]
    assert len(warnings) == 1 and "no hash" in warnings[0], warnings
    assert redis_client.zscore("redbeat::schedule", ghost) is None, "the dangling slot goes"
    assert not redis_client.exists(ghost), "and no hash is invented for it"
    missing = keys_before - set(redis_client.keys("redbeat:*")) - {"redbeat::pending"}
    assert not missing, f"keys deleted: {missing}"
    for name in GOOD:
        assert redis_client.zscore("redbeat::schedule", f"redbeat:{name}") is not None


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (
            {"safe_redbeat_lease_seconds": 5, "safe_redbeat_renew_seconds": 5},
            {"safe_redbeat_lease_seconds", "safe_redbeat_renew_seconds"},
        ),
        (
            {"safe_redbeat_renew_seconds": 2, "safe_redbeat_retry_seconds": 1.8},
            {"safe_redbeat_renew_seconds", "safe_redbeat_retry_seconds"},
        ),
        (
            {"safe_redbeat_renew_seconds": 2, "safe_redbeat_socket_timeout": 2},
            {"safe_redbeat_socket_timeout", "safe_redbeat_renew_seconds"},
        ),
    ],
)
def test_settings_breaking_the_lease_rule_fail_at_construction_naming_them(
    app: Celery, redis_client: redis.Redis, settings: dict[str, float], named: set[str]
) -> None:
    app.conf.update(settings)
    with pytest.raises(ConfigurationError) as info:
        SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    assert named <= set(info.value.settings)
    assert all(name in str(info.value) for name in named), str(info.value)
    assert redis_client.keys("redbeat:*") == [], "nothing is written by a failed start"


def test_a_redis_that_refuses_connections_at_startup_logs_the_sanitized_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://beat:s3cret-pw@127.0.0.1:{free_port()}/0"
    app = Celery("refused", set_as_current=False)
    app.conf.update(
        broker_url=url, redbeat_redis_url=url, timezone="UTC", result_expires=None, **FAST
    )
    try:
        scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
        with caplog.at_level(logging.WARNING, logger="safe_redbeat"):
            delays = [scheduler.tick() for _ in range(3)]
    finally:
        app.close()
    assert all(0 < d <= 30 for d in delays), delays
    assert not scheduler.is_leader
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret-pw" not in text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # further failures are logged at DEBUG
    assert "redis://beat:**@127.0.0.1" in warnings[0], warnings
