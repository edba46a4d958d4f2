"""The schedule's Redis behind Sentinel: its primary dies and the replica is promoted.

Two real ``celery beat`` replicas configured for Sentinel through RedBeat's own settings
(``redbeat_redis_url = "redis-sentinel://..."``, ``redbeat_redis_options`` with the
sentinels and the service name); the broker is a separate plain server. The harness of
``python -m tests.chaos`` runs it (``ChaosConfig(sentinel=True)``): the replica is cut off
the replication stream for ``LAG`` seconds, then the primary is SIGKILLed, so everything
the leader wrote in that time (lease renewals, claims, pending records, acks) is lost
with it, as asynchronous replication allows. The figures are printed (``pytest -s``) and
are part of every assertion message.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from safe_redbeat.store.connection import scheduler_client
from testbed.sentinel import SentinelDeployment
from testbed.settings import BACKOFF_MAX, LEASE, RENEW, RETRY, SOCKET_TIMEOUT
from tests.chaos.harness import ChaosConfig, run_chaos
from tests.chaos.model import SENTINEL_FAILOVER
from tests.chaos.oracle import markdown_table

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(150)]

LAG = 1.2  # > 1 s: a due second always falls inside it


def test_primary_failover_loses_recent_writes_but_no_occurrence_and_no_task_id(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("SRB_CHAOS_SEED", "11"))
    config = ChaosConfig(
        seed=seed,
        replicas=2,
        statics=40,
        dynamics=10,
        crons=0,
        periods=(1, 2),
        lease=LEASE,
        renew=RENEW,
        retry=RETRY,
        socket_timeout=SOCKET_TIMEOUT,
        backoff_max=BACKOFF_MAX,
        faults=(SENTINEL_FAILOVER,),
        each_once=True,
        sentinel=True,
        sentinel_lags=(LAG,),
        skew=0.0,
        skew_phase=4.0,
        gap=(0.5, 1.0),
        final_quiet=4.0,
        workdir=tmp_path / "chaos",
        keep_workdir=True,
    )
    started = time.monotonic()
    report, data, workdir = run_chaos(config, log=print)
    (fault,) = report.faults
    details: dict[str, Any] = fault["details"]
    killed_at, promoted_at = fault["started"], fault["recovered"]
    # any publish in flight at the kill lands within milliseconds; later ones were
    # claimed on the promoted replica
    after = sorted(m.arrived for m in data.messages if m.arrived > killed_at + 0.5)
    resumed = after[0] - killed_at if after else None
    tracebacks = [
        f"{log.name}: {line}"
        for log in sorted((workdir / "logs").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "Traceback" in line or "CRITICAL" in line
    ]
    figures = {
        "promotion_s": details["promotion_seconds"],
        "dispatch_resumed_after_kill_s": None if resumed is None else round(resumed, 3),
        "dispatch_resumed_after_promotion_s": (
            None if resumed is None else round(resumed - (promoted_at - killed_at), 3)
        ),
        "new_fence_after_kill_s": fault["failover_seconds"],
        "replica_lag_s": details["replica_lag_seconds"],
        "lost_bytes": details["lost_bytes"],
        "claims_lost": details["claims_lost"],
        "pending_lost": details["pending_lost"],
        "acks_lost": details["acks_lost"],
        "pending_at_promotion": details["pending_after"],
        "lease_before": details["lease_before"],
        "lease_after": details["lease_after"],
        "lease_pttl_ms_after": details["lease_pttl_ms_after"],
        "dup_same_id": report.dup_same_id,
        "dup_different_id": report.dup_different_id,
        "missing": report.missing,
        "early_unexplained": report.early_unexplained,
        "occurrences": report.occurrences,
        "crashes": report.crashes,
        # 1 unless the sentinels failed over once more on their own
        "sentinel_failovers": data.info["sentinel"]["failovers"],
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(markdown_table(report))
    print(f"\nsentinel failover: {json.dumps(figures)}")
    text = f"seed {seed}, logs in {workdir}: {json.dumps(figures)}; {report.summary()}"

    assert report.crashes == 0, f"{text}\ncrashes: {report.crash_details}"
    assert not tracebacks, f"{text}\n" + "\n".join(tracebacks[:20])
    assert report.dup_different_id == 0, f"{text}\nduplicates: {report.duplicates[:10]}"
    assert report.missing == 0, f"{text}\nmissing: {report.missing_gaps[:10]}"
    assert report.early_unexplained == 0, f"{text}\nearly re-runs: {report.early[:10]}"
    assert report.unknown_messages == 0 and report.payload_mismatches == 0, text
    assert report.occurrences > 300, text
    # dispatching resumed within the failover window: promotion, then at most the
    # lease running out and one retry
    allowance = LEASE + RETRY + config.oracle.slack
    assert resumed is not None and resumed <= details["promotion_seconds"] + allowance, text
    # the lag did lose writes, and what was lost came back as copies under the same id:
    # occurrences whose claim was lost, pending records the promoted replica still had
    assert details["lost_bytes"] > 0 and details["claims_lost"] > 0, text
    if figures["sentinel_failovers"] == 1:
        assert report.dup_same_id <= details["claims_lost"] + details["pending_after"], text


@pytest.mark.parametrize("timeout_in_options", [True, False], ids=["option-set", "option-unset"])
def test_a_stalled_sentinel_costs_one_socket_timeout_not_a_blocked_scheduler(
    tmp_path: Path, timeout_in_options: bool
) -> None:
    with SentinelDeployment(workdir=tmp_path / "sentinel") as deployment:
        options = deployment.redbeat_options(SOCKET_TIMEOUT)
        if not timeout_in_options:
            del options["socket_timeout"]
        app = Celery("stalled-sentinel", set_as_current=False)
        app.conf.update(
            broker_url=deployment.primary.url,
            redbeat_redis_url=deployment.url,
            redbeat_redis_options=options,
        )
        try:
            client = scheduler_client(app, SOCKET_TIMEOUT)
            assert client.set("probe", "1")
            first = deployment.sentinels[0]
            os.kill(first.pid, signal.SIGSTOP)
            # what a dead primary does to the pool: the next command connects again and
            # asks the sentinels (the stalled one first) where the primary is
            client.connection_pool.disconnect()
            started = time.monotonic()
            value = client.get("probe")
            elapsed = time.monotonic() - started
        finally:
            app.close()
    print(f"\nstalled first sentinel: GET answered after {elapsed:.2f}s")
    assert value == "1"
    assert elapsed < 2 * SOCKET_TIMEOUT + 0.5, (
        f"one stalled sentinel blocked a command for {elapsed:.1f}s (socket timeout "
        f"{SOCKET_TIMEOUT}s): the sentinel connections are unbounded or retried"
    )
