"""Fault injectors. Each takes the running harness and returns what it did, and when."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from safe_redbeat.leader.lease import parse_token
from testbed.redis_server import HOST, RedisServer
from tests.chaos.cluster import current_holder
from tests.chaos.model import (
    BROKER_PAUSE,
    BROKER_REFUSE_ONE,
    BROKER_STOP,
    SENTINEL_FAILOVER,
    FaultRecord,
    Outboxed,
)
from tests.chaos.workload import REFUSED_ENTRY, REFUSED_QUEUE
from tests.support import KEYS

if TYPE_CHECKING:
    from tests.chaos.harness import Harness

LEASE_KEY = KEYS.lease
FENCE_KEY = KEYS.fence
SCHEDULE_KEY = KEYS.schedule
PENDING_KEY = KEYS.pending

#: Deletes every key matching ARGV[1] in one step (a careless loader's FLUSH-by-prefix).
#: KEYS: none; ARGV[1] - pattern; return the number of keys deleted.
WIPE_SCRIPT = """
local keys = redis.call('KEYS', ARGV[1])
for i = 1, #keys, 5000 do
    redis.call('DEL', unpack(keys, i, math.min(i + 4999, #keys)))
end
return #keys
"""


def sigstop_leader(h: Harness) -> FaultRecord:
    """Freeze the leader mid-dispatch for longer than the lease, then let it go on."""
    holder = h.leader()
    pending = h.wait_mid_dispatch(3.0)
    hit = h.shard_details(holder)
    process = h.supervisor.signal(holder.name, signal.SIGSTOP, cause="SIGSTOP")
    started = time.time()
    stopped_for = h.config.lease + h.rng.uniform(0.5, 1.5)
    time.sleep(stopped_for)
    process.sigcont()
    return FaultRecord(
        "sigstop-leader",
        started,
        started,
        holder.name,
        {
            "pid": process.pid,
            "stopped_seconds": round(stopped_for, 3),
            "pending_at_stop": pending,
            **hit,
        },
    )


def sigkill_leader(h: Harness) -> FaultRecord:
    """SIGKILL the leader, preferably between a claim and its acknowledgement."""
    holder = h.leader()
    pending = h.wait_mid_dispatch(1.5)
    hit = h.shard_details(holder)
    process = h.supervisor.signal(holder.name, signal.SIGKILL, cause="SIGKILL (injected)")
    started = time.time()
    return FaultRecord(
        "sigkill-leader", started, started, holder.name,
        {"pid": process.pid, "pending_at_kill": pending, **hit},
    )  # fmt: skip


def sigterm_leader(h: Harness) -> FaultRecord:
    """A rolling-restart step: SIGTERM the leader; the supervisor starts a new pod."""
    holder = h.leader()
    pending = h.wait_mid_dispatch(1.0) if h.rng.random() < 0.5 else 0
    hit = h.shard_details(holder)
    process = h.supervisor.signal(holder.name, signal.SIGTERM, cause="SIGTERM (injected)")
    started = time.time()
    return FaultRecord(
        "sigterm-leader", started, started, holder.name,
        {"pid": process.pid, "pending_at_term": pending, **hit},
    )  # fmt: skip


def delete_lock(h: Harness) -> FaultRecord:
    """Delete the lease key (with shards: one shard's, chosen at random)."""
    shard = h.pick_shard()
    holder = h.leader(shard=shard)
    started = time.time()
    if not h.sharded:
        deleted = h.admin.delete(h.lease_key)
        return FaultRecord("delete-lock", started, started, holder.name, {"deleted": deleted})
    deleted = h.admin.delete(h.lease_keys[shard])
    return FaultRecord(
        "delete-lock", started, started, holder.name,
        {"deleted": deleted, "lease_key": h.lease_keys[shard], "shards": [shard]},
    )  # fmt: skip


def wipe_keys(h: Harness) -> FaultRecord:
    """Delete every ``redbeat:*`` key at once; the harness writes its own entries again."""
    started = time.time()
    deleted = h.admin.eval(WIPE_SCRIPT, 0, "redbeat:*")
    h.dynamic_deleted(started)
    time.sleep(h.rng.uniform(0.5, 1.5))
    h.reseed()
    return FaultRecord("wipe-keys", started, started, "redis", {"keys_deleted": deleted})


def redis_restart_lossy(h: Harness) -> FaultRecord:
    """Restart Redis without its data (no persistence survives)."""
    with h.auditor.hold():
        started = time.time()
        h.server.stop()
        h.dynamic_deleted(started)
        shutil.rmtree(h.server.workdir / "appendonlydir", ignore_errors=True)
        for leftover in h.server.workdir.glob("*.rdb"):
            leftover.unlink()
        h.server.start()
        recovered = time.time()
        h.configure_redis()
    h.reseed()
    return FaultRecord(
        "redis-restart-lossy", started, recovered, "redis",
        {"down_seconds": round(recovered - started, 3)},
    )  # fmt: skip


def redis_restart_aof(h: Harness) -> FaultRecord:
    """Restart Redis with its append-only file: nothing is lost, connections are."""
    with h.auditor.hold():
        started = time.time()
        h.server.restart()
        recovered = time.time()
        h.configure_redis()
        kept = h.admin.exists(h.lease_key)
    return FaultRecord(
        "redis-restart-aof", started, recovered, "redis",
        {"down_seconds": round(recovered - started, 3), "lease_key_survived": bool(kept)},
    )  # fmt: skip


def client_kill(h: Harness) -> FaultRecord:
    """Cut every client connection (CLIENT KILL TYPE normal)."""
    with h.auditor.hold():
        started = time.time()
        killed = h.admin.client_kill_filter(_type="normal", skipme=True)
    return FaultRecord("client-kill", started, started, "redis", {"killed": killed})


def redis_pause(h: Harness) -> FaultRecord:
    """Stall Redis for longer than the lease (CLIENT PAUSE ALL)."""
    seconds = h.config.lease + h.rng.uniform(0.5, 1.5)
    with h.auditor.hold():
        h.admin.client_pause(int(seconds * 1000), all=True)
        started = time.time()
        time.sleep(seconds + 0.05)
    return FaultRecord(
        "redis-pause", started, started + seconds, "redis", {"paused_seconds": round(seconds, 3)}
    )


#: What ``poison`` writes, in turn: an entry another program wrote that nothing can send.
POISON_VARIANTS = ("unsendable-options", "non-utf8-definition", "overflowing-numbers")
_POISON_DEFINITION = (
    '{"name": "%s", "task": "noop", "args": [], "kwargs": {}, "options": %s, "enabled": true, '
    '"schedule": {"__type__": "interval", "every": %s, "relative": false}}'
)


def poison(h: Harness) -> FaultRecord:
    """Another client writes a due entry that cannot be sent (``POISON_VARIANTS`` in turn).

    The leader must park it (its slot moves ahead, its hash stays as written) and go on
    dispatching the others; the oracle counts a message sent for it as unknown.
    """
    count = sum(1 for fault in h.faults if fault.kind == "poison")
    variant = POISON_VARIANTS[count % len(POISON_VARIANTS)]
    name = f"poison-{count}-{variant}"
    fields: dict[bytes, bytes] = {}
    if variant == "unsendable-options":
        options = '{"headers": [1, 2], "priority": "high"}'
        fields[b"definition"] = (_POISON_DEFINITION % (name, options, "1.0")).encode()
    elif variant == "non-utf8-definition":
        text = (_POISON_DEFINITION % (name, "{}", "1.0")).encode()
        fields[b"definition"] = text.replace(b'"noop"', b'"no\xff\xfeop"')
    else:
        fields[b"definition"] = (_POISON_DEFINITION % (name, "{}", "1e400")).encode()
        fields[b"meta"] = b'{"last_run_at": null, "total_run_count": 1e400}'
        fields[b"run_now"] = b"1e400"
    key = ("redbeat:" + name).encode()
    client = redis.Redis(host=HOST, port=h.server.port, socket_timeout=5)
    try:
        seconds, _micros = client.time()
        started = time.time()
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.zadd(SCHEDULE_KEY, {key: int(seconds)})
            pipe.execute()
        deadline = time.monotonic() + h.config.failover_allowance
        parked = False
        while not parked and time.monotonic() < deadline:
            time.sleep(0.05)
            parked = (client.zscore(SCHEDULE_KEY, key) or 0) > int(seconds)
        unchanged = client.hgetall(key) == fields
    finally:
        client.close()
    return FaultRecord(
        "poison", started, started, "data",
        {"variant": variant, "entry": name, "parked": parked, "hash_unchanged": unchanged},
    )  # fmt: skip


def schedule_state(client: redis.Redis) -> dict[str, Any]:
    """What a failover can lose: the lease, the fence, every entry's score, the pending
    records (read in one MULTI, so consistent)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.get(LEASE_KEY)
        pipe.pttl(LEASE_KEY)
        pipe.get(FENCE_KEY)
        pipe.zrange(SCHEDULE_KEY, 0, -1, withscores=True)
        pipe.hkeys(PENDING_KEY)
        lease, pttl, fence, scores, pending = pipe.execute()
    holder = None if lease is None else parse_token(str(lease))
    return {
        "holder": None if holder is None else holder.name,
        "lease_fence": None if holder is None else holder.fence,
        "lease_pttl_ms": int(pttl),
        "fence": None if fence is None else int(fence),
        "scores": {str(k): float(v) for k, v in scores},
        "pending": sorted(str(k) for k in pending),
    }


def lost_writes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Compare the dead primary's state with what the promoted replica had."""
    old, new = before.get("scores", {}), after.get("scores", {})
    pending_before, pending_after = set(before.get("pending", [])), set(after.get("pending", []))
    return {
        # claims the replica never saw: the occurrence is due again on the new primary
        "claims_lost": sum(1 for k, v in old.items() if k in new and new[k] < v),
        "entries_lost": sum(1 for k in old if k not in new),
        # pending records of lost claims
        "pending_lost": len(pending_before - pending_after),
        # acknowledged on the old primary, pending again on the new one: republished
        "acks_lost": len(pending_after - pending_before),
        "pending_before": len(pending_before),
        "pending_after": len(pending_after),
        "lease_before": [before.get("holder"), before.get("lease_fence")],
        "lease_after": [after.get("holder"), after.get("lease_fence")],
        "lease_pttl_ms_before": before.get("lease_pttl_ms"),
        "lease_pttl_ms_after": after.get("lease_pttl_ms"),
        "fence_lost": before.get("fence") != after.get("fence"),
    }


def sentinel_failover(h: Harness) -> FaultRecord:
    """SIGKILL the schedule's primary; the sentinels promote its replica.

    Replication lags cycle through ``sentinel_lags``: with a lag, the replica was cut off
    the replication stream that long before the primary died, and the writes of that
    time are lost (asynchronous replication). The old primary comes back, empty, as the
    new primary's replica (ready for the next failover).
    """
    deployment = h.sentinel
    if deployment is None:
        raise RuntimeError(f"{SENTINEL_FAILOVER} needs ChaosConfig(sentinel=True)")
    lags = h.config.sentinel_lags
    lag = lags[len(deployment.promotions) % len(lags)]
    holder = h.leader()
    switches = deployment.switches()
    promotion = deployment.fail_primary(replica_lag=lag, snapshot=schedule_state)
    details: dict[str, Any] = {
        # failovers the sentinels made before this one, planned or not
        "switches_before": switches,
        "killed_port": promotion.old_port,
        "promoted_port": promotion.new_port,
        "replica_lag_seconds": lag,
        "promotion_seconds": round(promotion.promotion_seconds, 3),
        "lost_bytes": promotion.lost_bytes,
        **lost_writes(promotion.before, promotion.after),
    }
    deployment.rejoin()
    return FaultRecord(
        SENTINEL_FAILOVER, promotion.killed_at, promotion.promoted_at, holder.name, details
    )


# -- the broker ---------------------------------------------------------------------------


def _pending_details(pending: list[Outboxed]) -> dict[str, Any]:
    per_entry: dict[str | None, int] = {}
    for record in pending:
        per_entry[record.entry] = per_entry.get(record.entry, 0) + 1
    return {
        "pending_at_recovery": len(pending),
        "most_pending_of_one_entry": max(per_entry.values(), default=0),
    }


def _checkout(h: Harness, at: float) -> int:
    """Start the stopped broker's data on a side port, take the messages it holds into the
    auditor as arrived ``at``, stop it again. No replica can reach that port, so these are
    exactly the messages the broker had accepted when it went away."""
    side = RedisServer(appendonly=True, workdir=h.broker_server.workdir)
    side.start()
    try:
        client = side.client()
        try:
            return h.auditor.drain_from(client, at=at)
        finally:
            client.close()
    finally:
        side.stop()


def broker_stop(h: Harness) -> FaultRecord:
    """Take the broker away (SIGKILL and SIGTERM in turn) for ``broker_down`` seconds, then
    start it again on its port with its data (AOF, ``appendfsync always``)."""
    count = sum(1 for fault in h.faults if fault.kind == BROKER_STOP)
    how = "SIGKILL" if count % 2 == 0 else "SIGTERM"
    down_for = h.rng.uniform(*h.config.broker_down)
    holder = current_holder(h.admin, h.lease_key)
    with h.auditor.hold():
        started = time.time()
        if how == "SIGKILL":
            h.broker_server.kill()
        else:
            h.broker_server.stop()
        held = _checkout(h, started)
        time.sleep(max(started + down_for - time.time(), 0))
        pending = h.outbox("pending")
        h.broker_server.start()
        recovered = time.time()
    return FaultRecord(
        BROKER_STOP,
        started,
        recovered,
        "broker",
        {
            "how": how,
            "down_seconds": round(recovered - started, 3),
            "in_broker_at_stop": held,
            "leader": None if holder is None else holder.name,
            **_pending_details(pending),
        },
        pending=pending,
    )


def broker_pause(h: Harness) -> FaultRecord:
    """Freeze the broker (SIGSTOP) for longer than the lease, then SIGCONT: a publish hangs
    (kombu's Redis transport has no socket timeout by default), the leader's renew deadline
    passes, a standby may take over and republish; both go on when the broker does.

    Right before the SIGSTOP the broker's writes are paused (``CLIENT PAUSE WRITE``) and its
    queues read: those messages reached it before the pause, whenever the auditor takes
    them (after the SIGCONT), and are recorded as arriving at ``started``, the pause. The
    writes go on (``CLIENT UNPAUSE``) right after the SIGCONT."""
    seconds = h.config.lease + h.rng.uniform(0.5, 1.5)
    holder = current_holder(h.admin, h.lease_key)
    with h.auditor.hold():
        held = h.auditor.pause_writes(seconds + 10.0)
        started = held.at
        try:
            h.broker_paused(True)
            time.sleep(max(started + seconds - time.time(), 0))
            pending = h.outbox("pending")
        finally:
            h.broker_paused(False)
            recovered, found = h.auditor.resume_writes(held)
    after = current_holder(h.admin, h.lease_key)
    return FaultRecord(
        BROKER_PAUSE,
        started,
        recovered,
        "broker",
        {
            "paused_seconds": round(recovered - started, 3),
            "leader": None if holder is None else holder.name,
            "leader_after": None if after is None else after.name,
            "in_broker_at_pause": held.count,
            "held_messages_found": found,
            **_pending_details(pending),
        },
        pending=pending,
    )


def broker_refuse_one(h: Harness) -> FaultRecord:
    """The broker refuses one entry's messages: its queue key holds a SET (LPUSH answers
    WRONGTYPE) until the entry has a dead letter (at least ``refuse_min``, at most
    ``refuse_max`` seconds), then the list comes back. Every other entry must run on time
    meanwhile; the refused entry's occurrences must end up sent or dead-lettered."""
    entry, queue = REFUSED_ENTRY, REFUSED_QUEUE
    known = {d.task_id for d in h.outbox("dead")}
    started = h.auditor.refuse(queue)
    dead: list[Outboxed] = []
    first_dead: float | None = None
    while True:
        time.sleep(0.1)
        now = time.time()
        dead = [d for d in h.outbox("dead") if d.entry == entry and d.task_id not in known]
        if dead and first_dead is None:
            first_dead = now - started
        if (dead and now >= started + h.config.refuse_min) or now >= started + h.config.refuse_max:
            break
    pending = h.outbox("pending")
    recovered = h.auditor.restore(queue)
    own = [p for p in pending if p.entry == entry]
    return FaultRecord(
        BROKER_REFUSE_ONE,
        started,
        recovered,
        entry,
        {
            "entries": [entry],
            "queue": queue,
            "refused_seconds": round(recovered - started, 3),
            "dead_letter_after": None if first_dead is None else round(first_dead, 3),
            "dead_letters_at_restore": len(dead),
            "pending_of_entry_at_restore": len(own),
            "most_attempts_at_restore": max((p.attempts for p in own), default=0),
            "pending_of_others_at_restore": len(pending) - len(own),
        },
        pending=pending,
    )


FAULTS: dict[str, Callable[[Harness], FaultRecord]] = {
    "sigstop-leader": sigstop_leader,
    "sigkill-leader": sigkill_leader,
    "sigterm-leader": sigterm_leader,
    "delete-lock": delete_lock,
    "wipe-keys": wipe_keys,
    "redis-restart-lossy": redis_restart_lossy,
    "redis-restart-aof": redis_restart_aof,
    "client-kill": client_kill,
    "redis-pause": redis_pause,
    "poison": poison,
    SENTINEL_FAILOVER: sentinel_failover,
    BROKER_STOP: broker_stop,
    BROKER_PAUSE: broker_pause,
    BROKER_REFUSE_ONE: broker_refuse_one,
}
