"""Whether Redis keeps the schedule across a restart, and which entries only Redis holds.

Redis persists with AOF (``appendonly yes``: ``aof_enabled`` in ``INFO persistence``) or
RDB snapshots (save points: ``CONFIG GET save``). A server that does neither loses every
key on a restart: ``beat_schedule`` entries and the loader's come back (the leader seeds
them again), entries written with ``Schedule``, the CLI or write-through do not. Managed
services often deny ``CONFIG`` (or ``INFO``): what cannot be read is ``None``, "unknown".

:func:`read_persistence` is one ``INFO persistence`` and one ``CONFIG GET save`` (on a
Redis Cluster, each primary's); :func:`count_redis_only` walks the schedule of each shard
once. Both only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from .keys import Keys

__all__ = ["UNKNOWN", "Persistence", "count_redis_only", "read_persistence"]


@dataclass(frozen=True)
class Persistence:
    """What a Redis server persists: ``aof`` and ``rdb`` are None when it would not say."""

    #: ``appendonly yes``
    aof: bool | None
    #: at least one RDB save point
    rdb: bool | None

    @property
    def persists(self) -> bool | None:
        """True if it writes the data to disk (AOF or RDB), False if it writes neither,
        None if that is not known."""
        if self.aof or self.rdb:
            return True
        if self.aof is False and self.rdb is False:
            return False
        return None

    @property
    def mode(self) -> str:
        """``aof+rdb``, ``aof``, ``rdb``, ``none`` or ``unknown``."""
        found = [name for name, on in (("aof", self.aof), ("rdb", self.rdb)) if on]
        if found:
            return "+".join(found)
        return "none" if self.persists is False else "unknown"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "persists": self.persists, "aof": self.aof, "rdb": self.rdb}


#: what a server that answers neither question persists
UNKNOWN = Persistence(None, None)


def read_persistence(client: Any) -> Persistence:
    """How the server behind ``client`` persists (on a Redis Cluster: only what every
    primary does). Redis errors other than a refused command propagate."""
    if isinstance(client, RedisCluster):
        primaries: list[Any] = client.get_primaries()  # type: ignore[no-untyped-call]
        return _all(_read(_asker(client, node)) for node in primaries)
    return _read(lambda what: _plain(client, what))


def _plain(client: Any, what: str) -> Any:
    return client.info("persistence") if what == "info" else client.config_get("save")


def _asker(client: RedisCluster, node: Any) -> Callable[[str], Any]:
    """:func:`_plain` for one node of a cluster."""

    def ask(what: str) -> Any:
        if what == "info":
            return client.info("persistence", target_nodes=node)
        return client.config_get("save", target_nodes=node)

    return ask


def _read(ask: Callable[[str], Any]) -> Persistence:
    """``ask("info")`` is ``INFO persistence``, ``ask("save")`` is ``CONFIG GET save``."""
    try:
        info = ask("info")
        aof: bool | None = str(info.get("aof_enabled", "")) == "1"
    except ResponseError:  # NOPERM, or the command renamed away
        aof = None
    try:
        save = ask("save")
        rdb: bool | None = bool(str(save.get("save") or "").strip())
    except ResponseError:
        rdb = None
    return Persistence(aof, rdb)


def _all(parts: Iterable[Persistence]) -> Persistence:
    """What every server of ``parts`` does (False if one does not; None if unknown)."""
    found = list(parts)

    def every(values: list[bool | None]) -> bool | None:
        if False in values:
            return False
        return None if None in values else True

    if not found:
        return UNKNOWN
    return Persistence(every([p.aof for p in found]), every([p.rdb for p in found]))


def count_redis_only(client: Any, shards: Sequence[Keys], *, page_size: int = 1000) -> int:
    """How many entries of the schedule neither ``beat_schedule`` nor the loader owns (their
    names are in no shard's statics or loader SET): after a loss of Redis' data nothing
    writes them again."""
    count = 0
    for keys in shards:
        with client.pipeline(transaction=False) as pipe:
            pipe.smembers(keys.statics)
            pipe.smembers(keys.loader)
            statics, loader = pipe.execute()
        owned = {str(name) for name in statics} | {str(name) for name in loader}
        for key, _score in client.zscan_iter(keys.schedule, count=page_size):
            if keys.name_of(str(key)) not in owned:
                count += 1
    return count
