"""Real ``celery worker`` subprocesses of ``testbed.beatapp``, and what their tasks ran.

The app's ``record`` task (and ``flaky``, which retries twice first) appends one JSON
object per run to the list :data:`RAN` in the schedule's database: the task id, the
scheduled-occurrence headers, retries, the queue and priority the message came by, and
the worker's wall clock. :func:`runs` reads them back.
"""

from __future__ import annotations

import json
import sys
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

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the worker says it is ready to consume."""
        self.wait_for_log(r" ready\.", timeout)


def runs(client: redis.Redis) -> list[dict[str, Any]]:
    """Every recorded run, oldest first."""
    return [json.loads(raw) for raw in client.lrange(RAN, 0, -1)]
