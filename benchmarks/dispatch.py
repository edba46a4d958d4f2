"""Dispatch cost per due entry: N entries due at once, against the ``send_task`` floor.

Method (in-process): a fresh Celery app per run; the scheduler is constructed and holds
the lock (stock RedBeat: its beat_init handler; safe_redbeat: a first tick with nothing
due), its producer is warmed up, then N entries due now are written and ``tick()`` is
timed until all N messages are in the broker list. The floor is ``app.send_task`` in a
loop with one producer on the same broker, one message at a time (as stock RedBeat
publishes); the batched floor is the same loop inside kombu's ``Producer.batch()`` in
chunks of 500, the way safe_redbeat publishes (one Redis pipeline per chunk), so it is
the floor of safe_redbeat's own publish. The monitored series is safe_redbeat with its
Prometheus metrics registered and a receiver on every signal (so the per-occurrence
``occurrence_sent`` is built and sent too). All run alternately in every repetition, each
first in turn.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kombu.messaging import Producer

import safe_redbeat.reader as safe_reader_module
import safe_redbeat.scheduler as safe_scheduler_module
from safe_redbeat import signals
from safe_redbeat.publisher import Publisher

from .env import (
    BROKER_DB,
    CONTENDERS,
    REDBEAT,
    SAFE,
    TASK,
    BenchmarkBroken,
    Contender,
    Env,
    check_messages,
    close_app,
    rotated,
    start_scheduler,
    stop_scheduler,
    stopwatch,
    tick_until_sent,
    warm_up,
    write_entries,
)
from .stats import Sample, ratio

FLOOR = "floor"
#: the same loop inside kombu's ``Producer.batch()`` (kombu 5.7+: one pipeline per batch)
FLOOR_BATCHED = "floor_batched"
#: messages per ``Producer.batch()`` in the batched floor: safe_redbeat's publish chunk
PUBLISH_CHUNK = int(inspect.signature(Publisher).parameters["chunk_size"].default)
#: safe_redbeat with metrics registered and a receiver on every signal
SAFE_MONITORED = "safe_redbeat_monitored"
BATCHING = hasattr(Producer, "batch")
MONITORING = importlib.util.find_spec("prometheus_client") is not None
SERIES = (
    (FLOOR, FLOOR_BATCHED, REDBEAT.key, SAFE.key) if BATCHING else (FLOOR, REDBEAT.key, SAFE.key)
) + ((SAFE_MONITORED,) if MONITORING else ())


@dataclass
class DispatchResult:
    n: int
    #: seconds per run, keyed by FLOOR / contender key
    seconds: dict[str, list[float]] = field(default_factory=dict)
    ticks: dict[str, list[int]] = field(default_factory=dict)

    def ms_per_entry(self, series: str) -> Sample:
        return Sample.of(s * 1000 / self.n for s in self.seconds[series])

    def safe_over_floor(self) -> Sample:
        return ratio(self.seconds[SAFE.key], self.seconds[FLOOR])

    def safe_over_batched_floor(self) -> Sample:
        return ratio(self.seconds[SAFE.key], self.seconds[FLOOR_BATCHED])

    def safe_over_redbeat(self) -> Sample:
        return ratio(self.seconds[SAFE.key], self.seconds[REDBEAT.key])

    def redbeat_over_safe(self) -> Sample:
        return ratio(self.seconds[REDBEAT.key], self.seconds[SAFE.key])

    def monitored_over_safe(self) -> Sample:
        return ratio(self.seconds[SAFE_MONITORED], self.seconds[SAFE.key])


def prepare(env: Env, contender: Contender, app: Any) -> Any:
    """A scheduler that holds the lock and has a connected producer; nothing is due yet."""
    scheduler = start_scheduler(contender, app)
    if not contender.is_stock:
        scheduler.tick()
        if not scheduler.is_leader:
            raise BenchmarkBroken("safe_redbeat did not take the lease in its first tick")
    warm_up(app, scheduler.producer, env.client(BROKER_DB))
    return scheduler


@contextmanager
def _monitored() -> Iterator[None]:
    """safe_redbeat's metrics on a registry of their own and a no-op receiver per signal."""
    from prometheus_client import CollectorRegistry

    from safe_redbeat.metrics import SchedulerMetrics

    def receiver(sender: Any, **kwargs: Any) -> None:
        return None

    everything = [
        signal
        for signal in (getattr(signals, name) for name in signals.__all__)
        if hasattr(signal, "connect")
    ]
    metrics = SchedulerMetrics(CollectorRegistry(auto_describe=False))
    for signal in everything:
        signal.connect(receiver, weak=False, dispatch_uid="benchmark")
    try:
        yield
    finally:
        for signal in everything:
            signal.disconnect(receiver, dispatch_uid="benchmark")
        metrics.close()


def run_scheduler(
    env: Env, contender: Contender, n: int, timeout: float, *, monitored: bool = False
) -> tuple[float, int]:
    """Seconds of ``tick()`` until all ``n`` due entries were published, and the tick count."""
    env.flush()
    app = env.make_app()
    broker = env.client(BROKER_DB)
    try:
        with _monitored() if monitored else contextlib.nullcontext():
            return _run_scheduler(env, contender, app, broker, n, timeout)
    finally:
        close_app(app)


def _run_scheduler(
    env: Env, contender: Contender, app: Any, broker: Any, n: int, timeout: float
) -> tuple[float, int]:
    scheduler = prepare(env, contender, app)
    try:
        write_entries(env.schedule_client, range(n), due=True)
        with stopwatch() as elapsed:
            ticks = tick_until_sent(scheduler, broker, n, timeout=timeout)
        check_messages(broker, n, contender)
    finally:
        stop_scheduler(scheduler)
    return elapsed[0], ticks


def run_floor(env: Env, n: int, *, batched: bool = False) -> float:
    """Seconds of ``app.send_task`` for ``n`` messages with one producer: the publish floor.

    ``batched``: inside ``producer.batch()``, which sends the messages of each chunk in one
    Redis pipeline, chunks of PUBLISH_CHUNK as safe_redbeat's Publisher sends them.
    """
    env.flush()
    app = env.make_app()
    broker = env.client(BROKER_DB)
    connection = app.connection_for_write()
    try:
        connection.ensure_connection()
        producer = app.amqp.Producer(connection, auto_declare=False)
        warm_up(app, producer, broker)
        with stopwatch() as elapsed:
            if batched:
                for start in range(0, n, PUBLISH_CHUNK):
                    with producer.batch(PUBLISH_CHUNK):
                        for index in range(start, min(start + PUBLISH_CHUNK, n)):
                            app.send_task(TASK, args=[index], producer=producer)
            else:
                for index in range(n):
                    app.send_task(TASK, args=[index], producer=producer)
        check_messages(broker, n, None)
    finally:
        connection.release()
        close_app(app)
    return elapsed[0]


def run(env: Env, sizes: tuple[int, ...], repetitions: int, timeout: float) -> list[DispatchResult]:
    results = [DispatchResult(n) for n in sizes]
    for rep in range(repetitions):
        for result in results:
            for series in rotated(SERIES, rep):
                if series in (FLOOR, FLOOR_BATCHED):
                    seconds = run_floor(env, result.n, batched=series == FLOOR_BATCHED)
                    ticks = 0
                elif series == SAFE_MONITORED:
                    seconds, ticks = run_scheduler(env, SAFE, result.n, timeout, monitored=True)
                else:
                    contender = next(c for c in CONTENDERS if c.key == series)
                    seconds, ticks = run_scheduler(env, contender, result.n, timeout)
                result.seconds.setdefault(series, []).append(seconds)
                result.ticks.setdefault(series, []).append(ticks)
    return results


# -- where safe_redbeat's time goes ------------------------------------------------------

#: (label, where, name): a method of SafeRedBeatScheduler or of its outbox, or a function
#: looked up by name in safe_redbeat.scheduler ("module") or safe_redbeat.reader ("reader")
PHASES = (
    ("read due entries (due.lua, HMGET pipeline)", "method", "_read_due"),
    ("  of which decode_entry (JSON, schedule)", "reader", "decode_entry"),
    ("plan_batch (is_due, next run, meta, task id)", "module", "plan_batch"),
    ("claim (claim.lua, one call per batch)", "method", "_claim"),
    ("publish (send_task, broker batches of 500)", "method", "_publish_claimed"),
    ("  of which ack (HDEL pending, one per chunk)", "outbox", "_ack"),
)


@dataclass
class Breakdown:
    n: int
    total: float
    phases: dict[str, float]

    def rows(self) -> list[tuple[str, float, float]]:
        """(phase, ms per entry, share of the tick)."""
        rows = [
            (label, seconds * 1000 / self.n, seconds / self.total)
            for label, seconds in self.phases.items()
        ]
        accounted = sum(
            seconds for label, seconds in self.phases.items() if not label.startswith("  ")
        )
        rest = max(self.total - accounted, 0.0)
        rows.append(("rest of tick (lease upkeep, loop)", rest * 1000 / self.n, rest / self.total))
        return rows


@contextmanager
def _timed_phases(scheduler: Any) -> Iterator[defaultdict[str, float]]:
    spent: defaultdict[str, float] = defaultdict(float)

    def wrap(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started

        return timed

    modules = {"module": safe_scheduler_module, "reader": safe_reader_module}
    saved: list[tuple[Any, str, Any]] = []
    for label, where, name in PHASES:
        if where in ("method", "outbox"):
            owner = scheduler if where == "method" else scheduler.outbox
            setattr(owner, name, wrap(label, getattr(owner, name)))
        else:
            module = modules[where]
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, wrap(label, getattr(module, name)))
    try:
        yield spent
    finally:
        for module, name, func in saved:
            setattr(module, name, func)


def breakdown(env: Env, n: int, timeout: float) -> Breakdown:
    """One extra, instrumented safe_redbeat run: wall time per phase of the dispatching tick."""
    env.flush()
    app = env.make_app()
    broker = env.client(BROKER_DB)
    try:
        scheduler = prepare(env, SAFE, app)
        try:
            write_entries(env.schedule_client, range(n), due=True)
            with _timed_phases(scheduler) as spent, stopwatch() as elapsed:
                tick_until_sent(scheduler, broker, n, timeout=timeout)
            check_messages(broker, n, SAFE)
        finally:
            stop_scheduler(scheduler)
    finally:
        close_app(app)
    phases = {label: spent.get(label, 0.0) for label, _where, _name in PHASES}
    return Breakdown(n=n, total=elapsed[0], phases=phases)
