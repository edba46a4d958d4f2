"""One-offs and max_runs under faults: each run is sent once, never more, never fewer.

Two supervised ``celery beat`` replicas on a Redis with an append-only file. Each round
puts a one-off and a ``max_runs=3`` entry (every 2 s) in the same second as a burst of
600 entries, waits until the leader is mid-dispatch (claimed occurrences pending, or in
atomic mode, the default here, some of the burst enqueued and some not), and
then injects one fault: SIGKILL of the leader, SIGSTOP of the leader for longer than the
lease, or a Redis restart with AOF. The finishing state is written by the same fenced
claim that claims the last run, so a replaced leader cannot send it again.

Occurrences are counted by task id: a second message with the *same* id (a republished
pending record of a leader stopped between publish and acknowledgement) is the one
documented kind of second copy and is reported; a second *run* would carry another id.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from redbeat.schedulers import RedBeatSchedulerEntry

from safe_redbeat import Schedule
from testbed.redis_server import HOST, RedisServer
from testbed.settings import FAST, LEASE
from tests.chaos.cluster import AuditorThread, Supervisor, wait_for_leader
from tests.chaos.workload import redbeat_app

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(240)]

SETTINGS = {**FAST, "beat_max_loop_interval": 1}
BURST = 600
LEAD = 4.0  # seconds between writing a round's entries and their due time


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.server = RedisServer(appendonly=True, workdir=workdir / "redis").start()
        self.admin = redis.Redis(
            host=HOST, port=self.server.port, decode_responses=True, socket_timeout=5
        )
        self.auditor = AuditorThread(HOST, self.server.port).start()
        self.supervisor = Supervisor(
            self.server.url, workdir / "logs", settings=SETTINGS, schedule={}, loglevel="INFO"
        )
        self.app = redbeat_app(self.server.url)
        self.schedules = Schedule(self.app)

    def close(self) -> None:
        self.supervisor.cleanup()
        self.auditor.stop()
        self.schedules.close()
        self.app.close()
        self.admin.close()
        self.server.stop()

    def leader_name(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            holder = wait_for_leader(self.admin, max(deadline - time.monotonic(), 0.1))
            process = self.supervisor.process_of(holder.name)
            if process is not None and process.alive() and process.pid == holder.pid:
                return holder.name
            if time.monotonic() >= deadline:
                raise AssertionError(f"lease held by {holder.describe()}, not a live replica")
            time.sleep(0.05)

    def write_round(self, tag: str) -> datetime:
        due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=LEAD)
        for i in range(BURST):
            entry = RedBeatSchedulerEntry(
                f"burst-{tag}-{i:03d}", "noop", timedelta(hours=1), app=self.app
            )
            entry.last_run_at = due - timedelta(hours=1)
            entry.save()
        self.schedules.once(f"once-{tag}", "noop", at=due)
        self.schedules.upsert(f"thrice-{tag}", "noop", 2, max_runs=3, start_time=due)
        return due

    def wait_mid_dispatch(self, due: datetime, timeout: float) -> str:
        """Until the leader is inside the burst: claimed occurrences pending (publish
        mode), or some of the burst claimed and some not (atomic mode: claimed is sent)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.admin.pipeline(transaction=False) as pipe:
                pipe.hlen("redbeat::pending")
                pipe.zcount("redbeat::schedule", 0, int(due.timestamp()))
                pending, unclaimed = (int(n) for n in pipe.execute())
            if pending:
                return f"{pending} occurrences pending"
            if 0 < unclaimed < BURST:
                return f"{BURST - unclaimed} of {BURST} enqueued"
            time.sleep(0.002)
        raise AssertionError("the burst was never seen mid-dispatch")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def sigkill(c: Cluster) -> str:
    c.supervisor.signal(c.leader_name(), signal.SIGKILL, cause="SIGKILL (injected)")
    return "SIGKILL"


def sigstop(c: Cluster) -> str:
    process = c.supervisor.signal(c.leader_name(), signal.SIGSTOP, cause="SIGSTOP")
    time.sleep(LEASE + 1.5)
    process.sigcont()
    return "SIGSTOP"


def restart_redis(c: Cluster) -> str:
    with c.auditor.hold():
        c.server.restart()
    return "Redis restart (AOF)"


FAULTS: list[Callable[[Cluster], str]] = [sigkill, sigstop, restart_redis]


def test_one_offs_and_max_runs_are_sent_exactly_as_often_as_asked_under_faults(
    cluster: Cluster,
) -> None:
    c = cluster
    c.supervisor.add("replica-0")
    c.supervisor.start()
    c.leader_name()
    c.supervisor.add("replica-1")
    tags = []
    for index, fault in enumerate(FAULTS):
        tag = f"r{index}"
        due = c.write_round(tag)
        tags.append(tag)
        progress = c.wait_mid_dispatch(due, LEAD + 10)
        name = fault(c)
        print(f"round {tag}: {name} with {progress}")
        c.leader_name()  # a live leader again
    # the last max_runs runs are 4 s after their first; failover takes ~lease + retry
    deadline = time.monotonic() + 25
    done = {f"once-{t}" for t in tags} | {f"thrice-{t}" for t in tags}
    while time.monotonic() < deadline:
        infos = {n: c.schedules.get(n) for n in done}
        if all(i.state == "finished" for i in infos.values()):
            break
        time.sleep(0.2)
    time.sleep(2 * LEASE)  # anything sent late would show up now
    c.auditor.stop()

    ids: dict[str, set[str]] = defaultdict(set)
    messages: dict[str, int] = defaultdict(int)
    for sent in c.auditor.sent:
        if sent.entry is not None:
            ids[sent.entry].add(sent.task_id)
            messages[sent.entry] += 1
    figures = {n: (len(ids[n]), messages[n], c.schedules.get(n).state) for n in sorted(done)}
    print(f"entry: (occurrences, messages, state) {figures}")
    for tag in tags:
        assert figures[f"once-{tag}"][0] == 1, figures
        assert figures[f"thrice-{tag}"][0] == 3, figures
    assert all(state == "finished" for _n, _m, state in figures.values()), figures
    assert all(c.schedules.get(f"thrice-{t}").total_run_count == 3 for t in tags), figures
    # every burst entry ran exactly once too (the faults really hit a busy dispatch)
    burst = [e for e in ids if e.startswith("burst-")]
    assert len(burst) == BURST * len(tags)
    assert all(len(ids[e]) == 1 for e in burst)
    exits = [e for e in c.supervisor.exits if not e.expected]
    assert not exits, exits
