"""Whether Redis persists (AOF, RDB, unknown where denied), which entries only Redis holds,
and the leader's one WARNING at start-up when a restart of Redis would lose them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler, Schedule
from safe_redbeat.scheduler import PERSISTENCE_CHECK_AFTER
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout
from safe_redbeat.store.persistence import Persistence, count_redis_only, read_persistence
from testbed.redis_server import RedisServer
from tests.integration.test_cli import HEALTH_KEYS, cli, cli_json, env_for
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("persistence", redis_url) as app:
        yield app


def test_what_redis_persists_and_unknown_where_it_is_denied(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path)  # its own: CONFIG SET must not reach the others
    server.start()
    try:
        client = server.client(0)
        assert read_persistence(client) == Persistence(aof=False, rdb=False)
        assert (read_persistence(client).mode, read_persistence(client).persists) == ("none", False)
        client.config_set("save", "3600 1")
        assert read_persistence(client).mode == "rdb"
        client.config_set("appendonly", "yes")
        assert read_persistence(client).to_json() == {
            "mode": "aof+rdb",
            "persists": True,
            "aof": True,
            "rdb": True,
        }
        client.acl_setuser(
            "probe",
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            commands=["+@all", "-info", "-config"],
        )
        with redis.Redis(
            port=server.port, username="probe", password="pw", decode_responses=True
        ) as denied:
            assert read_persistence(denied) == Persistence(None, None)
            assert (read_persistence(denied).mode, read_persistence(denied).persists) == (
                "unknown",
                None,
            )
        client.config_set("save", "")
        client.acl_setuser("probe", enabled=True, commands=["+info"])
        with redis.Redis(
            port=server.port, username="probe", password="pw", decode_responses=True
        ) as half:
            # AOF on is enough to know; with AOF off, RDB unknown means unknown
            assert read_persistence(half) == Persistence(True, None)
            assert read_persistence(half).persists is True
        client.config_set("appendonly", "no")
        client.close()
    finally:
        server.stop()


def test_redis_only_entries_are_those_neither_statics_nor_the_loader_own(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.conf.safe_redbeat_shards = 3
    layout = Layout(KEYS, 3)
    redis_client.set(KEYS.layout, layout.encode())
    with Schedule(app) as schedules:
        for name in ("manual-1", "manual-2", "static", "loaded"):
            schedules.upsert(name, "noop", 3600)
    redis_client.sadd(layout.keys_for("static").statics, "static")
    redis_client.sadd(layout.keys_for("loaded").loader, "loaded")
    assert count_redis_only(redis_client, layout.all_keys()) == 2
    assert count_redis_only(redis_client, [Keys("other:", "other::lock")]) == 0


def test_a_leader_warns_once_when_redis_would_lose_entries_only_it_holds(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.beat_schedule = {"static": {"task": "noop", "schedule": 3600}}

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "persists nothing" in r.getMessage()
        ]

    with caplog.at_level(logging.WARNING, logger="safe_redbeat"):
        # only statics: a restart of Redis loses nothing they cannot write again
        clock = FakeClock()
        quiet = SafeRedBeatScheduler(app=app, monotonic=clock)
        quiet.tick()
        assert quiet.is_leader and redis_client.sismember(KEYS.statics, "static")
        clock.now += PERSISTENCE_CHECK_AFTER
        quiet.tick()
        assert quiet._persistence_checked
        quiet.close()
        assert warnings() == []

        with Schedule(app) as schedules:
            schedules.upsert("manual", "noop", 3600)
        clock = FakeClock()
        leader = SafeRedBeatScheduler(app=app, monotonic=clock)
        leader.tick()
        assert leader.is_leader and warnings() == []  # never on the first ticks it leads
        clock.now += PERSISTENCE_CHECK_AFTER - 1
        leader.tick()
        assert warnings() == []
        for _tick in range(3):
            clock.now += 1
            leader.tick()
        leader.close()
    (line,) = warnings()
    assert "holds 1 entry that is not from beat_schedule or the loader" in line
    assert "safe-redbeat export" in line


def test_status_and_health_say_whether_redis_persists(
    redis_url: str, tmp_path: Path, app: Celery
) -> None:
    with Schedule(app) as schedules:
        schedules.upsert("manual", "noop", 3600)
    env = env_for(redis_url, tmp_path)
    status = cli_json(env, "status")
    assert status["persistence"] == {"mode": "none", "persists": False, "aof": False, "rdb": False}
    assert status["redis_only_entries"] == 1
    unled = cli(env, "health", "--cluster", "--json")
    assert unled.returncode == 1, unled.stderr
    health = json.loads(unled.stdout)
    assert set(health) == HEALTH_KEYS and health["persistence"]["mode"] == "none"
