"""The primary serving the schedule's slot on a Redis Cluster is SIGKILLed mid-dispatch.

Two real ``celery beat`` replicas keep their schedule on the session's Redis Cluster
(3 primaries with one replica each, ``cluster-node-timeout`` 1 s): 100 entries every
second under one hash-tagged prefix, so all of them live on one primary. Once the pending
hash is not empty (a batch is claimed and being published), that primary is SIGKILLed. Its
replica promotes itself (a dead primary cannot be failed over with ``CLUSTER FAILOVER``;
the others mark it failed after the node timeout and the replica wins the election).

The broker is the suite's single-node Redis; the test drains it and checks every
occurrence (entry, scheduled time from the headers): never two task ids for one
occurrence, the replicas never crash, dispatching resumes within a bound. The figures are
printed (``pytest -s``) and are part of every assertion message. The killed node is
started again afterwards and rejoins as a replica, so the session's cluster is whole.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest
import redis

from safe_redbeat.model.occurrence import HEADER_ENTRY, HEADER_FENCE, HEADER_SCHEDULED
from testbed.beat import BeatCluster, Message, QueueAuditor
from testbed.cluster import LocalCluster
from testbed.settings import FAST, LEASE, RETRY

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(150)]

SETTINGS = {**FAST, "redbeat_redis_options": {"cluster": True}}
ENTRIES = {f"e{i:03d}": {"task": "noop", "every": 1} for i in range(100)}
#: backoff after the Redis errors, a catch-up burst of all entries, the auditor's polling
SLACK = 3.0


def sent_per_entry(messages: list[Message], since: float) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for m in messages:
        if m.received_at > since:
            counts[m.headers[HEADER_ENTRY]] += 1
    return counts


def test_sigkill_of_the_schedules_primary_mid_dispatch(
    beat_procs: BeatCluster,
    redis_cluster: LocalCluster,
    cluster_prefix: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    started = time.monotonic()
    auditor = QueueAuditor(redis_client)
    procs = beat_procs.start(
        2,
        redis_url=redis_cluster.url,
        broker_url=redis_url,
        key_prefix=cluster_prefix,
        settings=SETTINGS,
        schedule=ENTRIES,
    )
    pending_key = cluster_prefix + ":pending"
    primary = redis_cluster.primary_of(pending_key)
    killed = False
    try:
        # steady state: every entry sent twice
        auditor.wait_for(lambda ms: len(sent_per_entry(ms, 0)) == len(ENTRIES), timeout=30)
        auditor.wait_for(lambda ms: min(sent_per_entry(ms, 0).values()) >= 2, timeout=10)
        fences_before = {int(m.headers[HEADER_FENCE]) for m in auditor.messages}

        # mid-dispatch: a batch is claimed (pending records written), not yet acknowledged
        with primary.client(1.0) as direct:
            deadline = time.monotonic() + 10
            mid_dispatch = False
            while time.monotonic() < deadline:
                if direct.hlen(pending_key):
                    mid_dispatch = True
                    break
            redis_cluster.kill(primary)
        killed = True
        killed_at = time.time()
        kill_mono = time.monotonic()
        new_primary = redis_cluster.wait_promoted(pending_key, primary)
        promotion = time.monotonic() - kill_mono

        # dispatching resumed: every entry sent twice more after the promotion
        promoted_at = time.time()
        auditor.wait_for(
            lambda ms: (
                len(sent_per_entry(ms, promoted_at)) == len(ENTRIES)
                and min(sent_per_entry(ms, promoted_at).values()) >= 2
            ),
            timeout=LEASE + RETRY + 20,
        )
        after = sorted(m.received_at for m in auditor.messages if m.received_at > killed_at + 0.5)
        resumed = after[0] - killed_at
        fences_after = {
            int(m.headers[HEADER_FENCE]) for m in auditor.messages if m.received_at > killed_at
        }
        alive = [p.alive() for p in procs]
        for proc in procs:
            proc.terminate()
        exit_codes = [p.wait(15) for p in procs]
    finally:
        if killed:
            redis_cluster.rejoin(primary)

    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    copies: dict[tuple[str, int], int] = defaultdict(int)
    for m in auditor.messages:
        occurrence = (m.headers[HEADER_ENTRY], int(m.headers[HEADER_SCHEDULED]))
        ids[occurrence].add(m.task_id)
        copies[occurrence] += 1
    tracebacks = [
        f"{p.name}: {line}"
        for p in procs
        for line in p.log().splitlines()
        if "Traceback" in line or "CRITICAL" in line
    ]
    figures = {
        "mid_dispatch": mid_dispatch,
        "promotion_s": round(promotion, 2),
        "dispatch_resumed_after_kill_s": round(resumed, 2),
        "new_fence": bool(fences_after - fences_before),
        "occurrences": len(ids),
        "dup_same_id": sum(1 for o, n in copies.items() if n > 1 and len(ids[o]) == 1),
        "dup_different_id": sum(1 for v in ids.values() if len(v) > 1),
        "alive_after": alive,
        "exit_codes": exit_codes,
        "old_primary": primary.port,
        "new_primary": new_primary.port,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(f"\ncluster primary kill: {json.dumps(figures)}")
    text = f"{json.dumps(figures)}\n{beat_procs.report(30)}"

    assert all(alive), text
    assert exit_codes == [0, 0], text
    assert not tracebacks, text + "\n" + "\n".join(tracebacks[:20])
    assert figures["dup_different_id"] == 0, text
    assert resumed <= promotion + LEASE + RETRY + SLACK, text
