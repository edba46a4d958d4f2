"""The overlap policy with real ``celery beat`` replicas and a real ``celery worker``.

An entry every 2 s whose task (``slow``) takes 5 s, on a prefork worker with concurrency
4 that tracks runs (``safe_redbeat.worker.track_runs``); each run records its start and
its end (testbed.worker.spans). ``allow`` lets runs overlap; ``skip`` never has two at
once, also across a change of leader, and starts a run at the first slot after the
previous one ended; ``replace`` revokes (terminates) the running one; a worker killed
mid-run blocks its entry at most ``max_runtime``.

``skip`` is watched for ``SAFE_REDBEAT_OVERLAP_SECONDS`` (default 24; 60 for the full
minute).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from testbed.beat import BeatCluster, BeatProcess
from testbed.settings import FAST, RETRY
from testbed.worker import Span, WorkerProcess, spans
from tests.support import KEYS

pytestmark = pytest.mark.integration

PERIOD = 2.0
TASK_SECONDS = 5.0
SKIP_SECONDS = float(os.environ.get("SAFE_REDBEAT_OVERLAP_SECONDS", "24"))
#: a run's start after the slot it was claimed for, and the end of one run until the
#: claim of the next slot sees it: the beat tick, the worker's pick-up, a busy machine
SLACK = 1.5


def slow_entry(**fields: Any) -> dict[str, Any]:
    return {"task": "slow", "every": PERIOD, "kwargs": {"seconds": TASK_SECONDS}, **fields}


def start(
    beat_procs: BeatCluster,
    redis_url: str,
    tmp_path: Path,
    schedule: dict[str, dict[str, Any]],
    *,
    replicas: int = 1,
) -> tuple[WorkerProcess, list[BeatProcess]]:
    worker = beat_procs.add(WorkerProcess(redis_url, logdir=tmp_path / "beat-logs", concurrency=4))
    assert isinstance(worker, WorkerProcess)
    beats = beat_procs.start(replicas, schedule=schedule, settings=FAST, loglevel="INFO")
    worker.wait_ready()
    return worker, beats


def wait_for(found: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


def overlapping(runs: list[Span]) -> list[tuple[str, str]]:
    """Pairs of runs of which the second started before the first ended."""
    pairs = []
    for i, first in enumerate(runs):
        for second in runs[i + 1 :]:
            if first.end is None or second.start < first.end:
                pairs.append((first.task_id, second.task_id))
    return pairs


def test_allow_lets_runs_of_a_slow_entry_overlap(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    start(beat_procs, redis_url, tmp_path, {"report": slow_entry()})
    wait_for(lambda: overlapping(spans(redis_client, "report")), 20, "no two runs overlapped")
    assert not redis_client.exists(KEYS.running("report"), KEYS.running_index)  # untracked


def test_skip_never_runs_two_at_once_and_runs_at_the_first_slot_after_the_end(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    schedule = {"export": slow_entry(overlap="skip", max_runtime=30)}
    _worker, beats = start(beat_procs, redis_url, tmp_path, schedule, replicas=2)
    started = time.monotonic()
    wait_for(lambda: spans(redis_client, "export"), 15, "no run started")
    # half-way, the leader is stopped while a run goes: the other replica leads on
    time.sleep(max(SKIP_SECONDS / 2 - (time.monotonic() - started), 0))
    leader = next(b for b in beats if f'"pid":{b.pid},' in str(redis_client.get(KEYS.lease)))
    leader.terminate()
    assert leader.wait(15) is not None
    time.sleep(max(SKIP_SECONDS - (time.monotonic() - started), 0))
    (standby,) = [b for b in beats if b is not leader]
    standby.terminate()
    assert standby.wait(15) is not None

    runs = spans(redis_client, "export")
    assert not overlapping(runs[:-1] + [r for r in runs[-1:] if r.end is not None]), runs
    ended = [r for r in runs if r.end is not None]
    assert len(ended) >= SKIP_SECONDS // (TASK_SECONDS + PERIOD + SLACK), runs
    for previous, run in itertools.pairwise(runs):
        assert previous.end is not None and run.start >= previous.end, (previous, run)
        # the first slot after the end: no more than one period (plus slack) later
        assert run.start - previous.end <= PERIOD + SLACK + RETRY, (previous, run)
    fences = {
        int(m.group(1))
        for b in beats
        for m in re.finditer(r"acquired the lease .*\(fence (\d+)\)", b.log())
    }
    assert len(fences) >= 2  # both replicas led
    logs = "".join(b.log() for b in beats)
    assert logs.count("its previous run is still going (overlap=skip)") >= len(ended)
    assert "Traceback" not in logs


def test_replace_revokes_the_running_one(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    schedule = {"sync": slow_entry(overlap="replace", max_runtime=30)}
    worker, (beat,) = start(beat_procs, redis_url, tmp_path, schedule)
    wait_for(lambda: len(spans(redis_client, "sync")) >= 4, 25, "no four runs")
    beat.terminate()
    assert beat.wait(15) is not None
    runs = spans(redis_client, "sync")
    replaced = runs[:3]  # each was replaced 2 s after its slot, long before its end
    for run in replaced:
        worker.wait_for_log(rf"Terminating {run.task_id}", 5)
        assert run.end is None, run
    assert beat.log().count("its previous run is revoked (overlap=replace)") >= 3
    # the revoked runs' records are deleted (task_revoked); at most the last one is left
    left = set(redis_client.hkeys(KEYS.running("sync")))
    assert not left & {run.task_id for run in replaced}


def test_a_worker_killed_mid_run_blocks_its_entry_at_most_max_runtime(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    max_runtime = 6.0
    schedule = {"hangs": slow_entry(overlap="skip", max_runtime=max_runtime)}
    schedule["hangs"]["kwargs"] = {"seconds": 60}  # never ends by itself
    worker, _beats = start(beat_procs, redis_url, tmp_path, schedule)
    (first,) = wait_for(lambda: spans(redis_client, "hangs"), 15, "no run started")
    worker.kill_all()  # SIGKILL, pool processes too: nobody reports the end
    killed_at = time.time()
    second = beat_procs.add(
        WorkerProcess(redis_url, logdir=tmp_path / "beat-logs", name="worker-2", concurrency=4)
    )
    assert isinstance(second, WorkerProcess)
    second.wait_ready()
    runs = wait_for(
        lambda: spans(redis_client, "hangs")[1:], max_runtime + 10, "the entry stayed blocked"
    )
    blocked = runs[0].start - first.start
    assert killed_at < runs[0].start
    assert max_runtime - 0.5 <= blocked <= max_runtime + PERIOD + SLACK, blocked
