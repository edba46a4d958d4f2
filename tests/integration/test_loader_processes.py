"""The sqlite example loader with real beat replicas: restarts and DB changes."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from examples import sqlite_table
from testbed.beat import BeatCluster, QueueAuditor
from tests.support import KEYS
from tests.support.inprocess import FAST

pytestmark = pytest.mark.integration

RECONCILE_SECONDS = 2.0
SETTINGS = {
    **FAST,
    "safe_redbeat_loader": "examples.sqlite_table:load",
    "safe_redbeat_reconcile_seconds": RECONCILE_SECONDS,
}


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite_table.connect(str(tmp_path / "schedule.db"))
    sqlite_table.put(conn, "every-second", "noop", 1)
    sqlite_table.put(conn, "nightly", "noop", "0 3 * * *", kwargs={"fmt": "pdf"}, queue="q")
    conn.commit()
    return conn


def start(beat_procs: BeatCluster, db_path: str, n: int) -> list:  # type: ignore[type-arg]
    return beat_procs.start(n, settings=SETTINGS, extra_env={"SQLITE_SCHEDULE_PATH": db_path})


def db_path(conn: sqlite3.Connection) -> str:
    return str(conn.execute("PRAGMA database_list").fetchone()[2])


def test_restarting_a_standby_five_times_touches_nothing(
    beat_procs: BeatCluster, db: sqlite3.Connection, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    leader, standby = start(beat_procs, db_path(db), 1)[0], None
    auditor.wait_for(lambda msgs: len(msgs) >= 2, timeout=15)
    lock = redis_client.get(KEYS.lease)
    nightly = redis_client.hgetall("redbeat:nightly")
    for _ in range(5):
        standby = start(beat_procs, db_path(db), 1)[0]
        standby.wait_for_log(r"standby; the lease is held by", timeout=15)
        standby.terminate()
        assert standby.wait(10) == 0
    auditor.wait_for(lambda msgs: len(msgs) >= 6, timeout=15)
    assert redis_client.get(KEYS.lease) == lock, "a restarting replica took the lock"
    assert redis_client.hgetall("redbeat:nightly") == nightly
    scheduled = Counter(m.headers["safe_redbeat_scheduled"] for m in auditor.messages)
    assert max(scheduled.values()) == 1, "an occurrence was sent twice"
    times = sorted(
        int(m.headers["safe_redbeat_scheduled"])
        for m in auditor.messages
        if m.headers["safe_redbeat_entry"] == "every-second"
    )
    gaps = [b - a for a, b in pairwise(times)]
    assert gaps and max(gaps) <= 2, f"an occurrence went missing: scheduled gaps {gaps}"
    assert leader.alive()


def test_a_changed_row_reaches_redis_within_one_reconcile_interval(
    beat_procs: BeatCluster, db: sqlite3.Connection, redis_client: redis.Redis
) -> None:
    start(beat_procs, db_path(db), 2)
    deadline = time.monotonic() + 15
    while not redis_client.exists("redbeat:nightly") and time.monotonic() < deadline:
        time.sleep(0.05)
    sqlite_table.put(db, "nightly", "noop", "30 4 * * *")
    sqlite_table.delete(db, "every-second")
    sqlite_table.put(db, "hourly", "noop", "0 * * * *")
    db.commit()
    changed_at = time.monotonic()
    while time.monotonic() - changed_at < 10:
        definition = redis_client.hget("redbeat:nightly", "definition") or ""
        if (
            '"hour": "4"' in definition
            and not redis_client.exists("redbeat:every-second")
            and redis_client.exists("redbeat:hourly")
        ):
            break
        time.sleep(0.05)
    took = time.monotonic() - changed_at
    assert took < RECONCILE_SECONDS + 1.5, f"took {took:.1f}s"
    assert redis_client.hget("redbeat:nightly", "version") == "2"
