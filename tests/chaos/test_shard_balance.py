"""Real beat replicas share 6 shards: one leads them all, three share them 2/2/2 without
ping-pong, and the survivor of two stopped replicas leads all 6 again in one lease time.

Every shard's lease key is polled every 100 ms all along; no shard may be without a live
leader for longer than lease + retry + slack. About 25 seconds.
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from safe_redbeat.leader.heartbeat import read_heartbeats
from safe_redbeat.store.layout import Layout
from testbed.beat import BeatCluster, BeatProcess, QueueAuditor
from testbed.redis_server import HOST, RedisServer
from tests.chaos.cluster import LeaseMonitor, to_sent
from tests.chaos.model import LeaseSample
from tests.chaos.oracle import leader_gaps
from tests.support import KEYS
from tests.support.inprocess import FAST

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(150)]

K = 6
LAYOUT = Layout(KEYS, K)
LEASE = FAST["safe_redbeat_lease_seconds"]
RETRY = FAST["safe_redbeat_retry_seconds"]
#: scheduling delays of a loaded 2-core machine, on top of lease + retry
SLACK = 3.0
ALLOWANCE = LEASE + RETRY + SLACK
SETTINGS = {**FAST, "safe_redbeat_shards": K}
#: entries spread over the shards, so every leader dispatches
SCHEDULE = {f"job-{i:02d}": {"task": "noop", "every": 1} for i in range(24)}
#: beat-0 hands over K - ceil(K / 3) = 4 shards, one per two polls (balance.py): 8 polls,
#: plus a few for the newcomers' start and the jitter; doubled for the load
BALANCE_SECONDS = 2 * (2 * (K - 2) + 4) * RETRY
STEADY_SECONDS = 3.0


@pytest.fixture
def monitor(redis_server: RedisServer, redis_db: int) -> Iterator[LeaseMonitor]:
    watcher = LeaseMonitor(
        HOST, redis_server.port, [keys.lease for keys in LAYOUT.all_keys()], db=redis_db
    ).start()
    try:
        yield watcher
    finally:
        watcher.stop()


def holders(monitor: LeaseMonitor) -> list[str | None]:
    return [None if h is None else h.name for h in monitor.holders()]


def heartbeat_shards(client: redis.Redis) -> dict[str, tuple[int, ...]]:
    return {
        found.heartbeat.instance: found.heartbeat.shards
        for found in read_heartbeats(client, KEYS)
        if found.age <= 2.5 * RETRY
    }


def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    """Poll ``check`` every 100 ms; the seconds it took, or AssertionError saying ``what``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.1f}s: {what()}")
        time.sleep(0.1)
    return time.monotonic() - started


def test_replicas_share_the_shards_and_a_survivor_takes_them_all_back(
    beat_procs: BeatCluster, monitor: LeaseMonitor, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    options: dict[str, Any] = {"settings": SETTINGS, "schedule": SCHEDULE, "loglevel": "INFO"}

    def state() -> str:
        return f"holders by shard {holders(monitor)}, heartbeats {heartbeat_shards(redis_client)}"

    (first,) = beat_procs.start(1, **options)
    wait_until(lambda: holders(monitor) == [first.name] * K, 60, lambda: f"one replica: {state()}")

    # two more replicas: within a few polls each leads 2, by the leases and the heartbeats
    others = beat_procs.start(2, **options)
    names = [first.name, *(p.name for p in others)]
    wait_until(
        lambda: set(heartbeat_shards(redis_client)) == set(names), 60, lambda: f"start: {state()}"
    )

    def balanced() -> bool:
        led = holders(monitor)
        beats = heartbeat_shards(redis_client)
        return Counter(led) == dict.fromkeys(names, 2) and all(
            sorted(beats.get(name, ())) == [i for i, h in enumerate(led) if h == name]
            for name in names
        )

    took = wait_until(balanced, BALANCE_SECONDS, lambda: f"2 shards each: {state()}")
    print(f"balanced {took:.1f}s after the two replicas' first heartbeats")

    # no ping-pong: the holder (and the lease itself) of every shard stays put
    steady_from = time.time()
    time.sleep(STEADY_SECONDS)
    steady = [s for s in list(monitor.samples) if s.at >= steady_from]
    assert len(steady) > STEADY_SECONDS / 0.2, f"{len(steady)} lease polls in {STEADY_SECONDS}s"
    for index in range(K):
        seen = [s.values[index] for s in steady]
        changes = sum(1 for a, b in itertools.pairwise(seen) if a != b)
        assert changes == 0, (
            f"shard {index} changed hands {changes} times in {STEADY_SECONDS}s after the "
            f"shards were shared out: {_holders_of(steady, index)}"
        )

    # stop two replicas at once: the survivor leads all 6 within lease + retry + slack
    terminated, killed = others
    stopped_at = time.time()
    killed.stop_signal(signal.SIGKILL)
    terminated.terminate()
    took = wait_until(
        lambda: holders(monitor) == [first.name] * K,
        ALLOWANCE,
        lambda: (
            f"{first.name} leading all {K} after SIGKILL of {killed.name} and SIGTERM of "
            f"{terminated.name}: {state()}"
        ),
    )
    print(f"the survivor led every shard {took:.1f}s after the two replicas stopped")
    assert terminated.wait(10) == 0, f"{terminated.name} rc {terminated.returncode}"
    exited_at = time.time()
    assert killed.wait(5) == -signal.SIGKILL
    wait_until(
        lambda: heartbeat_shards(redis_client) == {first.name: tuple(range(K))},
        4 * RETRY,
        lambda: f"the survivor's heartbeat: {state()}",
    )
    time.sleep(0.3)
    samples = list(monitor.samples)

    # never a shard without a live leader for longer than lease + retry + slack
    outages = _outages({killed: stopped_at, terminated: exited_at})
    gaps = leader_gaps(samples, K, outages)
    too_long = [g.describe() for g in gaps if g.seconds > ALLOWANCE]
    assert not too_long, f"allowed {ALLOWANCE:.1f}s (lease + retry + slack):\n" + "\n".join(
        too_long
    )
    longest = {i: max((g.seconds for g in gaps if g.shard == i), default=0.0) for i in range(K)}
    print("longest leader gap by shard:", {i: round(v, 2) for i, v in longest.items()})
    assert first.alive(), beat_procs.report()
    assert not any("Traceback" in p.log() for p in beat_procs.processes), beat_procs.report()

    # and no occurrence went out under two task ids
    auditor.drain()
    ids: dict[tuple[str, int | None], set[str]] = defaultdict(set)
    for message in map(to_sent, auditor.messages):
        ids[(str(message.entry), message.scheduled)].add(message.task_id)
    doubled = {key: sorted(found) for key, found in ids.items() if len(found) > 1}
    assert not doubled, f"occurrences sent under two task ids (entry, scheduled): {doubled}"
    assert len(ids) > 24 * 5, f"only {len(ids)} occurrences sent"


def _holders_of(samples: list[LeaseSample], index: int) -> list[str]:
    """The distinct lease values one shard had, in order (for a failure message)."""
    values: list[str] = []
    for sample in samples:
        value = str(sample.values[index])
        if not values or values[-1] != value:
            values.append(value)
    return values


def _outages(stopped: dict[BeatProcess, float]) -> dict[int, list[tuple[float, float]]]:
    return {process.pid: [(at, math.inf)] for process, at in stopped.items()}
