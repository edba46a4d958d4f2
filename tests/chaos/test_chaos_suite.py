"""The default chaos run: 3 supervised beat replicas, every fault kind once, the oracle.

About 95 seconds. ``python -m tests.chaos --duration 600`` is the long version.
Set ``SRB_CHAOS_SEED`` to replay another seeded order of faults and moments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, run_chaos
from tests.chaos.model import FAULT_KINDS
from tests.chaos.oracle import markdown_table

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(290)]

SKEW = 8.0


def test_replicas_survive_every_fault_without_losing_or_doubling_an_occurrence(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("SRB_CHAOS_SEED", "7"))
    config = ChaosConfig(
        seed=seed,
        each_once=True,
        statics=200,
        dynamics=60,
        crons=6,
        skew=SKEW,
        workdir=tmp_path / "chaos",
        keep_workdir=True,
    )
    report, data, workdir = run_chaos(config, log=print)
    print(markdown_table(report))
    print(report.summary())
    text = f"seed {seed}, logs in {workdir}/logs: {report.summary()}"

    assert report.crashes == 0, f"{text}\ncrashes: {report.crash_details}"
    assert report.missing == 0, f"{text}\nmissing: {report.missing_gaps[:10]}"
    assert report.dup_different_id == 0, f"{text}\nduplicates: {report.duplicates[:10]}"
    assert report.early_unexplained == 0, f"{text}\nearly re-runs: {report.early[:10]}"
    assert report.unknown_messages == 0 and report.payload_mismatches == 0, text
    assert {k: report.rows[k].faults for k in FAULT_KINDS} == dict.fromkeys(FAULT_KINDS, 1), text
    assert report.occurrences > 5000, text
    # an entry nothing can send, written mid-run by another client, is parked, not sent
    poisoned = [f.details for f in data.faults if f.kind == "poison"]
    assert poisoned and all(d["parked"] and d["hash_unchanged"] for d in poisoned), poisoned

    # Clock skew: replica-0 runs SKEW seconds ahead and leads first. The schedule runs on
    # Redis' clock, so it neither sends early nor late.
    skew = report.skew["replica-0"]
    assert data.info["skewed_replica_led_first"], text
    assert skew["sends_outside_windows"] > 300, text
    assert skew["early_sends"] == 0, text
    assert skew["lateness_min"] is not None and skew["lateness_min"] > -0.5, text
    assert skew["lateness_max"] is not None and skew["lateness_max"] < 2.0, text
