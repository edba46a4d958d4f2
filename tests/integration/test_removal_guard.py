"""The loader's removal guard counts the whole schedule, and static names are one set.

A sharded schedule is reconciled shard by shard (each shard's leader, and ``sync``), but
the guard is about what the *load* would remove: a load that drops more than
``safe_redbeat_loader_max_removals`` (default: half) of the loader's entries removes none
of them, however they fall into shards. Before, the limit was computed per shard, so a
drop spread evenly over 4 shards passed every shard's check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from safe_redbeat import SafeRedBeatScheduler, Schedule
from safe_redbeat.layout import Layout
from safe_redbeat.writethrough import sync_once, upsert_after_commit
from tests.apps import loaders
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = pytest.mark.integration

LOADER = "tests.apps.loaders:load"


def rows(count: int, first: int = 0) -> list[dict[str, Any]]:
    return [
        {"name": f"job-{i}", "task": "noop", "schedule": 3600.0}
        for i in range(first, first + count)
    ]


@pytest.fixture(autouse=True)
def _reset_loader() -> Iterator[None]:
    yield
    loaders.RESULT = []


def stored(schedules: Schedule) -> set[str]:
    return {info.name for info in schedules.list()}


@pytest.mark.parametrize(("shards", "limit"), [(4, None), (4, 5), (1, 5)])
def test_sync_holds_a_drop_larger_than_the_limit_over_the_whole_schedule(
    redis_url: str, redis_client: redis.Redis, shards: int, limit: int | None
) -> None:
    settings: dict[str, Any] = {"safe_redbeat_shards": shards}
    if limit is not None:
        settings["safe_redbeat_loader_max_removals"] = limit
    with celery_app("guard", redis_url, **settings) as app, Schedule(app) as schedules:
        redis_client.set(KEYS.layout, Layout(KEYS, shards).encode())
        loaders.RESULT = rows(40)
        assert sync_once(schedules, LOADER).created
        # drop 22 of 40 (more than half) or 20 (more than 5): spread over every shard
        dropped = 22 if limit is None else 20
        loaders.RESULT = rows(40 - dropped)
        result = sync_once(schedules, LOADER)
        assert result.removed == [], f"{len(result.removed)} removed past the guard"
        assert len(result.held) == dropped
        assert len(stored(schedules)) == 40
        result = sync_once(schedules, LOADER, allow_removals=True)
        assert len(result.removed) == dropped


def test_the_leaders_reconcile_holds_a_drop_spread_over_its_shards(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = {
        "safe_redbeat_shards": 4,
        "safe_redbeat_loader": LOADER,
        "safe_redbeat_reconcile_seconds": 1.0,
    }
    with celery_app("guard-leader", redis_url, **settings) as app, Schedule(app) as schedules:
        clock = FakeClock()
        loaders.RESULT = rows(40)
        scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
        try:
            scheduler.tick()
            assert len(scheduler.balancer.led()) == 4
            assert len(stored(schedules)) == 40
            loaders.RESULT = rows(18)  # 22 of 40 gone: more than half
            clock.now += 2
            scheduler.tick()
            assert len(stored(schedules)) == 40, "the guard let a shard remove its part"
            loaders.RESULT = rows(35)  # 5 of 40 gone: within the limit
            clock.now += 2
            scheduler.tick()
            assert stored(schedules) == {f"job-{i}" for i in range(35)}
        finally:
            scheduler.close()


def test_a_loader_row_named_like_celerys_own_entry_leaves_the_reconcile_complete(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """django-celery-beat's DatabaseScheduler writes ``celery.backend_cleanup`` into its
    table; the leader installs the same entry from Celery's defaults. Before, every leader
    reconcile reported the row as an error and removed nothing, while ``sync`` wrote it."""
    # a result backend that does not expire results itself: Celery adds its cleanup entry
    settings = {"safe_redbeat_loader": LOADER, "result_backend": f"file://{tmp_path}"}
    with celery_app("reserved", redis_url, **settings) as app, Schedule(app) as schedules:
        app.conf.result_expires = 3600
        cleanup = {"name": "celery.backend_cleanup", "task": "celery.backend_cleanup",
                   "schedule": "0 4 * * *"}  # fmt: skip
        loaders.RESULT = [*rows(3), cleanup]
        scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
        try:
            scheduler.tick()
        finally:
            scheduler.close()
        report = redis_client.get(KEYS.reconcile)
        assert report is not None and '"complete":true' in report, report
        assert redis_client.smembers(KEYS.statics) == {"celery.backend_cleanup"}
        assert "celery.backend_cleanup" not in redis_client.smembers(KEYS.loaded)
        # sync and write-through agree with the leader: the static entry is not theirs
        result = sync_once(schedules, LOADER)
        assert result.complete and "celery.backend_cleanup" not in result.created
        assert upsert_after_commit(schedules, cleanup)
        assert "celery.backend_cleanup" not in redis_client.smembers(KEYS.loaded)
        # a row deleted from the table (raw SQL, no signal) is removed at the next round
        loaders.RESULT = [*rows(2), cleanup]
        assert sync_once(schedules, LOADER).removed == ["job-2"]
