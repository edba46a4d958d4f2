"""Catch-up after a leader paused mid-burst for longer than the entries' interval.

Two real ``celery beat`` replicas; 300 entries every 2 s, all due in the same second. The
leader is SIGSTOPped while it publishes the burst, for longer than the lease and the
interval. The new leader republishes the frozen leader's pending occurrences late; that
republish is the entries' catch-up run, so their overdue next slot must not be sent a
moment later under another task id (Celery's rule: one run for what was missed).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest
import redis
from redbeat.schedulers import RedBeatSchedulerEntry

from testbed.beat import BeatCluster, QueueAuditor
from testbed.settings import LEASE
from tests.chaos.cluster import to_sent
from tests.chaos.model import Sent
from tests.chaos.test_fenced_dispatch import start_pair
from tests.chaos.workload import redbeat_app

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ENTRIES = 300
EVERY = 2
PAUSE = LEASE + 3.0  # longer than the lease and than the interval


def write_burst(redis_url: str) -> None:
    app = redbeat_app(redis_url)
    base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
    try:
        for i in range(ENTRIES):
            entry = RedBeatSchedulerEntry(f"cu-{i:03d}", "noop", timedelta(seconds=EVERY), app=app)
            entry.last_run_at = base - timedelta(seconds=EVERY)
            entry.save()
    finally:
        app.close()


def close_pairs(sent: list[Sent]) -> list[tuple[str, float]]:
    """Entries sent under two task ids less than half an interval apart."""
    first_seen: dict[str, dict[str, float]] = defaultdict(dict)
    for message in sent:
        if message.entry is not None:
            first_seen[message.entry].setdefault(message.task_id, message.arrived)
    found = []
    for entry, by_id in first_seen.items():
        times = sorted(by_id.values())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if gaps and min(gaps) < EVERY / 2:
            found.append((entry, round(min(gaps), 3)))
    return found


def test_a_late_republish_is_the_catch_up_run_not_one_of_two(
    beat_procs: BeatCluster, redis_url: str, redis_client: redis.Redis
) -> None:
    leader, standby = start_pair(beat_procs, redis_client, "publish")  # a late republish
    auditor = QueueAuditor(redis_client)
    sent: list[Sent] = []
    write_burst(redis_url)
    # drained continuously, so arrival times are publish times (within a few ms)
    deadline = time.monotonic() + 15
    pending = 0
    while len(sent) < ENTRIES // 3 or not pending:
        assert time.monotonic() < deadline, f"no burst seen mid-dispatch; {len(sent)} sent"
        sent.extend(to_sent(m) for m in auditor.drain())
        pending = int(redis_client.hlen("redbeat::pending"))
        time.sleep(0.002)
    leader.sigstop()
    published = len(sent)
    deadline = time.monotonic() + PAUSE
    while time.monotonic() < deadline:
        sent.extend(to_sent(m) for m in auditor.drain())
        time.sleep(0.05)
    leader.sigcont()
    deadline = time.monotonic() + 3 * EVERY + 2
    while time.monotonic() < deadline:
        sent.extend(to_sent(m) for m in auditor.drain())
        time.sleep(0.05)
    standby_log = standby.log()
    close = close_pairs(sent)
    text = (
        f"published before the pause {published}, pending {pending}, "
        f"{len(close)} entries ran twice within {EVERY / 2}s: {close[:10]}"
    )
    print(f"\ncatch-up: {text}")
    if close:
        example = [
            (m.task_id[:8], m.scheduled, m.fence, round(m.arrived, 2))
            for m in sent
            if m.entry == close[0][0]
        ]
        print(f"{close[0][0]}: {example}")
    assert "republished" in standby_log, text
    assert "are their catch-up" in standby_log, text
    assert close == [], text
    # and nothing went missing: every entry ran again after the takeover
    entries = {m.entry for m in sent if m.entry}
    assert len(entries) == ENTRIES, text
    assert leader.alive() and standby.alive()
