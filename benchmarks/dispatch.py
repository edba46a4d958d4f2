"""Dispatch cost per due entry against the ``send_task`` floor, and where the time goes."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from types import CodeType
from typing import Any

from kombu.messaging import Producer

from safe_redbeat import signals
from safe_redbeat.dispatch.publisher import Publisher

from .env import (
    BROKER_DB,
    REDBEAT,
    SAFE_FIRST,
    SAFE_PUBLISH,
    SAFE_STEADY,
    TASK,
    BenchmarkBroken,
    Contender,
    Env,
    check_messages,
    close_app,
    dispatch_run,
    rotated,
    stopwatch,
)
from .stats import Sample, ratio

FLOOR = "floor"
#: the same loop inside kombu's ``Producer.batch()`` (kombu 5.7+: one pipeline per batch)
FLOOR_BATCHED = "floor_batched"
#: messages per ``Producer.batch()`` in the batched floor: safe_redbeat's publish chunk
PUBLISH_CHUNK = int(inspect.signature(Publisher).parameters["chunk_size"].default)
#: the atomic steady state with safe_redbeat's Prometheus metrics registered and a
#: receiver on every safe_redbeat signal (run inside ``monitored()``)
MONITORED = replace(
    SAFE_STEADY, key="safe_redbeat_monitored", label="safe_redbeat, atomic, steady, monitored"
)
SAFE_MONITORED = MONITORED.key
#: the series that run a scheduler, by key
DISPATCHERS = {c.key: c for c in (REDBEAT, SAFE_PUBLISH, SAFE_FIRST, SAFE_STEADY, MONITORED)}
BATCHING = hasattr(Producer, "batch")
MONITORING = importlib.util.find_spec("prometheus_client") is not None
SERIES = (FLOOR, *([FLOOR_BATCHED] if BATCHING else []), REDBEAT.key, SAFE_PUBLISH.key)
SERIES += (SAFE_FIRST.key, SAFE_STEADY.key)
SERIES += (SAFE_MONITORED,) if MONITORING else ()


@dataclass
class DispatchResult:
    n: int
    #: seconds per run, keyed by FLOOR / FLOOR_BATCHED / contender key
    seconds: dict[str, list[float]] = field(default_factory=dict)
    ticks: dict[str, list[int]] = field(default_factory=dict)

    def ms_per_entry(self, series: str) -> Sample:
        return Sample.of(s * 1000 / self.n for s in self.seconds[series])

    def over(self, series: str, other: str) -> Sample:
        """``series`` / ``other``, paired per repetition."""
        return ratio(self.seconds[series], self.seconds[other])


def run_floor(env: Env, n: int, *, batched: bool = False) -> float:
    """Seconds of ``app.send_task`` for ``n`` messages with one producer: the publish floor.

    ``batched``: inside ``producer.batch()``, chunks of PUBLISH_CHUNK as safe_redbeat sends.
    """
    env.flush()
    app = env.make_app()
    broker = env.client(BROKER_DB)
    connection = app.connection_for_write()
    try:
        connection.ensure_connection()
        producer = app.amqp.Producer(connection, auto_declare=False)
        app.send_task("benchmark.warmup", producer=producer)  # connect, declare
        broker.delete("celery")
        chunk = PUBLISH_CHUNK if batched else n
        with stopwatch() as elapsed:
            for start in range(0, n, chunk):
                with producer.batch(chunk) if batched else nullcontext():
                    for index in range(start, min(start + chunk, n)):
                        app.send_task(TASK, args=[index], producer=producer)
        check_messages(broker, n, None)
    finally:
        connection.release()
        close_app(app)
    return elapsed[0]


@contextmanager
def monitored() -> Iterator[None]:
    """safe_redbeat's metrics on a registry of their own and a no-op receiver per signal."""
    from prometheus_client import CollectorRegistry

    from safe_redbeat.metrics import SchedulerMetrics

    def receiver(sender: Any, **kwargs: Any) -> None:
        return None

    everything = [getattr(signals, name) for name in signals.__all__]
    everything = [signal for signal in everything if hasattr(signal, "connect")]
    metrics = SchedulerMetrics(CollectorRegistry(auto_describe=False))
    for signal in everything:
        signal.connect(receiver, weak=False, dispatch_uid="benchmark")
    try:
        yield
    finally:
        for signal in everything:
            signal.disconnect(receiver, dispatch_uid="benchmark")
        metrics.close()


@contextmanager
def timed_monitored() -> Iterator[list[float]]:
    """``stopwatch()`` with the metrics and signal receivers of ``monitored()`` in place."""
    with monitored(), stopwatch() as elapsed:
        yield elapsed


def run(env: Env, sizes: tuple[int, ...], repetitions: int, timeout: float) -> list[DispatchResult]:
    """Every series for every N in each repetition, each series first in turn."""
    results = [DispatchResult(n) for n in sizes]
    for rep in range(repetitions):
        for result in results:
            for series in rotated(SERIES, rep):
                if series in (FLOOR, FLOOR_BATCHED):
                    seconds, ticks = run_floor(env, result.n, batched=series == FLOOR_BATCHED), 0
                else:
                    around = timed_monitored if series == SAFE_MONITORED else stopwatch
                    contender = DISPATCHERS[series]
                    elapsed, ticks = dispatch_run(env, contender, result.n, timeout, around)
                    seconds = elapsed[0]
                result.seconds.setdefault(series, []).append(seconds)
                result.ticks.setdefault(series, []).append(ticks)
    return results


# -- where safe_redbeat's time goes ------------------------------------------------------

#: (label, function): the phases of the dispatching tick, found on the call stack by their
#: code object; an indented label is part of the phase above it
READ = "read due entries"
PLAN = "plan_batch (is_due, next run, meta, task id)"
BUILD = "build messages (Enqueuer.prepare)"
THROUGH_CELERY = "    of which through Celery (MessageBuilder._build)"
CLAIM = "claim (claim.lua, Shard._settle; atomic: with the pushes)"
PUBLISH = "publish (send_task in broker batches)"
REST = "rest of tick (lease upkeep, loop)"
PHASES = (
    (READ, "safe_redbeat.dispatch.reader:DueReader.read"),
    ("  of which decode_entry (JSON, schedule)", "safe_redbeat.model.codec:decode_entry"),
    (PLAN, "safe_redbeat.dispatch.plan:plan_batch"),
    (BUILD, "safe_redbeat.dispatch.enqueue:Enqueuer.prepare"),
    ("  of which MessageBuilder.commands", "safe_redbeat.dispatch.enqueue:MessageBuilder.commands"),
    (THROUGH_CELERY, "safe_redbeat.dispatch.enqueue:MessageBuilder._build"),
    (CLAIM, "safe_redbeat.dispatch.shard:Shard._settle"),
    (PUBLISH, "safe_redbeat.dispatch.publisher:Publisher.send"),
    ("  of which ack (HDEL pending)", "safe_redbeat.dispatch.outbox:Outbox._ack"),
)
#: the runs sampled, and the phases each must be seen in (given enough samples)
BREAKDOWNS = (
    (SAFE_PUBLISH, (READ, PLAN, CLAIM, PUBLISH)),
    (SAFE_FIRST, (READ, PLAN, BUILD, THROUGH_CELERY, CLAIM)),
    (SAFE_STEADY, (READ, PLAN, BUILD, CLAIM)),
)
#: seconds between two samples of the stack (and the GIL switch interval meanwhile)
SAMPLE_EVERY = 0.0005
#: fewer samples than this prove nothing about a phase never seen
ENOUGH_SAMPLES = 500


def code_of(path: str) -> CodeType:
    module_name, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module_name)
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
        return found.__code__  # type: ignore[no-any-return]
    except AttributeError:
        raise BenchmarkBroken(f"{path} is gone: update PHASES in benchmarks/dispatch.py") from None


@dataclass
class Breakdown:
    #: the series sampled (a key of DISPATCHERS) and its label
    series: str
    label: str
    n: int
    total: float
    samples: int
    #: samples per phase label
    hits: dict[str, int]

    def rows(self) -> list[tuple[str, float, float]]:
        """(phase, ms per entry, share of the tick), the rest of the tick last."""
        top = sum(hits for label, hits in self.hits.items() if not label.startswith(" "))
        shares = [(label, hits / self.samples) for label, hits in self.hits.items()]
        shares.append((REST, 1 - top / self.samples))
        return [(label, share * self.total * 1000 / self.n, share) for label, share in shares]


class StackSampler:
    """Which phases the calling thread is in, sampled every SAMPLE_EVERY seconds.

    A wall-clock sampler: the scheduler's code runs unchanged (nothing is wrapped).
    """

    def __init__(self) -> None:
        self.codes = {label: code_of(path) for label, path in PHASES}
        self.hits: Counter[str] = Counter()
        self.samples = 0
        self._target = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            frame = sys._current_frames().get(self._target)
            on_stack = set()
            while frame is not None:
                on_stack.add(frame.f_code)
                frame = frame.f_back
            self.samples += 1
            self.hits.update(label for label, code in self.codes.items() if code in on_stack)

    @contextmanager
    def running(self) -> Iterator[StackSampler]:
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SAMPLE_EVERY)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            sys.setswitchinterval(switch)


def breakdown(env: Env, n: int, timeout: float) -> list[Breakdown]:
    """One extra run per mode (BREAKDOWNS), its dispatching tick(s) sampled."""
    return [sample_run(env, contender, expected, n, timeout) for contender, expected in BREAKDOWNS]


def sample_run(
    env: Env, contender: Contender, expected: tuple[str, ...], n: int, timeout: float
) -> Breakdown:
    """``contender``'s timed dispatch of ``n`` entries, sampled; the ``expected`` phases
    must each be seen (in a run of at least ENOUGH_SAMPLES samples)."""

    @contextmanager
    def sampled() -> Iterator[tuple[StackSampler, list[float]]]:
        with StackSampler().running() as sampler, stopwatch() as elapsed:
            yield sampler, elapsed

    (sampler, elapsed), _ticks = dispatch_run(env, contender, n, timeout, sampled)
    unseen = [label for label in expected if not sampler.hits[label]]
    if unseen and sampler.samples >= ENOUGH_SAMPLES:
        raise BenchmarkBroken(
            f"{contender.label}: phases never on the stack in {sampler.samples} samples: {unseen}"
        )
    hits = {label: sampler.hits[label] for label, _ in PHASES}
    return Breakdown(
        series=contender.key,
        label=contender.label,
        n=n,
        total=elapsed[0],
        samples=max(sampler.samples, 1),
        hits=hits,
    )
