"""Smoke tests for the test helpers themselves (no safe_redbeat code involved)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis
from celery import Celery

from testbed.beat import BeatCluster, QueueAuditor
from testbed.redis_server import RedisServer, find_redis_server, free_port

pytestmark = pytest.mark.integration


def test_find_redis_server_returns_executable() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_find_redis_server_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="REDIS_SERVER"):
        find_redis_server()


def test_redis_fixture_answers_ping(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    assert redis_server.url.endswith(f":{redis_server.port}/0")
    assert redis_client.ping() is True


def test_redis_db_is_clean_and_isolated(
    redis_server: RedisServer, redis_db: int, redis_client: redis.Redis
) -> None:
    assert 1 <= redis_db <= 15
    assert redis_client.dbsize() == 0
    redis_client.set("leftover", "x")
    assert redis_server.client(0).exists("leftover") == 0


def test_restart_keeps_port_and_aof_data(tmp_path: Path) -> None:
    port = free_port()
    with RedisServer(port, appendonly=True, workdir=tmp_path) as server:
        client = server.client()
        client.set("k", "v")
        first_pid = server.pid
        server.restart()
        assert server.port == port
        assert server.pid != first_pid
        assert client.get("k") == "v"
        server.kill()
        assert not server.running()
        server.start()
        assert client.get("k") == "v"
        client.close()
    assert not server.running()


def test_restart_without_aof_loses_data(tmp_path: Path) -> None:
    with RedisServer(workdir=tmp_path) as server:
        client = server.client()
        client.set("k", "v")
        server.restart()
        assert client.get("k") is None
        client.close()


def test_queue_auditor_sees_send_task(redis_url: str, redis_client: redis.Redis) -> None:
    app = Celery("probe", broker=redis_url, set_as_current=False)
    try:
        first = app.send_task("noop", args=(1, "a"), kwargs={"k": 2}, headers={"x-probe": "one"})
        second = app.send_task("other", headers={"x-probe": "two"}, priority=5)
    finally:
        app.close()
    auditor = QueueAuditor(redis_client)
    auditor.wait_for(lambda msgs: len(msgs) >= 2, timeout=5)
    assert [m.task_id for m in auditor.messages] == [first.id, second.id]
    msg = auditor.by_task("noop")[0]
    assert msg.headers["x-probe"] == "one"
    assert msg.args == [1, "a"]
    assert msg.kwargs == {"k": 2}
    assert auditor.by_task("other")[0].headers["x-probe"] == "two"
    assert auditor.drain() == []
    assert redis_client.llen("celery") == 0


def test_beat_process_runs_stock_redbeat(
    beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    (beat,) = beat_procs.start(
        scheduler="redbeat.RedBeatScheduler",
        schedule={"tick": {"task": "noop", "every": 1.0, "args": [7]}},
        settings={"beat_max_loop_interval": 1},
    )
    auditor = QueueAuditor(redis_client)
    auditor.wait_for(lambda msgs: len(msgs) >= 2, timeout=10)
    assert {m.task for m in auditor.messages} == {"noop"}
    assert auditor.messages[0].args == [7]
    assert beat.alive()
    beat.wait_for_log(r"beat: Starting", timeout=5)
    beat.stop_signal(signal.SIGTERM)
    assert beat.wait(10) == 0, beat.log_tail()


def test_beat_cluster_cleanup_kills_stopped_processes(beat_procs: BeatCluster) -> None:
    procs = beat_procs.start(2, scheduler="redbeat.RedBeatScheduler", loglevel="INFO")
    assert [p.name for p in procs] == ["beat-0", "beat-1"]
    procs[0].sigstop()
    beat_procs.cleanup()
    assert all(not p.alive() for p in procs)
    assert procs[0].returncode == -signal.SIGKILL
