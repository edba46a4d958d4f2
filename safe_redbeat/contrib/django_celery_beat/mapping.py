"""One ``PeriodicTask`` row → one loader entry, field by field.

========================  ============================================================
PeriodicTask              loader entry
========================  ============================================================
interval                  ``schedule``: the interval (every times period); with a
                          ``start_time`` also ``run_immediately`` (a row that never ran
                          runs at its start time, or at once if that passed, as
                          ``DatabaseScheduler`` runs it)
crontab                   ``schedule``: the five fields; ``tz``: ``crontab.timezone``
solar                     ``schedule``: the solar event at latitude/longitude
clocked                   ``at``: ``clocked_time`` (a one-off at that time) and
                          ``run_immediately`` (a clocked time that passed runs at once)
one_off                   ``max_runs=1``
start_time, expires       ``start_time``, ``expires``
expire_seconds            ``options["expires"]`` (seconds, per message)
last_run_at,              ``last_run_at``, ``total_run_count`` (used only when Redis has
total_run_count           no run history for the entry)
enabled, args, kwargs     ``enabled``, ``args``, ``kwargs`` (JSON text parsed)
queue, exchange,          ``options`` of the same names (when set)
routing_key, priority
headers                   ``options["headers"]`` plus ``periodic_task_name`` (as
                          django-celery-beat's scheduler sends it); its keys
                          ``safe_redbeat_overlap`` and ``safe_redbeat_max_runtime`` are
                          taken out and become ``overlap`` and ``max_runtime`` (the
                          table has no field for them)
description               stays in the table: a Redis entry has no place for it
========================  ============================================================

The lifecycle keys (``start_time``, ``expires``, ``max_runs``, ``tz``, ``at``,
``run_immediately``, ``overlap``, ``max_runtime``) and the run history (``last_run_at``,
``total_run_count``) are the loader's own (see the README, "When entries run").
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from celery.utils.log import get_logger

from safe_redbeat.errors import InvalidEntry
from safe_redbeat.sync import loader as core_loader

__all__ = [
    "OVERLAP_HEADERS",
    "Rejected",
    "load_rows",
    "row_to_entry",
    "row_to_item",
]

logger = get_logger("safe_redbeat.contrib.django_celery_beat")

_MESSAGE_OPTIONS = ("queue", "exchange", "routing_key", "priority")
#: The overlap policy of a row, set in its ``headers`` JSON (the table has no field for
#: it): entry field -> header key, taken out of the message's headers.
OVERLAP_HEADERS = {"overlap": "safe_redbeat_overlap", "max_runtime": "safe_redbeat_max_runtime"}
_SCHEDULE_FIELDS = ("interval", "crontab", "solar", "clocked")
_CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


class Rejected(Mapping[str, Any]):
    """A loader item that the loader reports as ``error`` (by the row's name).

    It looks like an entry with ``name``, ``task`` and ``schedule``; reading anything but
    the name raises ``error``, which ``safe_redbeat.sync.loader.parse_specs`` records as a
    load error: the row is named in the leader's log and in ``sync``'s output, the
    others load, and that reconcile removes nothing.
    """

    _KEYS = ("name", "task", "schedule")

    def __init__(self, error: InvalidEntry) -> None:
        self.error = error

    def __getitem__(self, key: str) -> Any:
        if key == "name":
            return self.error.key
        if key in self._KEYS:
            raise self.error
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def __repr__(self) -> str:
        return f"Rejected({self.error})"


def _json(row: Any, field: str, default: str, kind: type) -> Any:
    raw = getattr(row, field) or default
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidEntry(
            row.name, field, f"is not valid JSON ({exc}): {raw[:80]!r}; fix it in the admin"
        ) from None
    if not isinstance(value, kind):
        expected = "an array" if kind is list else "an object"
        raise InvalidEntry(row.name, field, f"must be a JSON {expected}, got {raw[:80]!r}")
    return value


def _aware(value: datetime) -> datetime:
    """Django stores naive datetimes when ``USE_TZ = False``: they are in its TIME_ZONE."""
    if value.tzinfo is not None:
        return value
    from django.utils import timezone as django_timezone

    aware: datetime = django_timezone.make_aware(value, django_timezone.get_default_timezone())
    return aware


def _schedule(row: Any, entry: dict[str, Any]) -> None:
    chosen = [field for field in _SCHEDULE_FIELDS if getattr(row, field) is not None]
    if not chosen:
        raise InvalidEntry(
            row.name, "schedule", "no interval, crontab, solar or clocked schedule is set"
        )
    if len(chosen) > 1:
        raise InvalidEntry(row.name, "schedule", f"more than one schedule is set: {chosen}")
    if row.solar is not None:
        sun = row.solar
        entry["schedule"] = {
            "__type__": "solar",
            "event": sun.event,
            "lat": _degrees(row.name, "latitude", sun.latitude),
            "lon": _degrees(row.name, "longitude", sun.longitude),
        }
    elif row.interval is not None:
        interval = row.interval
        entry["schedule"] = timedelta(**{interval.period: interval.every})
        if row.start_time is not None:
            entry["run_immediately"] = True
    elif row.crontab is not None:
        cron = row.crontab
        fields = {f: str(getattr(cron, f)).replace(" ", "") or "*" for f in _CRONTAB_FIELDS}
        entry["schedule"] = {"__type__": "crontab", **fields}
        entry["tz"] = str(cron.timezone)
    else:
        entry["at"] = _aware(row.clocked.clocked_time)
        entry["run_immediately"] = True


def _degrees(name: str, field: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidEntry(name, f"solar.{field}", f"must be a number, got {value!r}") from None


def row_to_entry(row: Any) -> dict[str, Any]:
    """The full loader entry of ``row`` (every lifecycle key); InvalidEntry if impossible."""
    entry: dict[str, Any] = {"name": row.name, "task": row.task, "enabled": bool(row.enabled)}
    _schedule(row, entry)
    entry["args"] = _json(row, "args", "[]", list)
    entry["kwargs"] = _json(row, "kwargs", "{}", dict)
    options: dict[str, Any] = {
        option: getattr(row, option)
        for option in _MESSAGE_OPTIONS
        if getattr(row, option) not in (None, "")
    }
    if row.expire_seconds is not None:
        options["expires"] = int(row.expire_seconds)
    headers = _json(row, "headers", "{}", dict)
    for field, header in OVERLAP_HEADERS.items():
        if header in headers:
            entry[field] = headers.pop(header)
    options["headers"] = {**headers, "periodic_task_name": row.name}
    entry["options"] = options
    if row.one_off and row.clocked is None:
        entry["max_runs"] = 1
    if row.start_time is not None:
        entry["start_time"] = _aware(row.start_time)
    if row.expires is not None:
        entry["expires"] = _aware(row.expires)
    if row.last_run_at is not None:
        entry["last_run_at"] = _aware(row.last_run_at)
    if row.total_run_count:
        entry["total_run_count"] = int(row.total_run_count)
    return entry


def row_to_item(row: Any) -> Mapping[str, Any]:
    """What the loader returns for ``row``: its entry, or a :class:`Rejected` naming it."""
    try:
        return row_to_entry(row)
    except InvalidEntry as exc:
        return Rejected(exc)


def setup_django() -> None:
    """``django.setup()`` unless the app registry is ready (a plain Celery process)."""
    import os

    import django
    from django.apps import apps

    if apps.ready:
        return
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise core_loader.LoaderError(
            "the django-celery-beat loader needs Django: set DJANGO_SETTINGS_MODULE "
            "(Celery's Django integration does it in the project's celery.py)"
        )
    django.setup()


def periodic_tasks() -> Any:
    """``PeriodicTask`` rows with their schedules joined, in name order."""
    from django_celery_beat.models import PeriodicTask

    return PeriodicTask.objects.select_related(*_SCHEDULE_FIELDS).order_by("name")


def load_rows(app: Any) -> list[Any]:
    """Every row as a loader item; this thread's new database connections are closed."""
    setup_django()
    from django.db import connections

    opened_here = [conn for conn in connections.all() if conn.connection is None]
    try:
        items = [row_to_item(row) for row in periodic_tasks().iterator(chunk_size=2000)]
    finally:
        for conn in opened_here:
            conn.close()
    rejected = sum(isinstance(item, Rejected) for item in items)
    logger.debug("django-celery-beat: %d rows, %d not schedulable", len(items), rejected)
    return items
