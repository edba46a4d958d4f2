"""What the admin's beat page shows, and its actions, read from and written to Redis.

Read only: each shard's lease (leader, fence, time left), pending records, lag and last
reconcile (held removals, rows that could not be scheduled), the replicas' heartbeats and
the dead letters; the same keys ``safe-redbeat status`` and ``dead list`` read. The
actions are the CLI's: ``sync --allow-removals`` (:func:`apply_removals`) and
``dead retry|drop`` (:func:`move_dead_letters`), each safe next to running replicas.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from safe_redbeat.dispatch.outbox import DeadLetter, read_dead_letters
from safe_redbeat.leader.heartbeat import ReplicaStatus, read_heartbeats
from safe_redbeat.leader.lease import parse_token
from safe_redbeat.schedule import Schedule
from safe_redbeat.store.connection import sanitize_text, sanitize_url
from safe_redbeat.store.scripts import Move, MoveCode
from safe_redbeat.store.wire import RETIRED
from safe_redbeat.sync.reconcile import ReconcileResult
from safe_redbeat.writethrough import sync_once

from . import LOADER_PATH

__all__ = ["BeatView", "DeadRow", "ShardView", "apply_removals", "move_dead_letters", "read_beat"]

#: Most dead letters the page lists.
DEAD_SHOWN = 200


@dataclass(frozen=True)
class ShardView:
    index: int
    #: the leading replica's instance name; None: no leader
    leader: str | None
    fence: int | None
    #: seconds until the lease expires unless renewed
    lease_left: float | None
    pending: int
    dead: int
    entries: int
    #: seconds the earliest due entry is overdue (0: none)
    lag: float
    last_reconcile: dict[str, Any] | None
    retired: bool = False


@dataclass(frozen=True)
class DeadRow:
    shard: int
    task_id: str
    entry: str
    task: str
    scheduled: datetime | None
    attempts: int
    error: str


@dataclass
class BeatView:
    redis: str
    prefix: str
    layout: str
    shards: list[ShardView]
    replicas: list[ReplicaStatus]
    dead: list[DeadRow]
    #: the held removals of every shard's last reconcile (names, as recorded)
    held: list[str] = field(default_factory=list)
    held_count: int = 0
    #: rows the last reconcile could not schedule, with the problem
    rejected: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return sum(shard.pending for shard in self.shards)

    @property
    def lag(self) -> float:
        return max((shard.lag for shard in self.shards), default=0.0)


def read_beat(schedules: Schedule) -> BeatView:
    """Everything the beat page shows (a few pipelines; dead letters up to DEAD_SHOWN)."""
    client = schedules.client
    layout = schedules.layout()
    stores = schedules.shards(layout)
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        for shard in stores:
            keys = shard.keys
            pipe.get(keys.lease)
            pipe.pttl(keys.lease)
            pipe.hlen(keys.pending)
            pipe.hlen(keys.dead)
            pipe.zcard(keys.schedule)
            pipe.zrangebyscore(keys.schedule, 0, "+inf", start=0, num=1, withscores=True)
            pipe.get(keys.reconcile)
        (secs, micros), *replies = pipe.execute()
    now = int(secs) + int(micros) / 1e6
    views: list[ShardView] = []
    held: list[str] = []
    held_count = 0
    rejected: list[str] = []
    for shard in stores:
        lease, pttl, pending, dead, entries, first, raw = replies[:7]
        replies = replies[7:]
        retired = lease is not None and str(lease).startswith(RETIRED)
        holder = None if lease is None or retired else parse_token(str(lease))
        record = _record(raw)
        if record is not None:
            held += [str(name) for name in record.get("held") or []]
            held_count += int(record.get("removals_held") or 0)
            rejected += [str(error) for error in record.get("errors") or []]
        overdue = [now - float(score) for _key, score in first if float(score) <= now]
        views.append(
            ShardView(
                index=shard.index,
                leader=None if holder is None else holder.name,
                fence=None if holder is None else holder.fence,
                lease_left=pttl / 1000 if holder is not None and pttl >= 0 else None,
                pending=int(pending),
                dead=int(dead),
                entries=int(entries),
                lag=round(overdue[0], 1) if overdue else 0.0,
                last_reconcile=record,
                retired=retired,
            )
        )
    dead_rows = [
        _dead_row(shard.index, letter)
        for shard in stores
        for letter in read_dead_letters(client, shard.keys, limit=DEAD_SHOWN)
    ][:DEAD_SHOWN]
    return BeatView(
        redis=sanitize_url(schedules.app.redbeat_conf.redis_url),
        prefix=schedules.keys.prefix,
        layout=layout.describe(),
        shards=views,
        replicas=sorted(read_heartbeats(client, schedules.keys), key=_replica_order),
        dead=dead_rows,
        held=held,
        held_count=held_count,
        rejected=rejected,
    )


def _replica_order(replica: ReplicaStatus) -> tuple[int, str]:
    return (0 if replica.heartbeat.role == "leader" else 1, replica.heartbeat.instance)


def _record(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return {"unreadable": sanitize_text(str(raw)[:80])}
    return record if isinstance(record, dict) else None


def _dead_row(shard: int, letter: DeadLetter) -> DeadRow:
    o = letter.occurrence
    if o is None:
        return DeadRow(shard, letter.task_id, "(malformed)", "", None, 0, letter.problem)
    return DeadRow(
        shard=shard,
        task_id=letter.task_id,
        entry=o.entry,
        task=o.task,
        scheduled=datetime.fromtimestamp(o.scheduled, tz=timezone.utc),
        attempts=o.attempts,
        error=o.last_error,
    )


def apply_removals(schedules: Schedule) -> ReconcileResult:
    """One reconcile of the table that applies the held removals (``--allow-removals``)."""
    loader = schedules.app.conf.get("safe_redbeat_loader") or LOADER_PATH
    return sync_once(schedules, loader, allow_removals=True)


def move_dead_letters(schedules: Schedule, action: str, task_ids: list[str]) -> tuple[int, int]:
    """``retry`` (back to pending: the leader sends it, same task id) or ``drop`` the dead
    letters ``task_ids``; return (moved, changed meanwhile or gone). Compare-and-set on
    each record as read (``move.lua``)."""
    if action not in ("retry", "drop"):
        raise ValueError(f"action must be 'retry' or 'drop', got {action!r}")
    layout = schedules.layout()
    if layout.moving:
        return 0, len(task_ids)
    wanted = set(task_ids)
    moved = missed = 0
    for shard in schedules.shards(layout):
        keys = shard.keys
        moves = []
        for letter in read_dead_letters(schedules.client, keys):
            if letter.task_id not in wanted:
                continue
            wanted.discard(letter.task_id)
            new = ""
            if action == "retry":
                if letter.occurrence is None:
                    missed += 1
                    continue
                fresh = dataclasses.replace(letter.occurrence, attempts=0, last_error="", raw="")
                new = fresh.to_json()
            moves.append(Move(letter.task_id, letter.raw, new))
        if moves:
            destination = keys.pending if action == "retry" else keys.dead
            codes = shard.scripts.move(keys.dead, destination, moves).codes
            done = sum(code is MoveCode.DONE for code in codes)
            moved += done
            missed += len(moves) - done
    return moved, missed + len(wanted)
