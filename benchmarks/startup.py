"""Start to first dispatch: construct the scheduler and tick until one message is sent.

M entries are stored, exactly one of them due. Timed: the scheduler's construction, the
lock (stock RedBeat: its beat_init handler; safe_redbeat: inside the first tick), and the
ticks until the due entry's message is in the broker. The Celery app is built beforehand
(it is the same for both). The stored entries are written once per M; between runs only
the due entry, the lock and the broker queue are reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .env import (
    BROKER_DB,
    CONTENDERS,
    LOCK_KEY,
    PREFIX,
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


def _reset(env: Env, due_index: int) -> None:
    client = env.schedule_client
    client.delete(LOCK_KEY, PREFIX + ":pending")
    write_entries(client, range(due_index, due_index + 1), due=True)
    env.client(BROKER_DB).delete(QUEUE)


def time_to_first_dispatch(env: Env, contender: Contender, due_index: int, timeout: float) -> float:
    _reset(env, due_index)
    app = env.make_app()
    broker = env.client(BROKER_DB)
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
    results = []
    for stored in sizes:
        env.flush()
        due_index = stored - 1
        write_entries(env.schedule_client, range(due_index), due=False)
        result = StartupResult(stored)
        for rep in range(repetitions):
            for contender in rotated(CONTENDERS, rep):
                seconds = time_to_first_dispatch(env, contender, due_index, timeout)
                result.seconds.setdefault(contender.key, []).append(seconds)
        results.append(result)
    return results
