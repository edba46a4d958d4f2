"""The benchmark's Redis servers, Celery apps, schedulers, entry writers and traffic counter.

One server (testbed.redis_server) holds the schedule (db 2) and is the broker (db 1); a
second one is started on demand when broker traffic must not mix with the scheduler's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import redis
from celery import Celery
from celery.schedules import schedule as interval_schedule
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import (
    REDBEAT_REDIS_KEY,
    RedBeatScheduler,
    acquire_distributed_beat_lock,
)

from safe_redbeat import SafeRedBeatScheduler
from safe_redbeat.store.keys import Keys
from testbed.beat import Message
from testbed.redis_server import RedisServer

BROKER_DB, SCHEDULE_DB = 1, 2
QUEUE = "celery"
TASK = "benchmark.noop"
KEYS = Keys(prefix="redbeat:", lease="redbeat::lock")
#: every benchmark entry runs hourly; "due" entries last ran two hours ago
EVERY = timedelta(hours=1)

_APP_NUMBERS = itertools.count()
T = TypeVar("T")


class BenchmarkBroken(RuntimeError):
    """A benchmark did not do what it measures (wrong count, timeout): a bug, not a MISS."""


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    scheduler_cls: type[Any]
    #: ``safe_redbeat_enqueue`` asked for, and checked once the scheduler leads
    #: (None: the default, ``auto``, unchecked)
    enqueue: str | None = None
    #: untimed dispatches of the same entries before the timed one (see ``dispatch_run``)
    rounds_before: int = 0

    @property
    def is_stock(self) -> bool:
        return self.scheduler_cls is RedBeatScheduler

    @property
    def conf(self) -> dict[str, Any]:
        """The app settings this contender runs with."""
        return {} if self.enqueue is None else {"safe_redbeat_enqueue": self.enqueue}


#: Untimed dispatches of the same entries before a steady-state run: per entry version,
#: the first message is built through Celery (and a template kept), the second is built
#: again and compared with the template, and from the third on the template is filled.
STEADY_AFTER = 2

REDBEAT = Contender("redbeat", f"RedBeat {version('celery-redbeat')}", RedBeatScheduler)
SAFE = Contender("safe_redbeat", f"safe_redbeat {version('safe-redbeat')}", SafeRedBeatScheduler)
#: safe_redbeat publishing through Celery's producer (pending record, publish, ack)
SAFE_PUBLISH = Contender(
    "safe_redbeat_publish", "safe_redbeat, publish mode", SafeRedBeatScheduler, "publish"
)
#: atomic enqueue of entries dispatched for the first time (every message through Celery)
SAFE_FIRST = Contender(
    "safe_redbeat_atomic_first",
    "safe_redbeat, atomic, first dispatch",
    SafeRedBeatScheduler,
    "atomic",
)
#: atomic enqueue of the same entries due again after STEADY_AFTER earlier dispatches
SAFE_STEADY = Contender(
    "safe_redbeat_atomic",
    "safe_redbeat, atomic, steady state",
    SafeRedBeatScheduler,
    "atomic",
    rounds_before=STEADY_AFTER,
)
CONTENDERS = (REDBEAT, SAFE)


def rotated(items: tuple[Any, ...], rep: int) -> list[Any]:
    """``items`` rotated by ``rep``: alternate who goes first from one repetition to the next."""
    shift = rep % len(items)
    return list(items[shift:] + items[:shift])


# -- counting the scheduler's Redis traffic ----------------------------------------------

#: sha1 of each shipped Lua script -> its file name, to name EVALSHA calls
SCRIPTS = {
    hashlib.sha1(f.read_bytes()).hexdigest(): f.name
    for f in files("safe_redbeat.store.scripts").iterdir()
    if f.name.endswith(".lua")
}


@dataclass
class Traffic:
    """Round trips and commands of the clients built with :meth:`connection_class`.

    A round trip is one ``send_packed_command`` (a pipeline sends all its commands at once);
    ``trips`` names the commands of each round trip.
    """

    trips: list[tuple[str, ...]] = field(default_factory=list)
    _packed: tuple[str, ...] = ()

    @property
    def round_trips(self) -> int:
        return len(self.trips)

    @property
    def commands(self) -> int:
        return sum(len(trip) for trip in self.trips)

    def calls(self, script: str) -> int:
        return sum(trip.count(f"EVALSHA {script}") for trip in self.trips)

    def reset(self) -> None:
        self.trips.clear()

    def describe(self, count: int | None = None) -> str:
        """The first ``count`` round trips in words, repeats folded: ``HDEL (x2)``."""
        folded: list[list[Any]] = []
        for trip in self.trips[:count]:
            if len(trip) == 1:
                words = trip[0]
            else:
                counts = Counter(trip).items()
                words = "a pipeline of " + ", ".join(f"{k} {name}" for name, k in counts)
            if folded and folded[-1][0] == words:
                folded[-1][1] += 1
            else:
                folded.append([words, 1])
        return ", ".join(words if k == 1 else f"{words} (x{k})" for words, k in folded)

    def connection_class(self) -> type[redis.Connection]:
        """A redis-py connection class that counts into this object (see Env.make_app)."""
        traffic = self

        class CountingConnection(redis.Connection):
            def pack_commands(self, commands: Iterable[Any]) -> Any:
                commands = list(commands)
                traffic._packed = tuple(_name(args) for args in commands)
                return super().pack_commands(commands)  # type: ignore[no-untyped-call]

            def send_command(self, *args: Any, **kwargs: Any) -> None:
                traffic._packed = (_name(args),)
                super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                traffic.trips.append(traffic._packed)
                traffic._packed = ()
                super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        return CountingConnection


def load_scripts(client: redis.Redis) -> None:
    """Load every shipped script into the server's cache, as a running beat has them:
    a first call is then not a NOSCRIPT reply, a SCRIPT LOAD and the call again."""
    for f in files("safe_redbeat.store.scripts").iterdir():
        if f.name.endswith(".lua"):
            client.script_load(f.read_text(encoding="utf-8"))


def _name(args: Any) -> str:
    name = str(args[0]).upper()
    if name == "EVALSHA" and len(args) > 1:
        return f"EVALSHA {SCRIPTS.get(str(args[1]), 'script')}"
    return name


def server_calls(client: redis.Redis, names: frozenset[str] | None = None) -> int:
    """Commands the server executed (``INFO commandstats``), Lua's own calls included."""
    stats = client.info("commandstats")
    return sum(
        int(value["calls"])
        for stat, value in stats.items()
        if (names is None and stat not in ("cmdstat_info", "cmdstat_commandstats"))
        or (names is not None and stat.removeprefix("cmdstat_") in names)
    )


# -- servers and apps ----------------------------------------------------------------------


class Env:
    """Redis server(s) for one benchmark session: ``with contextlib.closing(Env()) as env``."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-"))
        self.server = RedisServer(workdir=self.workdir / "redis").start()
        self._aux: RedisServer | None = None
        self._clients: dict[tuple[int, int], redis.Redis] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        for server in (self.server, self._aux):
            if server is not None:
                server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def aux(self) -> RedisServer:
        """A second server, for a broker whose commands must not mix with the scheduler's."""
        if self._aux is None:
            self._aux = RedisServer(workdir=self.workdir / "redis-aux").start()
        return self._aux

    def client(self, db: int, server: RedisServer | None = None) -> redis.Redis:
        server = server or self.server
        if (server.port, db) not in self._clients:
            self._clients[(server.port, db)] = server.client(db)
        return self._clients[(server.port, db)]

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

    def make_app(
        self, *, broker: RedisServer | None = None, traffic: Traffic | None = None, **conf: Any
    ) -> Celery:
        """A Celery app on the schedule db; with ``traffic``, its Redis traffic is counted."""
        app = Celery(f"bench{next(_APP_NUMBERS)}", set_as_current=False)
        app.conf.update(
            broker_url=(broker or self.server).url_for(BROKER_DB),
            redbeat_redis_url=self.server.url_for(SCHEDULE_DB),
            redbeat_key_prefix=KEYS.prefix,
            beat_max_loop_interval=300,
            timezone="UTC",
            result_expires=None,
            broker_connection_retry_on_startup=True,
            safe_redbeat_instance_name="benchmark",
        )
        app.conf.update(conf)
        if traffic is not None:
            # RedBeat's get_redis() hands out the client cached on the app, to stock RedBeat
            # and to safe_redbeat alike (any celery-redbeat version): make it a counting one
            url, counting = app.conf.redbeat_redis_url, traffic.connection_class()
            client = redis.Redis.from_url(url, decode_responses=True, connection_class=counting)
            setattr(app, REDBEAT_REDIS_KEY, client)
        return app


def close_app(app: Celery) -> None:
    client = getattr(app, "redbeat_redis", None)
    client = getattr(client, "wrapped_connection", client)
    if client is not None:
        client.close()
    app.close()


# -- schedulers ------------------------------------------------------------------------------


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


def leading_scheduler(contender: Contender, app: Celery, broker: redis.Redis) -> Any:
    """A scheduler that holds the lock and has a connected producer; nothing is due yet."""
    scheduler = start_scheduler(contender, app)
    if not contender.is_stock:
        scheduler.tick()
        if not scheduler.is_leader:
            raise BenchmarkBroken("safe_redbeat did not take the lease in its first tick")
        decided = scheduler.enqueuer.decided
        if contender.enqueue is not None and (decided is None or decided.name != contender.enqueue):
            raise BenchmarkBroken(
                f"{contender.label}: the scheduler enqueues in mode "
                f"{decided.name if decided else 'undecided'}, not {contender.enqueue}"
            )
    app.send_task("benchmark.warmup", producer=scheduler.producer)  # connect, declare
    broker.delete(QUEUE)
    return scheduler


def stop_scheduler(scheduler: Any) -> None:
    scheduler.close()
    if isinstance(scheduler, SafeRedBeatScheduler):
        scheduler.client.close()


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
        # nothing more was due: wait a little, as beat would (never hit in timed runs)
        time.sleep(min(max(float(delay or 0), 0.0), 0.05))


def check_messages(broker: redis.Redis, expected: int, contender: Contender | None) -> None:
    """The queue holds ``expected`` messages of the benchmark task, each with a unique id."""
    raw = broker.lrange(QUEUE, 0, -1)
    if len(raw) != expected:
        raise BenchmarkBroken(f"{len(raw)} messages queued, expected {expected}")
    messages = [Message.parse(item, 0.0, QUEUE) for item in raw]
    if len({m.task_id for m in messages}) != expected or any(m.task != TASK for m in messages):
        raise BenchmarkBroken("queued messages are not one per entry of the benchmark task")
    stock = contender is None or contender.is_stock
    if not stock and any("safe_redbeat_fence" not in m.headers for m in messages):
        raise BenchmarkBroken("safe_redbeat sent a message without its fence header")


def dispatch_run(
    env: Env,
    contender: Contender,
    n: int,
    timeout: float,
    around: Callable[[], AbstractContextManager[T]],
    **app_conf: Any,
) -> tuple[T, int]:
    """Write ``n`` due entries and tick until all are sent, inside ``around()``.

    With ``contender.rounds_before``, the same entries are first dispatched that many
    times untimed, each time made due again by rewriting their ``meta`` and score (never
    their definition), so the timed dispatch is the steady state of a running beat; it
    must then build no message through Celery. Returns what ``around()`` yielded and the
    number of ticks; the queue is checked after every dispatch.
    """
    env.flush()
    broker = env.client(BROKER_DB, app_conf.get("broker"))
    broker.flushdb()
    app = env.make_app(**{**contender.conf, **app_conf})
    try:
        scheduler = leading_scheduler(contender, app, broker)
        try:
            score = write_entries(env.schedule_client, range(n), due=True)
            for _round in range(contender.rounds_before):
                tick_until_sent(scheduler, broker, n, timeout=timeout)
                check_messages(broker, n, contender)
                broker.delete(QUEUE)
                # nothing is due: the lease and heartbeat upkeep that fell due meanwhile is
                # done now, as beat does between due times, not in the next dispatch
                scheduler.tick()
                score -= 1  # another slot: other task ids
                make_due_again(env.schedule_client, range(n), score)
            with built_through_celery(scheduler) as built, around() as measured:
                ticks = tick_until_sent(scheduler, broker, n, timeout=timeout)
            check_messages(broker, n, contender)
            if contender.enqueue == "atomic":
                expected = 0 if contender.rounds_before else n
                if len(built) != expected:
                    raise BenchmarkBroken(
                        f"{contender.label}: {len(built)} of {n} messages were built through "
                        f"Celery, expected {expected} (first dispatch: each; steady state: "
                        "none, every template verified)"
                    )
        finally:
            stop_scheduler(scheduler)
    finally:
        close_app(app)
    return measured, ticks


@contextmanager
def built_through_celery(scheduler: Any) -> Iterator[list[None]]:
    """Counts the messages safe_redbeat's atomic enqueue builds through Celery meanwhile
    (one item each); the builder's own method is called, only counted."""
    built: list[None] = []
    builder = getattr(getattr(scheduler, "enqueuer", None), "builder", None)
    if builder is None:
        yield built
        return
    build = builder._build

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(None)
        return build(*args, **kwargs)

    builder._build = counted
    try:
        yield built
    finally:
        del builder._build


# -- entries -----------------------------------------------------------------------------------


def entry_name(index: int) -> str:
    return f"bench-{index:06d}"


def write_entries(client: redis.Redis, indexes: range, *, due: bool, chunk: int = 5000) -> int:
    """Store entries in RedBeat's format (the fields ``RedBeatSchedulerEntry.save()`` writes).

    Pipelined: saving 100k entries one by one would dominate the benchmark. A due entry
    last ran two hours ago (score = now); the others ran just now (due in an hour).
    Returns the score written.
    """
    schedule = interval_schedule(EVERY)
    now = datetime.now(timezone.utc)
    score = int(now.timestamp()) - 1 if due else int((now + EVERY).timestamp())
    meta = json.dumps({"last_run_at": now - 2 * EVERY if due else now}, cls=RedBeatJSONEncoder)
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
                key = KEYS.entry(name)
                pipe.hset(key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
                pipe.hset(key, "meta", meta)
                pipe.zadd(KEYS.schedule, {key: score})
            pipe.execute()
    return score


def make_due_again(client: redis.Redis, indexes: range, score: int, *, chunk: int = 5000) -> None:
    """Make dispatched entries due at ``score`` again, as if an hour had passed: their
    ``meta`` says they last ran two hours ago; their definition is left as it is."""
    meta = json.dumps(
        {"last_run_at": datetime.now(timezone.utc) - 2 * EVERY}, cls=RedBeatJSONEncoder
    )
    for start in range(indexes.start, indexes.stop, chunk):
        with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + chunk, indexes.stop)):
                key = KEYS.entry(entry_name(index))
                pipe.hset(key, "meta", meta)
                pipe.zadd(KEYS.schedule, {key: score})
            pipe.execute()


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as elapsed:`` ... ``elapsed[0]`` is the wall time in seconds."""
    result: list[float] = []
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.append(time.perf_counter() - started)
