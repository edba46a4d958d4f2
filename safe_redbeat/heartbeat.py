"""Replica heartbeats: who is running, in which role, and when it last ticked.

Each replica writes ``<prefix>:replica:<instance name>`` (a JSON string) with a TTL of
``ttl`` seconds at most every ``retry_seconds``. The age of the last tick is derived from
the key's remaining TTL, so it does not depend on any replica's clock. ``status`` and
``health`` read them; no other service is needed.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .keys import Keys

__all__ = ["Heartbeat", "ReplicaStatus", "read_heartbeat", "read_heartbeats", "write_heartbeat"]


@dataclass(frozen=True)
class Heartbeat:
    """What one replica says about itself."""

    instance: str
    role: str  # "leader" or "standby"
    fence: int | None
    #: seconds this replica has led (0 for a standby)
    leading_for: float
    ttl: float
    #: the shards this replica leads, and how many the layout it works has
    shards: tuple[int, ...] = ()
    shard_count: int = 1
    #: the process that makes the heartbeat, looked up then (not at import: forks)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class ReplicaStatus:
    heartbeat: Heartbeat
    #: seconds since the replica last wrote its heartbeat (from the key's TTL)
    age: float


def write_heartbeat(client: Any, keys: Keys, heartbeat: Heartbeat) -> None:
    payload = json.dumps(asdict(heartbeat), separators=(",", ":"), sort_keys=True)
    client.set(keys.replica(heartbeat.instance), payload, px=int(heartbeat.ttl * 1000))


def read_heartbeats(client: Any, keys: Keys) -> Iterator[ReplicaStatus]:
    """Every live replica's last heartbeat (SCAN, never KEYS)."""
    found = sorted(client.scan_iter(match=keys.replicas(), count=500))
    if not found:
        return
    with client.pipeline(transaction=False) as pipe:
        for key in found:
            pipe.get(key)
            pipe.pttl(key)
        values = pipe.execute()
    for raw, pttl in zip(values[::2], values[1::2], strict=True):
        status = _decode(raw, pttl)
        if status is not None:
            yield status


def read_heartbeat(client: Any, keys: Keys, instance: str) -> ReplicaStatus | None:
    """One replica's last heartbeat, or None if it has none (GET + PTTL, no SCAN)."""
    key = keys.replica(instance)
    with client.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, pttl = pipe.execute()
    return _decode(raw, pttl)


def _shards(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError("shards is not a list")
    return tuple(int(index) for index in value)


def _decode(raw: str | None, pttl: int | None) -> ReplicaStatus | None:
    """A heartbeat as written by :func:`write_heartbeat`; None for anything else."""
    if raw is None or pttl is None or pttl < 0:
        return None
    try:
        data = json.loads(raw)
        fence = data.get("fence")
        heartbeat = Heartbeat(
            instance=str(data["instance"]),
            role=str(data["role"]),
            fence=None if fence is None else int(fence),
            leading_for=float(data["leading_for"]),
            ttl=float(data["ttl"]),
            shards=_shards(data.get("shards")),
            shard_count=int(data.get("shard_count") or 1),
            host=str(data.get("host", "")),
            pid=int(data.get("pid") or 0),
        )
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    if not (math.isfinite(heartbeat.ttl) and math.isfinite(heartbeat.leading_for)):
        return None
    return ReplicaStatus(heartbeat, age=max(heartbeat.ttl - pttl / 1000, 0.0))
