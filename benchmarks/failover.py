"""Failover: two real ``celery beat`` replicas; the leader is killed, or the lease key deleted."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_redbeat.config import Settings
from testbed.beat import BeatCluster, BeatProcess, Message, QueueAuditor

from .env import BROKER_DB, KEYS, SCHEDULE_DB, BenchmarkBroken, Env
from .stats import Sample

SCHEDULE = {"every-second": {"task": "benchmark.noop", "every": 1.0}}
STOCK_SCHEDULER = "redbeat.RedBeatScheduler"
SAFE_SCHEDULER = "safe_redbeat.SafeRedBeatScheduler"
#: stock RedBeat, made measurable: the lock expires 10 s after the last tick, and a
#: standby polls for it every second (RedBeat polls every beat_max_loop_interval)
STOCK_LOCK_TIMEOUT = 10
STOCK_SETTINGS = {"redbeat_lock_timeout": STOCK_LOCK_TIMEOUT, "beat_max_loop_interval": 1}
#: safe_redbeat runs with its defaults
DEFAULTS = Settings()
DEFAULTS_LABEL = "defaults: lease {0.lease_seconds:g}/{0.renew_seconds:g}/{0.retry_seconds:g}"
DEFAULTS_LABEL = DEFAULTS_LABEL.format(DEFAULTS)
POLL = 0.02
START_TIMEOUT = 60.0
#: the faults, as reported
SIGTERM = "SIGTERM"
SIGKILL = "SIGKILL"
LOCK_DELETED = "lock deleted"
SIGNALS = {SIGTERM: int(signal.SIGTERM), SIGKILL: int(signal.SIGKILL)}


@dataclass
class FailoverResult:
    scheduler: str
    fault: str
    settings: str
    seconds: list[float] = field(default_factory=list)

    def sample(self) -> Sample:
        return Sample.of(self.seconds)


def origin_pid(message: Message) -> int | None:
    origin = str(message.headers.get("origin") or "")
    name = origin.partition("@")[0]
    return int(name[3:]) if name.startswith("gen") and name[3:].isdigit() else None


class Replicas:
    """Two beat replicas of one scheduler class; tracks who leads."""

    def __init__(self, env: Env, logdir: Path, scheduler: str, settings: dict[str, Any]):
        env.flush()
        self.stock = scheduler == STOCK_SCHEDULER
        self.cluster = BeatCluster(
            logdir,
            redis_url=env.server.url_for(SCHEDULE_DB),
            broker_url=env.server.url_for(BROKER_DB),
            scheduler=scheduler,
            settings=settings,
            schedule=SCHEDULE,
            loglevel="INFO",
        )
        self.auditor = QueueAuditor(env.client(BROKER_DB))
        self.schedule_client = env.schedule_client

    def start(self, *, standby: bool = True) -> BeatProcess:
        """Start a replica; with ``standby``, wait until it is up and not leading."""
        (proc,) = self.cluster.start(1)
        proc.wait_for_log(r"beat: Starting", timeout=START_TIMEOUT)
        if standby and not self.stock:
            proc.wait_for_log(r"standby; the lease is held by", timeout=START_TIMEOUT)
        return proc

    def leader(self) -> tuple[BeatProcess, Message]:
        """The process that sent the latest message, and that message."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.auditor.drain()
            if self.auditor.messages:
                latest = self.auditor.messages[-1]
                pid = origin_pid(latest)
                for proc in self.cluster.alive():
                    if proc.pid == pid:
                        return proc, latest
            if time.monotonic() >= deadline:
                raise BenchmarkBroken(f"no leader dispatching:\n{self.cluster.report(20)}")
            time.sleep(POLL)

    def trial(self, fault: str) -> float:
        """Cause ``fault``; seconds until the first message of the new leader."""
        if fault == LOCK_DELETED:
            return self._lock_deleted()
        return self._killed(SIGNALS[fault])

    def _killed(self, sig: int) -> float:
        """Kill the leader with ``sig``; seconds until the other replica's first message."""
        leader, last = self.leader()
        old_fence = last.headers.get("safe_redbeat_fence")
        old_pid = leader.pid
        self.auditor.drain()
        killed_at = time.time()
        if sig == signal.SIGKILL:
            leader.kill()
        else:
            leader.stop_signal(sig)
        deadline = (
            time.monotonic() + (STOCK_LOCK_TIMEOUT if self.stock else DEFAULTS.lease_seconds) + 30
        )
        while True:
            for message in self.auditor.drain():
                if origin_pid(message) in (old_pid, None):
                    continue
                if not self.stock and message.headers.get("safe_redbeat_fence") == old_fence:
                    raise BenchmarkBroken("the new leader sent with the old leader's fence")
                if sig != signal.SIGKILL and leader.wait(10) is None:
                    raise BenchmarkBroken(f"{leader.name} did not exit after the signal")
                return message.received_at - killed_at
            if time.monotonic() >= deadline:
                raise BenchmarkBroken(f"no takeover:\n{self.cluster.report(20)}")
            time.sleep(POLL)

    def _lock_deleted(self) -> float:
        """Delete the lease key; seconds until the first message with a new fence."""
        if self.stock:
            raise BenchmarkBroken("the lock-deleted trial is for safe_redbeat replicas")
        _leader, last = self.leader()
        old_fence = last.headers.get("safe_redbeat_fence")
        if old_fence is None:
            raise BenchmarkBroken("safe_redbeat sent a message without its fence header")
        self.auditor.drain()
        deleted_at = time.time()
        if not self.schedule_client.delete(KEYS.lease):
            raise BenchmarkBroken(f"no lease key {KEYS.lease!r} to delete")
        deadline = time.monotonic() + DEFAULTS.lease_seconds + 30
        while True:
            for message in self.auditor.drain():
                fence = message.headers.get("safe_redbeat_fence")
                if fence is None or fence == old_fence:
                    continue
                if int(fence) <= int(old_fence):
                    raise BenchmarkBroken(f"the fence went from {old_fence} to {fence}")
                if len(self.cluster.alive()) != 2:
                    raise BenchmarkBroken(f"a replica exited:\n{self.cluster.report(20)}")
                return message.received_at - deleted_at
            if time.monotonic() >= deadline:
                raise BenchmarkBroken(f"no new fence after the DEL:\n{self.cluster.report(20)}")
            time.sleep(POLL)

    def cleanup(self) -> None:
        self.cluster.cleanup()


def measure(
    env: Env,
    logdir: Path,
    scheduler: str,
    settings: dict[str, Any],
    plan: list[str],
    label: str,
) -> list[FailoverResult]:
    results: dict[str, FailoverResult] = {}
    replicas = Replicas(env, logdir, scheduler, settings)
    try:
        replicas.start(standby=False)
        replicas.leader()  # the first replica leads once it sends
        replicas.start()
        for index, fault in enumerate(plan):
            result = results.setdefault(fault, FailoverResult(scheduler, fault, label))
            result.seconds.append(replicas.trial(fault))
            if fault != LOCK_DELETED and index + 1 < len(plan):
                replicas.start()
    finally:
        replicas.cleanup()
    return list(results.values())


def run(
    env: Env, logdir: Path, sigkill: int, sigterm: int, lock_deleted: int, stock: bool
) -> list[FailoverResult]:
    # lock deletions first: they keep both replicas running
    plan = [LOCK_DELETED] * lock_deleted + [SIGTERM] * sigterm + [SIGKILL] * sigkill
    results = []
    if plan:
        results += measure(env, logdir / "safe_redbeat", SAFE_SCHEDULER, {}, plan, DEFAULTS_LABEL)
    if stock:
        results += measure(
            env,
            logdir / "redbeat",
            STOCK_SCHEDULER,
            STOCK_SETTINGS,
            [SIGTERM, SIGKILL],
            ", ".join(f"{k}={v}" for k, v in STOCK_SETTINGS.items()),
        )
    return results
