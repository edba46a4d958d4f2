"""Optional write-back of run metadata to the rows, so the admin shows runs.

``SAFE_REDBEAT_WRITE_BACK_SECONDS = 30`` (Django setting; default ``None``: off) starts a
daemon thread in each beat process. Every that many seconds, while its replica leads, it
reads the loader's entries from Redis (ZSCAN pages, its own connection) and updates
``last_run_at`` and ``total_run_count`` of the rows whose entry ran since, in batches of
``BATCH`` rows per transaction with ``QuerySet.update()`` (no signals, so no write-through
and no ``date_changed`` bump). It never runs on the dispatch path: a slow database
delays only the admin's numbers.

``total_run_count`` grows by the runs counted in Redis since the thread last looked
(counted from the row's own value, so a count kept by django-celery-beat's scheduler
carries on); after a change of leader the first look counts at most one run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.utils.log import get_logger

from safe_redbeat.schedule import Schedule

__all__ = ["BATCH", "WriteBack", "start_in_beat"]

logger = get_logger("safe_redbeat.contrib.django_celery_beat")

#: Rows updated per transaction.
BATCH = 500

_STARTED: list[WriteBack] = []


class WriteBack:
    """Copies ``last_run_at`` / ``total_run_count`` from Redis to ``PeriodicTask`` rows."""

    def __init__(
        self, schedules: Schedule, *, is_leader: Callable[[], bool] = lambda: True
    ) -> None:
        self.schedules = schedules
        self.is_leader = is_leader
        self._seen: dict[str, tuple[datetime, int]] = {}
        self._stop = threading.Event()

    def flush(self) -> int:
        """One pass; return how many rows were updated."""
        from django.db import connections, transaction
        from django_celery_beat.models import PeriodicTask

        schedules = self.schedules
        loaded = {  # the loader's entries, in every shard of the layout
            str(name)
            for shard in schedules.shards()
            for name in schedules.client.smembers(shard.keys.loader)
        }
        ran = {
            info.name: (info.last_run_at, info.total_run_count)
            for info in schedules.list()
            if info.name in loaded and info.last_run_at is not None
        }
        changed = {n: v for n, v in ran.items() if self._seen.get(n) != v}
        updated = 0
        try:
            names = sorted(changed)
            for start in range(0, len(names), BATCH):
                chunk = names[start : start + BATCH]
                rows = PeriodicTask.objects.filter(name__in=chunk).values_list(
                    "name", "last_run_at", "total_run_count"
                )
                with transaction.atomic():
                    for name, row_last_run_at, row_count in rows:
                        last_run_at, count = changed[name]
                        seen = self._seen.get(name)
                        runs = count - seen[1] if seen else 1
                        if row_last_run_at is not None and row_last_run_at >= last_run_at:
                            runs = 0
                        if runs <= 0:
                            continue
                        PeriodicTask.objects.filter(name=name).update(
                            last_run_at=last_run_at, total_run_count=row_count + runs
                        )
                        updated += 1
                self._seen.update((name, changed[name]) for name in chunk)
        finally:
            connections.close_all()  # this thread's connections only
        return updated

    def run(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.is_leader():
                self._seen.clear()
                continue
            try:
                count = self.flush()
            except Exception as exc:  # never let the thread die; the next pass retries
                logger.warning("write-back of run counts failed: %r", exc)
            else:
                if count:
                    logger.debug("write-back: %d rows updated", count)

    def start(self, every: float) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(every,), name="safe-redbeat-write-back", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def start_in_beat(service: Any) -> WriteBack | None:
    """``beat_init`` receiver: start the thread if ``SAFE_REDBEAT_WRITE_BACK_SECONDS``."""
    from django.conf import settings

    every = getattr(settings, "SAFE_REDBEAT_WRITE_BACK_SECONDS", None)
    if every is None or _STARTED:
        return None
    if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
        raise ValueError(
            f"SAFE_REDBEAT_WRITE_BACK_SECONDS must be a positive number or None, got {every!r}"
        )
    scheduler = getattr(service, "scheduler", None)

    def is_leader() -> bool:
        return bool(getattr(scheduler, "is_leader", True))

    writer = WriteBack(Schedule(service.app), is_leader=is_leader)
    writer.start(float(every))
    _STARTED.append(writer)
    logger.info("write-back of run counts to PeriodicTask rows every %ss", every)
    return writer
