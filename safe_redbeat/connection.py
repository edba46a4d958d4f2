"""The scheduler's own Redis client, built from RedBeat's connection settings.

RedBeat's ``get_redis`` honours ``redbeat_redis_url`` and ``redbeat_redis_options``
(Sentinel, SSL, Cluster); we reuse it and then make sure no call can block for longer than
``safe_redbeat_socket_timeout``, so a stalled Redis cannot outlive the renew deadline.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redbeat.schedulers import get_redis
from redis.sentinel import SentinelConnectionPool

__all__ = ["ENCODING_ERRORS", "sanitize_text", "sanitize_url", "scheduler_client"]

#: Bytes that are not UTF-8 (written by another program) decode to lone surrogates and
#: encode back to the same bytes, instead of failing the whole reply they are part of.
#: The decoders then reject such text for the one entry or record that holds it.
ENCODING_ERRORS = "surrogateescape"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def sanitize_url(url: str | None) -> str:
    """A Redis URL with its password masked, for logs and CLI output."""
    return str(maybe_sanitize_url(url or ""))


def sanitize_text(text: str, limit: int = 500) -> str:
    """``text`` with every URL's password masked, cut to ``limit`` characters."""
    masked = _URL.sub(lambda m: sanitize_url(m.group(0)), text)
    return masked if len(masked) <= limit else masked[: limit - 3] + "..."


def scheduler_client(app: Any, socket_timeout: float) -> Any:
    """A Redis client for the scheduler: RedBeat's settings, bounded socket timeouts,
    undecodable bytes kept as surrogates (:data:`ENCODING_ERRORS`).

    RedBeat's ``RetryingConnection`` wrapper is removed: the scheduler decides itself when
    to retry (it must not block the tick for the wrapper's retry period).
    """
    client = get_redis(app)
    client = getattr(client, "wrapped_connection", client)
    if not isinstance(client, redis.Redis):
        return client  # RedisCluster: used as configured
    return _bounded(client, socket_timeout)


def _bounded(client: redis.Redis, socket_timeout: float, *, retries: bool = True) -> redis.Redis:
    """``client`` if no call of it can block unbounded, else a copy with socket timeouts.

    ``retries=False``: the copy does not retry a failed command either.
    """
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    retry = kwargs.get("retry")
    bounded = (
        kwargs.get("encoding_errors") == ENCODING_ERRORS
        and kwargs.get("socket_timeout") is not None
        and bool(kwargs.get("socket_connect_timeout"))
        and (retries or retry is None or retry.get_retries() == 0)
    )
    if not retries:
        kwargs.pop("retry", None)
    manager: Any = None
    if isinstance(pool, SentinelConnectionPool):
        # Every (re)connection asks the sentinels, in order, for the primary's address. A
        # sentinel that does not answer must cost one socket timeout, then the next one is
        # asked: no unbounded read, no retries (redis-py's Redis() retries 10 times).
        current = pool.sentinel_manager.sentinels
        sentinels = [_bounded(s, socket_timeout, retries=False) for s in current]
        if any(new is not old for new, old in zip(sentinels, current, strict=True)):
            manager = copy.copy(pool.sentinel_manager)
            manager.sentinels = sentinels
    if bounded and manager is None:
        return client
    kwargs["encoding_errors"] = ENCODING_ERRORS
    kwargs["socket_timeout"] = kwargs.get("socket_timeout") or socket_timeout
    kwargs["socket_connect_timeout"] = kwargs.get("socket_connect_timeout") or socket_timeout
    new_pool: redis.ConnectionPool
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)
        new_pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name,
            manager or pool.sentinel_manager,
            connection_class=pool.connection_class,
            **{k: v for k, v in kwargs.items() if k != "connection_class"},
        )
    else:
        new_pool = pool.__class__(
            connection_class=pool.connection_class,
            max_connections=pool.max_connections,
            **kwargs,
        )
    return redis.Redis(connection_pool=new_pool)
