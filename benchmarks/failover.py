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
        """Cause ``fault``; seconds until the first message of the new leader.

        After a kill: the first message another replica sent. After the lease key was
        deleted: the first message with a new, higher fence, from either replica.
        """
        leader, last = self.leader()
        old_fence = last.headers.get("safe_redbeat_fence")
        if fault == LOCK_DELETED and old_fence is None:
            raise BenchmarkBroken("the lock-deleted trial needs safe_redbeat's fenced messages")
        self.auditor.drain()
        started = time.time()
        if fault == SIGKILL:
            leader.kill()
        elif fault == SIGTERM:
            leader.stop_signal(signal.SIGTERM)
        elif not self.schedule_client.delete(KEYS.lease):
            raise BenchmarkBroken(f"no lease key {KEYS.lease!r} to delete")
        deadline = (
            time.monotonic() + 30 + (STOCK_LOCK_TIMEOUT if self.stock else DEFAULTS.lease_seconds)
        )
        while time.monotonic() < deadline:
            for message in self.auditor.drain():
                fence = message.headers.get("safe_redbeat_fence")
                if fault == LOCK_DELETED:
                    if fence is None or fence == old_fence:
                        continue
                    if int(fence) <= int(old_fence or 0) or len(self.cluster.alive()) != 2:
                        raise BenchmarkBroken(
                            f"fence {old_fence} -> {fence}:\n{self.cluster.report(20)}"
                        )
                elif origin_pid(message) in (leader.pid, None):
                    continue
                elif not self.stock and fence == old_fence:
                    raise BenchmarkBroken("the new leader sent with the old leader's fence")
                elif fault == SIGTERM and leader.wait(10) is None:
                    raise BenchmarkBroken(f"{leader.name} did not exit after the signal")
                return message.received_at - started
            time.sleep(POLL)
        raise BenchmarkBroken(f"no takeover after {fault}:\n{self.cluster.report(20)}")

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
