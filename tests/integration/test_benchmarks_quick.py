"""The benchmark suite runs end to end on tiny sizes (speed is never asserted)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from contextlib import closing
from importlib.resources import files
from pathlib import Path

import pytest
import redis
from celery.signals import before_task_publish

from benchmarks.__main__ import main
from benchmarks.env import (
    QUEUE,
    SAFE_STEADY,
    BenchmarkBroken,
    Env,
    Traffic,
    check_messages,
    dispatch_run,
    stopwatch,
    tick_until_sent,
)
from benchmarks.report import TEMPLATE, _call_sizes
from testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_tiny_run_prints_every_table_and_writes_docs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--tiny", "--no-failover", "--write-docs", "--docs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for heading in (
        "Dispatch cost per due entry",
        "Redis commands for the dispatching tick(s)",
        "Construct + first tick until the first dispatch",
        "Deciding one due entry (no Redis)",
        "Redis memory per entry after one run",
        "Loader reconcile against RedBeat's wipe-and-save",
        "Sharded dispatch: N due at once, K shards on K beat replicas",
        "Targets",
    ):
        assert heading in out
    # one dispatch row for N=50: a number in every column of the header
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| N due | floor ms/entry"))
    row = next(line for line in lines if line.startswith("| 50 "))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1
    assert all(cells)
    assert float(cells[1]) > 0
    assert "PASS" in out or "MISS" in out
    # one breakdown column pair per mode; the steady state never builds through Celery
    header = next(line for line in lines if line.startswith("| phase (N=50)"))
    assert [c.strip() for c in header.strip("|").split("|")][1::2] == [
        "publish ms/entry",
        "first ms/entry",
        "steady ms/entry",
    ]
    row = next(line for line in lines if "of which through Celery" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[5:7] == ["-", "-"]
    # round trips: publish mode acknowledges, atomic enqueue does not; one claim call each
    commands = {
        cells[1]: cells
        for cells in (
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in lines
            if line.startswith("| 50 ") and "safe_redbeat" in line
        )
    }
    assert commands["safe_redbeat publish mode"][2].startswith("4 (")
    assert commands["safe_redbeat atomic (steady)"][2].startswith("3 (")
    assert all(c[5].startswith("1: ") for c in commands.values())
    assert re.search(r"\| atomic: one round trip per \d+ occurrences .*\| PASS", out)
    # a reconcile with nothing changed writes nothing; 1% changed = 2 of 200 rows updated
    by_situation = {
        cells[1]: cells
        for cells in (
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in lines
            if line.startswith("| 200 ")
        )
    }
    assert by_situation["nothing changed"][4:7] == ["0 / 0", "0", "0"]
    assert by_situation["1% changed"][4:6] == ["0 / 2", "2"]
    # sharded dispatch: every message sent once, by the replicas of that row
    for name, replicas in (("RedBeat", 1), ("safe_redbeat K=1", 1), ("safe_redbeat K=2", 2)):
        row = next(line for line in lines if line.startswith(f"| {name} "))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == str(replicas)
        assert (
            sorted(int(c) for c in cells[6].split(" / ")) == sorted([60 // replicas] * replicas)
            or sum(int(c) for c in cells[6].split(" / ")) == 60
        )
    assert "sharded dispatch: K=2 on 2 replicas" in out
    md = (tmp_path / "benchmarks.md").read_text()
    assert "## Scaling out\n" in md
    assert "python -m benchmarks --tiny --no-failover --write-docs" in md
    assert "## Reconcile\n" in md
    assert "pending the loader" not in md
    assert "Redis server" in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_steady_state_that_builds_messages_through_celery_is_reported_broken() -> None:
    # a receiver of Celery's publish signals makes every message be built through Celery
    def receiver(**_kwargs: object) -> None:
        return None

    before_task_publish.connect(receiver, weak=False, dispatch_uid="benchmark-test")
    try:
        broken = pytest.raises(BenchmarkBroken, match="5 of 5 messages were built through")
        with closing(Env()) as env, broken:
            dispatch_run(env, SAFE_STEADY, 5, 30.0, stopwatch)
    finally:
        before_task_publish.disconnect(receiver, dispatch_uid="benchmark-test")


def test_claim_calls_split_as_the_tick_splits_due_entries() -> None:
    assert _call_sizes(3000, 500) == [500] * 6
    assert _call_sizes(1200, 500) == [500, 500, 200]
    assert _call_sizes(2500, 1000) == [1000, 1000, 500]


class _IdleScheduler:
    """A scheduler whose ticks never send anything."""

    def __init__(self) -> None:
        self.ticks = 0

    def tick(self) -> float:
        self.ticks += 1
        return 0.01


def test_a_scheduler_that_sends_nothing_is_reported_broken(redis_client: redis.Redis) -> None:
    scheduler = _IdleScheduler()
    with pytest.raises(BenchmarkBroken, match="only 0 of 3 messages"):
        tick_until_sent(scheduler, redis_client, 3, timeout=0.2)
    assert scheduler.ticks >= 2


def test_duplicate_or_foreign_messages_are_reported_broken(redis_client: redis.Redis) -> None:
    redis_client.lpush(QUEUE, '{"headers": {"id": "a", "task": "other"}}')
    with pytest.raises(BenchmarkBroken, match="not one per entry"):
        check_messages(redis_client, 1, None)
    with pytest.raises(BenchmarkBroken, match="1 messages queued, expected 2"):
        check_messages(redis_client, 2, None)


def test_the_counting_connection_counts_round_trips_and_names_scripts(
    redis_server: RedisServer, redis_db: int
) -> None:
    traffic = Traffic()
    url = redis_server.url_for(redis_db)
    client = redis.Redis.from_url(url, connection_class=traffic.connection_class())
    release = (files("safe_redbeat.store.scripts") / "release.lua").read_text()
    try:
        client.script_load(release)
        traffic.reset()
        client.set("k", "v")
        with client.pipeline(transaction=False) as pipe:
            pipe.get("k")
            pipe.get("k")
            pipe.delete("k")
            pipe.execute()
        assert client.register_script(release)(keys=["k"], args=["token"]) == 0
    finally:
        client.close()
    assert traffic.trips == [("SET",), ("GET", "GET", "DEL"), ("EVALSHA release.lua",)]
    assert (traffic.round_trips, traffic.commands, traffic.calls("release.lua")) == (3, 5, 1)
    assert traffic.describe() == "SET, a pipeline of 2 GET, 1 DEL, EVALSHA release.lua"


def test_benchmarks_import_nothing_from_tests() -> None:
    probe = "import sys, benchmarks.__main__; "
    probe += "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tests'))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=TEMPLATE.parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "[]"


def test_the_report_template_has_no_number_typed_into_its_prose() -> None:
    prose = re.sub(r"`[^`]*`|\$\w+", "", TEMPLATE.read_text(encoding="utf-8"))
    assert [line for line in prose.splitlines() if re.search(r"\d", line)] == []
