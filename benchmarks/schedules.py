"""Schedule arithmetic: deciding one due entry, for rules that have run for a year.

safe_redbeat's leader calls ``lifecycle.decide`` for each due entry; stock RedBeat calls
the entry's ``is_due`` (Celery's ``remaining_estimate``, dateutil's ``rrule.after`` for an
rrule). Both are measured in this process on the same schedule objects, no Redis. Stock
RedBeat walks an rrule from its ``dtstart`` at every call, so its cost grows with the
rule's age: each of its measurements runs in a child process stopped after the
profile's ``schedule_stock_limit`` seconds.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from celery.schedules import crontab
from redbeat.schedules import rrule

from safe_redbeat.entries import StoredEntry, to_timestamp
from safe_redbeat.lifecycle import Lifecycle, decide

from .stats import Sample

#: How old the rrules are.
AGE = timedelta(days=365)
UTC = timezone.utc
#: "now" of every case: a Tuesday 03:30 UTC, a slot of each schedule below
NOW = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)


def cases(now: datetime) -> dict[str, tuple[Any, timedelta]]:
    """Name -> (schedule, its period): every rule is due at ``now``."""
    start = now - AGE
    return {
        "crontab */5 * * * *": (crontab(minute="*/5"), timedelta(minutes=5)),
        "crontab 30 3 * * 1-5": (crontab(minute=30, hour=3, day_of_week="1-5"), timedelta(days=1)),
        "rrule DAILY, dtstart 1 year ago": (rrule("DAILY", dtstart=start), timedelta(days=1)),
        "rrule MINUTELY, dtstart 1 year ago": (
            rrule("MINUTELY", dtstart=start),
            timedelta(minutes=1),
        ),
        "rrule SECONDLY, dtstart 1 year ago": (
            rrule("SECONDLY", dtstart=start),
            timedelta(seconds=1),
        ),
    }


@dataclass
class ScheduleResult:
    name: str
    #: seconds per call, one value per repetition
    safe: list[float] = field(default_factory=list)
    #: seconds per call; None: stopped after ``limit``
    stock: float | None = None
    limit: float = 0.0

    def safe_sample(self) -> Sample:
        return Sample.of(self.safe)


def _entry(schedule: Any, now: datetime, period: timedelta) -> StoredEntry:
    schedule.nowfun = lambda: now
    return StoredEntry(
        key="redbeat:bench",
        name="bench",
        task="noop",
        schedule=schedule,
        args=[],
        kwargs={},
        options={},
        enabled=True,
        last_run_at=now - period,
        total_run_count=100,
        version="1",
        score=to_timestamp(now) - 1,
        lifecycle=Lifecycle(),
    )


def _per_call(call: Callable[[], object], budget: float = 0.2) -> float:
    """Seconds per call: repeat ``call`` for about ``budget`` seconds (at least once)."""
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            return elapsed / calls


def _stock_child(name: str, now: datetime, answer: Any) -> None:
    schedule, period = cases(now)[name]
    schedule.nowfun = lambda: now
    last = now - period
    answer.put(_per_call(lambda: schedule.is_due(last), budget=0.05))


def stock_per_call(name: str, now: datetime, limit: float) -> float | None:
    """Stock RedBeat's ``is_due`` for the case ``name``; None if it took too long."""
    context = multiprocessing.get_context("fork")
    answer = context.Queue()
    child = context.Process(target=_stock_child, args=(name, now, answer), daemon=True)
    child.start()
    child.join(limit)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return float(answer.get(timeout=1.0))


def run(repetitions: int, stock_limit: float) -> list[ScheduleResult]:
    now = NOW
    results = []
    for name, (schedule, period) in cases(now).items():
        result = ScheduleResult(name, limit=stock_limit)
        entry = _entry(schedule, now, period)
        step = decide(entry, now)
        if not step.send:
            raise RuntimeError(f"{name}: decide() did not send an entry that is due: {step}")
        for _ in range(repetitions):
            result.safe.append(_per_call(partial(decide, entry, now)))
        result.stock = stock_per_call(name, now, stock_limit)
        results.append(result)
    return results
