"""Reconcile N loader rows against Redis, and the "init loader" stock RedBeat users run.

safe_redbeat: the whole path an operator sees for one loader reconcile, timed together:
``parse_specs(rows)``, ``Reconciler.snapshot()`` and ``Reconciler.run(specs,
versions=...)``, not fenced (token ``''``). First into an empty database (what a re-seed
costs after Redis lost its data), then, with the N entries in Redis, with nothing changed
and with 1% of the rows changed (a new kwargs value each time).

Stock RedBeat has no reconcile. The usual "init loader" deletes every entry key and the
schedule ZSET, then saves all N rows again with ``RedBeatSchedulerEntry(name, task,
schedule, args, kwargs, app=app).save()`` (one MULTI/EXEC pipeline per entry), whether
anything changed or not. It runs in a database of its own on the same server; the two
alternate, each first in turn.

Rows are plain dicts ``{"name", "task", "schedule", "kwargs"}``, the schedule alternating
between 60 seconds and the cron string ``*/5 * * * *``; the stock loader converts each
distinct schedule once, as ``parse_specs`` does. Building the rows (the database query)
is not timed. Writes are counted twice: ``upsert.lua`` calls made by the client, and the
write commands Redis executed (``INFO commandstats`` before and after, which includes the
commands run inside Lua scripts: HSET, HSETNX, ZADD, SADD, DEL, ...). Round trips are
counted on the client as in the commands-per-tick benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval_schedule
from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

from safe_redbeat.loader import parse_specs
from safe_redbeat.reconcile import Reconciler
from safe_redbeat.schedule import Schedule

from .commands import count_commands
from .env import SCHEDULE_DB, SCHEDULE_KEY, TASK, BenchmarkBroken, Env, close_app, stopwatch
from .stats import Sample

#: the stock RedBeat loader's database (safe_redbeat's is SCHEDULE_DB)
STOCK_DB = 3
CRON = "*/5 * * * *"
#: every 100th row changes in the "1% changed" runs
CHANGE_EVERY = 100
WRITE_COMMANDS = frozenset(
    {"hset", "hsetnx", "hmset", "hdel", "zadd", "zrem", "sadd", "srem", "del", "unlink", "set"}
)

#: situations, in table order
EMPTY = "empty Redis (first run)"
UNCHANGED = "nothing changed"
CHANGED = "1% changed"
SITUATIONS = (EMPTY, UNCHANGED, CHANGED)
SAFE = "safe_redbeat"
STOCK = "redbeat"


@dataclass(frozen=True)
class Run:
    """One timed reconcile (safe_redbeat) or wipe-and-save (stock RedBeat)."""

    seconds: float
    #: parse / snapshot / run (safe_redbeat), or wipe / save (stock)
    phases: dict[str, float]
    created: int
    updated: int
    upsert_calls: int
    write_commands: int
    round_trips: int


@dataclass
class ReconcileBench:
    n: int
    #: runs by (contender, situation)
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def add(self, contender: str, situation: str, run: Run) -> None:
        self.runs.setdefault((contender, situation), []).append(run)

    def sample(self, contender: str, situation: str) -> Sample:
        return Sample.of(r.seconds for r in self.runs[(contender, situation)])

    def phase(self, contender: str, situation: str, name: str) -> Sample:
        return Sample.of(r.phases[name] for r in self.runs[(contender, situation)])

    def count(self, contender: str, situation: str, what: str) -> str:
        """A per-run count, as ``value`` or ``min-max`` when the runs differ."""
        values = [int(getattr(r, what)) for r in self.runs[(contender, situation)]]
        low, high = min(values), max(values)
        return str(low) if low == high else f"{low}-{high}"

    def stock_over_safe(self, situation: str) -> Sample:
        stock = self.runs[(STOCK, situation)]
        ours = self.runs[(SAFE, situation)]
        pairs = zip(stock, ours, strict=False)
        return Sample.of(a.seconds / b.seconds for a, b in pairs)


def rows(n: int, generation: int = 0) -> list[dict[str, Any]]:
    """The loader's rows; every 100th carries ``generation`` in its kwargs once it is > 0."""
    out = []
    for index in range(n):
        kwargs: dict[str, Any] = {"i": index}
        if generation and index % CHANGE_EVERY == 0:
            kwargs["generation"] = generation
        out.append(
            {
                "name": f"e{index}",
                "task": TASK,
                "schedule": 60 if index % 2 == 0 else CRON,
                "kwargs": kwargs,
            }
        )
    return out


def _changed(n: int) -> int:
    return len(range(0, n, CHANGE_EVERY))


def _server_writes(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name.removeprefix("cmdstat_") in WRITE_COMMANDS
    )


@contextmanager
def _counted(env: Env, db: int) -> Iterator[dict[str, int]]:
    """Round trips on ``db`` and write commands on the server, filled in on exit."""
    counted: dict[str, int] = {}
    before = _server_writes(env.schedule_client)
    with count_commands(env.server.port, db) as counts:
        yield counted
    counted["round_trips"] = counts.round_trips
    counted["write_commands"] = _server_writes(env.schedule_client) - before


class _CountingScript:
    """Wraps a registered Lua script and counts its calls."""

    def __init__(self, script: Callable[..., Any]) -> None:
        self.script = script
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.script(*args, **kwargs)


class SafeLoader:
    """safe_redbeat's loader reconcile on SCHEDULE_DB, as the leader's seeding runs it."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.app = env.make_app()
        self.schedule = Schedule(self.app)
        self.reconciler = Reconciler(
            self.schedule.client,
            self.schedule.keys,
            self.schedule.scripts,
            self.app,
            source="loader",
            owned_key=self.schedule.keys.loaded,
        )
        self.upserts = _CountingScript(self.schedule.scripts.upsert)
        self.schedule.scripts.upsert = self.upserts

    def close(self) -> None:
        self.schedule.close()
        close_app(self.app)

    def run(self, items: list[dict[str, Any]], n: int, *, created: int, updated: int) -> Run:
        calls_before = self.upserts.calls
        with _counted(self.env, SCHEDULE_DB) as counted, stopwatch() as total:
            with stopwatch() as parsing:
                load = parse_specs(items)
            with stopwatch() as snapshotting:
                versions = self.reconciler.snapshot()
            with stopwatch() as running:
                result = self.reconciler.run(load.specs, versions=versions, token="")
        if load.errors or result.errors or result.conflicts or result.removed:
            raise BenchmarkBroken(f"reconcile of {n} rows: {result.summary()} {load.errors[:3]}")
        if (len(result.created), len(result.updated)) != (created, updated):
            raise BenchmarkBroken(
                f"reconcile of {n} rows: expected {created} created and {updated} updated, "
                f"got {result.summary()}"
            )
        if len(result.created) + len(result.updated) + result.unchanged != n:
            raise BenchmarkBroken(f"reconcile of {n} rows does not add up: {result.summary()}")
        return Run(
            seconds=total[0],
            phases={"parse": parsing[0], "snapshot": snapshotting[0], "run": running[0]},
            created=len(result.created),
            updated=len(result.updated),
            upsert_calls=self.upserts.calls - calls_before,
            write_commands=counted["write_commands"],
            round_trips=counted["round_trips"],
        )


class StockLoader:
    """The status quo: wipe RedBeat's keys, save every row again (STOCK_DB)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.app = env.make_app(redbeat_redis_url=env.server.url_for(STOCK_DB))
        self.client = get_redis(self.app)
        self._schedules: dict[Any, BaseSchedule] = {}

    def close(self) -> None:
        close_app(self.app)

    def _schedule(self, value: Any) -> BaseSchedule:
        converted = self._schedules.get(value)
        if converted is None:
            if isinstance(value, str):
                converted = crontab(*value.split())
            else:
                converted = interval_schedule(run_every=value)
            self._schedules[value] = converted
        return converted

    def _wipe(self) -> None:
        keys = self.client.zrange(SCHEDULE_KEY, 0, -1)
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])
        self.client.delete(SCHEDULE_KEY)

    def run(self, items: list[dict[str, Any]], n: int) -> Run:
        with _counted(self.env, STOCK_DB) as counted, stopwatch() as total:
            with stopwatch() as wiping:
                self._wipe()
            with stopwatch() as saving:
                for row in items:
                    RedBeatSchedulerEntry(
                        row["name"],
                        row["task"],
                        self._schedule(row["schedule"]),
                        (),
                        row["kwargs"],
                        app=self.app,
                    ).save()
        stored = int(self.client.zcard(SCHEDULE_KEY))
        if stored != n:
            raise BenchmarkBroken(f"stock init loader: {stored} entries in the ZSET, not {n}")
        return Run(
            seconds=total[0],
            phases={"wipe": wiping[0], "save": saving[0]},
            created=n,
            updated=0,
            upsert_calls=0,
            write_commands=counted["write_commands"],
            round_trips=counted["round_trips"],
        )


def measure(env: Env, n: int, repetitions: int) -> ReconcileBench:
    env.flush()
    env.client(STOCK_DB).flushdb()
    bench = ReconcileBench(n)
    ours = SafeLoader(env)
    stock = StockLoader(env)
    try:
        generation = 0
        items = rows(n, generation)
        bench.add(SAFE, EMPTY, ours.run(items, n, created=n, updated=0))
        bench.add(STOCK, EMPTY, stock.run(items, n))
        ours.reconciler.snapshot()  # loads versions.lua, which an empty schedule never calls
        for rep in range(repetitions):
            for situation in (UNCHANGED, CHANGED):
                if situation == CHANGED:
                    generation += 1
                    items = rows(n, generation)
                updated = _changed(n) if situation == CHANGED else 0
                for contender in (SAFE, STOCK) if rep % 2 == 0 else (STOCK, SAFE):
                    if contender == SAFE:
                        timed = ours.run(items, n, created=0, updated=updated)
                    else:
                        timed = stock.run(items, n)
                    bench.add(contender, situation, timed)
    finally:
        stock.close()
        ours.close()
    env.client(STOCK_DB).flushdb()
    env.flush()
    return bench


def run(env: Env, sizes: tuple[int, ...], repetitions: int) -> list[ReconcileBench]:
    return [measure(env, n, repetitions) for n in sizes]
