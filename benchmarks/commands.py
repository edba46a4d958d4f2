"""Redis commands and round trips of the dispatching tick(s), as a function of N.

Client side, redis-py's connections to the schedule database are counted while the
scheduler ticks: every ``send_packed_command`` is one round trip (a pipeline sends all its
commands at once), every command packed is one command sent. Server side, ``INFO
commandstats`` is compared before and after; that count includes the commands Lua scripts
run inside Redis. The broker lives on a second server here, so its traffic is not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.connection import AbstractConnection

from .env import (
    BROKER_DB,
    CONTENDERS,
    SCHEDULE_DB,
    Contender,
    Env,
    check_messages,
    close_app,
    start_scheduler,
    stop_scheduler,
    tick_until_sent,
    warm_up,
    write_entries,
)


@dataclass
class Counts:
    round_trips: int = 0
    commands: int = 0


@dataclass
class CommandResult:
    contender: str
    n: int
    ticks: int
    round_trips: int
    commands: int
    #: commands executed by the server, including those run inside Lua scripts
    server_commands: int

    @property
    def round_trips_per_entry(self) -> float:
        return self.round_trips / self.n


@contextmanager
def count_commands(port: int, db: int) -> Iterator[Counts]:
    """Count round trips and commands on redis-py connections to ``port``/``db``."""
    counts = Counts()
    send_packed: Callable[..., None] = AbstractConnection.send_packed_command
    send_command: Callable[..., None] = AbstractConnection.send_command
    pack_commands: Callable[..., Any] = AbstractConnection.pack_commands

    def ours(conn: Any) -> bool:
        return getattr(conn, "port", None) == port and getattr(conn, "db", None) == db

    def counted_send_packed(self: Any, command: Any, check_health: bool = True) -> None:
        if ours(self):
            counts.round_trips += 1
        send_packed(self, command, check_health)

    def counted_send_command(self: Any, *args: Any, **kwargs: Any) -> None:
        if ours(self):
            counts.commands += 1
        send_command(self, *args, **kwargs)

    def counted_pack_commands(self: Any, commands: Any) -> Any:
        commands = list(commands)
        if ours(self):
            counts.commands += len(commands)
        return pack_commands(self, commands)

    AbstractConnection.send_packed_command = counted_send_packed  # type: ignore[method-assign]
    AbstractConnection.send_command = counted_send_command  # type: ignore[method-assign]
    AbstractConnection.pack_commands = counted_pack_commands  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        AbstractConnection.send_packed_command = send_packed  # type: ignore[method-assign]
        AbstractConnection.send_command = send_command  # type: ignore[method-assign]
        AbstractConnection.pack_commands = pack_commands  # type: ignore[method-assign]


def _server_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name not in ("cmdstat_info", "cmdstat_commandstats")
    )


def measure(env: Env, contender: Contender, n: int, timeout: float) -> CommandResult:
    env.flush()
    broker_server = env.aux
    broker = env.client(BROKER_DB, broker_server)
    broker.flushdb()
    app = env.make_app(broker=broker_server)
    try:
        scheduler = start_scheduler(contender, app)
        try:
            if not contender.is_stock:
                scheduler.tick()
            warm_up(app, scheduler.producer, broker)
            write_entries(env.schedule_client, range(n), due=True)
            before = _server_calls(env.schedule_client)
            with count_commands(env.server.port, SCHEDULE_DB) as counts:
                ticks = tick_until_sent(scheduler, broker, n, timeout=timeout)
            server_commands = _server_calls(env.schedule_client) - before
            check_messages(broker, n, contender)
        finally:
            stop_scheduler(scheduler)
    finally:
        close_app(app)
    return CommandResult(
        contender=contender.key,
        n=n,
        ticks=ticks,
        round_trips=counts.round_trips,
        commands=counts.commands,
        server_commands=server_commands,
    )


def run(env: Env, sizes: tuple[int, ...], timeout: float) -> list[CommandResult]:
    return [measure(env, contender, n, timeout) for n in sizes for contender in CONTENDERS]
