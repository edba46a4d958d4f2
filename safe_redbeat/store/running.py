"""The runs of entries with an overlap policy, as Redis holds them (read side).

Each such entry has a HASH ``<prefix>:running:<name>``: task id -> ``"<until ms> <since
ms> <state>"`` in Redis time, ``state`` ``sent`` (recorded by the claim that sent it) or
``running`` (recorded by the worker that started it); ``claim.lua``, ``run_started.lua``
and ``run_ended.lua`` write it. A run counts as going until ``until`` (``since`` plus the
entry's ``max_runtime``). The ZSET ``<prefix>:running`` indexes the entries that have
runs, scored by their latest ``until``, so readers find them without a SCAN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .keys import Keys

__all__ = ["Run", "Running", "decode_runs", "read_running", "read_runs"]


@dataclass(frozen=True)
class Run:
    """One run of an entry that counts as going."""

    task_id: str
    #: when it was sent (``state`` ``sent``) or started (``running``)
    since: datetime
    #: when it stops counting unless it ends before
    until: datetime
    state: str

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "state": self.state,
        }


@dataclass(frozen=True)
class Running:
    """The entries of one shard with runs going: how many, and the runs of the first."""

    count: int
    #: entry name -> its runs, for the ``limit`` entries whose runs end first
    runs: dict[str, list[Run]] = field(default_factory=dict)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def decode_runs(fields: Mapping[Any, Any], now_ms: int) -> list[Run]:
    """The runs of one running HASH that still count at ``now_ms``, oldest first; a value
    that is not a record is no run."""
    runs = []
    for task_id, value in fields.items():
        parts = str(value).split(" ")
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            continue
        until, since = int(parts[0]), int(parts[1])
        if until > now_ms:
            runs.append(Run(str(task_id), _utc(since), _utc(until), parts[2]))
    return sorted(runs, key=lambda run: (run.since, run.task_id))


def _now_ms(reply: Sequence[Any]) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def read_runs(
    client: Any, keys: Keys, names: Sequence[str]
) -> tuple[datetime, dict[str, list[Run]]]:
    """Redis' ``now`` and the runs going of each named entry (one pipeline)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        for name in names:
            pipe.hgetall(keys.running(name))
        time_reply, *replies = pipe.execute(raise_on_error=False)
    if isinstance(time_reply, Exception):
        raise time_reply
    now = _now_ms(time_reply)
    found = {
        name: decode_runs(reply, now) if isinstance(reply, dict) else []
        for name, reply in zip(names, replies, strict=True)
    }
    return _utc(now), found


def read_running(client: Any, keys: Keys, *, limit: int) -> Running:
    """How many entries of the shard ``keys`` have runs going, and the runs of the
    ``limit`` whose runs end first (two round trips)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zcard(keys.running_index)
        time_reply, total = pipe.execute(raise_on_error=False)
    if isinstance(time_reply, Exception):
        raise time_reply
    if isinstance(total, Exception) or not total:
        return Running(0)  # none, or another program's key of another type
    now = _now_ms(time_reply)
    with client.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.running_index, f"({now}", "+inf")
        pipe.zrangebyscore(keys.running_index, f"({now}", "+inf", start=0, num=limit)
        count, members = pipe.execute()
    names = [keys.name_of(str(member)) for member in members]
    _now, runs = read_runs(client, keys, names)
    return Running(int(count), {name: found for name, found in runs.items() if found})
