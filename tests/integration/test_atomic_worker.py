"""Atomically enqueued messages, consumed by a real ``celery worker``.

One ``celery beat`` in ``atomic`` mode and one prefork worker share one Redis server. The
entries use what a worker reads from a message: retries with ``acks_late``, a priority,
``countdown``, ``expires``, a custom header, a routed queue. Every run is recorded by the
task itself (testbed.worker).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest
import redis

from testbed.beat import BeatCluster
from testbed.worker import WorkerProcess, runs
from tests.support import KEYS

pytestmark = pytest.mark.integration

SCHEDULE: dict[str, dict[str, Any]] = {
    "plain": {"task": "record", "every": 1, "args": [1, "two"], "kwargs": {"k": "v"}},
    "retried": {"task": "flaky", "every": 1},
    "urgent": {"task": "record", "every": 1, "options": {"priority": 9}},
    "later": {"task": "record", "every": 1, "options": {"countdown": 1.5}},
    "stale": {"task": "record", "every": 1, "options": {"countdown": 2, "expires": 1}},
    "tenant": {"task": "record", "every": 1, "options": {"headers": {"tenant": "acme"}}},
    "routed": {"task": "record", "every": 1, "options": {"queue": "reports"}},
}
#: entries that must have run at least this often before the beat stops
ENOUGH = 2


def test_a_real_worker_runs_atomically_enqueued_messages(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    worker = beat_procs.add(
        WorkerProcess(redis_url, logdir=tmp_path / "beat-logs", queues="celery,reports")
    )
    assert isinstance(worker, WorkerProcess)
    (beat,) = beat_procs.start(1, schedule=SCHEDULE, settings={"safe_redbeat_enqueue": "atomic"})
    beat.wait_for_log(r"enqueue mode atomic", 20)
    worker.wait_ready()

    expected = set(SCHEDULE) - {"stale"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts: dict[str, int] = defaultdict(int)
        for run in runs(redis_client):
            counts[run["entry"]] += 1
        if all(counts[name] >= ENOUGH for name in expected):
            break
        time.sleep(0.2)
    beat.terminate()
    assert beat.wait(15) is not None
    time.sleep(2.5)  # the last countdowns and retries finish

    ran = runs(redis_client)
    by_entry: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in ran:
        by_entry[run["entry"]].append(run)
    assert all(len(by_entry[name]) >= ENOUGH for name in expected), dict(by_entry)
    ids = [run["id"] for run in ran]
    assert len(ids) == len(set(ids)), "a task id ran twice"
    slots = [(run["entry"], run["scheduled"]) for run in ran]
    assert len(slots) == len(set(slots)), "an occurrence ran twice"

    plain = by_entry["plain"][0]
    assert plain["args"] == [1, "two"] and plain["kwargs"] == {"k": "v"}
    assert all(run["retries"] == 2 for run in by_entry["retried"])  # retried, then ran
    assert all(run["priority"] == 9 for run in by_entry["urgent"])
    assert all(run["at"] >= run["scheduled"] + 1.4 for run in by_entry["later"])
    assert by_entry["stale"] == []  # expired before its countdown: revoked by the worker
    assert worker.wait_for_log(r"[Rr]evoked|[Ee]xpired", 5)  # the worker said why
    assert all(run["tenant"] == "acme" for run in by_entry["tenant"])
    assert all(run["routing_key"] == "reports" for run in by_entry["routed"])
    assert not redis_client.exists(KEYS.pending)
    assert "Traceback" not in beat.log()


def test_atomic_refuses_to_start_where_the_broker_is_another_server(
    beat_procs: BeatCluster, redis_client: redis.Redis, tmp_path: Any
) -> None:
    from testbed.redis_server import RedisServer

    with RedisServer(workdir=tmp_path / "broker") as broker:
        (beat,) = beat_procs.start(
            1,
            schedule={"plain": {"task": "record", "every": 1}},
            settings={"safe_redbeat_enqueue": "atomic"},
            broker_url=broker.url_for(0),
        )
        code = beat.wait(20)
        assert code is not None and code != 0, beat.log_tail()
        log = beat.log()
        assert "safe_redbeat_enqueue is 'atomic' but the broker is another Redis server" in log
        assert broker.client(0).llen("celery") == 0
        assert "acquired the lease" not in log  # refused before leading anything
        assert not redis_client.zcard(KEYS.schedule)  # it claimed and wrote nothing
