"""Backups: ``safe-redbeat export`` / ``import`` and :mod:`safe_redbeat.backup`, on the suite's
Redis: every entry comes back after the data is gone, with its run history, its owner and
the next run computed from its last; on any layout; next to what Redis holds already."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery

from safe_redbeat import Schedule
from safe_redbeat.backup import InvalidExport, export_schedule, import_schedule
from safe_redbeat.model.codec import encode_meta
from safe_redbeat.store.layout import Layout
from tests.integration.test_cli import cli, cli_json, env_for, one_line_error
from tests.support import KEYS
from tests.support.inprocess import celery_app

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("backup", redis_url) as app:
        yield app


def ran(client: redis.Redis, key: str, last_run_at: datetime, runs: int) -> None:
    """Run history as the leader's claim writes it."""
    client.hset(key, "meta", encode_meta(last_run_at, runs))


def snapshot(schedules: Schedule) -> dict[str, tuple[Any, ...]]:
    return {
        e.name: (e.spec.definition(), e.lifecycle, e.last_run_at, e.total_run_count, e.state)
        for e in schedules.list()
    }


def seed(schedules: Schedule, client: redis.Redis, keys_of: Any) -> dict[str, datetime]:
    """Entries of every kind and owner, with run history; the next run each must get."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    schedules.upsert("hourly", "noop", 3600, args=[1], kwargs={"k": "v"}, options={"queue": "q"})
    schedules.upsert("nightly", "noop", "0 3 * * *", tz="Europe/Berlin")
    schedules.upsert("limited", "noop", 60, max_runs=5)
    schedules.once("once", "noop", now + timedelta(days=2))
    schedules.upsert("paused", "noop", 600, enabled=False)
    schedules.upsert("static", "noop", 120)
    schedules.upsert("loaded", "noop", 300, start_time=now - timedelta(days=1))
    client.sadd(keys_of("static").statics, "static")
    client.sadd(keys_of("loaded").loader, "loaded")
    hourly_last = now - timedelta(minutes=30)
    ran(client, keys_of("hourly").entry("hourly"), hourly_last, 7)
    local = now.astimezone(BERLIN)
    last_3am = local.replace(hour=3, minute=0, second=0)
    last_3am = last_3am if last_3am <= local else last_3am - timedelta(days=1)
    ran(client, keys_of("nightly").entry("nightly"), last_3am, 40)
    ran(client, keys_of("limited").entry("limited"), now - timedelta(seconds=10), 3)
    return {
        "hourly": hourly_last + timedelta(hours=1),
        "nightly": (last_3am + timedelta(days=1)).replace(hour=3).astimezone(timezone.utc),
        "limited": now - timedelta(seconds=10) + timedelta(seconds=60),
    }


def test_export_wipe_import_restores_every_entry_with_its_run_history(
    app: Celery, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = env_for(redis_url, tmp_path)
    with Schedule(app) as schedules:
        expected_next = seed(schedules, redis_client, lambda _name: KEYS)
        before = snapshot(schedules)
    backup = tmp_path / "backup.json"

    written = cli_json(env, "export", "-o", str(backup))
    assert (written["entries"], written["redis_only"], written["malformed"]) == (7, 5, 0)
    document = json.loads(backup.read_text())
    owners = {item["name"]: item["owner"] for item in document["entries"]}
    assert owners == {
        **dict.fromkeys(["hourly", "nightly", "limited", "once", "paused"], "none"),
        "static": "statics",
        "loaded": "loader",
    }
    redis_client.flushdb()

    restored = cli_json(env, "import", str(backup))
    assert restored["created"] == sorted(before) and restored["complete"]
    with Schedule(app) as schedules:
        assert snapshot(schedules) == before
        for name, when in expected_next.items():
            assert schedules.get(name).next_run_at == when, name
        assert {e.version for e in schedules.list()} == {1}
    assert redis_client.smembers(KEYS.statics) == {"static"}
    assert redis_client.smembers(KEYS.loader) == {"loaded"}

    again = cli_json(env, "import", str(backup))
    assert again["unchanged"] == sorted(before) and again["created"] == []


def test_import_on_another_layout_next_to_what_redis_holds(
    app: Celery, redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.layout, Layout(KEYS, 3).encode())
    with Schedule(app) as schedules:
        seed(schedules, redis_client, Layout(KEYS, 3).keys_for)
        before = snapshot(schedules)
        document = export_schedule(schedules)
    assert document["layout"] == {"shards": 3}
    redis_client.flushdb()

    with Schedule(app) as schedules:  # safe_redbeat_shards = 1: RedBeat's own keys
        dry = import_schedule(schedules, document, dry_run=True)
        assert dry.created == sorted(before) and redis_client.dbsize() == 0
        assert import_schedule(schedules, document).created == sorted(before)
        assert not redis_client.exists(KEYS.layout) and redis_client.zcard(KEYS.schedule) == 7
        assert snapshot(schedules) == before

        schedules.update("hourly", args=[2])
        schedules.delete("paused")
        history = schedules.get("limited")
        schedules.update("limited", max_runs=9)
        kept = import_schedule(schedules, document)
        assert (kept.kept, kept.created) == (["hourly", "limited"], ["paused"])
        assert schedules.get("hourly").args == (2,)
        replaced = import_schedule(schedules, document, replace=True)
        assert sorted(replaced.replaced) == ["hourly", "limited"]
        assert snapshot(schedules)["hourly"] == before["hourly"]
        limited = schedules.get("limited")
        assert limited.lifecycle.max_runs == 5 and limited.version == history.version + 2
        # the run history Redis holds is kept (newer than the file's)
        assert limited.total_run_count == history.total_run_count

    redis_client.flushdb()
    app.conf.safe_redbeat_shards = 3  # an emptied Redis gets the configured layout first
    broken = {**document, "entries": [*document["entries"], {"name": "bad", "definition": {}}]}
    with Schedule(app) as schedules:
        result = import_schedule(schedules, broken)
        assert len(result.created) == 7 and not result.complete
        assert result.errors == ["entry 'bad': definition.task: must be a non-empty task name"]
        assert snapshot(schedules) == before
    assert Layout(KEYS, 3).encode() == redis_client.get(KEYS.layout)
    with pytest.raises(InvalidExport, match="format_version 2"):
        import_schedule(Schedule(app, client=redis_client), {**document, "format_version": 2})


def test_files_that_cannot_be_imported_are_one_line_errors(redis_url: str, tmp_path: Path) -> None:
    env = env_for(redis_url, tmp_path)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert "is not JSON" in one_line_error(cli(env, "import", str(garbage)), 2)
    garbage.write_text('{"entries": []}')
    assert "not a safe-redbeat export" in one_line_error(cli(env, "import", str(garbage)), 2)
    missing = cli(env, "import", str(tmp_path / "missing.json"))
    assert "cannot read" in one_line_error(missing, 2)
