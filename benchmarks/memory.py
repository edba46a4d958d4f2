"""Redis memory per entry after the same N entries were installed and ran once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .env import (
    BROKER_DB,
    CONTENDERS,
    KEYS,
    TASK,
    BenchmarkBroken,
    Contender,
    Env,
    check_messages,
    close_app,
    entry_name,
    start_scheduler,
    stop_scheduler,
    tick_until_sent,
)

#: shared out per entry; lease, fence and lock keys are a constant, left out
SHARED_KEYS = (KEYS.schedule, KEYS.statics, KEYS.pending)


@dataclass
class MemoryResult:
    contender: str
    n: int
    entry_bytes: int
    shared_bytes: int

    @property
    def per_entry(self) -> float:
        return (self.entry_bytes + self.shared_bytes) / self.n


def _usage(client: Any, keys: list[str]) -> int:
    """``MEMORY USAGE <key> SAMPLES 0`` summed over ``keys``."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(value or 0) for value in pipe.execute())


def measure(
    env: Env, contender: Contender, n: int, interval: float, timeout: float
) -> MemoryResult:
    """Install N ``beat_schedule`` entries the scheduler's own way; tick until each ran once."""
    env.flush()
    every = timedelta(seconds=interval)
    schedule = {entry_name(i): {"task": TASK, "schedule": every, "args": (i,)} for i in range(n)}
    app = env.make_app(beat_schedule=schedule)
    broker = env.client(BROKER_DB)
    try:
        scheduler = start_scheduler(contender, app)
        try:
            tick_until_sent(scheduler, broker, n, timeout=timeout)
            check_messages(broker, n, contender)
        finally:
            stop_scheduler(scheduler)
    finally:
        close_app(app)
    entry_keys = [KEYS.entry(name) for name in schedule]
    if env.schedule_client.exists(*entry_keys) != n:
        raise BenchmarkBroken(f"{contender.key}: not all {n} entry hashes exist")
    return MemoryResult(
        contender=contender.key,
        n=n,
        entry_bytes=_usage(env.schedule_client, entry_keys),
        shared_bytes=_usage(env.schedule_client, list(SHARED_KEYS)),
    )


def run(env: Env, n: int, interval: float, timeout: float) -> list[MemoryResult]:
    return [measure(env, contender, n, interval, timeout) for contender in CONTENDERS]
