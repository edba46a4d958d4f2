"""Reconcile N loader rows against Redis, and the "init loader" stock RedBeat users run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval_schedule
from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

from safe_redbeat.schedule import Schedule
from safe_redbeat.sync.loader import parse_specs
from safe_redbeat.sync.reconcile import Reconciler

from .env import KEYS, TASK, BenchmarkBroken, Env, Traffic, close_app, server_calls, stopwatch
from .stats import Sample

#: the stock RedBeat loader's database (safe_redbeat's is SCHEDULE_DB)
STOCK_DB = 3
CRON = "*/5 * * * *"
#: the other rows run every INTERVAL seconds
INTERVAL = 60
#: every CHANGE_EVERY-th row changes in the "1% changed" runs
CHANGE_EVERY = 100
WRITE_COMMANDS = frozenset(
    {"hset", "hsetnx", "hmset", "hdel", "zadd", "zrem", "sadd", "srem", "del", "unlink", "set"}
)
#: situations, in table order
EMPTY, UNCHANGED, CHANGED = "empty Redis (first run)", "nothing changed", "1% changed"
SITUATIONS = (EMPTY, UNCHANGED, CHANGED)
SAFE, STOCK = "safe_redbeat", "redbeat"


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
    #: the round trips in words
    trips: str


@dataclass
class ReconcileBench:
    n: int
    #: runs by (contender, situation)
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def sample(self, contender: str, situation: str, phase: str | None = None) -> Sample:
        runs = self.runs[(contender, situation)]
        return Sample.of(r.seconds if phase is None else r.phases[phase] for r in runs)

    def count(self, contender: str, situation: str, what: str) -> str:
        """A per-run count, as ``value`` or ``min-max`` when the runs differ."""
        values = [int(getattr(r, what)) for r in self.runs[(contender, situation)]]
        low, high = min(values), max(values)
        return str(low) if low == high else f"{low}-{high}"

    def stock_over_safe(self, situation: str) -> Sample:
        pairs = zip(self.runs[(STOCK, situation)], self.runs[(SAFE, situation)], strict=False)
        return Sample.of(a.seconds / b.seconds for a, b in pairs)


def rows(n: int, generation: int = 0) -> list[dict[str, Any]]:
    """The loader's rows; every CHANGE_EVERY-th carries ``generation`` once it is > 0."""
    return [
        {
            "name": f"e{index}",
            "task": TASK,
            "schedule": INTERVAL if index % 2 == 0 else CRON,
            "kwargs": {"i": index}
            | ({"generation": generation} if generation and index % CHANGE_EVERY == 0 else {}),
        }
        for index in range(n)
    ]


class _Contender:
    """A loader on its own app, whose Redis traffic is counted."""

    def __init__(self, env: Env, **conf: Any) -> None:
        self.env = env
        self.traffic = Traffic()
        self.app = env.make_app(traffic=self.traffic, **conf)

    @contextmanager
    def counted(self) -> Iterator[dict[str, Any]]:
        """Round trips and upsert.lua calls of this app, write commands of the server."""
        self.traffic.reset()
        before = server_calls(self.env.schedule_client, WRITE_COMMANDS)
        counted: dict[str, Any] = {}
        yield counted
        counted["write_commands"] = server_calls(self.env.schedule_client, WRITE_COMMANDS) - before
        counted["round_trips"] = self.traffic.round_trips
        counted["upsert_calls"] = self.traffic.calls("upsert.lua")
        counted["trips"] = self.traffic.describe()


class SafeLoader(_Contender):
    """safe_redbeat's loader reconcile, as the leader's seeding runs it (not fenced)."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.schedule = Schedule(self.app)
        self.reconciler = Reconciler(
            self.schedule.client,
            self.schedule.keys,
            self.schedule.shards()[0].scripts,
            self.app,
            source="loader",
            owned_key=self.schedule.keys.loader,
        )

    def close(self) -> None:
        self.schedule.close()
        close_app(self.app)

    def run(self, items: list[dict[str, Any]], n: int, *, created: int, updated: int) -> Run:
        with self.counted() as counted, stopwatch() as total:
            with stopwatch() as parsing:
                load = parse_specs(items)
            with stopwatch() as snapshotting:
                versions = self.reconciler.snapshot()
            with stopwatch() as running:
                result = self.reconciler.run(load.specs, versions=versions, token="")
        done = (len(result.created), len(result.updated))
        if load.errors or result.errors or result.conflicts or result.removed:
            raise BenchmarkBroken(f"reconcile of {n} rows: {result.summary()} {load.errors[:3]}")
        if done != (created, updated) or sum(done) + result.unchanged != n:
            raise BenchmarkBroken(
                f"reconcile of {n} rows: expected {created} created and {updated} updated "
                f"of {n}, got {result.summary()}"
            )
        phases = {"parse": parsing[0], "snapshot": snapshotting[0], "run": running[0]}
        return Run(total[0], phases, *done, **counted)


class StockLoader(_Contender):
    """The status quo: wipe RedBeat's keys, save every row again (on STOCK_DB)."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, redbeat_redis_url=env.server.url_for(STOCK_DB))
        self.client = get_redis(self.app)
        self._schedules: dict[Any, BaseSchedule] = {}

    def close(self) -> None:
        close_app(self.app)

    def _schedule(self, value: Any) -> BaseSchedule:
        """Each distinct schedule converted once, as ``parse_specs`` does."""
        if value not in self._schedules:
            self._schedules[value] = (
                crontab(*value.split()) if isinstance(value, str) else interval_schedule(value)
            )
        return self._schedules[value]

    def run(self, items: list[dict[str, Any]], n: int) -> Run:
        with self.counted() as counted, stopwatch() as total:
            with stopwatch() as wiping:
                keys = self.client.zrange(KEYS.schedule, 0, -1)
                for start in range(0, len(keys), 1000):
                    self.client.delete(*keys[start : start + 1000])
                self.client.delete(KEYS.schedule)
            with stopwatch() as saving:
                for row in items:
                    schedule = self._schedule(row["schedule"])
                    RedBeatSchedulerEntry(
                        row["name"], row["task"], schedule, (), row["kwargs"], app=self.app
                    ).save()
        stored = int(self.client.zcard(KEYS.schedule))
        if stored != n:
            raise BenchmarkBroken(f"stock init loader: {stored} entries in the ZSET, not {n}")
        return Run(total[0], {"wipe": wiping[0], "save": saving[0]}, n, 0, **counted)


def measure(env: Env, n: int, repetitions: int) -> ReconcileBench:
    """Both into empty databases, then nothing changed and 1% changed, each first in turn."""
    env.flush()
    env.client(STOCK_DB).flushdb()
    bench = ReconcileBench(n)
    ours, stock = SafeLoader(env), StockLoader(env)
    try:
        generation = 0
        items = rows(n, generation)
        bench.runs[(SAFE, EMPTY)] = [ours.run(items, n, created=n, updated=0)]
        bench.runs[(STOCK, EMPTY)] = [stock.run(items, n)]
        ours.reconciler.snapshot()  # loads versions.lua, which an empty schedule never calls
        for rep in range(repetitions):
            for situation in (UNCHANGED, CHANGED):
                if situation == CHANGED:
                    generation += 1
                    items = rows(n, generation)
                updated = len(range(0, n, CHANGE_EVERY)) if situation == CHANGED else 0
                for contender in (SAFE, STOCK) if rep % 2 == 0 else (STOCK, SAFE):
                    timed = (
                        ours.run(items, n, created=0, updated=updated)
                        if contender == SAFE
                        else stock.run(items, n)
                    )
                    bench.runs.setdefault((contender, situation), []).append(timed)
    finally:
        stock.close()
        ours.close()
    env.client(STOCK_DB).flushdb()
    env.flush()
    return bench


def run(env: Env, sizes: tuple[int, ...], repetitions: int) -> list[ReconcileBench]:
    return [measure(env, n, repetitions) for n in sizes]
