"""Redis commands and round trips of the dispatching tick(s), as a function of N, and the
time Redis spends in each claim script call (``INFO commandstats`` around each call).

Stock RedBeat and safe_redbeat's publish mode run with the broker on a server of its own,
so the server's counts are the scheduler's alone. Atomic enqueue needs the broker on the
schedule's server: there the server's counts include the broker's commands (the pushes
inside the claim script, and whatever the broker connection sends).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from safe_redbeat.store.scripts import Scripts

from .env import (
    REDBEAT,
    SAFE_PUBLISH,
    SAFE_STEADY,
    Contender,
    Env,
    Traffic,
    dispatch_run,
    load_scripts,
    server_calls,
)

#: the schedulers counted, in the order of the table
COUNTED = (REDBEAT, SAFE_PUBLISH, SAFE_STEADY)
CLAIM_SCRIPT = "claim.lua"
#: the round trips that read due entries (one due.lua call and one HMGET pipeline each)
DUE_SCRIPT = "due.lua"
#: the commands of the replica's upkeep, due by the clock: renew.lua (lease), SET + SADD
#: (heartbeat), GET, PTTL, SMEMBERS (the balancer's poll of leases and replicas), and the
#: one look at Redis' persistence 5 s after a replica first led (INFO, CONFIG GET, and on a
#: Redis that persists nothing SMEMBERS + ZSCAN pages to count the entries only it holds)
UPKEEP = frozenset(
    {"EVALSHA renew.lua", "SET", "SADD", "GET", "PTTL", "SMEMBERS", "INFO", "CONFIG", "ZSCAN"}
)


@dataclass
class CommandResult:
    contender: str
    n: int
    ticks: int
    round_trips: int
    commands: int
    #: commands executed by the server, including those run inside Lua scripts
    server_commands: int
    #: the commands of each round trip, in order
    trips: list[tuple[str, ...]]
    #: microseconds Redis spent in each claim.lua call (``INFO commandstats``), in order
    claim_micros: list[int] = field(default_factory=list)

    @property
    def round_trips_per_entry(self) -> float:
        return self.round_trips / self.n

    @property
    def claim_calls(self) -> int:
        return sum(trip.count(f"EVALSHA {CLAIM_SCRIPT}") for trip in self.trips)

    @property
    def read_trips(self) -> int:
        """Round trips that read due entries: due.lua calls and HMGET pipelines."""
        return sum(
            1 for trip in self.trips if trip == (f"EVALSHA {DUE_SCRIPT}",) or set(trip) == {"HMGET"}
        )

    @property
    def upkeep_trips(self) -> list[tuple[str, ...]]:
        """Round trips of the replica's upkeep, due by the clock, not by the batches:
        lease renewals, heartbeats, the balancer's look at leases and replicas, the one
        persistence check."""
        return [trip for trip in self.trips if set(trip) <= UPKEEP]

    @property
    def other_trips(self) -> list[tuple[str, ...]]:
        """Round trips that neither read due entries, nor call claim.lua, nor are upkeep
        (the acks of publish mode, ...)."""
        reads = (f"EVALSHA {DUE_SCRIPT}",), (f"EVALSHA {CLAIM_SCRIPT}",)
        return [
            trip
            for trip in self.trips
            if trip not in reads and set(trip) != {"HMGET"} and not set(trip) <= UPKEEP
        ]

    def claim_median(self) -> float:
        return float(statistics.median(self.claim_micros)) if self.claim_micros else 0.0


def evalsha_micros(client: redis.Redis) -> int:
    """Microseconds the server spent in EVALSHA calls so far (``INFO commandstats``)."""
    stats = client.info("commandstats").get("cmdstat_evalsha") or {}
    return int(stats.get("usec", 0))


@contextmanager
def claims_timed(server: redis.Redis) -> Iterator[list[int]]:
    """Redis time of each ``Scripts.claim`` call meanwhile, in µs: the growth of
    ``cmdstat_evalsha``'s usec across the call (read from another connection before and
    after it; the claim's EVALSHA is the only one the scheduler runs in between)."""
    micros: list[int] = []
    claim = Scripts.claim

    def timed(self: Scripts, *args: Any, **kwargs: Any) -> Any:
        before = evalsha_micros(server)
        try:
            return claim(self, *args, **kwargs)
        finally:
            micros.append(evalsha_micros(server) - before)

    Scripts.claim = timed
    try:
        yield micros
    finally:
        Scripts.claim = claim


def measure(env: Env, contender: Contender, n: int, timeout: float) -> CommandResult:
    traffic = Traffic()
    server = env.schedule_client

    @contextmanager
    def counted() -> Iterator[dict[str, Any]]:
        counts: dict[str, Any] = {}
        traffic.reset()
        before = server_calls(server)
        with claims_timed(server) as micros:
            yield counts
        counts["server"] = server_calls(server) - before
        counts["claims"] = micros
        counts["round_trips"], counts["commands"] = traffic.round_trips, traffic.commands

    load_scripts(server)
    # the broker on a server of its own where it can be: its commands stay out of the
    # server's count (atomic enqueue needs the schedule's server)
    apart = {} if contender.enqueue == "atomic" else {"broker": env.aux}
    counts, ticks = dispatch_run(env, contender, n, timeout, counted, traffic=traffic, **apart)
    return CommandResult(
        contender.key,
        n,
        ticks,
        counts["round_trips"],
        counts["commands"],
        counts["server"],
        list(traffic.trips[: counts["round_trips"]]),
        counts["claims"],
    )


def run(env: Env, sizes: tuple[int, ...], timeout: float) -> list[CommandResult]:
    return [measure(env, contender, n, timeout) for n in sizes for contender in COUNTED]
