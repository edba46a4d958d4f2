"""The Celery broker goes away: stopped, frozen longer than the lease, refusing one message.

The broker runs on a Redis server of its own (AOF, ``appendfsync always``), the schedule on
another. Each chaos test is one run of :func:`tests.chaos.harness.broker_scenario` with one
broker fault: 2 supervised beat replicas, about 50 entries every 1 to 5 s, the oracle over
every occurrence (runs per entry per outage, lost and re-sent messages, dead letters; see
``tests/chaos/oracle.py``). About 20-30 s each. ``python -m tests.chaos --broker`` puts
these faults into the long run. ``SRB_CHAOS_SEED`` replays another seeded run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler
from safe_redbeat.model.occurrence import Occurrence
from testbed.beat import QueueAuditor
from testbed.redis_server import RedisServer
from tests.chaos.harness import broker_scenario, run_chaos
from tests.chaos.model import BROKER_PAUSE, BROKER_REFUSE_ONE, BROKER_STOP, RunData
from tests.chaos.oracle import Report, broker_findings, broker_table, markdown_table
from tests.chaos.workload import REFUSED_ENTRY
from tests.support import KEYS
from tests.support.inprocess import add_due, celery_app

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(180)]


def broker_run(tmp_path: Path, fault: str, **overrides: Any) -> tuple[Report, RunData, str]:
    seed = int(os.environ.get("SRB_CHAOS_SEED", "3"))
    config = broker_scenario(
        fault, seed=seed, workdir=tmp_path / "chaos", keep_workdir=True, **overrides
    )
    report, data, workdir = run_chaos(config, log=print)
    print(markdown_table(report))
    print(broker_table(report))
    print(report.summary())
    assert [f.kind for f in data.faults] == [fault]
    return report, data, f"seed {seed}, logs in {workdir}/logs: {report.summary()}"


def assert_survived(report: Report, text: str) -> None:
    """What holds whatever the broker does: no crash or traceback, no occurrence under two
    task ids, nothing missed outside the failover windows, no unknown message."""
    # plain numbers, so that a failure prints the details, not the whole report
    crashes, tracebacks, doubled = report.crashes, report.tracebacks, report.dup_different_id
    missing, early = report.missing, report.early_unexplained
    assert crashes == 0, f"replica exits nobody caused: {report.crash_details}\n{text}"
    assert tracebacks == 0, "tracebacks in the replicas' logs:\n" + "\n".join(
        f"{t['log']}:{t['line']}\n{t['excerpt']}" for t in report.traceback_details
    )
    assert doubled == 0, f"occurrences sent under two task ids: {report.duplicates[:10]}\n{text}"
    assert missing == 0, (
        f"occurrences missed outside the failover windows: {report.missing_gaps[:10]}\n{text}"
    )
    assert early == 0, f"early re-runs: {report.early[:10]}\n{text}"
    unknown, mismatched = report.unknown_messages, report.payload_mismatches
    assert (unknown, mismatched) == (0, 0), text


def assert_rules(report: Report, rules: tuple[str, ...], text: str) -> None:
    """None of the broker ``rules`` (kinds of ``broker_findings``) is broken; the message
    names every broken rule with its offending occurrences."""
    findings = broker_findings(report)
    broken = [rule for rule in rules if findings[rule]]
    assert broken == [], (
        "\n".join(
            f"{rule}:\n" + "\n".join(f"  {line}" for line in findings[rule]) for rule in broken
        )
        + f"\n{text}"
    )


#: Broken by none of the broker faults: a pending record that never reached the broker
#: nor the dead letters, a message sent more than twice, a dead letter nothing explains.
NEVER = ("lost", "re-sent", "unexpected dead")


def test_a_stopped_broker_costs_each_entry_one_run_and_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the broker for 8-10 s, restarted with its data. While it refuses, the
    leader claims nothing new (no entry has two pending records); afterwards each entry
    runs once for the whole outage: the occurrence that was pending, republished under its
    task id, or one catch-up run."""
    report, data, text = broker_run(tmp_path, BROKER_STOP)
    assert_survived(report, text)
    assert_rules(report, ("bursts", "no catch-up", "piled-up pending", *NEVER), text)
    assert report.outage_pairs == len(data.specs), text


def test_a_broker_frozen_past_the_lease_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """SIGSTOP of the broker for lease + 0.5-1.5 s, then SIGCONT: publishes hang, the
    leader's renew deadline passes, a standby may take over and republish. Same-id copies
    are allowed (and counted); a second task id, a lost or piled-up message are not, and
    each entry runs at most once for the pause: a publish that hung past the entry's next
    slot is that slot's run (see
    ``test_a_publish_that_hangs_past_the_next_slot_is_that_slots_run`` below).

    What the broker held when it froze is read from the broker itself (its writes paused
    just before the SIGSTOP), so a message published just before the pause is no run of
    it, though the auditor takes it only after the SIGCONT (``tests/chaos/oracle.py``)."""
    report, data, text = broker_run(tmp_path, BROKER_PAUSE)
    assert_survived(report, text)
    (fault,) = report.faults
    assert fault["details"]["held_messages_found"], (
        f"the messages the broker held at the pause were not found after it: {fault}\n{text}"
    )
    assert_rules(report, ("bursts", "piled-up pending", *NEVER), text)
    assert report.outage_pairs == len(data.specs), text


@pytest.mark.parametrize("overlap", ["", "skip"])
def test_a_message_the_broker_refuses_is_dead_lettered_and_the_others_run_on_time(
    tmp_path: Path, overlap: str
) -> None:
    """One entry's queue key holds a SET (LPUSH answers WRONGTYPE) for 6 s, longer until
    that entry has a dead letter (at most 12 s). The failure counts against that message
    only: its pending record's attempts, then a dead letter after
    ``safe_redbeat_publish_attempts`` (3 here); the rest of each batch is acknowledged and
    every other entry runs on time (missing and late are checked for them as if there were
    no fault); nothing is re-sent over and over. With every entry under ``overlap="skip"``
    (max_runtime 30 s) the dead letter, which reached no worker, does not keep its entry
    from running once the queue takes messages again."""
    report, _data, text = broker_run(tmp_path, BROKER_REFUSE_ONE, overlap=overlap)
    assert_survived(report, text)
    assert_rules(report, ("late", "no dead letter", *NEVER), text)
    dead = report.dead_letters.get(REFUSED_ENTRY, 0)
    assert dead >= 1, (report.dead_letters, text)
    # its occurrences of the refusal were sent (after it) or dead-lettered
    (fault,) = report.faults
    refused = fault["refused_occurrences"]
    assert refused["sent"] + refused["dead"] >= 1, (refused, text)


# -- a publish that hangs ------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A broker on a Redis server of its own, resumed and stopped at teardown."""
    server = RedisServer(workdir=tmp_path / "broker")
    server.start()
    try:
        yield server
    finally:
        if server.running():
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def app(redis_url: str, broker: RedisServer) -> Iterator[Celery]:
    # the default lease (15 s) outlives the hang: the leader keeps leading through it
    with celery_app(
        "hung-publish",
        redis_url,
        safe_redbeat_lease_seconds=15.0,
        safe_redbeat_renew_seconds=10.0,
        safe_redbeat_retry_seconds=2.0,
        safe_redbeat_backoff_max_seconds=2.0,
    ) as app:
        app.conf.broker_url = broker.url
        yield app


def test_a_publish_that_hangs_past_the_next_slot_is_that_slots_run(
    app: Celery, broker: RedisServer, redis_client: redis.Redis
) -> None:
    """The broker freezes (SIGSTOP) just as an entry every 2 s is published, for 3.5 s. The
    late publish is the entry's run for the outage: the slot that passed while it hung must
    not follow it moments later (the rule for a late republish, README "When entries
    run"). Before, the next tick claimed that slot and sent it at once."""
    period = 2
    client = redis.Redis(host="127.0.0.1", port=broker.port, decode_responses=True)
    auditor = QueueAuditor(client)
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        scheduler.tick()
        assert scheduler.is_leader
        add_due(app, ["e"], every=period)
        scheduler.tick()  # the first run: sent at once
        assert len(auditor.drain()) == 1
        due = redis_client.zscore("redbeat::schedule", "redbeat:e")
        assert due is not None
        time.sleep(max(due + 1 - time.time(), 0))  # the score is the slot, floored

        os.kill(broker.pid, signal.SIGSTOP)
        resume = threading.Timer(period + 1.5, os.kill, (broker.pid, signal.SIGCONT))
        resume.start()
        scheduler.tick()  # claims the slot; its publish hangs until SIGCONT
        resume.join()
        late = auditor.drain()
        assert [m.headers["safe_redbeat_entry"] for m in late] == ["e"], late
        hung_until = time.monotonic()

        followers = []
        while time.monotonic() - hung_until < period / 2:
            scheduler.tick()
            followers += auditor.drain()
            time.sleep(0.05)
        count = len(followers)
        assert count == 0, (
            f"{len(followers)} more run(s) of 'e' within half a period of its late publish: "
            + ", ".join(
                f"scheduled {m.headers['safe_redbeat_scheduled']} (task {m.task_id[:8]})"
                for m in followers
            )
            + f"; the late one was scheduled {late[0].headers['safe_redbeat_scheduled']}"
        )
    finally:
        scheduler.close()
        client.close()


def test_an_entry_claimed_after_a_republish_that_hung_runs_once_for_it(
    app: Celery, broker: RedisServer, redis_client: redis.Redis
) -> None:
    """A tick reads what is due, then republishes what is pending (a claim another leader
    left); the broker is frozen, so the republish hangs for 2.5 s. Then the tick claims
    and sends an entry every 1 s that was due when it read: that is the entry's run for the
    outage, and its next slot must be a period after it, not a slot that passed while the
    republish hung. Seen in the broker-pause chaos run: a standby took over during the
    pause, its republish hung, and each entry of period 1 s it claimed afterwards ran
    again about 0.5 s later under another task id."""
    period = 1
    client = redis.Redis(host="127.0.0.1", port=broker.port, decode_responses=True)
    auditor = QueueAuditor(client)
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        scheduler.tick()
        assert scheduler.is_leader
        add_due(app, ["e"], every=period)
        scheduler.tick()  # the first run: sent at once
        assert [m.headers["safe_redbeat_entry"] for m in auditor.drain()] == ["e"]
        left = Occurrence("left-pending", "p", "noop", [], {}, {}, int(time.time()), 1)
        redis_client.hset(KEYS.pending, left.task_id, left.to_json())
        due = redis_client.zscore(KEYS.schedule, KEYS.entry("e"))
        assert due is not None
        time.sleep(max(due + 1 - time.time(), 0))  # e is due

        os.kill(broker.pid, signal.SIGSTOP)
        resume = threading.Timer(2.5, os.kill, (broker.pid, signal.SIGCONT))
        resume.start()
        scheduler.tick()  # reads e due; the republish hangs until SIGCONT; then e is sent
        resume.join()
        sent = auditor.drain()
        assert sorted(m.headers["safe_redbeat_entry"] for m in sent) == ["e", "p"], sent
        (run,) = [m for m in sent if m.headers["safe_redbeat_entry"] == "e"]
        after = time.monotonic()

        followers = []
        while time.monotonic() - after < period / 2:
            scheduler.tick()
            followers += [m for m in auditor.drain() if m.headers["safe_redbeat_entry"] == "e"]
            time.sleep(0.05)
        assert followers == [], (
            f"{len(followers)} more run(s) of 'e' within half a period of its run after the "
            f"republish hung: "
            + ", ".join(
                f"scheduled {m.headers['safe_redbeat_scheduled']} (task {m.task_id[:8]})"
                for m in followers
            )
            + f"; that run was scheduled {run.headers['safe_redbeat_scheduled']}"
        )
    finally:
        scheduler.close()
        client.close()


@pytest.fixture
def short_lease_app(redis_url: str, broker: RedisServer) -> Iterator[Celery]:
    # a lease shorter than the hang: it expires while the publish hangs
    with celery_app(
        "hung-publish-short-lease",
        redis_url,
        safe_redbeat_lease_seconds=2.0,
        safe_redbeat_renew_seconds=1.5,
    ) as app:
        app.conf.broker_url = broker.url
        yield app


def test_a_publish_that_hangs_past_the_lease_is_still_that_slots_run(
    short_lease_app: Celery, broker: RedisServer, redis_client: redis.Redis
) -> None:
    """As ``test_a_publish_that_hangs_past_the_next_slot_is_that_slots_run``, but the hang
    (3.5 s) outlasts the lease (2 s) too: when the late publish returns, the lease is gone,
    so the slot that passed meanwhile is not skipped; the replica leads again at once and
    sends that slot moments after the late message, under another task id. Seen in the
    broker-pause chaos run (seed 5): the leader's lease expired while its publish hung and
    no standby took it first."""
    app = short_lease_app
    period = 2
    client = redis.Redis(host="127.0.0.1", port=broker.port, decode_responses=True)
    auditor = QueueAuditor(client)
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        scheduler.tick()
        assert scheduler.is_leader
        add_due(app, ["e"], every=period)
        scheduler.tick()  # the first run: sent at once
        assert len(auditor.drain()) == 1
        due = redis_client.zscore(KEYS.schedule, KEYS.entry("e"))
        assert due is not None
        while time.time() < due - 0.1:  # keep the lease; e is not due before its score
            scheduler.tick()
            time.sleep(0.1)
        time.sleep(max(due + 1 - time.time(), 0))  # the score is the slot, floored

        os.kill(broker.pid, signal.SIGSTOP)
        resume = threading.Timer(3.5, os.kill, (broker.pid, signal.SIGCONT))
        resume.start()
        scheduler.tick()  # claims the slot; its publish hangs until SIGCONT
        resume.join()
        late = auditor.drain()
        assert [m.headers["safe_redbeat_entry"] for m in late] == ["e"], late
        hung_until = time.monotonic()

        followers = []
        while time.monotonic() - hung_until < period / 2:
            scheduler.tick()
            followers += auditor.drain()
            time.sleep(0.05)
        assert followers == [], (
            f"{len(followers)} more run(s) of 'e' within half a period of its late publish: "
            + ", ".join(
                f"scheduled {m.headers['safe_redbeat_scheduled']} (task {m.task_id[:8]})"
                for m in followers
            )
            + f"; the late one was scheduled {late[0].headers['safe_redbeat_scheduled']}"
        )
    finally:
        scheduler.close()
        client.close()
