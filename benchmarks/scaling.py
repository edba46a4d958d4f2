"""Sharded dispatch: N entries due at once, K shards worked by K real ``celery beat`` replicas.

Per configuration (stock RedBeat in one process; safe_redbeat with K shards on K replicas)
the replicas are started once and left to share the shards (safe_redbeat's then dispatch
the entries ``STEADY_AFTER`` times untimed: its steady state); then, per repetition, every
entry is made due at one common second a little ahead (its ``meta`` says it last ran one
interval before that second, its score is that second) and the wall time from that second
until the last message is in the broker list is measured. Meanwhile the CPU time of the
replicas, of the Redis server(s) and of the whole machine is read from ``/proc`` and
``INFO cpu``, so a missed speed-up can be told apart: the replicas, Redis, or someone else
using the cores.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from safe_redbeat import Schedule
from safe_redbeat.leader.heartbeat import read_heartbeats
from safe_redbeat.leader.lease import parse_token
from safe_redbeat.model.codec import encode_meta
from safe_redbeat.model.specs import EntrySpec
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout
from testbed.beat import BeatCluster, BeatProcess, Message
from testbed.cluster import LocalCluster

from .env import (
    BROKER_DB,
    EVERY,
    KEYS,
    QUEUE,
    SCHEDULE_DB,
    STEADY_AFTER,
    TASK,
    BenchmarkBroken,
    Env,
    entry_name,
    write_entries,
)
from .failover import SAFE_SCHEDULER, STOCK_SCHEDULER
from .stats import Sample, ratio

STOCK = "redbeat"
ONE_REDIS = "one Redis"
CLUSTER = "Redis Cluster"
#: the key prefix on the cluster: a hash tag, so one shard's keys (K=1: all) share a slot
CLUSTER_PREFIX = "{bench}:"
#: both schedulers wake at least this often (seconds), so they see the common due second
#: once it is set; stock RedBeat also needs it to look ahead no further than this
LOOP_INTERVAL = 1
#: the due second is at least this far ahead of the moment the scores are written
LEAD = LOOP_INTERVAL + 0.6
#: stock RedBeat extends its lock only at the start of a tick: one long tick must not
#: outlive it (one process, nobody else wants the lock)
STOCK_SETTINGS = {"beat_max_loop_interval": LOOP_INTERVAL, "redbeat_lock_timeout": 3600}
SAFE_SETTINGS = {"beat_max_loop_interval": LOOP_INTERVAL}
START_TIMEOUT = 120.0
POLL = 0.005
#: a generous estimate of the seconds it takes to write one entry's metadata
WRITE_SECONDS = 0.00005
CHUNK = 5000


def series_of(shards: int) -> str:
    return f"K={shards}"


# -- CPU time ------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0.0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot, whoever used them."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0, 0
    ticks = [int(value) for value in first[:8]]  # user .. steal
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Cpu:
    """CPU seconds, read at one moment (:meth:`Usage.between` makes a difference)."""

    replicas: float
    redis: float
    #: this benchmark process (it polls the broker)
    bench: float
    busy_ticks: int
    all_ticks: int
    wall: float


@dataclass(frozen=True)
class Usage:
    """CPU seconds spent during one timed dispatch."""

    replicas: float
    redis: float
    #: every core's busy time over the run (all processes), in CPU seconds
    machine: float
    #: the machine's busy time not spent by the replicas, Redis or the benchmark
    others: float

    @classmethod
    def between(cls, before: Cpu, after: Cpu) -> Usage:
        ticks = after.all_ticks - before.all_ticks
        busy = (after.busy_ticks - before.busy_ticks) / ticks if ticks > 0 else 0.0
        machine = busy * (os.cpu_count() or 1) * (after.wall - before.wall)
        ours = sum(getattr(after, f) - getattr(before, f) for f in ("replicas", "redis", "bench"))
        return cls(
            replicas=after.replicas - before.replicas,
            redis=after.redis - before.redis,
            machine=machine,
            others=max(machine - ours, 0.0),
        )


# -- where the schedule lives ----------------------------------------------------------------


class Store:
    """The schedule's Redis (one server, or a cluster) and the broker next to it."""

    def __init__(
        self,
        label: str,
        *,
        url: str,
        prefix: str,
        client: Any,
        servers: list[redis.Redis],
        broker: redis.Redis,
        broker_url: str,
        broker_apart: bool,
        app_conf: dict[str, Any],
        flush: Callable[[], object],
        cluster: LocalCluster | None = None,
    ) -> None:
        self.label = label
        self.url = url
        self.base = Keys(prefix=prefix, lease=prefix + ":lock")
        self.client = client
        #: one client per server process of the schedule (INFO cpu)
        self.servers = servers
        self.broker = broker
        self.broker_url = broker_url
        #: the broker is a server of its own (its CPU is counted on top)
        self.broker_apart = broker_apart
        self.app_conf = app_conf
        self.flush = flush
        self.cluster = cluster

    def redis_cpu(self) -> float:
        clients = [*self.servers, self.broker] if self.broker_apart else self.servers
        return sum(server_cpu(c) for c in clients)

    def app(self, shards: int) -> Celery:
        app = Celery("bench-scaling", set_as_current=False)
        app.conf.update(
            broker_url=self.broker_url,
            redbeat_redis_url=self.url,
            redbeat_key_prefix=self.base.prefix,
            timezone="UTC",
            result_expires=None,
            safe_redbeat_shards=shards,
            **self.app_conf,
        )
        return app

    def placement(self, layout: Layout) -> str:
        """How the shards' slots spread over the primaries (cluster only)."""
        if self.cluster is None:
            return "one server"
        ports = [self.cluster.primary_of(keys.schedule).port for keys in layout.all_keys()]
        used = Counter(ports)
        spread = "+".join(str(k) for k in sorted(used.values(), reverse=True))
        return f"{len(used)} of {self.cluster.n_primaries} primaries ({spread})"


def one_redis(env: Env) -> Store:
    """The benchmark's server: schedule in one db, broker in another of the same server."""
    return Store(
        ONE_REDIS,
        url=env.server.url_for(SCHEDULE_DB),
        prefix=KEYS.prefix,
        client=env.schedule_client,
        servers=[env.client(0)],
        broker=env.client(BROKER_DB),
        broker_url=env.server.url_for(BROKER_DB),
        broker_apart=False,
        app_conf={},
        flush=env.schedule_client.flushdb,
    )


@contextmanager
def redis_cluster(env: Env) -> Iterator[Store]:
    """A local Redis Cluster (3 primaries, 1 replica each) for the schedule; the broker is
    the benchmark's standalone server (kombu cannot use a cluster)."""
    with LocalCluster(workdir=env.workdir / "cluster") as cluster:
        nodes = [node.client(10.0) for node in cluster.nodes]
        client = cluster.client(10.0)

        def flush() -> None:
            for node in nodes:
                if node.info("replication").get("role") == "master":
                    node.flushall()

        try:
            yield Store(
                f"{CLUSTER} ({cluster.n_primaries} primaries, 1 replica each)",
                url=cluster.url,
                prefix=CLUSTER_PREFIX,
                client=client,
                servers=nodes,
                broker=env.client(BROKER_DB),
                broker_url=env.server.url_for(BROKER_DB),
                broker_apart=True,
                app_conf={"redbeat_redis_options": {"cluster": True}},
                flush=flush,
                cluster=cluster,
            )
        finally:
            client.close()
            for node in nodes:
                node.close()


# -- entries -------------------------------------------------------------------------------


def seed_safe(store: Store, layout: Layout, n: int) -> None:
    """N entries in ``layout``, written exactly as ``Schedule.upsert`` writes them.

    The first goes through ``Schedule.upsert``; the others through a pipeline that writes
    the same fields (checked against the first), since 30,000 upserts one by one would
    take longer than the measurement. None is due: the scores are an hour ahead.
    """
    if layout.shards > 1:
        store.client.set(store.base.layout, layout.encode())
    app = store.app(layout.shards)
    first = entry_name(0)
    try:
        with Schedule(app) as schedule:
            schedule.upsert(first, TASK, EVERY, args=[0])
    finally:
        app.close()
    key = layout.keys_for(first).entry(first)
    written = store.client.hgetall(key)
    expected = _fields(0, str(written.get("meta")))
    if written != expected:
        raise BenchmarkBroken(
            f"the seeding pipeline writes {sorted(expected)}, Schedule.upsert wrote "
            f"{sorted(written)} for {key!r}: update benchmarks/scaling.py"
        )
    later = int(time.time() + EVERY.total_seconds())
    for start in range(1, n, CHUNK):
        with store.client.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + CHUNK, n)):
                name = entry_name(index)
                keys = layout.keys_for(name)
                pipe.hset(keys.entry(name), mapping=_fields(index, ""))
                pipe.zadd(keys.schedule, {keys.entry(name): later})
            pipe.execute()


def _fields(index: int, meta: str) -> dict[str, str]:
    spec = EntrySpec.build(entry_name(index), TASK, EVERY, args=[index])
    fields = {"definition": spec.definition(), "version": "1", "meta": meta}
    lifecycle = spec.lifecycle.encode()
    if lifecycle:
        fields["lifecycle"] = lifecycle
    return fields


def arm(store: Store, layout: Layout, n: int) -> float:
    """Make every entry due at one second at least ``LEAD`` ahead; return it (epoch).

    Each entry last ran exactly one interval before that second (stock RedBeat decides
    from this alone and looks ahead ``LOOP_INTERVAL``), then its score, which decides when
    safe_redbeat reads it, is set to that second (one ZADD per shard and chunk).
    """
    by_shard: dict[int, list[str]] = {}
    for index in range(n):
        by_shard.setdefault(layout.shard_of(entry_name(index)), []).append(entry_name(index))
    for _attempt in range(3):
        due = float(int(time.time() + LEAD + n * WRITE_SECONDS) + 1)
        meta = encode_meta(datetime.fromtimestamp(due, timezone.utc) - EVERY)
        for shard, names in by_shard.items():
            keys = layout.keys(shard)
            for start in range(0, len(names), CHUNK):
                with store.client.pipeline(transaction=False) as pipe:
                    for name in names[start : start + CHUNK]:
                        pipe.hset(keys.entry(name), "meta", meta)
                    pipe.execute()
        if time.time() + LEAD <= due:
            break
    else:
        raise BenchmarkBroken(f"writing the run metadata of {n} entries took too long")
    for shard, names in by_shard.items():
        keys = layout.keys(shard)
        for start in range(0, len(names), CHUNK):
            members = {keys.entry(name): due for name in names[start : start + CHUNK]}
            store.client.zadd(keys.schedule, members)
    if time.time() > due - LOOP_INTERVAL:
        raise BenchmarkBroken(f"writing the scores of {n} entries took too long")
    return due


# -- one configuration ----------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    #: from the due second to the first message in the broker
    first_after: float
    #: messages sent by each replica, most first
    spread: tuple[int, ...]
    cpu: Usage


@dataclass
class ScalingResult:
    store: str
    n: int
    runs: dict[str, list[Run]] = field(default_factory=dict)
    #: replicas per series, and seconds from their start until each led its share
    replicas: dict[str, int] = field(default_factory=dict)
    balanced_in: dict[str, float] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)
    #: how each series' replicas enqueue (their heartbeats; "-" for stock RedBeat)
    enqueue: dict[str, str] = field(default_factory=dict)

    def series(self) -> list[str]:
        return list(self.runs)

    def sample(self, series: str) -> Sample:
        return Sample.of(r.seconds for r in self.runs[series])

    def rate(self, series: str) -> Sample:
        return Sample.of(self.n / r.seconds for r in self.runs[series])

    def speedup(self, series: str, base: str = series_of(1)) -> Sample:
        """K=1's wall time / ``series``' wall time, paired per repetition."""
        return ratio([r.seconds for r in self.runs[base]], [r.seconds for r in self.runs[series]])

    def first_after(self, series: str) -> Sample:
        return Sample.of(r.first_after for r in self.runs[series])

    def cpu(self, series: str, part: str) -> Sample:
        return Sample.of(getattr(r.cpu, part) for r in self.runs[series])


class Replicas:
    """``count`` beat replicas of one scheduler, on ``store``."""

    def __init__(
        self,
        store: Store,
        logdir: Path,
        *,
        scheduler: str,
        settings: dict[str, Any],
        count: int,
    ) -> None:
        self.store = store
        self.count = count
        self.beats = BeatCluster(
            logdir,
            redis_url=store.url,
            broker_url=store.broker_url,
            key_prefix=store.base.prefix,
            scheduler=scheduler,
            settings={**store.app_conf, **settings},
            loglevel="WARNING",  # celery beat's default: no line per message sent
        )
        self.procs: list[BeatProcess] = []

    def start(self) -> None:
        self.procs = self.beats.start(self.count)

    def wait_leading(self, layout: Layout | None) -> float:
        """Seconds until every replica leads its share of the shards (stock: its lock)."""
        started = time.monotonic()
        deadline = started + START_TIMEOUT
        pids = {p.pid for p in self.procs}
        while True:
            if len(self.beats.alive()) != self.count:
                raise BenchmarkBroken(f"a replica exited:\n{self.beats.report(20)}")
            if layout is None:
                if self.store.client.get(self.store.base.lease) is not None:  # RedBeat's lock
                    return time.monotonic() - started
            else:
                holders: Counter[int | None] = Counter()
                for keys in layout.all_keys():
                    value = self.store.client.get(keys.lease)
                    holders[parse_token(value).pid if value else None] += 1
                share, extra = divmod(layout.shards, self.count)
                counts = sorted((holders[pid] for pid in pids), reverse=True)
                if None not in holders and counts == sorted(
                    [share + 1] * extra + [share] * (self.count - extra), reverse=True
                ):
                    return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise BenchmarkBroken(f"the replicas never shared the shards:\n{self.report()}")
            time.sleep(0.1)

    def cpu(self) -> float:
        return sum(process_cpu(p.pid) for p in self.procs)

    def report(self) -> str:
        return self.beats.report(20)

    def cleanup(self) -> None:
        self.beats.cleanup()


def measure(store: Store, replicas: Replicas, arm_entries: Callable[[], float], n: int) -> Run:
    broker = store.broker
    broker.delete(QUEUE)
    due = arm_entries()
    time.sleep(max(due - time.time() - 0.02, 0.0))
    before = cpu_now(store, replicas)
    deadline = due + 120.0 + n * 0.005  # far above any plausible time: a broken run
    first: float | None = None
    while True:
        queued = int(broker.llen(QUEUE))
        now = time.time()
        if queued and first is None:
            first = now
        if queued >= n:
            break
        if now > deadline:
            raise BenchmarkBroken(
                f"only {queued} of {n} messages after {now - due:.0f} s:\n{replicas.report()}"
            )
        time.sleep(POLL)
    after = cpu_now(store, replicas)
    seconds = now - due
    if first is None or first < due:
        raise BenchmarkBroken(f"a message was sent before the due second ({due})")
    time.sleep(0.3)  # a duplicate would show up now
    spread = check_messages(broker, n, {p.pid for p in replicas.procs})
    return Run(seconds, first - due, spread, Usage.between(before, after))


def enqueue_modes(store: Store, replicas: Replicas) -> str:
    """How the replicas enqueue, from their heartbeats: ``atomic``, ``publish``, or both."""
    deadline = time.monotonic() + 10.0
    while True:
        pids = {p.pid for p in replicas.procs}
        beats = [
            status.heartbeat
            for status in read_heartbeats(store.client, store.base)
            if status.heartbeat.pid in pids
        ]
        modes = sorted({beat.enqueue for beat in beats})
        if len(beats) == len(pids) and "" not in modes:
            return " + ".join(modes)
        if time.monotonic() >= deadline:
            raise BenchmarkBroken(f"the replicas never said how they enqueue: {beats}")
        time.sleep(0.1)


def cpu_now(store: Store, replicas: Replicas) -> Cpu:
    mine = os.times()
    busy, every = machine_ticks()
    return Cpu(replicas.cpu(), store.redis_cpu(), mine.user + mine.system, busy, every, time.time())


def check_messages(broker: redis.Redis, n: int, pids: set[int]) -> tuple[int, ...]:
    """One message per entry of the benchmark task, each from a replica; the count each sent."""
    raw = broker.lrange(QUEUE, 0, -1)
    messages = [Message.parse(item, 0.0, QUEUE) for item in raw]
    if len(messages) != n or len({m.task_id for m in messages}) != n:
        raise BenchmarkBroken(f"{len(messages)} messages queued, expected {n} distinct")
    if any(m.task != TASK for m in messages):
        raise BenchmarkBroken("a queued message is not of the benchmark task")
    senders = Counter(_origin_pid(m) for m in messages)
    if not set(senders) <= pids:
        raise BenchmarkBroken(f"messages from unknown senders: {sorted(map(str, senders))}")
    return tuple(sorted(senders.values(), reverse=True))


def _origin_pid(message: Message) -> int | None:
    name = str(message.headers.get("origin") or "").partition("@")[0]
    return int(name[3:]) if name.startswith("gen") and name[3:].isdigit() else None


def run_config(
    store: Store,
    logdir: Path,
    result: ScalingResult,
    shards: int | None,
    repetitions: int,
) -> None:
    """One series: stock RedBeat (``shards`` None) or safe_redbeat with ``shards`` shards."""
    store.flush()
    store.broker.delete(QUEUE)
    n = result.n
    if shards is None:
        series, layout, count = STOCK, Layout(store.base), 1
        write_entries(store.client, range(n), due=False)
        replicas = Replicas(
            store, logdir / STOCK, scheduler=STOCK_SCHEDULER, settings=STOCK_SETTINGS, count=1
        )
    else:
        series, layout, count = series_of(shards), Layout(store.base, shards), shards
        seed_safe(store, layout, n)
        settings = {**SAFE_SETTINGS, "safe_redbeat_shards": shards}
        replicas = Replicas(
            store, logdir / series, scheduler=SAFE_SCHEDULER, settings=settings, count=count
        )
    try:
        replicas.start()
        result.balanced_in[series] = replicas.wait_leading(None if shards is None else layout)
        result.replicas[series] = count
        result.placement[series] = store.placement(layout)
        result.enqueue[series] = "-"
        if shards is not None:
            # the steady state, as in the dispatch benchmark: with atomic enqueue the
            # third dispatch of an entry version is the first filled from its template
            for _round in range(STEADY_AFTER):
                measure(store, replicas, lambda: arm(store, layout, n), n)
            result.enqueue[series] = enqueue_modes(store, replicas)
        for _rep in range(repetitions):
            run = measure(store, replicas, lambda: arm(store, layout, n), n)
            result.runs.setdefault(series, []).append(run)
    finally:
        replicas.cleanup()


def run(
    env: Env,
    logdir: Path,
    n: int,
    shard_counts: tuple[int, ...],
    repetitions: int,
    *,
    cluster: bool,
) -> list[ScalingResult]:
    """Every series on one Redis (stock RedBeat too), then on a cluster if asked."""
    results = []
    store = one_redis(env)
    env.flush()
    result = ScalingResult(store.label, n)
    for shards in (None, *shard_counts):
        run_config(store, logdir / "one", result, shards, repetitions)
    results.append(result)
    if cluster:
        with redis_cluster(env) as store:
            result = ScalingResult(store.label, n)
            for shards in shard_counts:
                run_config(store, logdir / "cluster", result, shards, repetitions)
            results.append(result)
    env.flush()
    return results


__all__ = ["ScalingResult", "run", "series_of"]
