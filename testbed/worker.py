"""Real ``celery worker`` subprocesses of ``testbed.beatapp``, and what their tasks ran.

The app's ``record`` task (and ``flaky``, which retries twice first) appends one JSON
object per run to the list :data:`RAN` in the schedule's database: the task id, the
scheduled-occurrence headers, retries, the queue and priority the message came by, and
the worker's wall clock. :func:`runs` reads them back. ``slow`` records its start and its
end (``kwargs["phase"]``) around a sleep: :func:`spans` pairs them up. Workers track runs
for the overlap policy (``safe_redbeat.worker.track_runs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import redis

from testbed.beat import BeatProcess

#: the list the recording tasks append to (in the database of $SRB_REDIS_URL)
RAN = "testbed:ran"


class WorkerProcess(BeatProcess):
    """One ``celery worker`` (prefork, ``concurrency`` processes) consuming ``queues``."""

    def __init__(
        self, redis_url: str, *, queues: str = "celery", concurrency: int = 2, **kwargs: Any
    ) -> None:
        kwargs.setdefault("name", "worker")
        kwargs.setdefault("loglevel", "INFO")
        super().__init__(redis_url, **kwargs)
        self.queues = queues
        self.concurrency = concurrency

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--pool", "prefork", "--concurrency", str(self.concurrency),
            "--queues", self.queues, "--hostname", f"{self.name}@testbed",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            "--loglevel", self.loglevel,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {**super().env(), "SRB_TRACK_RUNS": "1"}

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the worker says it is ready to consume."""
        self.wait_for_log(r" ready\.", timeout)

    def children(self) -> list[int]:
        """The PIDs of its pool processes (Linux: /proc)."""
        path = f"/proc/{self.pid}/task/{self.pid}/children"
        try:
            with open(path) as found:
                return [int(pid) for pid in found.read().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL the worker and its pool processes, by PID (a node lost mid-run)."""
        children = self.children()
        self.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def runs(client: redis.Redis) -> list[dict[str, Any]]:
    """Every recorded run, oldest first."""
    return [json.loads(raw) for raw in client.lrange(RAN, 0, -1)]


@dataclass(frozen=True)
class Span:
    """One run of ``slow``: when it started and ended (None: it never finished)."""

    task_id: str
    entry: str | None
    scheduled: int | None
    start: float
    end: float | None


def spans(client: redis.Redis, entry: str | None = None) -> list[Span]:
    """The runs of ``slow`` (of ``entry``), by start."""
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, float] = {}
    for run in runs(client):
        phase = run["kwargs"].get("phase")
        if run["task"] != "slow" or (entry is not None and run["entry"] != entry):
            continue
        if phase == "start":
            starts.setdefault(run["id"], run)
        elif phase == "end":
            ends[run["id"]] = run["at"]
    found = [
        Span(task_id, run["entry"], run["scheduled"], run["at"], ends.get(task_id))
        for task_id, run in starts.items()
    ]
    return sorted(found, key=lambda span: span.start)
