"""Fault injectors. Each takes the running harness and returns what it did, and when."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tests.chaos.model import FaultRecord

if TYPE_CHECKING:
    from tests.chaos.harness import Harness

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
        {"pid": process.pid, "stopped_seconds": round(stopped_for, 3), "pending_at_stop": pending},
    )


def sigkill_leader(h: Harness) -> FaultRecord:
    """SIGKILL the leader, preferably between a claim and its acknowledgement."""
    holder = h.leader()
    pending = h.wait_mid_dispatch(1.5)
    process = h.supervisor.signal(holder.name, signal.SIGKILL, cause="SIGKILL (injected)")
    started = time.time()
    return FaultRecord(
        "sigkill-leader", started, started, holder.name,
        {"pid": process.pid, "pending_at_kill": pending},
    )  # fmt: skip


def sigterm_leader(h: Harness) -> FaultRecord:
    """A rolling-restart step: SIGTERM the leader; the supervisor starts a new pod."""
    holder = h.leader()
    pending = h.wait_mid_dispatch(1.0) if h.rng.random() < 0.5 else 0
    process = h.supervisor.signal(holder.name, signal.SIGTERM, cause="SIGTERM (injected)")
    started = time.time()
    return FaultRecord(
        "sigterm-leader", started, started, holder.name,
        {"pid": process.pid, "pending_at_term": pending},
    )  # fmt: skip


def delete_lock(h: Harness) -> FaultRecord:
    holder = h.leader()
    started = time.time()
    deleted = h.admin.delete(h.lease_key)
    return FaultRecord("delete-lock", started, started, holder.name, {"deleted": deleted})


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
}
