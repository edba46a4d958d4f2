"""The scheduler's own Redis client, built from RedBeat's connection settings.

RedBeat's ``get_redis`` honours ``redbeat_redis_url`` and ``redbeat_redis_options``
(Sentinel, SSL, Cluster); we reuse it and then make sure no call can block for longer than
``safe_redbeat_socket_timeout``, so a stalled Redis cannot outlive the renew deadline.

Redis Cluster is read from the same settings RedBeat reads (``cluster`` in
``redbeat_redis_options`` with a ``redis://`` URL, or a ``redis-cluster://`` URL with
``startup_nodes``), but the client is built here: with socket timeouts and without
redis-py's command retries, and only after checking that every key of the schedule hashes
to one slot (:func:`check_cluster_keys`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redbeat.schedulers import ensure_conf, get_redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ..errors import ConfigurationError
from .keys import Keys

__all__ = [
    "CLIENT_ERRORS",
    "ENCODING_ERRORS",
    "check_cluster_keys",
    "hash_tag",
    "is_cluster",
    "redbeat_conf",
    "sanitize_text",
    "sanitize_url",
    "scheduler_client",
]

#: What a failing Redis can raise from a client call: redis-py's cluster client raises
#: ``RedisClusterException`` (not a ``RedisError``) when no node it knows answers, or a
#: slot has no node (``SlotNotCoveredError``) while a failover is under way.
CLIENT_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError, RedisClusterException)

#: Bytes that are not UTF-8 (written by another program) decode to lone surrogates and
#: encode back to the same bytes, instead of failing the whole reply they are part of.
#: The decoders then reject such text for the one entry or record that holds it.
ENCODING_ERRORS = "surrogateescape"

#: Keys of ``redbeat_redis_options`` that RedBeat reads itself and never hands to the client
#: (``redbeat.schedulers.REDBEAT_INTERNAL_OPTIONS`` since 2.4; older releases lack the name).
REDBEAT_OWN_OPTIONS = frozenset(
    {"retry_period", "cluster", "sentinels", "service_name", "sentinel_kwargs", "startup_nodes"}
)

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def sanitize_url(url: str | None) -> str:
    """A Redis URL with its password masked, for logs and CLI output."""
    return str(maybe_sanitize_url(url or ""))


def sanitize_text(text: str, limit: int = 500) -> str:
    """``text`` with every URL's password masked, cut to ``limit`` characters."""
    masked = _URL.sub(lambda m: sanitize_url(m.group(0)), text)
    return masked if len(masked) <= limit else masked[: limit - 3] + "..."


def scheduler_client(app: Any, socket_timeout: float, *, shards: Sequence[Keys] = ()) -> Any:
    """A Redis client for the scheduler: RedBeat's settings, bounded socket timeouts,
    undecodable bytes kept as surrogates (:data:`ENCODING_ERRORS`). On Redis Cluster the
    keys of each of ``shards`` are checked to share one slot.

    RedBeat's ``RetryingConnection`` wrapper is removed: the scheduler decides itself when
    to retry (it must not block the tick for the wrapper's retry period).
    """
    if is_cluster(app):
        for keys in shards:
            check_cluster_keys(app, keys)
        return _cluster_client(app, socket_timeout)
    client = get_redis(app)
    client = getattr(client, "wrapped_connection", client)
    if not isinstance(client, redis.Redis):
        return client  # not built by RedBeat's known branches: used as configured
    return _bounded(client, socket_timeout)


#: RedBeat settings it warns about ("will stop falling back to ...") unless it finds them
_FALLBACK_WARNED = ("redbeat_redis_url", "redbeat_redis_options")


def redbeat_conf(app: Any) -> Any:
    """RedBeat's ``ensure_conf(app)``, without its false "will stop falling back to
    broker_url" WARNING for settings given under a namespace (Django's
    ``CELERY_REDBEAT_REDIS_URL``): RedBeat looks for the plain key only, while Celery reads
    the namespaced one. Such a value is also set under its plain name (the same value)."""
    if "redbeat_conf" not in vars(app):
        conf = app.conf
        plain = {key.upper() for key in conf}
        for name in _FALLBACK_WARNED:
            if name.upper() not in plain:
                value = conf.get(name)
                if value is not None:
                    conf[name] = value
    return ensure_conf(app)


# -- Redis Cluster ---------------------------------------------------------------------


def is_cluster(app: Any) -> bool:
    """True if RedBeat's settings for ``app`` name a Redis Cluster (as ``get_redis`` reads
    them: ``cluster`` in ``redbeat_redis_options``, or a ``redis-cluster://`` URL)."""
    conf = redbeat_conf(app)
    options = conf.redbeat_redis_options or {}
    return bool(options.get("cluster")) or str(conf.redis_url or "").startswith("redis-cluster")


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` as Redis Cluster reads it (``{...}``), or None.

    Redis hashes the part between the first ``{`` and the first ``}`` after it, if that
    part is not empty; otherwise the whole key.
    """
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else None


def check_cluster_keys(app: Any, keys: Keys, client: Any = None) -> None:
    """On Redis Cluster, make sure every key of the schedule hashes to one slot.

    The scripts touch several keys at once (lease, schedule, pending, entries); keys in
    different slots would fail with CROSSSLOT. A hash tag in the prefix puts every key
    that starts with it into one slot. Does nothing unless ``client`` is a cluster client
    (or, without ``client``, RedBeat's settings name a cluster).

    Raises ConfigurationError naming ``redbeat_key_prefix`` or ``redbeat_lock_key``.
    """
    cluster = is_cluster(app) if client is None else isinstance(client, RedisCluster)
    if not cluster:
        return
    if hash_tag(keys.prefix) is None:
        suggestion = (
            "{" + (keys.prefix.rstrip(":").replace("{", "").replace("}", "") or "redbeat") + "}:"
        )
        raise ConfigurationError(
            f"redbeat_key_prefix {keys.prefix!r} has no hash tag; on Redis Cluster every "
            "key of the schedule must hash to one slot (the scripts write several keys at "
            f"once). Write redbeat_key_prefix = {suggestion!r}: the part in braces picks "
            "the slot. Entries stored under the old prefix are not moved "
            "(docs/storage-format.md).",
            "redbeat_key_prefix",
        )
    slot = key_slot(keys.schedule.encode())
    if key_slot(keys.lease.encode()) != slot:
        raise ConfigurationError(
            f"redbeat_lock_key {keys.lease!r} hashes to slot "
            f"{key_slot(keys.lease.encode())}, the schedule {keys.schedule!r} to slot "
            f"{slot}; on Redis Cluster the lease must share the prefix' hash tag. Leave "
            f"redbeat_lock_key unset, or start it with the prefix ({keys.prefix + ':lock'!r}).",
            "redbeat_lock_key",
        )


def _cluster_client(app: Any, socket_timeout: float) -> RedisCluster:
    """A RedisCluster from RedBeat's settings: bounded socket timeouts, no retries.

    redis-py's cluster client retries a command that failed with a connection error or
    timeout (10 times by default, each after refreshing the topology), so one stalled
    node could hold a renewal for ten socket timeouts. The scheduler retries on its own
    schedule instead. ``retry`` and ``cluster_error_retry_attempts`` in
    ``redbeat_redis_options`` are therefore not used here; every other option is passed
    on as RedBeat passes it.
    """
    conf = redbeat_conf(app)
    options = dict(conf.redbeat_redis_options or {})
    kwargs = {k: v for k, v in options.items() if k not in REDBEAT_OWN_OPTIONS}
    kwargs.pop("retry", None)
    kwargs.pop("cluster_error_retry_attempts", None)
    kwargs["decode_responses"] = True
    kwargs["encoding_errors"] = ENCODING_ERRORS
    kwargs["socket_timeout"] = kwargs.get("socket_timeout") or socket_timeout
    kwargs["socket_connect_timeout"] = kwargs.get("socket_connect_timeout") or socket_timeout
    retry = Retry(NoBackoff(), 0)
    url = str(conf.redis_url or "")
    try:
        if options.get("cluster"):
            return _SchedulerCluster.from_url(url, retry=retry, **kwargs)
        nodes = options.get("startup_nodes") or [{"host": "localhost", "port": 30001}]
        startup = [ClusterNode(str(n["host"]), int(n["port"])) for n in nodes]  # type: ignore[no-untyped-call]
        return _SchedulerCluster(startup_nodes=startup, retry=retry, **kwargs)
    except RedisClusterException as exc:
        # The constructor asks the startup nodes for the slot map: none answered.
        raise redis.ConnectionError(
            f"Redis Cluster at {sanitize_url(url)} not reachable: {exc}"
        ) from exc


class _SchedulerCluster(RedisCluster):
    """redis-py's cluster client whose pipelines take the two commands our callers
    pipeline and redis-py's cluster pipeline refuses: ``TIME`` and ``EVALSHA``.

    A pipelined script is queued as ``EVALSHA``; before the pipeline runs, each queued
    script is loaded (``SCRIPT LOAD``) on the primary serving its first key, so a primary
    promoted since (which has no script cache) cannot answer NOSCRIPT.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: sha -> source of every script registered on this client
        self.script_sources: dict[str, str] = {}

    def register_script(self, script: Any) -> Any:
        registered = super().register_script(script)
        self.script_sources[registered.sha] = str(script)
        return registered

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        # the same object, with the methods below added: nothing of it is replaced
        pipe.__class__ = _SchedulerPipeline
        assert isinstance(pipe, _SchedulerPipeline)
        pipe.owner = self
        pipe.queued_scripts = {}
        return pipe


class _SchedulerPipeline(ClusterPipeline):
    owner: _SchedulerCluster
    #: (sha, first key) -> script source, for the scripts queued since the last execute
    queued_scripts: dict[tuple[str, str], str]

    def time(self, **kwargs: Any) -> Any:
        return self.execute_command("TIME", **kwargs)  # type: ignore[no-untyped-call]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        source = self.owner.script_sources.get(sha)
        if source is not None and numkeys > 0:
            self.queued_scripts[(sha, str(keys_and_args[0]))] = source
        return self.execute_command(  # type: ignore[no-untyped-call]
            "EVALSHA", sha, numkeys, *keys_and_args
        )

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        loaded: set[tuple[str, str]] = set()
        for (sha, key), source in self.queued_scripts.items():
            node = self.owner.get_node_from_key(key)  # type: ignore[no-untyped-call]
            if (sha, node.name) not in loaded:
                self.owner.execute_command(  # type: ignore[no-untyped-call]
                    "SCRIPT LOAD", source, target_nodes=node
                )
                loaded.add((sha, node.name))
        self.queued_scripts = {}
        result: list[Any] = super().execute(raise_on_error)
        return result


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
