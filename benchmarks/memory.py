"""Redis memory per entry after the same N entries were installed and ran once.

Each scheduler installs N ``beat_schedule`` entries its own way (stock RedBeat in
``setup_schedule``; safe_redbeat through ``upsert.lua`` once it leads, which adds the
``version`` field), then ticks until all N were sent once. The entries run every
``interval`` seconds (stock RedBeat installs a new static entry as "last ran now", so it
first sends it one interval later; safe_redbeat sends a never-run entry at once).
Measured with ``MEMORY USAGE <key> SAMPLES 0``: every entry hash, plus the schedule ZSET,
the statics SET and the pending HASH shared out per entry. Lease, fence and lock keys
are a constant, left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .env import (
    BROKER_DB,
    CONTENDERS,
    PREFIX,
    SCHEDULE_KEY,
    BenchmarkBroken,
    Contender,
    Env,
    check_messages,
    close_app,
    entry_name,
    start_scheduler,
    static_schedule,
    stop_scheduler,
    tick_until_sent,
)

SHARED_KEYS = (SCHEDULE_KEY, PREFIX + ":statics", PREFIX + ":pending")


@dataclass
class MemoryResult:
    contender: str
    n: int
    entry_bytes: int
    shared_bytes: int

    @property
    def per_entry(self) -> float:
        return (self.entry_bytes + self.shared_bytes) / self.n

    @property
    def hash_per_entry(self) -> float:
        return self.entry_bytes / self.n

    @property
    def shared_per_entry(self) -> float:
        return self.shared_bytes / self.n


def _usage(client: Any, keys: list[str]) -> int:
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(value or 0) for value in pipe.execute())


def measure(
    env: Env, contender: Contender, n: int, interval: float, timeout: float
) -> MemoryResult:
    env.flush()
    app = env.make_app(beat_schedule=static_schedule(n, timedelta(seconds=interval)))
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
    client = env.schedule_client
    entry_keys = [PREFIX + entry_name(index) for index in range(n)]
    if client.exists(*entry_keys) != n:
        raise BenchmarkBroken(f"{contender.key}: not all {n} entry hashes exist")
    return MemoryResult(
        contender=contender.key,
        n=n,
        entry_bytes=_usage(client, entry_keys),
        shared_bytes=_usage(client, list(SHARED_KEYS)),
    )


def run(env: Env, n: int, interval: float, timeout: float) -> list[MemoryResult]:
    return [measure(env, contender, n, interval, timeout) for contender in CONTENDERS]
