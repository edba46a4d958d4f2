"""The Lua scripts' contracts, against the real Redis server."""

from __future__ import annotations

import json

import pytest
import redis

from safe_redbeat.leader.lease import parse_token
from safe_redbeat.store.scripts import ClaimCode
from safe_redbeat.store.scripts import Registered as Scripts
from tests.support import KEYS

pytestmark = pytest.mark.integration

HOLDER = json.dumps({"host": "h", "pid": 1, "name": "n"})


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts(redis_client)


def acquire(scripts: Scripts, ms: int = 5000) -> str:
    ok, token, _fence = scripts.acquire(keys=[KEYS.lease, KEYS.fence], args=[HOLDER, ms])
    assert ok == 1
    return str(token)


def test_acquire_takes_a_free_lease_once_with_a_growing_fence(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    token = acquire(scripts)
    assert redis_client.get(KEYS.lease) == token
    assert 0 < redis_client.pttl(KEYS.lease) <= 5000
    ok, current, pttl = scripts.acquire(keys=[KEYS.lease, KEYS.fence], args=[HOLDER, 5000])
    assert (ok, current) == (0, token) and pttl > 0
    first = parse_token(token).fence
    redis_client.delete(KEYS.lease)
    second = parse_token(acquire(scripts)).fence
    assert first is not None and second is not None and second > first


def test_fence_grows_even_after_redis_lost_its_data(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    redis_client.set(KEYS.fence, "5")
    before = parse_token(acquire(scripts)).fence
    redis_client.flushdb()
    after = parse_token(acquire(scripts)).fence
    assert before is not None and after is not None and after > before


def test_renew_distinguishes_ours_gone_and_taken(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    token = acquire(scripts, ms=1000)
    code, _ = scripts.renew(keys=[KEYS.lease], args=[token, 9000])
    assert code == 1 and redis_client.pttl(KEYS.lease) > 1000
    redis_client.set(KEYS.lease, "someone else")
    assert scripts.renew(keys=[KEYS.lease], args=[token, 9000]) == [-1, "someone else"]
    redis_client.delete(KEYS.lease)
    assert scripts.renew(keys=[KEYS.lease], args=[token, 9000])[0] == 0


def test_release_only_deletes_our_own_lease(scripts: Scripts, redis_client: redis.Redis) -> None:
    token = acquire(scripts)
    assert scripts.release(keys=[KEYS.lease], args=["not ours"]) == 0
    assert redis_client.exists(KEYS.lease)
    assert scripts.release(keys=[KEYS.lease], args=[token]) == 1
    assert not redis_client.exists(KEYS.lease)


def seed_entry(client: redis.Redis, name: str, score: int, version: str | None = None) -> str:
    key = KEYS.entry(name)
    client.hset(key, mapping={"definition": "{}", "meta": "{}"})
    if version is not None:
        client.hset(key, "version", version)
    client.zadd(KEYS.schedule, {key: score})
    return key


def claim(scripts: Scripts, token: str, *ops: list[str], keys: list[str]) -> list[int]:
    argv = [token, str(len(ops)), "", ""]  # n; the broker's database is the schedule's
    for op in ops:
        argv.extend(op)
        argv.extend(["", "", "0", ""])  # run_now: none; new state: none; no pushes; allow
    result = scripts.claim(keys=[KEYS.lease, KEYS.schedule, KEYS.pending, *keys], args=argv)
    return [int(code) for code in result]


def test_claim_by_a_stale_token_writes_nothing(scripts: Scripts, redis_client: redis.Redis) -> None:
    key = seed_entry(redis_client, "a", 100)
    acquire(scripts)
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    codes = claim(scripts, "stale token", ["100", "0", "200", '{"m":1}', "id1 {}"], keys=[key])
    assert codes == [0]
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before


def test_an_occurrence_is_claimed_once_and_leaves_a_pending_record(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    key = seed_entry(redis_client, "a", 100)
    token = acquire(scripts)
    op = ["100", "0", "200", '{"m":1}', 'id1 {"entry":"a"}']
    assert claim(scripts, token, op, keys=[key]) == [1, ClaimCode.CLAIMED]
    assert redis_client.zscore(KEYS.schedule, key) == 200
    assert redis_client.hget(key, "meta") == '{"m":1}'
    assert redis_client.hget(KEYS.pending, "id1") == '{"entry":"a"}'
    assert claim(scripts, token, op, keys=[key]) == [1, ClaimCode.SCORE_MOVED]
    assert redis_client.hlen(KEYS.pending) == 1


def test_claim_rejects_a_definition_that_changed_since_it_was_read(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    key = seed_entry(redis_client, "a", 100, version="3")
    token = acquire(scripts)
    assert claim(scripts, token, ["100", "2", "200", "", "id1 {}"], keys=[key]) == [
        1,
        ClaimCode.VERSION_CHANGED,
    ]
    assert redis_client.zscore(KEYS.schedule, key) == 100
    assert not redis_client.exists(KEYS.pending)


def test_claim_drops_a_slot_whose_hash_is_gone(scripts: Scripts, redis_client: redis.Redis) -> None:
    redis_client.zadd(KEYS.schedule, {"redbeat:ghost": 100})
    token = acquire(scripts)
    codes = claim(scripts, token, ["100", "0", "-1", "", ""], keys=["redbeat:ghost"])
    assert codes == [1, ClaimCode.GONE]
    assert redis_client.zscore(KEYS.schedule, "redbeat:ghost") is None


def test_scripts_survive_script_flush(scripts: Scripts, redis_client: redis.Redis) -> None:
    acquire(scripts)
    redis_client.script_flush()
    redis_client.delete(KEYS.lease)
    acquire(scripts)
