"""Row changes reach Redis after the transaction commits (``SAFE_REDBEAT_WRITE_THROUGH``).

- ``PeriodicTask`` saved: the row is read again after the commit and upserted through
  :func:`safe_redbeat.writethrough.upsert_after_commit` (versioned); a renamed row's old
  entry is removed.
- ``PeriodicTask`` deleted: :func:`safe_redbeat.writethrough.remove_after_commit`.
- An interval, crontab, clocked or solar schedule saved: every row using it is upserted.
- ``PeriodicTasks.update_changed()`` outside a row save (django-celery-beat's way to
  announce a bulk ``QuerySet.update()``): one reconcile of the whole table.

A write that fails is logged and repaired by the leader's next reconcile; the commit is
never made to look failed. Rows that cannot be scheduled are logged by name and leave
Redis as it was.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery.utils.log import get_logger

from safe_redbeat.schedule import Schedule
from safe_redbeat.writethrough import remove_after_commit, sync_once, upsert_after_commit

from . import LOADER_PATH
from .mapping import Rejected, periodic_tasks, row_to_item

__all__ = ["celery_app", "close_schedules", "connect", "enabled", "schedules_for", "sync_rows"]

logger = get_logger("safe_redbeat.contrib.django_celery_beat")

_SCHEDULES: dict[tuple[int, str, str], Schedule] = {}
_SCHEDULES_LOCK = threading.Lock()
_OLD_NAME = "_safe_redbeat_old_name"


def celery_app() -> Any:
    """The project's Celery app: ``SAFE_REDBEAT_CELERY_APP`` (``"proj.celery:app"``) if
    set, else Celery's current app (``proj/celery.py``'s, once it was imported)."""
    from celery import current_app
    from celery.utils.imports import symbol_by_name
    from django.conf import settings

    path = getattr(settings, "SAFE_REDBEAT_CELERY_APP", None)
    if path:
        return symbol_by_name(path)
    return current_app._get_current_object()


def schedules_for(app: Any) -> Schedule:
    """One :class:`Schedule` per app and Redis URL/prefix in this process."""
    from redbeat.schedulers import ensure_conf

    conf = ensure_conf(app)
    key = (id(app), str(conf.redis_url), str(conf.key_prefix))
    with _SCHEDULES_LOCK:
        schedules = _SCHEDULES.get(key)
        if schedules is None:
            schedules = _SCHEDULES[key] = Schedule(app)
        return schedules


def close_schedules() -> None:
    """Close the cached :class:`Schedule` clients (tests, or after a fork)."""
    with _SCHEDULES_LOCK:
        for schedules in _SCHEDULES.values():
            schedules.close()
        _SCHEDULES.clear()


def enabled() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "SAFE_REDBEAT_WRITE_THROUGH", True))


def sync_rows(pks: Iterable[int], *, using: str = "default", old_names: Iterable[str] = ()) -> int:
    """Upsert the rows ``pks`` as they are now, remove entries of ``old_names`` no row has
    any more; return how many writes failed (each logged)."""
    pks = list(pks)
    old_names = list(old_names)
    if not pks and not old_names:
        return 0
    app = celery_app()
    schedules = schedules_for(app)
    failed = 0
    names: set[str] = set()
    for row in periodic_tasks().using(using).filter(pk__in=pks):
        names.add(row.name)
        item = row_to_item(row)
        if isinstance(item, Rejected):
            logger.error("write-through: %s; Redis keeps what it had for it", item.error)
            failed += 1
        elif not upsert_after_commit(schedules, item):
            failed += 1
    for name in set(old_names) - names:
        if not remove_after_commit(schedules, name):
            failed += 1
    return failed


def _remove(name: str) -> None:
    remove_after_commit(schedules_for(celery_app()), name)


def _sync_all() -> None:
    result = sync_once(schedules_for(celery_app()), LOADER_PATH)
    logger.info("write-through after PeriodicTasks.update_changed(): %s", result.summary())
    for error in result.errors:
        logger.error("write-through: %s", error)


def _after_commit(func: Callable[[], object], using: str) -> None:
    """Run ``func`` after the commit; an error is logged, never raised into the caller
    (the commit already happened; the leader's next reconcile repairs Redis)."""
    from django.db import transaction

    def run() -> None:
        try:
            func()
        except Exception:
            logger.exception("write-through failed; the next reconcile repairs Redis")

    transaction.on_commit(run, using=using)


# -- signal receivers -----------------------------------------------------------------


def _task_pre_save(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    if raw or not enabled() or instance.pk is None:
        return
    old = sender._default_manager.filter(pk=instance.pk).values_list("name", flat=True).first()
    setattr(instance, _OLD_NAME, old)


def _task_saved(sender: Any, instance: Any, raw: bool = False, using: str = "default",
                **kwargs: Any) -> None:  # fmt: skip
    if raw or not enabled():
        return
    pk = instance.pk
    old = getattr(instance, _OLD_NAME, None)
    old_names = [old] if old and old != instance.name else []
    _after_commit(lambda: sync_rows([pk], using=using, old_names=old_names), using)


def _task_deleted(sender: Any, instance: Any, using: str = "default", **kwargs: Any) -> None:
    if not enabled():
        return
    name = instance.name
    _after_commit(lambda: _remove(name), using)


def _schedule_saved(sender: Any, instance: Any, raw: bool = False, using: str = "default",
                    **kwargs: Any) -> None:  # fmt: skip
    if raw or not enabled() or instance.pk is None:
        return
    from django_celery_beat.models import PeriodicTask

    field = {
        "IntervalSchedule": "interval",
        "CrontabSchedule": "crontab",
        "SolarSchedule": "solar",
        "ClockedSchedule": "clocked",
    }[sender.__name__]
    schedule_pk = instance.pk

    def resync() -> None:
        pks = PeriodicTask.objects.using(using).filter(**{f"{field}_id": schedule_pk})
        sync_rows(pks.values_list("pk", flat=True), using=using)

    _after_commit(resync, using)


def _changed(sender: Any, instance: Any, raw: bool = False, using: str = "default",
             **kwargs: Any) -> None:  # fmt: skip
    """``PeriodicTasks`` (the change-tracking row) saved: a bulk change, unless a row's or a
    schedule's own save or delete did it, which the receivers above handle."""
    if raw or not enabled() or _inside_model_change():
        return
    _after_commit(_sync_all, using)


def _inside_model_change() -> bool:
    """True while a ``PeriodicTask`` save/delete (``PeriodicTasks.changed`` on the stack)
    or a schedule model's save is running; django-celery-beat bumps ``PeriodicTasks`` from
    both, and only a direct ``update_changed()`` call means an unannounced bulk change."""
    from django_celery_beat.models import PeriodicTasks

    changed = PeriodicTasks.changed.__func__.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is changed:
            return True
        if frame.f_code.co_name == "save_base" and isinstance(
            frame.f_locals.get("self"), _schedule_models()
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _schedule_models() -> tuple[type, ...]:
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        SolarSchedule,
    )

    return (IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule)


def connect() -> None:
    """Connect the receivers (``AppConfig.ready``); idempotent."""
    from django.db.models import signals
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    uid = "safe_redbeat_write_through"
    signals.pre_save.connect(_task_pre_save, sender=PeriodicTask, dispatch_uid=uid)
    signals.post_save.connect(_task_saved, sender=PeriodicTask, dispatch_uid=uid)
    signals.post_delete.connect(_task_deleted, sender=PeriodicTask, dispatch_uid=uid)
    for model in _schedule_models():
        signals.post_save.connect(_schedule_saved, sender=model, dispatch_uid=uid)
    signals.post_save.connect(_changed, sender=PeriodicTasks, dispatch_uid=uid)
