"""An app's schedule as a process binds it: its settings, its keys, a Redis client.

The one place that reads an app's configuration. The scheduler and
:class:`~safe_redbeat.Schedule` (and through it the CLI and write-through) each bind once
and pass the parts down; nothing below them reads ``app.conf`` for safe_redbeat's
settings again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..config import Settings
from .connection import check_cluster_keys, redbeat_conf, sanitize_url, scheduler_client
from .keys import Keys
from .layout import Layout

__all__ = ["Binding"]


@dataclass(eq=False)
class Binding:
    """``app``'s validated settings and keys; :meth:`client` made on first use."""

    app: Any
    settings: Settings
    keys: Keys
    #: the socket timeout of the client made here (default ``safe_redbeat_socket_timeout``)
    socket_timeout: float | None = None
    _client: Any = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        app: Any,
        *,
        lock_key: str | None = None,
        client: Any = None,
        socket_timeout: float | None = None,
    ) -> Binding:
        """Read and check ``app``'s settings (ConfigurationError naming the setting);
        ``lock_key`` names the lease instead of ``redbeat_lock_key``; ``client``
        replaces the one made from the settings."""
        redbeat_conf(app)
        keys = Keys.from_app(app)
        if lock_key:
            keys = replace(keys, lease=lock_key)
        return cls(app, Settings.from_app(app), keys, socket_timeout, client)

    @property
    def url(self) -> str:
        """``redbeat_redis_url`` without its password."""
        return sanitize_url(self.app.redbeat_conf.redis_url)

    @property
    def configured_layout(self) -> Layout:
        """The layout ``safe_redbeat_shards`` asks for (the one in Redis wins when it runs)."""
        return Layout(self.keys, self.settings.shards)

    def check_cluster_keys(self, client: Any = None) -> None:
        """On Redis Cluster, the keys of each shard of the configured layout share a slot
        (with one shard: the prefix needs a hash tag); ConfigurationError otherwise."""
        for keys in self.configured_layout.all_keys():
            check_cluster_keys(self.app, keys, client)

    @property
    def has_client(self) -> bool:
        return self._client is not None

    def client(self) -> Any:
        """The Redis client, made on first use (Redis may not answer yet)."""
        if self._client is None:
            timeout = self.socket_timeout or self.settings.socket_timeout_seconds
            shards = self.configured_layout.all_keys()
            self._client = scheduler_client(self.app, timeout, shards=shards)
        return self._client
