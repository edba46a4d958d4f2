"""Start to first dispatch: construct the scheduler and tick until one message is sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from .env import (
    BROKER_DB,
    CONTENDERS,
    KEYS,
    QUEUE,
    Contender,
    Env,
    check_messages,
    close_app,
    rotated,
    start_scheduler,
    stop_scheduler,
    stopwatch,
    tick_until_sent,
    write_entries,
)
from .stats import Sample


@dataclass
class StartupResult:
    stored: int
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def sample(self, contender: str) -> Sample:
        return Sample.of(self.seconds[contender])


def time_to_first_dispatch(env: Env, contender: Contender, due_index: int, timeout: float) -> float:
    """Reset the due entry, the lock and the queue; time construct + ticks until it is sent."""
    env.schedule_client.delete(KEYS.lease, KEYS.pending)
    write_entries(env.schedule_client, range(due_index, due_index + 1), due=True)
    broker = env.client(BROKER_DB)
    broker.delete(QUEUE)
    app = env.make_app()
    scheduler = None
    try:
        with stopwatch() as elapsed:
            scheduler = start_scheduler(contender, app)
            tick_until_sent(scheduler, broker, 1, timeout=timeout)
        check_messages(broker, 1, contender)
    finally:
        if scheduler is not None:
            stop_scheduler(scheduler)
        close_app(app)
    return elapsed[0]


def run(env: Env, sizes: tuple[int, ...], repetitions: int, timeout: float) -> list[StartupResult]:
    """M entries stored once per M, exactly one of them due; contenders alternate."""
    results = []
    for stored in sizes:
        env.flush()
        write_entries(env.schedule_client, range(stored - 1), due=False)
        result = StartupResult(stored)
        for rep in range(repetitions):
            for contender in rotated(CONTENDERS, rep):
                seconds = time_to_first_dispatch(env, contender, stored - 1, timeout)
                result.seconds.setdefault(contender.key, []).append(seconds)
        results.append(result)
    return results
