"""The ``safe-redbeat`` command through its real entry point (``python -m safe_redbeat``),
against the suite's Redis and real ``celery beat`` replicas.

The CLI loads ``testbed.beatapp`` with the same ``SRB_*`` environment as the replicas,
as a Kubernetes probe runs inside the replica's container. Fast lease settings: lease 3 s,
renew deadline 2 s, retry 0.5 s, so the default ``health --max-age`` is 2 s.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from examples import sqlite_table
from safe_redbeat.leader.lease import parse_token
from testbed.beat import APP_MODULE, REPO_ROOT, BeatCluster, BeatProcess
from tests.support import KEYS
from tests.support.inprocess import FAST

pytestmark = pytest.mark.integration

HOURLY = {"hourly": {"task": "noop", "every": 3600}}
LEASE_KEY = KEYS.lease

# The --json schemas of docs/cli.md.
STATUS_KEYS = {
    "persistence",
    "redis_only_entries",
    "dead",
    "redis_url",
    "key_prefix",
    "leader",
    "replicas",
    "entries",
    "not_scheduled",
    "pending",
    "next_due",
    "running",
    "last_reconcile",
}
LEADER_KEYS = {"instance", "host", "pid", "fence", "lease_ttl", "leading_for", "heartbeat_age"}
REPLICA_KEYS = {
    "instance",
    "role",
    "age",
    "fence",
    "leading_for",
    "host",
    "pid",
    "token",
    "enqueue",
    "shared_name",
}
DUE_KEYS = {"name", "due", "due_in", "state"}
HEALTH_KEYS = {
    "persistence",
    "healthy",
    "check",
    "reason",
    "instance",
    "role",
    "age",
    "max_age",
    "redis_reachable",
}
ENTRY_KEYS = {
    "name",
    "task",
    "schedule",
    "schedule_text",
    "args",
    "kwargs",
    "options",
    "enabled",
    "version",
    "last_run_at",
    "next_run_at",
    "total_run_count",
    "run_now_at",
    "state",
    "run_count",
    "next_run_local",
    "zone",
    "start_time",
    "expires",
    "max_runs",
    "tz",
    "run_immediately",
    "at",
    "overlap",
    "max_runtime",
}
SYNC_KEYS = {
    "held",
    "source",
    "created",
    "updated",
    "removed",
    "unchanged",
    "conflicts",
    "errors",
    "complete",
    "dry_run",
    "seconds",
}
ERROR_KEYS = {"error", "message", "exit_code"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safe_redbeat", "-A", APP_MODULE, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert exit ``code`` and exactly one line on stderr, no traceback; return it."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def env_for(redis_url: str, tmp_path: Path, **kwargs: Any) -> dict[str, str]:
    """The environment a replica for ``redis_url`` would get (never started)."""
    kwargs.setdefault("settings", FAST)
    return BeatProcess(redis_url, logdir=tmp_path / "cli", **kwargs).env()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def holder_pid(client: redis.Redis) -> int | None:
    value = client.get(LEASE_KEY)
    return None if value is None else parse_token(str(value)).pid


def heartbeat(client: redis.Redis, instance: str) -> tuple[dict[str, Any], float] | None:
    """The replica's heartbeat and its age (as the CLI computes it), or None."""
    for token in client.smembers("redbeat::replicas"):
        key = "redbeat::replica:" + str(token)
        raw, pttl = client.get(key), client.pttl(key)
        if raw is None or pttl < 0:
            continue
        data = json.loads(str(raw))
        if data["instance"] == instance:
            return data, data["ttl"] - pttl / 1000
    return None


def beating(client: redis.Redis, instance: str, role: str) -> bool:
    found = heartbeat(client, instance)
    return found is not None and found[0]["role"] == role and found[1] < 1.0


def start_pair(beat_procs: BeatCluster, client: redis.Redis) -> tuple[BeatProcess, BeatProcess]:
    """Two replicas; returns (leader, standby) once both have written a heartbeat."""
    procs = beat_procs.start(2, settings=FAST, schedule=HOURLY)
    wait_until(lambda: holder_pid(client) in {p.pid for p in procs}, 15, "a replica leads")
    leader = next(p for p in procs if p.pid == holder_pid(client))
    standby = next(p for p in procs if p is not leader)
    assert leader.instance is not None and standby.instance is not None
    wait_until(lambda: beating(client, str(leader.instance), "leader"), 10, "leader heartbeat")
    wait_until(lambda: beating(client, str(standby.instance), "standby"), 10, "standby heartbeat")
    return leader, standby


def test_status_names_the_new_leader_after_the_leader_is_killed(
    beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    leader, standby = start_pair(beat_procs, redis_client)
    env = standby.env()

    before = cli_json(env, "status")
    assert set(before) == STATUS_KEYS
    assert set(before["leader"]) == LEADER_KEYS
    assert (before["leader"]["instance"], before["leader"]["pid"]) == (leader.instance, leader.pid)
    assert before["leader"]["lease_ttl"] > 0 and before["leader"]["leading_for"] >= 0
    roles = {r["instance"]: r["role"] for r in before["replicas"]}
    assert roles == {leader.instance: "leader", standby.instance: "standby"}
    modes = {r["instance"]: r["enqueue"] for r in before["replicas"]}
    assert modes == {leader.instance: "atomic", standby.instance: ""}  # decided when elected
    assert all(set(r) == REPLICA_KEYS for r in before["replicas"])
    assert before["entries"] == 1 and before["pending"] == 0
    assert [d["name"] for d in before["next_due"]] == ["hourly"]
    assert set(before["next_due"][0]) == DUE_KEYS

    ok = cli(env, "health")  # the standby's own probe: healthy
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK: {standby.instance} is the standby")
    not_leader = cli(env, "health", "--role", "leader")
    assert not_leader.returncode == 1
    assert not_leader.stdout.startswith("UNHEALTHY: ") and "not the leader" in not_leader.stdout

    leader.kill()
    wait_until(lambda: holder_pid(redis_client) == standby.pid, 10, "the standby takes over")
    wait_until(lambda: beating(redis_client, str(standby.instance), "leader"), 5, "it says so")

    human = cli(env, "status")
    assert human.returncode == 0, human.stderr
    leader_line = next(line for line in human.stdout.splitlines() if line.startswith("Leader:"))
    assert leader_line.split()[1] == standby.instance, human.stdout
    after = cli_json(env, "status")
    assert after["leader"]["instance"] == standby.instance
    assert after["leader"]["pid"] == standby.pid
    assert after["leader"]["fence"] > before["leader"]["fence"]
    cluster = cli_json(env, "health", "--cluster")
    assert set(cluster) == HEALTH_KEYS
    assert cluster["healthy"] is True and cluster["instance"] == standby.instance


def test_health_fails_for_a_replica_that_stopped_ticking(
    beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    leader, standby = start_pair(beat_procs, redis_client)
    instance = str(standby.instance)

    def silent_for(seconds: float) -> Callable[[], bool]:
        def check() -> bool:
            found = heartbeat(redis_client, instance)
            return found is None or found[1] > seconds

        return check

    standby.sigstop()
    try:
        wait_until(silent_for(1.0), 5, "the stopped replica's heartbeat ages")
        stuck = cli(standby.env(), "health", "--max-age", "1", "--json")
        assert stuck.returncode == 1, stuck.stdout + stuck.stderr
        verdict = json.loads(stuck.stdout)
        assert verdict["healthy"] is False and verdict["instance"] == instance
        assert verdict["reason"].startswith(f"{instance} is stuck")
        assert verdict["age"] > 1.0

        wait_until(silent_for(2.0), 5, "older than the default max age (2 s)")
        default = cli(standby.env(), "health")
        assert default.returncode == 1
        assert default.stdout.startswith(f"UNHEALTHY: {instance}") or default.stdout.startswith(
            f"UNHEALTHY: no heartbeat from {instance}"
        ), default.stdout

        still_leading = cli(leader.env(), "health", "--role", "leader")
        assert still_leading.returncode == 0, still_leading.stdout
    finally:
        standby.sigcont()
    wait_until(lambda: beating(redis_client, instance, "standby"), 5, "it ticks again")
    assert cli(standby.env(), "health").returncode == 0


def test_every_mutating_command_round_trips_through_show(redis_url: str, tmp_path: Path) -> None:
    env = env_for(redis_url, tmp_path)

    added = cli_json(
        env, "add", "nightly", "--task", "noop", "--cron", "0 3 * * *",
        "--kwargs", '{"fmt": "pdf"}', "--queue", "reports",
    )  # fmt: skip
    shown = cli_json(env, "show", "nightly")
    assert shown.pop("running") == []  # show also reads the runs an overlap policy tracks
    assert set(shown) == ENTRY_KEYS and shown == added
    assert shown["schedule"]["__type__"] == "crontab" and shown["schedule_text"] == "0 3 * * *"
    assert (shown["task"], shown["kwargs"], shown["options"]) == (
        "noop",
        {"fmt": "pdf"},
        {"queue": "reports"},
    )
    assert (shown["enabled"], shown["version"], shown["args"]) == (True, 1, [])

    assert cli(env, "update", "nightly", "--every", "90", "--args", "[1, 2]").returncode == 0
    shown = cli_json(env, "show", "nightly")
    assert shown["schedule"] == {"__type__": "interval", "every": 90.0, "relative": False}
    assert shown["args"] == [1, 2] and shown["version"] == 2
    assert shown["kwargs"] == {"fmt": "pdf"} and shown["options"] == {"queue": "reports"}

    assert cli(env, "disable", "nightly").returncode == 0
    human = cli(env, "show", "nightly").stdout
    assert "enabled:   no" in human.splitlines() and "version:   3" in human.splitlines()
    assert cli(env, "enable", "nightly").returncode == 0
    assert cli(env, "run-now", "nightly").returncode == 0
    shown = cli_json(env, "show", "nightly")
    assert shown["enabled"] is True and shown["version"] == 4
    assert shown["run_now_at"] is not None

    stale = cli(env, "update", "nightly", "--task", "other", "--expected-version", "1")
    assert "Redis holds 4" in one_line_error(stale, 6)
    stale_json = cli(env, "--json", "rm", "nightly", "--expected-version", "3")
    error = json.loads(one_line_error(stale_json, 6))
    assert set(error) >= ERROR_KEYS and error["current_version"] == 4
    listed = cli_json(env, "list")
    assert [e["name"] for e in listed["entries"]] == ["nightly"]
    assert listed["entries"][0]["task"] == "noop"

    removed = cli_json(env, "rm", "nightly", "--expected-version", "4")
    assert removed == {"name": "nightly", "deleted": True, "version": 4}
    gone = cli(env, "show", "nightly")
    assert one_line_error(gone, 5) == "safe-redbeat: error: entry 'nightly' not found"
    assert gone.stdout == ""


def test_a_solar_entry_is_added_shown_and_changed_from_the_command_line(
    redis_url: str, tmp_path: Path
) -> None:
    env = env_for(redis_url, tmp_path)
    added = cli_json(env, "add", "dusk", "--task", "noop", "--solar", "sunset", "52.37", "4.89")
    assert added["schedule"] == {"__type__": "solar", "event": "sunset", "lat": 52.37, "lon": 4.89}
    assert added["schedule_text"] == "sunset at 52.37, 4.89" and added["next_run_at"]
    human = cli(env, "show", "dusk").stdout
    assert "sunset at 52.37, 4.89" in human

    assert cli(env, "update", "dusk", "--solar", "dawn_civil", "-33.9", "151.2").returncode == 0
    shown = cli_json(env, "show", "dusk")
    assert shown["schedule"]["event"] == "dawn_civil" and shown["version"] == 2
    assert cli(env, "update", "dusk", "--cron", "0 3 * * *").returncode == 0
    assert cli_json(env, "show", "dusk")["schedule"]["__type__"] == "crontab"

    for bad, says in (
        (["sunfall", "52", "4"], "'sunfall' is not one of"),
        (["sunset", "95", "4"], "95.0 is not in the range -90<=x<=90"),
        (["sunset", "north", "4"], "'north' is not a valid float"),
    ):
        result = cli(env, "add", "x", "--task", "noop", "--solar", *bad)
        assert result.returncode == 2 and "--solar" in result.stderr and says in result.stderr
    both = cli(env, "add", "x", "--task", "noop", "--solar", "sunset", "1", "2", "--every", "5")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    assert [e["name"] for e in cli_json(env, "list")["entries"]] == ["dusk"]


def test_sync_applies_the_configured_loader_and_dry_run_changes_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    conn = sqlite_table.connect(str(tmp_path / "schedule.db"))
    sqlite_table.put(conn, "from-db", "noop", 30, queue="q")
    conn.commit()
    conn.close()
    env = env_for(
        redis_url,
        tmp_path,
        settings={**FAST, "safe_redbeat_loader": "examples.sqlite_table:load"},
        extra_env={"SQLITE_SCHEDULE_PATH": str(tmp_path / "schedule.db")},
    )

    dry = cli_json(env, "sync", "--dry-run")
    assert set(dry) == SYNC_KEYS
    assert (dry["created"], dry["dry_run"], dry["complete"]) == (["from-db"], True, True)
    assert cli_json(env, "list")["entries"] == []
    done = cli(env, "sync")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("loader: create 1,")
    assert cli_json(env, "show", "from-db")["options"] == {"queue": "q"}

    unconfigured = cli(env_for(redis_url, tmp_path), "sync")
    assert "safe_redbeat_loader is not configured" in one_line_error(unconfigured, 4)


def test_bad_input_gets_a_usage_line_or_one_error_line(redis_url: str, tmp_path: Path) -> None:
    env = env_for(redis_url, tmp_path)

    no_schedule = cli(env, "add", "x", "--task", "noop")
    assert no_schedule.returncode == 2
    assert no_schedule.stderr.startswith("usage: safe-redbeat add")
    assert "one of the arguments --every --cron --solar --at is required" in no_schedule.stderr
    bad_json = cli(env, "add", "x", "--task", "noop", "--every", "5", "--args", "{}")
    assert bad_json.returncode == 2 and "must be a JSON array" in bad_json.stderr

    bad_cron = cli(env, "add", "x", "--task", "noop", "--cron", "99 * * * *")
    assert "schedule.minute" in one_line_error(bad_cron, 7)
    no_app = cli(env, "-A", "tests.apps.missing", "status")
    assert "cannot load the Celery app 'tests.apps.missing'" in one_line_error(no_app, 4)
    missing = cli(env, "--json", "enable", "ghost")
    error = json.loads(one_line_error(missing, 5))
    assert (error["error"], error["name"], error["exit_code"]) == ("entry_not_found", "ghost", 5)


def test_unreachable_redis_is_one_line_naming_the_masked_url(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    env = env_for(f"redis://:s3cret@127.0.0.1:{port}/0", tmp_path)

    result = cli(env, "status")
    line = one_line_error(result, 3)
    assert f"cannot reach Redis at redis://:**@127.0.0.1:{port}/0" in line
    assert "s3cret" not in result.stdout + result.stderr
    probe = cli(env, "health", "--redis-down-ok", "--json")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["redis_reachable"] is False


def test_status_json_of_an_empty_schedule(redis_url: str, tmp_path: Path) -> None:
    status = cli_json(env_for(redis_url, tmp_path), "status")
    assert status["leader"] is None and status["replicas"] == [] and status["next_due"] == []
    assert (status["entries"], status["pending"], status["last_reconcile"]) == (0, 0, None)
    assert status["redis_url"] == redis_url and status["key_prefix"] == "redbeat:"
