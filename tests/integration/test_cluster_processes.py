"""Real ``celery beat`` replicas and the ``safe-redbeat`` command on a real Redis Cluster.

The replicas are configured as a user would: ``redbeat_redis_url`` is one node of the
cluster, ``redbeat_redis_options = {"cluster": True}``, a hash-tagged
``redbeat_key_prefix``. Their broker is the suite's single-node Redis (only the schedule
lives on the cluster), which the test reads to see what was sent.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import redis

from safe_redbeat.leader.lease import parse_token
from safe_redbeat.model.occurrence import HEADER_ENTRY, HEADER_FENCE, HEADER_SCHEDULED
from testbed.beat import (
    BeatCluster,
    BeatProcess,
    Message,
    QueueAuditor,
)
from testbed.cluster import LocalCluster
from tests.integration.test_cli import cli, cli_json
from tests.support.inprocess import FAST

pytestmark = pytest.mark.integration

CLUSTER = {"redbeat_redis_options": {"cluster": True}}
EVERY_SECOND = {f"tick-{i}": {"task": "noop", "every": 1} for i in range(3)}


def cluster_env(
    cluster: LocalCluster, prefix: str, broker_url: str, logdir: Path
) -> dict[str, str]:
    """The environment of a replica, for the CLI (as a probe inside its container)."""
    proc = BeatProcess(
        cluster.url,
        logdir=logdir,
        broker_url=broker_url,
        key_prefix=prefix,
        settings={**FAST, **CLUSTER},
    )
    return proc.env()


def by_occurrence(messages: list[Message]) -> dict[tuple[str, int], set[str]]:
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for m in messages:
        ids[(m.headers[HEADER_ENTRY], int(m.headers[HEADER_SCHEDULED]))].add(m.task_id)
    return ids


def test_beat_replicas_dispatch_a_schedule_stored_on_the_cluster(
    beat_procs: BeatCluster,
    redis_cluster: LocalCluster,
    cluster_prefix: str,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    auditor = QueueAuditor(redis_client)
    procs = beat_procs.start(
        2,
        redis_url=redis_cluster.url,
        broker_url=redis_url,
        key_prefix=cluster_prefix,
        settings={**FAST, **CLUSTER},
        schedule=EVERY_SECOND,
    )
    messages = auditor.wait_for(
        lambda ms: all(sum(m.task == "noop" and m.headers[HEADER_ENTRY] == n for m in ms) >= 3
                       for n in EVERY_SECOND),
        timeout=30,
    )  # fmt: skip
    assert all(p.alive() for p in procs), beat_procs.report()
    assert len({m.headers[HEADER_FENCE] for m in messages}) == 1  # one leader
    assert all(len(ids) == 1 for ids in by_occurrence(messages).values())
    with redis_cluster.client() as check:
        holder = parse_token(str(check.get(cluster_prefix + ":lock")))
        assert holder.name in {p.name for p in procs}
        assert check.zcard(cluster_prefix + ":schedule") == len(EVERY_SECOND)
    for proc in procs:
        assert "Traceback" not in proc.log(), proc.log_tail()


def test_cli_status_list_and_add_on_the_cluster(
    beat_procs: BeatCluster,
    redis_cluster: LocalCluster,
    cluster_prefix: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    env = cluster_env(redis_cluster, cluster_prefix, redis_url, tmp_path)
    (proc,) = beat_procs.start(
        1,
        redis_url=redis_cluster.url,
        broker_url=redis_url,
        key_prefix=cluster_prefix,
        settings={**FAST, **CLUSTER},
        schedule={"hourly": {"task": "noop", "every": 3600}},
    )
    proc.wait_for_log(r"acquired the lease", timeout=20)

    added = cli_json(env, "add", "nightly", "--task", "noop", "--cron", "0 3 * * *")
    assert added["name"] == "nightly" and added["version"] == 1
    listed = cli_json(env, "list")
    assert [e["name"] for e in listed["entries"]] == ["hourly", "nightly"]
    status = cli_json(env, "status")
    assert status["key_prefix"] == cluster_prefix
    assert status["leader"]["instance"] == proc.name
    assert status["entries"] == 2
    assert [r["instance"] for r in status["replicas"]] == [proc.name]
    text = cli(env, "status")
    assert text.returncode == 0 and proc.name in text.stdout, text.stderr


def test_cli_refuses_a_prefix_without_hash_tag_on_the_cluster(
    redis_cluster: LocalCluster, redis_url: str, tmp_path: Path
) -> None:
    env = cluster_env(redis_cluster, "redbeat:", redis_url, tmp_path)
    result = cli(env, "list")
    assert result.returncode == 4, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert "redbeat_key_prefix" in line and "'{redbeat}:'" in line
