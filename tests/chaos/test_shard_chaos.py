"""Sharded leadership under real faults: 3 supervised beat replicas share 6 shards.

One of each replica fault (SIGSTOP longer than the lease, SIGKILL, SIGTERM; the replica is
restarted like a pod) and one shard's lease key is deleted. About 45 seconds.
``python -m tests.chaos --shards 6 --each-once`` runs the same scenario; without
``--each-once`` it goes on for ``--duration`` seconds. ``SRB_CHAOS_SEED`` replays another
seeded order of faults and targets.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import run_chaos, sharded_scenario
from tests.chaos.model import SHARD_MODE_FAULTS
from tests.chaos.oracle import markdown_table, shard_problems

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(180)]

K = 6


def test_shard_leaders_fail_over_without_losing_or_doubling_an_occurrence(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("SRB_CHAOS_SEED", "11"))
    config = sharded_scenario(K, seed=seed, workdir=tmp_path / "chaos", keep_workdir=True)
    report, data, workdir = run_chaos(config, log=print)
    print(markdown_table(report))
    print(report.summary())
    text = f"seed {seed}, logs in {workdir}/logs: {report.summary()}"
    # plain numbers, so a failure prints the details below, not the whole report
    doubled, missing, crashes = report.dup_different_id, report.missing, report.crashes

    assert doubled == 0, (
        f"occurrences sent under two task ids (entry, shard): {report.duplicates[:10]}\n{text}"
    )
    assert missing == 0, (
        f"occurrences missed outside their shard's failover window (entry, shard): "
        f"{report.missing_gaps[:10]}\n{text}"
    )
    assert crashes == 0, f"replica exits nobody caused: {report.crash_details}\n{text}"
    assert report.tracebacks == 0, "tracebacks in the replicas' logs:\n" + "\n".join(
        f"{t['log']}:{t['line']}\n{t['excerpt']}" for t in report.traceback_details
    )
    assert report.early_unexplained == 0, f"early re-runs: {report.early[:10]}\n{text}"
    assert report.unknown_messages == 0 and report.payload_mismatches == 0, text
    problems = shard_problems(report)
    assert not problems, "\n".join(problems) + f"\n{text}"

    # every fault happened, and the replica faults hit replicas that led shards
    assert sorted(f.kind for f in data.faults) == sorted(SHARD_MODE_FAULTS), text
    for fault in data.faults:
        assert fault.details.get("shards"), f"{fault.kind} hit no shard: {fault.details}"
    # the leases were watched all along, and every shard was led by each replica at times
    assert data.lease_samples and data.lease_samples[-1].at - data.lease_samples[0].at > 20
    assert set(report.longest_leader_gap) == set(range(K)), report.longest_leader_gap
    assert report.occurrences > 2000, text
