"""Replica heartbeats: who is running, in which role, and when it last ticked.

Each replica process has a token of its own (random, made when its scheduler is built) and
writes ``<prefix>:replica:<token>`` (a JSON string) with a TTL of ``ttl`` seconds at most
every ``retry_seconds``, and adds the token to the SET ``<prefix>:replicas`` (readers find
the heartbeats there, without a SCAN of the keyspace; a token whose key expired is
dropped from it by the next balancer poll). Replicas are told apart by token, never by
their configurable instance name: two replicas given the same name are still two, and
:func:`shared_names` finds them. The age of the last tick is derived from the key's
remaining TTL, so it does not depend on any replica's clock. ``status`` and ``health``
read them; no other service is needed.
"""

from __future__ import annotations

import json
import math
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..store.keys import Keys

__all__ = [
    "Heartbeat",
    "ReplicaStatus",
    "new_token",
    "prune_heartbeats",
    "read_heartbeats",
    "remove_heartbeat",
    "shared_names",
    "write_heartbeat",
]


def new_token() -> str:
    """A replica process' token: 32 hex digits."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Heartbeat:
    """What one replica says about itself."""

    instance: str
    role: str  # "leader" or "standby"
    #: seconds this replica has led (its first shard; 0 for a standby)
    leading_for: float
    ttl: float
    #: the shards this replica leads, their fences, and how many the layout has
    shards: tuple[int, ...] = ()
    fences: tuple[int, ...] = ()
    shard_count: int = 1
    #: the process that makes the heartbeat, looked up then (not at import: forks)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    #: the replica process' own token (:func:`new_token`): what tells replicas apart
    token: str = ""
    #: how it enqueues: "atomic", "publish", or "" until it decided (its first dispatch)
    enqueue: str = ""

    @property
    def fence(self) -> int | None:
        """The fence of the first shard it leads (None for a standby)."""
        return self.fences[0] if self.fences else None


@dataclass(frozen=True)
class ReplicaStatus:
    heartbeat: Heartbeat
    #: seconds since the replica last wrote its heartbeat (from the key's TTL)
    age: float


def write_heartbeat(client: Any, keys: Keys, heartbeat: Heartbeat) -> None:
    payload = json.dumps(asdict(heartbeat), separators=(",", ":"), sort_keys=True)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.replica(heartbeat.token), payload, px=int(heartbeat.ttl * 1000))
        pipe.sadd(keys.replica_index, heartbeat.token)
        pipe.execute()


def remove_heartbeat(client: Any, keys: Keys, token: str) -> None:
    """A replica that stops says so at once (instead of letting its heartbeat expire)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(keys.replica(token))
        pipe.srem(keys.replica_index, token)
        pipe.execute()


def _read(client: Any, keys: Keys) -> list[tuple[str, ReplicaStatus | None]]:
    tokens = sorted(client.smembers(keys.replica_index))
    if not tokens:
        return []
    with client.pipeline(transaction=False) as pipe:
        for token in tokens:
            pipe.get(keys.replica(token))
            pipe.pttl(keys.replica(token))
        values = pipe.execute(raise_on_error=False)
    return [
        (token, _decode(raw, pttl, token))
        for token, raw, pttl in zip(tokens, values[::2], values[1::2], strict=True)
    ]


def read_heartbeats(client: Any, keys: Keys) -> Iterator[ReplicaStatus]:
    """Every live replica's last heartbeat (the index SET, one pipeline)."""
    for _token, status in _read(client, keys):
        if status is not None:
            yield status


def prune_heartbeats(client: Any, keys: Keys) -> list[ReplicaStatus]:
    """:func:`read_heartbeats`, dropping tokens whose heartbeat expired from the index."""
    found = _read(client, keys)
    gone = [token for token, status in found if status is None]
    if gone:
        client.srem(keys.replica_index, *gone)
    return [status for _token, status in found if status is not None]


def shared_names(replicas: Iterable[ReplicaStatus]) -> dict[str, list[ReplicaStatus]]:
    """Instance names that more than one live replica uses, with those replicas."""
    by_name: dict[str, list[ReplicaStatus]] = {}
    for replica in replicas:
        by_name.setdefault(replica.heartbeat.instance, []).append(replica)
    return {name: found for name, found in by_name.items() if len(found) > 1}


def _shards(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError("shards is not a list")
    return tuple(int(index) for index in value)


def _decode(raw: Any, pttl: Any, token: str) -> ReplicaStatus | None:
    """A heartbeat as written by :func:`write_heartbeat`; None for anything else."""
    if not isinstance(raw, str | bytes) or not isinstance(pttl, int) or pttl < 0:
        return None
    try:
        data = json.loads(raw)
        heartbeat = Heartbeat(
            instance=str(data["instance"]),
            role=str(data["role"]),
            leading_for=float(data["leading_for"]),
            ttl=float(data["ttl"]),
            shards=_shards(data.get("shards")),
            fences=_shards(data.get("fences")),
            shard_count=int(data.get("shard_count") or 1),
            host=str(data.get("host", "")),
            pid=int(data.get("pid") or 0),
            token=token,
            enqueue=str(data.get("enqueue") or ""),
        )
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    if not (math.isfinite(heartbeat.ttl) and math.isfinite(heartbeat.leading_for)):
        return None
    return ReplicaStatus(heartbeat, age=max(heartbeat.ttl - pttl / 1000, 0.0))
