"""The overlap policy inside Redis: ``claim.lua`` decides skip or replace in the fenced
step that claims, and the workers' ``run_started.lua`` / ``run_ended.lua`` keep the
running records (docs/storage-format.md, "Runs")."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import redis

from safe_redbeat.store.running import read_running, read_runs
from safe_redbeat.store.scripts import Claim, ClaimCode, Overlap, Scripts
from safe_redbeat.store.wire import NEVER
from tests.support import KEYS

pytestmark = pytest.mark.integration

MAX_MS = 60_000


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts(redis_client, KEYS)


@pytest.fixture
def token(scripts: Scripts) -> str:
    return scripts.acquire('{"name":"t"}', 10_000).value


def seed(client: redis.Redis, name: str = "nightly", score: int = 100) -> str:
    key = KEYS.entry(name)
    client.hset(key, mapping={"definition": "{}", "version": "1"})
    client.zadd(KEYS.schedule, {key: score})
    return key


@dataclass(frozen=True)
class Recorded(Claim):
    """A claim with a pending record (the publish path)."""

    record: str = ""

    def pending_record(self) -> str:
        return self.record


def send(
    key: str,
    task_id: str,
    policy: str = "skip",
    *,
    new_score: int = 200,
    state: str = "",
    unsent: tuple[int, str] = (200, ""),
    pushes: tuple[tuple[str, str, str], ...] = (),
    record: str = "",
) -> Claim:
    name = KEYS.name_of(key)
    overlap = Overlap(policy, KEYS.running(name), KEYS.running_index, MAX_MS, task_id, *unsent)
    return Recorded(
        key,
        100,
        "1",
        new_score,
        '{"m":1}',
        new_state=state,
        pushes=pushes,
        overlap=overlap,
        record=record,
    )


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_the_first_run_is_sent_and_recorded_as_going(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    key = seed(redis_client)
    result = scripts.claim(token, [send(key, "t1", record='t1 {"entry":"nightly"}')])
    assert list(result.codes) == [ClaimCode.CLAIMED] and result.running == {}
    assert redis_client.hget(KEYS.pending, "t1")  # the publish path records it as usual
    until, since, state = str(redis_client.hget(KEYS.running("nightly"), "t1")).split()
    now = redis_ms(redis_client)
    assert state == "sent" and int(until) - int(since) == MAX_MS and now - int(since) < 1000
    assert 0 < redis_client.pttl(KEYS.running("nightly")) <= MAX_MS
    assert redis_client.zscore(KEYS.running_index, key) == int(until)
    assert 0 < redis_client.pttl(KEYS.running_index) <= MAX_MS  # gone with its last run


def test_skip_moves_the_slot_on_and_sends_nothing_while_another_run_goes(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    key = seed(redis_client)
    assert scripts.run_started("nightly", "t0", MAX_MS)
    op = send(
        key,
        "t1",
        new_score=NEVER,
        state="finished",  # the last of max_runs: skipped, the entry is not finished
        unsent=(200, ""),
        pushes=(("lpush", "celery", "message"),),
    )
    result = scripts.claim(token, [op])
    assert list(result.codes) == [ClaimCode.SKIPPED]
    assert result.running == {0: ["t0"]}
    assert redis_client.zscore(KEYS.schedule, key) == 200
    assert redis_client.hget(key, "meta") is None and redis_client.hget(key, "state") is None
    assert not redis_client.exists("celery") and not redis_client.exists(KEYS.pending)
    assert set(redis_client.hkeys(KEYS.running("nightly"))) == {"t0"}
    # the slot is claimed: a second leader with the same plan finds the score moved
    assert list(scripts.claim(token, [op]).codes) == [ClaimCode.SCORE_MOVED]


def test_a_skipped_one_off_is_expired(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    key = seed(redis_client)
    scripts.run_started("nightly", "t0", MAX_MS)
    op = send(key, "t1", new_score=NEVER, state="finished", unsent=(NEVER, "expired"))
    assert list(scripts.claim(token, [op]).codes) == [ClaimCode.SKIPPED]
    assert redis_client.zscore(KEYS.schedule, key) == NEVER
    assert redis_client.hget(key, "state") == "expired"


def test_replace_sends_and_answers_the_runs_to_revoke(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    key = seed(redis_client)
    scripts.run_started("nightly", "t0", MAX_MS)
    op = send(key, "t1", "replace", pushes=(("lpush", "celery", "message"),))
    result = scripts.claim(token, [op])
    assert list(result.codes) == [ClaimCode.CLAIMED] and result.running == {0: ["t0"]}
    assert redis_client.lrange("celery", 0, -1) == ["message"]
    assert redis_client.hget(key, "meta") == '{"m":1}'
    assert set(redis_client.hkeys(KEYS.running("nightly"))) == {"t0", "t1"}


def test_only_other_runs_that_still_count_block(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    marker = KEYS.running("nightly")
    now = redis_ms(redis_client)
    redis_client.hset(
        marker,
        mapping={
            "t1": f"{now + MAX_MS} {now} sent",  # this occurrence itself (sent before)
            "old": f"{now - 5} {now - MAX_MS - 5} running",  # its time is up
            "long": f"{now + 10 * MAX_MS} {now - MAX_MS - 5} running",  # past max runtime
            "junk": "not a record",
        },
    )
    key = seed(redis_client)
    result = scripts.claim(token, [send(key, "t1")])
    assert list(result.codes) == [ClaimCode.CLAIMED] and result.running == {}
    assert set(redis_client.hkeys(marker)) == {"t1"}


def test_a_stale_leader_neither_skips_nor_records(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    key = seed(redis_client)
    scripts.run_started("nightly", "t0", MAX_MS)
    before = redis_client.hgetall(KEYS.running("nightly"))
    assert scripts.claim("stale", [send(key, "t1")]).fenced_out
    assert redis_client.zscore(KEYS.schedule, key) == 100
    assert redis_client.hgetall(KEYS.running("nightly")) == before


def test_keys_of_another_type_do_not_stop_the_claim(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    a, b = seed(redis_client, "a"), seed(redis_client, "b")
    redis_client.set(KEYS.running("a"), "not a hash")
    result = scripts.claim(token, [send(a, "ta"), send(b, "tb")])
    assert list(result.codes) == [ClaimCode.CLAIMED, ClaimCode.CLAIMED]  # a is not tracked
    assert redis_client.get(KEYS.running("a")) == "not a hash"
    assert redis_client.hexists(KEYS.running("b"), "tb")
    assert not scripts.run_started("a", "ta", MAX_MS)  # the worker leaves it alone too
    assert not scripts.run_ended("a", "ta")


def test_allow_and_policy_operations_share_one_call(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    plain, tracked = seed(redis_client, "plain"), seed(redis_client, "tracked")
    scripts.run_started("tracked", "t0", MAX_MS)
    ops = [Claim(plain, 100, "1", 200), send(tracked, "t1"), Claim(plain, 200, "1", 300)]
    result = scripts.claim(token, ops)
    assert list(result.codes) == [ClaimCode.CLAIMED, ClaimCode.SKIPPED, ClaimCode.CLAIMED]
    assert result.running == {1: ["t0"]}
    assert not redis_client.exists(KEYS.running("plain"))


def test_a_run_ends_only_its_own_record(scripts: Scripts, redis_client: redis.Redis) -> None:
    marker = KEYS.running("nightly")
    assert scripts.run_started("nightly", "t1", MAX_MS)
    assert scripts.run_started("nightly", "t2", 2 * MAX_MS)
    until, since, state = str(redis_client.hget(marker, "t2")).split()
    assert state == "running" and int(until) - int(since) == 2 * MAX_MS
    assert redis_client.pttl(marker) > MAX_MS  # the key lives as long as its last run
    assert scripts.run_ended("nightly", "t1")
    assert not scripts.run_ended("nightly", "t1")  # compare-and-delete: already gone
    assert set(redis_client.hkeys(marker)) == {"t2"}
    assert redis_client.zscore(KEYS.running_index, KEYS.entry("nightly")) is not None
    assert scripts.run_ended("nightly", "t2")
    assert not redis_client.exists(marker)
    assert redis_client.zscore(KEYS.running_index, KEYS.entry("nightly")) is None


def test_a_killed_workers_run_stops_counting_after_max_runtime(
    scripts: Scripts, redis_client: redis.Redis, token: str
) -> None:
    key = seed(redis_client)
    scripts.run_started("nightly", "t0", 300)  # its worker never reports its end
    assert list(scripts.claim(token, [send(key, "t1")]).codes) == [ClaimCode.SKIPPED]
    time.sleep(0.35)
    redis_client.zadd(KEYS.schedule, {key: 100})
    result = scripts.claim(token, [send(key, "t2")])
    assert list(result.codes) == [ClaimCode.CLAIMED] and result.running == {}


def test_readers_see_the_runs_and_since_when(scripts: Scripts, redis_client: redis.Redis) -> None:
    scripts.run_started("a", "ta", MAX_MS)
    scripts.run_started("b", "tb", MAX_MS)
    redis_client.hset(KEYS.running("b"), "gone", "1 1 running")  # time up: not shown
    now, runs = read_runs(redis_client, KEYS, ["a", "b", "c"])
    assert [r.task_id for r in runs["a"]] == ["ta"] and runs["c"] == []
    assert [r.task_id for r in runs["b"]] == ["tb"]
    assert runs["a"][0].state == "running"
    assert abs(runs["a"][0].since.timestamp() - now.timestamp()) < 2
    listed = read_running(redis_client, KEYS, limit=10)
    assert listed.count == 2 and sorted(listed.runs) == ["a", "b"]
