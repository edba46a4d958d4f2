"""``safe-redbeat status``, ``health`` and ``dead`` on a schedule of three shards.

The replicas are schedulers ticked in this process (as in test_shards.py); the CLI is the
real entry point in a subprocess, configured as they are. Leases last 30 s here, so a
replica that is not ticked keeps its shards while the CLI runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler, Schedule
from safe_redbeat.model.occurrence import Occurrence
from safe_redbeat.store.layout import Layout
from tests.integration.test_cli import HEALTH_KEYS, STATUS_KEYS, cli, cli_json, env_for
from tests.support import KEYS
from tests.support.inprocess import FAST, FakeClock, celery_app

pytestmark = pytest.mark.integration

K = 3
SETTINGS = {
    **FAST,
    "safe_redbeat_shards": K,
    "safe_redbeat_lease_seconds": 30.0,
    "safe_redbeat_renew_seconds": 20.0,
}
LAYOUT = Layout(KEYS, K)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    loader = {"safe_redbeat_loader": "tests.apps.loaders:load"}  # each shard reconciles
    with celery_app("cli-shards", redis_url, **SETTINGS, **loader) as app:
        yield app


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return env_for(redis_url, tmp_path, settings=SETTINGS)


def replica(app: Celery, name: str, clock: FakeClock) -> SafeRedBeatScheduler:
    app.conf.safe_redbeat_instance_name = name
    return SafeRedBeatScheduler(app=app, monotonic=clock)


def balanced(app: Celery) -> tuple[SafeRedBeatScheduler, SafeRedBeatScheduler, FakeClock]:
    """Replicas ``a`` and ``b`` sharing the three shards (two and one)."""
    clock = FakeClock()
    a = replica(app, "a", clock)
    a.tick()
    b = replica(app, "b", clock)
    for _ in range(20):
        clock.now += 1.0
        a.tick()
        b.tick()
        if {len(a.balancer.led()), len(b.balancer.led())} == {1, 2}:
            break
    assert {len(a.balancer.led()), len(b.balancer.led())} == {1, 2}
    clock.now += 1.0  # heartbeats that list the shards each leads now
    a.tick()
    b.tick()
    return a, b, clock


def shard_with(index: int, prefix: str = "job") -> str:
    """An entry name that lives in shard ``index``."""
    return next(f"{prefix}-{i}" for i in range(1000) if LAYOUT.shard_of(f"{prefix}-{i}") == index)


def letter(task_id: str, entry: str) -> str:
    return Occurrence(task_id, entry, "noop", [], {}, {}, 1_700_000_000, 1, 3, "boom").to_json()


def test_status_shows_each_shard_s_leader_counts_and_lag(
    app: Celery, env: dict[str, str], redis_client: redis.Redis
) -> None:
    a, b, _clock = balanced(app)
    with Schedule(app) as schedule:
        for i in range(12):
            schedule.upsert(f"job-{i}", "noop", 3600)
    late = shard_with(1)
    keys = LAYOUT.keys_for(late)
    assert redis_client.zadd(keys.schedule, {keys.entry(late): time.time() - 100}, xx=True) == 0
    redis_client.hset(LAYOUT.keys(2).dead, "t-dead", letter("t-dead", shard_with(2)))
    redis_client.hset(LAYOUT.keys(0).pending, "t-pending", letter("t-pending", shard_with(0)))
    leaders = {s.index: r for r in (a, b) for s in r.balancer.led()}

    status = cli_json(env, "status")
    assert set(status) == STATUS_KEYS | {"layout", "shards", "lag"}
    assert status["layout"] == {"shards": 3, "moving_to": None}
    assert status["leader"] is None and status["last_reconcile"] is None
    shards = status["shards"]
    assert [s["index"] for s in shards] == [0, 1, 2]
    for shard in shards:
        keys = LAYOUT.keys(shard["index"])
        owner = leaders[shard["index"]]
        lease = owner.shards[shard["index"]].leadership.lease
        assert shard["leader"]["instance"] == owner.safe_settings.instance_name
        assert shard["leader"]["fence"] == lease.fence
        assert 0 < shard["lease_ttl"] <= 30
        assert shard["entries"] == redis_client.zcard(keys.schedule)
        assert shard["retired"] is False and shard["last_reconcile"]["source"]
    assert sum(s["entries"] for s in shards) == status["entries"] == 12
    assert [s["pending"] for s in shards] == [1, 0, 0] and status["pending"] == 1
    assert [s["dead"] for s in shards] == [0, 0, 1] and status["dead"] == 1
    assert 99 <= shards[1]["lag"] < 200 and shards[0]["lag"] == shards[2]["lag"] == 0
    assert status["lag"] == shards[1]["lag"]
    assert status["next_due"][0]["name"] == late and status["next_due"][0]["due_in"] < -99
    led = {r["instance"]: r["shards"] for r in status["replicas"]}
    assert led == {
        "a": [s.index for s in a.balancer.led()],
        "b": [s.index for s in b.balancer.led()],
    }
    assert all(r["shard_count"] == K for r in status["replicas"])

    human = cli(env, "status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert "Layout:         3 shards" in lines and "Shards:         3 of 3 led" in lines
    row = next(line.split() for line in lines if line.split()[:1] == ["1"])
    assert row[1] == leaders[1].safe_settings.instance_name
    assert row[2] == str(leaders[1].shards[1].leadership.lease.fence)
    assert any(line.split()[:1] == ["total"] and " 12 " in line for line in lines), lines

    b.close()  # hands its shards back; nobody has taken them yet
    a_shards = [s.index for s in a.balancer.led()]
    free = sorted(set(range(K)) - set(a_shards))
    after = cli_json(env, "status")
    assert [s["index"] for s in after["shards"] if s["leader"] is None] == free
    freed = cli(env, "status").stdout.splitlines()
    assert f"Shards:         2 of 3 led; without a leader: {free[0]}" in freed
    a.close()


def test_health_needs_a_ticking_leader_for_every_shard_and_fails_during_a_reshard(
    app: Celery, env: dict[str, str], redis_client: redis.Redis
) -> None:
    a, b, clock = balanced(app)
    healthy = cli_json(env, "health", "--cluster")
    assert set(healthy) == HEALTH_KEYS | {"layout", "shards"}
    assert healthy["healthy"] is True, healthy["reason"]
    assert healthy["reason"].startswith("all 3 shards led")
    assert [s["healthy"] for s in healthy["shards"]] == [True] * K
    b_shards = [s.index for s in b.balancer.led()]
    leads = cli(env, "health", "--role", "leader", "--instance", "b")
    assert leads.returncode == 0, leads.stdout
    assert leads.stdout.startswith(f"OK: b leads shards {b_shards} of 3")

    b.close()
    unled = cli(env, "health", "--cluster")
    assert unled.returncode == 1, unled.stdout
    assert unled.stdout.startswith(
        f"UNHEALTHY: 1 of 3 shards unhealthy; shards without a leader: {b_shards[0]}"
    ), unled.stdout
    assert cli(env, "health", "--role", "leader", "--instance", "b").returncode == 1

    clock.now += 1.0
    a.tick()  # takes the free shard
    assert len(a.balancer.led()) == K
    assert cli(env, "health", "--cluster").returncode == 0

    redis_client.set(KEYS.layout, '{"shards":3,"moving_to":2}')
    redis_client.set(LAYOUT.keys(0).lease, "retired 2")
    moving = cli(env, "health", "--cluster", "--json")
    assert moving.returncode == 1
    verdict = json.loads(moving.stdout)
    assert verdict["reason"].startswith("the schedule is being resharded (3 shards, moving to 2)")
    status = cli(env, "status").stdout.splitlines()
    assert status[1].startswith("Layout:         3 shards, moving to 2"), status
    row = next(line.split() for line in status if line.split()[:1] == ["0"])
    assert row[1] == "retired", status
    redis_client.delete(KEYS.layout, LAYOUT.keys(0).lease)
    a.close()


def test_dead_letters_of_every_shard_are_listed_and_moved_within_their_shard(
    app: Celery, env: dict[str, str], redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.layout, '{"shards":3}')
    redis_client.hset(LAYOUT.keys(0).dead, "t0", letter("t0", shard_with(0)))
    redis_client.hset(LAYOUT.keys(2).dead, "t2", letter("t2", shard_with(2)))
    redis_client.hset(LAYOUT.keys(2).dead, "t2b", letter("t2b", shard_with(2, "other")))

    listed = cli_json(env, "dead", "list")["dead"]
    assert sorted((d["shard"], d["task_id"]) for d in listed) == [(0, "t0"), (2, "t2"), (2, "t2b")]
    assert all(d["attempts"] == 3 and d["last_error"] == "boom" for d in listed)
    human = cli(env, "dead", "list").stdout.splitlines()
    assert human[0].split()[:2] == ["SHARD", "TASK"] and len(human) == 4

    redis_client.set(KEYS.layout, '{"shards":3,"moving_to":2}')
    refused = cli(env, "dead", "retry", "t2")
    assert refused.returncode == 8 and "being resharded" in refused.stderr
    assert redis_client.hexists(LAYOUT.keys(2).dead, "t2")
    write = cli(env, "--json", "add", "x", "--task", "noop", "--every", "60")
    assert write.returncode == 8 and "Traceback" not in write.stderr, write.stderr
    assert json.loads(write.stderr)["error"] == "resharding"
    redis_client.set(KEYS.layout, '{"shards":3}')

    assert cli_json(env, "dead", "retry", "t2") == {"retried": ["t2"], "changed": []}
    record = Occurrence.from_json("t2", str(redis_client.hget(LAYOUT.keys(2).pending, "t2")))
    assert (record.entry, record.attempts, record.last_error) == (shard_with(2), 0, "")
    assert not redis_client.hexists(LAYOUT.keys(2).dead, "t2")
    assert not redis_client.exists(KEYS.pending, LAYOUT.keys(0).pending, LAYOUT.keys(1).pending)

    dropped = cli_json(env, "dead", "drop", "--all")
    assert sorted(dropped["dropped"]) == ["t0", "t2b"]
    assert not any(redis_client.exists(k.dead) for k in LAYOUT.all_keys())
    assert redis_client.hexists(LAYOUT.keys(2).pending, "t2")
