"""Move the schedule to a layout of another number of shards, next to running replicas.

``safe-redbeat reshard --to K`` calls :func:`reshard`. What it does, in order:

1. **announce**: the layout key gets ``"moving_to": K``. Replicas see it at their next
   poll (within ``retry_seconds``), release their shards and lead none until the move
   ends; :class:`~safe_redbeat.schedule.Schedule` refuses writes with
   :class:`~safe_redbeat.errors.Resharding`.
2. **retire** each old shard: its lease key is set to ``retired <K>`` (no expiry) once
   free. From then on Redis itself refuses the old shard's fenced writes (the token is
   gone) and its unfenced ones (``upsert``/``remove``/``run_now`` answer RETIRED), so a
   replica or writer still on the old layout cannot change it behind the copy. If a
   lease is not released within ``wait_seconds`` (a stock RedBeat, a frozen replica), the
   move is undone (nothing was copied yet) and the error names the holder.
3. **copy** every entry (all hash fields: versions and run history move unchanged, with
   its schedule score), the owner sets, pending records and dead letters into the shard
   the new layout gives each name (``adopt.lua``: an entry the new layout has is kept).
4. **switch**: the layout key holds the new layout; replicas take the new shards.
5. **clean up**: the old layout's keys are deleted, except its retired leases.

Dispatch pauses from step 1 until the replicas' next poll after step 4: a few seconds
plus the copy. An occurrence due meanwhile is sent when the new shards are led (one
catch-up run, as after any failover). If the command dies midway the layout stays
"moving" and replicas lead nothing: run the same command again, it resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from celery.utils.log import get_logger

from ..errors import SafeRedBeatError
from ..model.occurrence import Occurrence
from ..store.connection import check_cluster_keys
from ..store.keys import Keys
from ..store.layout import Layout, check_shards, read_layout
from ..store.rows import EntryRows
from ..store.scripts import Adopt, Scripts

__all__ = ["RESHARD_CHUNK", "ReshardReport", "reshard"]

logger = get_logger("safe_redbeat.reshard")

#: Entries read and copied per pipeline.
RESHARD_CHUNK = 2000
#: What a retired shard's lease key holds (followed by the new shard count).
RETIRED = "retired "


@dataclass
class ReshardReport:
    """What one :func:`reshard` did."""

    source: int
    target: int
    entries: int = 0
    #: entries the new layout had already (a resumed move), or slots without a hash
    skipped: int = 0
    pending: int = 0
    dead: int = 0
    resumed: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        if self.source == self.target:
            return f"the schedule has {self.target} shard(s) already; nothing moved"
        text = (
            f"moved {self.entries} entries, {self.pending} pending records and {self.dead} "
            f"dead letters from {self.source} to {self.target} shard(s) in {self.seconds:.2f}s"
        )
        if self.skipped:
            text += f" ({self.skipped} skipped: already moved, or a slot without an entry)"
        return text + (" (resumed)" if self.resumed else "")


def reshard(
    client: Any,
    base: Keys,
    to: int,
    *,
    app: Any = None,
    wait_seconds: float = 30.0,
    poll_seconds: float = 0.1,
    say: Callable[[str], None] = logger.info,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReshardReport:
    """Move the schedule stored under ``base`` to ``to`` shards; see the module text.

    ``wait_seconds``: how long to wait for each old shard's lease to be released (set it
    above ``safe_redbeat_lease_seconds``, so a replica that died holding one has expired).
    """
    started = monotonic()
    check_shards(to, "--to")
    stored = read_layout(client, base)
    resumed = stored.moving
    if resumed and stored.moving_to != to:
        raise SafeRedBeatError(
            f"a move from {stored.shards} to {stored.moving_to} shards is under way; finish "
            f"it first with `safe-redbeat reshard --to {stored.moving_to}`"
        )
    source, target = Layout(base, stored.shards), Layout(base, to)
    report = ReshardReport(source.shards, target.shards, resumed=resumed)
    if source.shards == target.shards:
        return report
    for keys in target.all_keys():
        check_cluster_keys(app, keys, client)
    if not resumed:
        _check_target_empty(client, target)
    for keys in target.all_keys():  # left retired by an earlier move away from this layout
        if str(client.get(keys.lease) or "").startswith(RETIRED):
            client.delete(keys.lease)
    client.set(base.layout, Layout(base, source.shards, moving_to=to).encode())
    say(f"announced the move from {source.describe()} to {target.describe()}")
    _retire(client, source, target, wait_seconds, poll_seconds, say, monotonic, sleep)
    for keys in source.all_keys():
        _copy_shard(client, keys, target, report)
    for keys in target.all_keys():
        client.set(keys.seeded, "1")
    client.set(base.layout, target.encode())
    say(f"switched to {target.describe()}; replicas take the new shards at their next poll")
    for keys in source.all_keys():
        _delete_shard(client, keys)
    report.seconds = monotonic() - started
    say(report.summary())
    return report


def _check_target_empty(client: Any, target: Layout) -> None:
    for keys in target.all_keys():
        found = client.zcard(keys.schedule) + client.hlen(keys.pending)
        if found:
            raise SafeRedBeatError(
                f"the keys of the new layout are in use ({keys.schedule!r} or "
                f"{keys.pending!r} is not empty); nothing was moved. Inspect them: they may be "
                "left from a move that was interrupted and then run in the other direction"
            )


def _retire(
    client: Any,
    source: Layout,
    target: Layout,
    wait_seconds: float,
    poll_seconds: float,
    say: Callable[[str], None],
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Mark every old shard's lease retired once it is free; undo all and raise on timeout."""
    value = f"{RETIRED}{target.shards}"
    waiting = list(source.all_keys())
    deadline = monotonic() + wait_seconds
    while waiting:
        still = []
        for keys in waiting:
            if client.set(keys.lease, value, nx=True):
                continue
            current = client.get(keys.lease)
            if current is None or not str(current).startswith(RETIRED):
                still.append(keys)  # held (or expired just now: try again)
        waiting = still
        if not waiting:
            break
        if monotonic() >= deadline:
            holders = {keys.lease: client.get(keys.lease) for keys in waiting}
            _undo(client, source, value)
            raise SafeRedBeatError(
                f"the lease of {len(holders)} shard(s) was not released within "
                f"{wait_seconds:g}s ({_describe(holders)}); nothing was moved and the "
                "layout is as before. Replicas of this version release their shards at "
                "their next poll; stop what holds them (a stock RedBeat, an older "
                "safe_redbeat) and run the command again"
            )
        sleep(poll_seconds)
    say(f"retired the {source.describe()} layout's leases")


def _undo(client: Any, source: Layout, value: str) -> None:
    for keys in source.all_keys():
        if client.get(keys.lease) == value:
            client.delete(keys.lease)
    client.set(source.base.layout, source.encode())


def _describe(holders: dict[str, Any]) -> str:
    return ", ".join(f"{key} held by {str(value)[:80]!r}" for key, value in holders.items())


def _copy_shard(client: Any, keys: Keys, target: Layout, report: ReshardReport) -> None:
    """Copy one old shard's entries, owner sets, pending records and dead letters."""
    scripts = {k.prefix: Scripts(client, k) for k in target.all_keys()}
    rows = EntryRows(client, keys, None)
    for members in _zchunks(client, keys.schedule):
        hashes = rows.hashes([key for key, _score in members])
        any_scripts = next(iter(scripts.values()))
        batch = any_scripts.adoptions()
        queued = 0
        for (key, score), fields in zip(members, hashes, strict=True):
            if fields is None:
                report.skipped += 1  # a slot without a hash (or another type): not an entry
                continue
            name = keys.name_of(key)
            new = target.keys_for(name)
            scripts[new.prefix].adopt(Adopt(new.entry(name), float(score), fields), batch=batch)
            queued += 1
        copied = sum(batch.execute()) if queued else 0
        report.entries += copied
        report.skipped += queued - copied
    with client.pipeline(transaction=False) as pipe:
        for owned in ("statics", "loader"):
            for name in client.smembers(getattr(keys, owned)):
                pipe.sadd(getattr(target.keys_for(str(name)), owned), name)
        pipe.execute()
    report.pending += _copy_records(client, keys.pending, target, "pending")
    report.dead += _copy_records(client, keys.dead, target, "dead")


def _copy_records(client: Any, source_key: str, target: Layout, kind: str) -> int:
    """Copy pending records (or dead letters) to their entry's new shard; undecodable ones
    to shard 0. A record the new shard has already is kept."""
    records = client.hgetall(source_key)
    if not records:
        return 0
    with client.pipeline(transaction=False) as pipe:
        for task_id, raw in records.items():
            try:
                name = Occurrence.from_json(task_id, raw).entry
                keys = target.keys_for(name)
            except ValueError:
                keys = target.keys(0)
            pipe.hsetnx(getattr(keys, kind), task_id, raw)
        return sum(bool(done) for done in pipe.execute())


def _zchunks(client: Any, key: str) -> Iterator[Sequence[tuple[str, float]]]:
    """The members of a ZSET with their scores, a chunk at a time (no writes meanwhile)."""
    start = 0
    while True:
        chunk = client.zrange(key, start, start + RESHARD_CHUNK - 1, withscores=True)
        if not chunk:
            return
        yield chunk
        start += RESHARD_CHUNK


def _delete_shard(client: Any, keys: Keys) -> None:
    """Delete an old shard's keys, all but its retired lease."""
    for members in _zchunks(client, keys.schedule):
        client.unlink(*[key for key, _score in members])
    for key in (
        keys.schedule,
        keys.statics,
        keys.loader,
        keys.pending,
        keys.dead,
        keys.seeded,
        keys.reconcile,
        keys.fence,
        keys.running_index,  # the records of runs (running:<name>) expire by themselves
    ):
        client.unlink(key)
