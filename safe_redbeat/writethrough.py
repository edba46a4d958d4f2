"""Application side of the loader pattern: commit the database, then write Redis.

The database is the source of truth. After a transaction that changed a periodic task
commits, write the entry to Redis so the running beat sees it at once; if that write fails
(Redis down, process killed), the leader's next reconcile (every
``safe_redbeat_reconcile_seconds``) repairs it. Django::

    schedules = Schedule(app)          # one per process
    transaction.on_commit(lambda: upsert_after_commit(schedules, row.as_entry()))

SQLAlchemy: call the same from an ``after_commit`` session event.

Both functions log and return False instead of raising: the database commit already
happened and must not look failed. Writes are versioned, not fenced, and mark the entry as
owned by the loader (so a later load that no longer returns it removes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery.utils.log import get_logger
from redis.exceptions import RedisError

from .errors import InvalidEntry, Resharding
from .model.specs import EntrySpec
from .schedule import Schedule, ShardStore
from .store.connection import sanitize_url
from .store.layout import Layout
from .sync.loader import LoaderError, call_loader, parse_specs, resolve
from .sync.reconcile import Reconciler, ReconcileResult, removals_held
from .sync.seeding import static_names

__all__ = ["remove_after_commit", "sync_once", "upsert_after_commit"]

logger = get_logger("safe_redbeat.writethrough")


def _reconciler(schedules: Schedule, shard: ShardStore) -> Reconciler:
    return Reconciler(
        schedules.client,
        shard.keys,
        shard.scripts,
        schedules.app,
        source="loader",
        owned_key=shard.keys.loader,
    )


def _layout(schedules: Schedule) -> Layout:
    """The layout in use; Resharding while ``reshard`` moves the schedule."""
    layout = schedules.layout()
    if layout.moving:
        raise Resharding(f"the schedule is being resharded ({layout.describe()})")
    return layout


def upsert_after_commit(schedules: Schedule, entry: EntrySpec | Mapping[str, Any]) -> bool:
    """Write one loader entry to Redis; False (logged) if it did not get there."""
    load = parse_specs([entry], reserved=static_names(schedules.app))
    if load.errors or load.rejected:
        for error in [*load.errors, *load.rejected.values()]:
            logger.error("write-through: %s; not written", error)
        return False
    if load.shadowed:
        logger.info(
            "write-through: %r is also a beat_schedule entry (or Celery's own); the static "
            "one is kept, nothing written",
            load.shadowed[0],
        )
        return True
    (spec,) = load.specs
    try:
        layout = _layout(schedules)
        shard = schedules.shards(layout)[layout.shard_of(spec.name)]
        result = _reconciler(schedules, shard).run(load.specs, complete=False)
    except (RedisError, OSError, Resharding) as exc:
        logger.warning(
            "write-through of %r to %s failed (%s); the next reconcile repairs it",
            spec.name,
            sanitize_url(schedules.app.redbeat_conf.redis_url),
            exc,
        )
        return False
    return not result.conflicts


def remove_after_commit(schedules: Schedule, name: str) -> bool:
    """Remove one loader entry from Redis; False (logged) if that failed."""
    try:
        schedules.delete(name)
    except KeyError:
        return True  # already gone
    except (RedisError, OSError, InvalidEntry) as exc:
        logger.warning("write-through removal of %r failed (%s)", name, exc)
        return False
    return True


def sync_once(
    schedules: Schedule,
    loader_path: str,
    *,
    dry_run: bool = False,
    allow_removals: bool = False,
) -> ReconcileResult:
    """One reconcile of the loader's entries from any process (versioned, not fenced).

    Safe next to a running leader: a write based on a version that changed meanwhile is
    rejected and reported as a conflict, never applied over the newer one. Removals beyond
    ``safe_redbeat_loader_max_removals`` are held unless ``allow_removals``.
    """
    settings = schedules.settings
    statics = static_names(schedules.app)
    try:
        layout = _layout(schedules)
    except Resharding as exc:
        return ReconcileResult("loader", errors=[str(exc)], complete=False, dry_run=dry_run)
    reconcilers = [_reconciler(schedules, shard) for shard in schedules.shards(layout)]
    snapshots = [reconciler.snapshot() for reconciler in reconcilers]  # before the load
    try:
        items = call_loader(
            resolve(loader_path),
            schedules.app,
            timeout=settings.loader_timeout_seconds,
            wait_step=settings.loader_timeout_seconds,
        )
    except LoaderError as exc:
        return ReconcileResult("loader", errors=[str(exc)], complete=False, dry_run=dry_run)
    load = parse_specs(items, reserved=statics)
    by_shard: list[list[EntrySpec]] = [[] for _ in reconcilers]
    for spec in load.specs:
        by_shard[layout.shard_of(spec.name)].append(spec)
    rejected: list[dict[str, str]] = [{} for _ in reconcilers]
    for name, problem in load.rejected.items():
        rejected[layout.shard_of(name)][name] = problem
    # the removal guard counts the whole schedule, not shard by shard
    owned = {name for versions in snapshots for name in versions}
    removing = len(owned - {spec.name for spec in load.specs} - set(load.rejected))
    held = not allow_removals and removals_held(
        removing, len(owned), settings.max_removals(len(owned))
    )
    return ReconcileResult.merged(
        [
            reconciler.run(
                specs,
                versions=versions,
                errors=load.errors,
                rejected=shard_rejected,
                dry_run=dry_run,
                hold_removals=held,
            )
            for reconciler, specs, versions, shard_rejected in zip(
                reconcilers, by_shard, snapshots, rejected, strict=True
            )
        ]
    )
