"""Row changes reach Redis after the transaction commits (``SAFE_REDBEAT_WRITE_THROUGH``).

- ``PeriodicTask`` saved: the row is read again after the commit and upserted through
  :func:`safe_redbeat.writethrough.upsert_after_commit` (versioned); a renamed row's old
  entry is removed.
- ``PeriodicTask`` deleted: :func:`safe_redbeat.writethrough.remove_after_commit`.
- An interval, crontab, clocked or solar schedule saved: every row using it is upserted.
- ``PeriodicTasks.update_changed()`` outside a row save (django-celery-beat's way to
  announce a bulk ``QuerySet.update()``): one reconcile of the whole table.

An enabled row whose entry Redis holds disabled was enabled since it was last written
(DatabaseScheduler forgets a disabled row's last run): its entry is written anew, with no
run history but the row's, so it runs at its next slot counted from now. A finished
one-off (clocked) row whose ``clocked_time`` moved is written anew too: it runs once more.

A write that fails is logged and repaired by the leader's next reconcile; the commit is
never made to look failed. Rows that cannot be scheduled are logged by name, recorded in
the shard's last reconcile (``safe-redbeat status``), and leave Redis as it was.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery.utils.log import get_logger
from redis.exceptions import RedisError, WatchError

from safe_redbeat.errors import EntryNotFound, InvalidEntry, SafeRedBeatError
from safe_redbeat.model.lifecycle import FINISHED
from safe_redbeat.schedule import EntryInfo, Schedule
from safe_redbeat.store.connection import redbeat_conf, sanitize_text
from safe_redbeat.writethrough import remove_after_commit, sync_once, upsert_after_commit

from . import LOADER_PATH
from .mapping import Rejected, periodic_tasks, row_to_item

__all__ = [
    "celery_app",
    "close_schedules",
    "connect",
    "enabled",
    "record_rejection",
    "renew_if_rearmed",
    "schedules_for",
    "sync_rows",
]

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
    conf = redbeat_conf(app)
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


def sync_rows(
    pks: Iterable[int],
    *,
    using: str = "default",
    old_names: Iterable[str] = (),
    schedules: Schedule | None = None,
) -> int:
    """Upsert the rows ``pks`` as they are now, remove entries of ``old_names`` no row has
    any more; return how many writes failed (each logged)."""
    pks = list(pks)
    old_names = list(old_names)
    if not pks and not old_names:
        return 0
    if schedules is None:
        schedules = schedules_for(celery_app())
    failed = 0
    names: set[str] = set()
    for row in periodic_tasks().using(using).filter(pk__in=pks):
        names.add(row.name)
        item = row_to_item(row)
        if isinstance(item, Rejected):
            logger.error("write-through: %s; Redis keeps what it had for it", item.error)
            record_rejection(schedules, row.name, str(item.error))
            failed += 1
            continue
        record_rejection(schedules, row.name, None)
        renew_if_rearmed(schedules, item)
        if not upsert_after_commit(schedules, item):
            failed += 1
    for name in set(old_names) - names:
        if not remove_after_commit(schedules, name):
            failed += 1
    return failed


def renew_if_rearmed(
    schedules: Schedule, item: Mapping[str, Any], info: EntryInfo | None = None
) -> bool:
    """Delete the entry of an enabled row so that the write that follows creates it anew,
    when the row was enabled since Redis saw it (Redis holds it disabled), or it is a
    finished one-off whose time moved. Return whether it was deleted.

    The delete is versioned: an entry that changed meanwhile is left to the upsert.
    """
    if not item.get("enabled", True):
        return False
    name = str(item["name"])
    if info is None:
        try:
            info = schedules.get(name)
        except (EntryNotFound, InvalidEntry):
            return False
    moved = (
        item.get("at") is not None
        and info.state == FINISHED
        and info.lifecycle.at is not None
        and int(info.lifecycle.at.timestamp()) != int(item["at"].timestamp())
    )
    if info.enabled and not moved:
        return False
    try:
        schedules.delete(name, expected_version=info.version)
    except (KeyError, SafeRedBeatError):
        return False
    logger.info(
        "write-through: %r %s: written anew, it runs at its next slot from now",
        name,
        "re-armed (its time moved)" if moved else "enabled again",
    )
    return True


def record_rejection(schedules: Schedule, name: str, problem: str | None) -> None:
    """Put ``name`` (with ``problem``) into, or take it out of, the last reconcile record
    of its shard, which ``safe-redbeat status`` and the beat page show; the leader's next
    reconcile writes its own record, with the same rejected rows."""
    try:
        layout = schedules.layout()
        key = layout.keys_for(name).reconcile
        with schedules.client.pipeline() as pipe:
            for _attempt in range(5):
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    record = _record(raw)
                    if record is None or (problem is None and name not in record["rejected"]):
                        pipe.unwatch()
                        return
                    errors = [e for e in record["errors"] if not e.startswith(f"entry {name!r}:")]
                    rejected = [n for n in record["rejected"] if n != name]
                    if problem is not None:
                        errors.append(sanitize_text(problem))
                        rejected.append(name)
                    record.update(errors=errors[-20:], rejected=sorted(rejected)[:20])
                    pipe.multi()
                    pipe.set(key, json.dumps(record, separators=(",", ":")))
                    pipe.execute()
                    return
                except WatchError:
                    continue
    except (RedisError, OSError, SafeRedBeatError) as exc:
        logger.warning("write-through: could not record %r in the reconcile record: %s", name, exc)


def _record(raw: Any) -> dict[str, Any] | None:
    """A reconcile record to amend: the stored one, or a new one (None: unreadable)."""
    if raw is None:
        return {"source": "loader", "errors": [], "rejected": [], "complete": True}
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    record["errors"] = [str(e) for e in record.get("errors") or []]
    record["rejected"] = [str(n) for n in record.get("rejected") or []]
    return record


def _remove(name: str) -> None:
    remove_after_commit(schedules_for(celery_app()), name)


def _sync_all() -> None:
    schedules = schedules_for(celery_app())
    # the entries a bulk change may have re-armed: disabled ones, and finished one-offs
    candidates = {
        info.name: info
        for info in schedules.list()
        if not info.enabled or (info.state == FINISHED and info.lifecycle.at is not None)
    }
    names = sorted(candidates)
    for start in range(0, len(names), 2000):
        rows = periodic_tasks().filter(enabled=True, name__in=names[start : start + 2000])
        for row in rows:
            item = row_to_item(row)
            if not isinstance(item, Rejected):
                renew_if_rearmed(schedules, item, candidates[row.name])
    result = sync_once(schedules, LOADER_PATH)
    logger.info("write-through after PeriodicTasks.update_changed(): %s", result.summary())
    for error in result.errors:
        logger.error("write-through: %s", error)
    for name, problem in sorted(result.rejected.items()):
        logger.error("write-through: %s; Redis keeps what it had for %r", problem, name)


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
