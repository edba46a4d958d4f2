"""The sqlite example loader with real beat replicas: restarts and DB changes."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from examples import sqlite_table
from testbed.beat import BeatCluster, QueueAuditor
from tests.integration.test_cli import cli, cli_json
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


def test_an_emptied_or_shrunken_table_removes_nothing_until_sync_allows_it(
    beat_procs: BeatCluster, tmp_path: Path, redis_client: redis.Redis
) -> None:
    path = str(tmp_path / "table.db")
    conn = sqlite_table.connect(path)
    names = ("r-1", "r-2", "r-3", "r-4")
    for name in names:
        sqlite_table.put(conn, name, "noop", "0 3 * * *")
    conn.commit()
    replicas = start(beat_procs, path, 2)
    env = replicas[0].env()

    def reconciled(held: int) -> None:
        """Wait for a reconcile that held ``held`` removals, or removed something."""
        deadline = time.monotonic() + 15
        while True:
            report = json.loads(redis_client.get("redbeat::reconcile") or "{}")
            if report.get("removals_held", 0) == held and report.get("unchanged") is not None:
                return
            if redis_client.exists(*(f"redbeat:{name}" for name in names)) < len(names):
                return
            assert time.monotonic() < deadline, f"no reconcile holding {held}: {report}"
            time.sleep(0.05)

    deadline = time.monotonic() + 15
    while redis_client.exists(*(f"redbeat:{name}" for name in names)) < len(names):
        assert time.monotonic() < deadline, "the leader did not load the table"
        time.sleep(0.05)

    def stored() -> dict[str, list[object]]:
        """Definition and version of each entry."""
        return {
            name: list(redis_client.hmget(f"redbeat:{name}", "definition", "version"))
            for name in names
        }

    entries = stored()
    meta_before = redis_client.hget("redbeat:r-1", "meta")
    assert meta_before, "a created entry has run metadata (its first slot counts from it)"
    conn.execute("DELETE FROM periodic_task")  # an empty table: a failed migration, say
    conn.commit()
    reconciled(4)
    assert stored() == entries, "untouched"
    status = cli(env, "status")
    assert status.returncode == 0 and "removals held: 4" in status.stdout, status.stdout
    for name in ("r-1", "r-2"):
        sqlite_table.put(conn, name, "noop", "0 3 * * *")  # half of it comes back
    sqlite_table.delete(conn, "r-2")  # fewer than half: a truncated query, say
    conn.commit()
    reconciled(3)
    assert stored() == entries, "untouched"
    assert cli_json(env, "status")["last_reconcile"]["held"] == ["r-2", "r-3", "r-4"]

    applied = cli(env, "sync", "--allow-removals")
    assert applied.returncode == 0, applied.stderr
    assert "remove 3" in applied.stdout, applied.stdout
    assert {str(k) for k in redis_client.zrange("redbeat::schedule", 0, -1)} == {"redbeat:r-1"}
    assert stored()["r-1"] == entries["r-1"]
    meta = redis_client.hget("redbeat:r-1", "meta")
    assert meta == meta_before, f"its run history is kept: {meta!r}"
    assert all(p.alive() for p in replicas)
