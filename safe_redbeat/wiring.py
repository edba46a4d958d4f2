"""How a :class:`~safe_redbeat.scheduler.SafeRedBeatScheduler` builds its parts.

Each function builds one part from the scheduler's app, settings and keys; the scheduler
calls it on first use (its Redis client may not be reachable yet) and keeps the result
under the same name (``scheduler.reader``, ``scheduler.outbox`` ...).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger

from .connection import check_cluster_keys, sanitize_url, scheduler_client
from .keys import Keys
from .leadership import Leadership
from .lease import Lease
from .outbox import Outbox
from .publisher import Publisher
from .reader import DueReader
from .scripts import Scripts
from .seeding import Seeder

if TYPE_CHECKING:
    from .scheduler import SafeRedBeatScheduler

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


def keys(app: Any, lock_key: str | None) -> Keys:
    """The schedule's keys; ``lock_key`` (given to the scheduler) names the lease."""
    found = Keys.from_app(app)
    if lock_key:
        found = replace(found, lease=lock_key)
    elif not app.redbeat_conf.lock_key:
        logger.warning(
            "beat: redbeat_lock_key is unset; RedBeat would run unlocked, "
            "safe_redbeat always leases %r",
            found.lease,
        )
    check_cluster_keys(app, found)
    return found


def leadership(scheduler: SafeRedBeatScheduler, rng: random.Random | None) -> Leadership:
    """The replica's leadership; its lease is built on first use."""
    s, monotonic = scheduler.safe_settings, scheduler._monotonic
    return Leadership(
        scheduler,
        s,
        scheduler.keys,
        lease=lambda: Lease(
            scheduler.client, scheduler.keys, s, scripts=scheduler.scripts, monotonic=monotonic
        ),
        client=lambda: scheduler.client,
        on_elected=scheduler._on_elected,
        monotonic=monotonic,
        rng=rng,
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
            f"       . instance -> {s.instance_name}",
        ]
    )


def scripts(scheduler: SafeRedBeatScheduler) -> Scripts:
    return Scripts(scheduler.client, scheduler.keys)


def publisher(scheduler: SafeRedBeatScheduler) -> Publisher:
    return Publisher(scheduler.app, lambda: scheduler.producer)


def reader(scheduler: SafeRedBeatScheduler) -> DueReader:
    return DueReader(
        scheduler.client,
        scheduler.keys,
        scheduler.scripts,
        scheduler.app,
        batch_size=scheduler.safe_settings.batch_size,
        park_seconds=scheduler.max_interval,
    )


def outbox(scheduler: SafeRedBeatScheduler) -> Outbox:
    return Outbox(
        scheduler.client,
        scheduler.keys,
        scheduler.scripts,
        scheduler.publisher,
        scheduler.safe_settings,
        monotonic=scheduler._monotonic,
    )


def seeder(scheduler: SafeRedBeatScheduler) -> Seeder:
    return Seeder(
        scheduler.app,
        scheduler.client,
        scheduler.keys,
        scheduler.scripts,
        scheduler.safe_settings,
        build_entry=scheduler._maybe_entry,
        monotonic=scheduler._monotonic,
    )
