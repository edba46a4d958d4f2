"""How a :class:`~safe_redbeat.scheduler.SafeRedBeatScheduler` builds its parts.

Each function builds one part from the scheduler's app and settings, and for the parts of
one shard (:class:`~safe_redbeat.shard.Shard`) from the shard's keys; the owner calls it on
first use (its Redis client may not be reachable yet) and keeps the result under the same
name (``shard.reader``, ``shard.outbox``, ``scheduler.publisher`` ...).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger

from .connection import check_cluster_keys, sanitize_url, scheduler_client
from .keys import Keys, isolates
from .leadership import Leadership
from .lease import Lease
from .outbox import Outbox
from .publisher import Publisher
from .reader import DueReader
from .scripts import Scripts
from .seeding import Seeder

if TYPE_CHECKING:
    from .scheduler import SafeRedBeatScheduler
    from .shard import Shard

__all__ = [
    "client",
    "info",
    "keys",
    "leadership",
    "outbox",
    "publisher",
    "reader",
    "redis_url",
    "scripts",
    "seeder",
]

logger = get_logger("safe_redbeat")


def keys(app: Any, lock_key: str | None, shards: int) -> Keys:
    """The schedule's keys; ``lock_key`` (given to the scheduler) names the lease.

    On Redis Cluster the keys of one shard must share a slot; sharded keys always do, the
    unsharded ones only with a hash tag in the prefix (checked here).
    """
    found = Keys.from_app(app)
    if not isolates(found.prefix):
        logger.warning(
            "beat: redbeat_key_prefix %r does not end with ':' or holds '::': another app on "
            "this Redis could share its keys; use a prefix like 'app:' (docs/storage-format.md)",
            found.prefix,
        )
    if lock_key:
        found = replace(found, lease=lock_key)
    elif not app.redbeat_conf.lock_key:
        logger.warning(
            "beat: redbeat_lock_key is unset; RedBeat would run unlocked, "
            "safe_redbeat always leases %r",
            found.lease,
        )
    if shards == 1:
        check_cluster_keys(app, found)
    return found


def leadership(shard: Shard) -> Leadership:
    """The replica's leadership of ``shard``; its lease is built on first use."""
    scheduler = shard.scheduler
    s, monotonic = scheduler.safe_settings, scheduler._monotonic
    return Leadership(
        scheduler,
        s,
        shard.keys,
        lease=lambda: Lease(
            scheduler.client, shard.keys, s, scripts=shard.scripts, monotonic=monotonic
        ),
        on_elected=shard.on_elected,
        shard=shard.index,
        monotonic=monotonic,
    )


def client(scheduler: SafeRedBeatScheduler) -> Any:
    """The scheduler's Redis client, made once (``scheduler._client``)."""
    if scheduler._client is None:
        settings = scheduler.safe_settings
        scheduler._client = scheduler_client(scheduler.app, settings.socket_timeout_seconds)
    return scheduler._client


def redis_url(scheduler: SafeRedBeatScheduler) -> str:
    return sanitize_url(scheduler.app.redbeat_conf.redis_url)


def info(scheduler: SafeRedBeatScheduler) -> str:
    """The lines ``celery beat`` prints at start-up."""
    s = scheduler.safe_settings
    return "\n".join(
        [
            f"       . redis -> {redis_url(scheduler)}",
            f"       . lease -> `{scheduler.keys.lease}` lease {s.lease_seconds}s, "
            f"renew deadline {s.renew_seconds}s, retry {s.retry_seconds}s",
            f"       . shards -> {s.shards} configured (the layout stored in Redis wins)",
            f"       . instance -> {s.instance_name}",
        ]
    )


def scripts(shard: Shard) -> Scripts:
    return Scripts(shard.scheduler.client, shard.keys)


def publisher(scheduler: SafeRedBeatScheduler) -> Publisher:
    return Publisher(scheduler.app, lambda: scheduler.producer)


def reader(shard: Shard) -> DueReader:
    scheduler = shard.scheduler
    return DueReader(
        scheduler.client,
        shard.keys,
        shard.scripts,
        scheduler.app,
        batch_size=scheduler.safe_settings.batch_size,
        park_seconds=scheduler.max_interval,
    )


def outbox(shard: Shard) -> Outbox:
    scheduler = shard.scheduler
    return Outbox(
        scheduler.client,
        shard.keys,
        shard.scripts,
        scheduler.publisher,
        scheduler.safe_settings,
        monotonic=scheduler._monotonic,
    )


def seeder(shard: Shard) -> Seeder:
    scheduler = shard.scheduler
    return Seeder(
        scheduler.app,
        scheduler.client,
        shard.keys,
        shard.scripts,
        scheduler.safe_settings,
        build_entry=scheduler._maybe_entry,
        monotonic=scheduler._monotonic,
        loader_slot=scheduler._loader_slot,
        shard=shard.index,
        shards=scheduler.layout.shards,
        owned_keys=tuple(keys.loaded for keys in scheduler.layout.all_keys()),
    )
