"""Fenced dispatch under a leader frozen or killed in the middle of a 1000-message burst.

Two real ``celery beat`` replicas; 1000 entries due in the same second. The leader is
SIGSTOPped (longer than the lease, then SIGCONT) or SIGKILLed while it sends the burst,
in both enqueue modes. The auditor must find every occurrence sent, none twice under
different task ids. In ``publish`` mode a second copy with the same task id is the
documented cost of a leader that stopped between claim and acknowledgement; in
``atomic`` mode there is none. The figures are printed (``pytest -s``) and are part of
every assertion message.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from redbeat.schedulers import RedBeatSchedulerEntry

from safe_redbeat.dispatch.publisher import Publisher
from testbed.beat import BeatCluster, BeatProcess, QueueAuditor
from testbed.settings import FAST, LEASE
from tests.chaos.cluster import to_sent, wait_for_leader
from tests.chaos.model import Sent
from tests.chaos.workload import redbeat_app

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ENTRIES = 1000
#: messages per broker batch (one Redis pipeline)
PUBLISH_CHUNK = Publisher(None, lambda: None).chunk_size
EVERY = 8


@dataclass
class Burst:
    """What one fenced-dispatch run measured."""

    fault: str
    base: int = 0
    published_at_fault: int = 0
    pending_at_fault: int = 0
    failover_seconds: float | None = None
    sent_by_old_leader_after_resume: int = 0
    republished: int = 0
    sent: list[Sent] = field(default_factory=list)

    def occurrences(self) -> dict[tuple[str, int], list[Sent]]:
        found: dict[tuple[str, int], list[Sent]] = defaultdict(list)
        for message in self.sent:
            if message.entry is not None and message.scheduled is not None:
                found[(message.entry, message.scheduled)].append(message)
        return found

    def figures(self) -> dict[str, Any]:
        occurrences = self.occurrences()
        rounds: dict[str, int] = defaultdict(int)
        for entry, _scheduled in occurrences:
            rounds[entry] += 1
        names = {f"burst-{i:04d}" for i in range(ENTRIES)}
        first = {e for e in names if rounds[e] >= 1}
        second = {e for e in names if rounds[e] >= 2}
        return {
            "fault": self.fault,
            "messages": len(self.sent),
            "occurrences": len(occurrences),
            "dup_same_id": sum(
                1 for c in occurrences.values() if len(c) > 1 and len({m.task_id for m in c}) == 1
            ),
            "dup_different_id": sum(
                1 for c in occurrences.values() if len({m.task_id for m in c}) > 1
            ),
            "missing_first_round": len(names - first),
            "missing_second_round": len(names - second),
            "published_before_fault": self.published_at_fault,
            "pending_at_fault": self.pending_at_fault,
            "failover_seconds": self.failover_seconds,
            "old_leader_sends_after_resume": self.sent_by_old_leader_after_resume,
            "republished_by_new_leader": self.republished,
        }


def write_burst(redis_url: str) -> int:
    """``ENTRIES`` RedBeat entries (every ``EVERY`` s), all due in the same second."""
    app = redbeat_app(redis_url)
    base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
    try:
        for i in range(ENTRIES):
            entry = RedBeatSchedulerEntry(
                f"burst-{i:04d}", "noop", timedelta(seconds=EVERY), app=app
            )
            entry.last_run_at = base - timedelta(seconds=EVERY)
            entry.save()
    finally:
        app.close()
    return int(base.timestamp())


def start_pair(
    beat_procs: BeatCluster, client: redis.Redis, mode: str
) -> tuple[BeatProcess, BeatProcess]:
    settings = {**FAST, "safe_redbeat_enqueue": mode}
    (leader,) = beat_procs.start(settings=settings, loglevel="INFO")
    holder = wait_for_leader(client, 30)
    assert holder.name == leader.name
    (standby,) = beat_procs.start(settings=settings, loglevel="INFO")
    standby.wait_for_log(r"standby; the lease is held by", timeout=30)
    return leader, standby


def wait_mid_burst(client: redis.Redis, mode: str, timeout: float) -> tuple[int, int]:
    """Poll until the leader has sent some of the burst, not all of it: published some of
    a claimed batch (publish mode), or enqueued some claim script calls but not all
    (atomic mode: 500 occurrences per call)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen("celery")
            pipe.hlen("redbeat::pending")
            published, pending = pipe.execute()
        if published >= 400 and (pending if mode == "publish" else published < ENTRIES):
            return int(published), int(pending)
        time.sleep(0.0005)
    raise AssertionError(f"no dispatch burst seen within {timeout}s")


def collect_until(auditor: QueueAuditor, burst: Burst, *, timeout: float) -> None:
    """Drain until every entry ran twice (two rounds), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        burst.sent.extend(to_sent(m) for m in auditor.drain())
        figures = burst.figures()
        if not figures["missing_first_round"] and not figures["missing_second_round"]:
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def settle(
    auditor: QueueAuditor, burst: Burst, leader: BeatProcess, fault_at: float, *, timeout: float
) -> list[Sent]:
    """Collect both rounds, then the messages sent under a newer fence than ``leader``'s
    (the takeover); records how long after ``fault_at`` the first of them arrived."""
    collect_until(auditor, burst, timeout=timeout)
    time.sleep(1.0)
    burst.sent.extend(to_sent(m) for m in auditor.drain())

    old_fence = max(m.fence or 0 for m in burst.sent if origin_pid(m) == leader.pid)
    takeover = [m for m in burst.sent if (m.fence or 0) > old_fence]
    burst.failover_seconds = round(takeover[0].arrived - fault_at, 3) if takeover else None
    return takeover


def origin_pid(message: Sent) -> int | None:
    match = re.match(r"gen(\d+)@", message.origin)
    return int(match.group(1)) if match else None


def report(burst: Burst) -> str:
    text = ", ".join(f"{k}={v}" for k, v in burst.figures().items())
    print(f"\nfenced dispatch: {text}")
    return text


MODES = pytest.mark.parametrize("mode", ["atomic", "publish"])


@MODES
def test_leader_frozen_mid_burst_longer_than_the_lease_sends_each_occurrence_under_one_id(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, mode: str
) -> None:
    leader, standby = start_pair(beat_procs, redis_client, mode)
    burst = Burst(f"SIGSTOP mid-burst, then SIGCONT ({mode})")
    burst.base = write_burst(redis_url)
    burst.published_at_fault, burst.pending_at_fault = wait_mid_burst(redis_client, mode, 15)
    leader.sigstop()
    stopped_at = time.time()
    auditor = QueueAuditor(redis_client)
    # frozen for longer than the lease: the standby takes over meanwhile
    while time.time() < stopped_at + LEASE + 1.5:
        burst.sent.extend(to_sent(m) for m in auditor.drain())
        time.sleep(0.05)
    burst.sent.extend(to_sent(m) for m in auditor.drain())
    before_resume = len(burst.sent)
    leader.sigcont()
    takeover = settle(auditor, burst, leader, stopped_at, timeout=EVERY + 15)
    burst.sent_by_old_leader_after_resume = sum(
        1 for m in burst.sent[before_resume:] if origin_pid(m) == leader.pid
    )
    burst.republished = _republished(standby)
    figures = burst.figures()
    text = report(burst)

    assert 0 < figures["published_before_fault"] < ENTRIES, f"not mid-burst: {text}"
    assert figures["dup_different_id"] == 0, text
    assert figures["missing_first_round"] == 0, text
    assert figures["missing_second_round"] == 0, text
    assert takeover and origin_pid(takeover[0]) == standby.pid, f"no takeover: {text}"
    if mode == "atomic":
        # the claim is the enqueue: nothing pending, nothing sent twice, and a resumed
        # leader's next claim is refused inside Redis
        assert figures["dup_same_id"] == 0, text
        assert figures["pending_at_fault"] == 0 and burst.republished == 0, text
        assert figures["old_leader_sends_after_resume"] == 0, text
    else:
        # frozen inside a broker batch (a Redis pipeline), the rest of that batch was
        # already written to its socket: a resumed leader may finish that one batch
        in_flight = -figures["published_before_fault"] % PUBLISH_CHUNK
        assert figures["old_leader_sends_after_resume"] <= max(in_flight, 1), (
            f"a resumed leader may finish the one publish it was in, no more: {text}"
        )
    assert leader.alive() and standby.alive(), f"a replica exited: {text}"


@MODES
def test_leader_killed_mid_burst_its_claims_are_republished_with_the_same_ids(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis, mode: str
) -> None:
    leader, standby = start_pair(beat_procs, redis_client, mode)
    burst = Burst(f"SIGKILL mid-burst ({mode})")
    burst.base = write_burst(redis_url)
    burst.published_at_fault, burst.pending_at_fault = wait_mid_burst(redis_client, mode, 15)
    leader.stop_signal(signal.SIGKILL)
    killed_at = time.time()
    auditor = QueueAuditor(redis_client)
    settle(auditor, burst, leader, killed_at, timeout=LEASE + EVERY + 15)
    burst.republished = _republished(standby)
    figures = burst.figures()
    text = report(burst)

    assert 0 < figures["published_before_fault"] < ENTRIES, f"not mid-burst: {text}"
    assert figures["dup_different_id"] == 0, text
    assert figures["missing_first_round"] == 0, text
    assert figures["missing_second_round"] == 0, text
    # everything the dead leader had claimed but not acknowledged came back from the
    # pending records, under the task id it was claimed with (atomic: it had claimed
    # nothing it had not enqueued, and the new leader claims the rest)
    unpublished = ENTRIES - figures["published_before_fault"]
    if mode == "atomic":
        assert figures["dup_same_id"] == 0 and burst.republished == 0, text
    else:
        assert burst.republished >= unpublished, text
    first_scheduled: dict[str, int] = {}
    for entry, scheduled in sorted(burst.occurrences()):
        first_scheduled.setdefault(entry, scheduled)
    first_round = [m for m in burst.sent if m.entry and first_scheduled[m.entry] == m.scheduled]
    by_standby = {m.entry for m in first_round if origin_pid(m) == standby.pid}
    assert len(by_standby) >= unpublished, text
    assert redis_client.hlen("redbeat::pending") == 0, text
    assert standby.alive(), f"the new leader exited: {text}"


def _republished(process: BeatProcess) -> int:
    return sum(int(n) for n in re.findall(r"republished (\d+) pending", process.log()))
