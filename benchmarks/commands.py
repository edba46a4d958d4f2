"""Redis commands and round trips of the dispatching tick(s), as a function of N."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .env import CONTENDERS, Contender, Env, Traffic, dispatch_run, server_calls


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

    @property
    def round_trips_per_entry(self) -> float:
        return self.round_trips / self.n


def measure(env: Env, contender: Contender, n: int, timeout: float) -> CommandResult:
    traffic = Traffic()

    @contextmanager
    def counted() -> Iterator[dict[str, int]]:
        traffic.reset()
        before = server_calls(env.schedule_client)
        counts: dict[str, int] = {}
        yield counts
        counts["server"] = server_calls(env.schedule_client) - before
        counts["round_trips"], counts["commands"] = traffic.round_trips, traffic.commands

    # the broker on a server of its own: its commands stay out of the server's count
    counts, ticks = dispatch_run(
        env, contender, n, timeout, counted, broker=env.aux, traffic=traffic
    )
    return CommandResult(
        contender.key,
        n,
        ticks,
        counts["round_trips"],
        counts["commands"],
        counts["server"],
        list(traffic.trips[: counts["round_trips"]]),
    )


def run(env: Env, sizes: tuple[int, ...], timeout: float) -> list[CommandResult]:
    return [measure(env, contender, n, timeout) for n in sizes for contender in CONTENDERS]
