"""Write-back of run history and of ended rows, as ``DatabaseScheduler`` writes them.

``SAFE_REDBEAT_WRITE_BACK_SECONDS`` (Django setting; default 10, ``None``: off) starts a
daemon thread in each beat process. Every that many seconds, while its replica leads, it
reads the loader's entries from Redis (ZSCAN pages, its own connection) and brings the
enabled ``PeriodicTask`` rows in line, in batches of ``BATCH`` rows per transaction:

- ``total_run_count`` and ``last_run_at`` are Redis' run history: the count Redis keeps
  (a new entry starts from the row's own count), and the time of the last run; an entry
  that has not run yet leaves the row as it is (no run is made up).
- A one-off that ran (clocked, or ``one_off``) is saved as ``DatabaseScheduler`` saves it:
  ``enabled=False``, ``total_run_count=0``, ``last_run_at=None``; enabling it again
  re-arms it (see ``row_signals``).
- A row past its ``expires`` is saved ``enabled=False`` and ``last_run_at=None``.

Rows are written with ``QuerySet.update()`` only if they did not change since they were
read (``date_changed``), so an admin's edit in between wins; ended rows are then written
to Redis disabled. It never runs on the dispatch path: a slow database delays only the
admin's numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery.utils.log import get_logger

from safe_redbeat.model.lifecycle import EXPIRED, FINISHED
from safe_redbeat.schedule import EntryInfo, Schedule

__all__ = ["BATCH", "DEFAULT_SECONDS", "Flushed", "WriteBack", "start_in_beat"]

logger = get_logger("safe_redbeat.contrib.django_celery_beat")

#: Rows updated per transaction.
BATCH = 500
#: ``SAFE_REDBEAT_WRITE_BACK_SECONDS`` when it is not set.
DEFAULT_SECONDS = 10.0

_STARTED: list[WriteBack] = []


@dataclass
class Flushed:
    """What one pass wrote: rows whose run history changed, and rows it disabled."""

    runs: list[str]
    finished: list[str]
    expired: list[str]

    def __len__(self) -> int:
        return len(self.runs) + len(self.finished) + len(self.expired)


class WriteBack:
    """Brings ``PeriodicTask`` rows in line with their entries' run history and state."""

    def __init__(
        self, schedules: Schedule, *, is_leader: Callable[[], bool] = lambda: True
    ) -> None:
        self.schedules = schedules
        self.is_leader = is_leader
        self._stop = threading.Event()

    def flush(self) -> Flushed:
        """One pass."""
        from django.db import connections

        schedules = self.schedules
        loaded = {  # the loader's entries, in every shard of the layout
            str(name)
            for shard in schedules.shards()
            for name in schedules.client.smembers(shard.keys.loader)
        }
        infos = {info.name: info for info in schedules.list() if info.name in loaded}
        done = Flushed([], [], [])
        try:
            names = sorted(infos)
            for start in range(0, len(names), BATCH):
                self._batch({name: infos[name] for name in names[start : start + BATCH]}, done)
        finally:
            connections.close_all()  # this thread's connections only
        return done

    def _batch(self, infos: dict[str, EntryInfo], done: Flushed) -> None:
        from django.db import transaction
        from django_celery_beat.models import PeriodicTask

        from .row_signals import sync_rows

        rows = PeriodicTask.objects.filter(name__in=list(infos), enabled=True).values_list(
            "pk", "name", "one_off", "clocked_id", "last_run_at", "total_run_count", "date_changed"
        )
        ended: list[int] = []
        with transaction.atomic():
            for pk, name, one_off, clocked_id, last_run_at, count, changed in rows:
                info = infos[name]
                same = PeriodicTask.objects.filter(pk=pk, enabled=True, date_changed=changed)
                ran = info.total_run_count > 0 and info.last_run_at is not None
                if ran and (one_off or clocked_id is not None) and info.state == FINISHED:
                    fields: dict[str, Any] = {"total_run_count": 0, "last_run_at": None}
                    which = done.finished
                elif info.state == EXPIRED:
                    fields = {"last_run_at": None}
                    if ran:
                        fields["total_run_count"] = info.total_run_count
                    which = done.expired
                elif ran and (count, _same_time(last_run_at, info.last_run_at)) != (
                    info.total_run_count,
                    True,
                ):
                    fields = {
                        "total_run_count": info.total_run_count,
                        "last_run_at": info.last_run_at,
                    }
                    if same.update(**fields):
                        done.runs.append(name)
                    continue
                else:
                    continue
                if same.update(enabled=False, **fields):
                    which.append(name)
                    ended.append(pk)
        if ended:
            sync_rows(ended, schedules=self.schedules)  # the entries disabled in Redis too

    def run(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.is_leader():
                continue
            try:
                done = self.flush()
            except Exception as exc:  # never let the thread die; the next pass retries
                logger.warning("write-back of run history failed: %r", exc)
            else:
                if done.finished or done.expired:
                    logger.info(
                        "write-back: disabled %d finished one-offs and %d expired rows "
                        "(as DatabaseScheduler does): %s",
                        len(done.finished),
                        len(done.expired),
                        ", ".join(repr(n) for n in (done.finished + done.expired)[:10]),
                    )
                if done.runs:
                    logger.debug("write-back: run history of %d rows", len(done.runs))

    def start(self, every: float) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(every,), name="safe-redbeat-write-back", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def _same_time(row: datetime | None, redis: datetime | None) -> bool:
    return row is not None and redis is not None and row == redis


def write_back_seconds() -> float | None:
    """``SAFE_REDBEAT_WRITE_BACK_SECONDS`` checked: a positive number, or None (off)."""
    from django.conf import settings

    every = getattr(settings, "SAFE_REDBEAT_WRITE_BACK_SECONDS", DEFAULT_SECONDS)
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
        raise ValueError(
            f"SAFE_REDBEAT_WRITE_BACK_SECONDS must be a positive number or None, got {every!r}"
        )
    return float(every)


def start_in_beat(service: Any) -> WriteBack | None:
    """``beat_init`` receiver: start the thread unless ``SAFE_REDBEAT_WRITE_BACK_SECONDS``
    is None."""
    every = write_back_seconds()
    if every is None or _STARTED:
        return None
    scheduler = getattr(service, "scheduler", None)

    def is_leader() -> bool:
        return bool(getattr(scheduler, "is_leader", True))

    writer = WriteBack(Schedule(service.app), is_leader=is_leader)
    writer.start(every)
    _STARTED.append(writer)
    logger.info("write-back of run history to PeriodicTask rows every %ss", every)
    return writer
