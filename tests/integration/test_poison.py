"""Poison: no entry, option, stored value or loader result stops the replicas or empties
the schedule.

One test per case. Driven in this process (``tick()`` called directly, a fake monotonic
clock) against the suite's real Redis; the CLI through its real entry point; the guard
with a real worker. Every hostile value is written the way another program would write
it (raw Redis commands, bytes that are not UTF-8), next to well-formed entries that must
still be dispatched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from safe_redbeat import ConfigurationError, InvalidEntry, SafeRedBeatScheduler, Schedule
from safe_redbeat.config import Settings
from safe_redbeat.guard import OncePerOccurrence
from safe_redbeat.model.codec import encode_meta
from safe_redbeat.writethrough import sync_once, upsert_after_commit
from testbed.beat import QueueAuditor
from tests.apps import loaders
from tests.integration.test_bad_input import GOOD, VALID_DEFINITION, add_due
from tests.integration.test_cli import cli, cli_json, env_for, one_line_error
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = pytest.mark.integration

LOADER = "tests.apps.loaders:load"
LOADER_SETTINGS = {"safe_redbeat_loader": LOADER, "safe_redbeat_loader_timeout_seconds": 2.0}
SCHEDULE_KEY = "redbeat::schedule"
PENDING_KEY = "redbeat::pending"
DEAD_KEY = "redbeat::dead"
HOURLY = {"__type__": "interval", "every": 3600.0, "relative": False}


def _strict(x: int) -> int:
    return x


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("poison", redis_url) as app:
        # a task with a signature: Celery checks the arguments on publish (typing=True)
        app.task(name="t.strict")(_strict)
        yield app


@pytest.fixture
def loader_app(redis_url: str) -> Iterator[Celery]:
    with celery_app("poison-loader", redis_url, **LOADER_SETTINGS) as app:
        yield app


@pytest.fixture(autouse=True)
def _reset_loader() -> Iterator[None]:
    yield
    loaders.RESULT = []


def definition(name: str, **changes: Any) -> str:
    return json.dumps({**VALID_DEFINITION, "name": name, **changes})


def due_now() -> int:
    return int(datetime.now(timezone.utc).timestamp()) - 5


def put_raw(raw: redis.Redis, key: bytes, fields: dict[str, str | bytes]) -> bytes:
    """An entry hash written by another program, due now."""
    raw.hset(key, mapping=fields)  # type: ignore[arg-type]
    raw.zadd(SCHEDULE_KEY, {key: due_now()})
    return key


def sent_entries(auditor: QueueAuditor) -> list[str]:
    return sorted(m.headers["safe_redbeat_entry"] for m in auditor.drain())


def leader(app: Celery, clock: FakeClock | None = None) -> SafeRedBeatScheduler:
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock or FakeClock())
    scheduler.tick()
    assert scheduler.is_leader
    return scheduler


def row(name: str, every: float = 3600, **extra: Any) -> dict[str, Any]:
    return {"name": name, "task": "noop", "schedule": every, **extra}


def loaded_names(client: redis.Redis) -> set[str]:
    return {str(k).removeprefix("redbeat:") for k in client.zrange(SCHEDULE_KEY, 0, -1)}


def reconcile_report(client: redis.Redis) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(client.get("redbeat::reconcile") or "null")
    return data


def poisoned_ticks(
    app: Celery,
    raw: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    write: Callable[[redis.Redis], list[bytes]],
) -> list[str]:
    """Elect a leader, let ``write`` add the poison and three good entries, tick three
    times; assert the good ones were dispatched once, the poison's hashes and schedule
    slots are left exactly as written, nothing was deleted, and the leader still leads.
    Returns the warnings and errors logged."""
    scheduler = leader(app)
    poisoned = write(raw)
    add_due(app, GOOD)
    before = {key: raw.hgetall(key) for key in poisoned}
    all_keys = set(raw.keys("redbeat:*"))
    auditor = QueueAuditor(raw)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safe_redbeat"):
        for _ in range(3):
            scheduler.tick()
    assert sent_entries(auditor) == GOOD, "only the good entries are sent, each once"
    assert {key: raw.hgetall(key) for key in poisoned} == before, "the poison is untouched"
    for key in poisoned:
        assert raw.zscore(SCHEDULE_KEY, key) is not None, f"{key!r} keeps its schedule slot"
    missing = all_keys - set(raw.keys("redbeat:*")) - {PENDING_KEY.encode()}
    assert not missing, f"keys deleted: {missing}"
    assert scheduler.is_leader
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- 1) headers that are not a mapping --------------------------------------------------


def test_headers_that_are_not_a_mapping_are_refused_on_write_and_parked_when_stored(
    app: Celery,
    loader_app: Celery,
    raw: redis.Redis,
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Schedule(app) as schedule, pytest.raises(InvalidEntry) as info:
        schedule.upsert("p", task="t.p", schedule=5, options={"headers": [1, 2]})
    assert "headers" in str(info.value) and "'p'" in str(info.value)
    added = cli(env_for(redis_url, tmp_path), "add", "p", "--task", "t.p", "--every", "5",
                "--options", '{"headers": [1, 2]}')  # fmt: skip
    assert "headers" in one_line_error(added, 7)
    loaders.RESULT = [row("p", options={"headers": [1, 2]}), row("fine")]
    leader(loader_app)
    assert loaded_names(redis_client) == {"fine"}, "the loader's other rows are applied"
    assert any("headers" in error for error in reconcile_report(redis_client)["errors"])
    assert not raw.exists("redbeat:p"), "nothing is written by a refused write"
    raw.flushdb()

    problems = poisoned_ticks(
        app,
        raw,
        caplog,
        lambda r: [
            put_raw(r, b"redbeat:p", {"definition": definition("p", options={"headers": [1, 2]})})
        ],
    )
    assert len(problems) == 1, problems
    assert "'p'" in problems[0] and "headers" in problems[0], problems


# -- 2) options beat sets itself; a message its task refuses ----------------------------


def test_a_message_that_always_fails_goes_to_the_dead_letters_after_five_attempts(
    app: Celery,
    raw: redis.Redis,
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Schedule(app) as schedule, pytest.raises(InvalidEntry) as info:
        schedule.upsert("p", task="noop", schedule=5, options={"task_id": "x"})
    assert "task_id" in str(info.value)

    clock = FakeClock()
    scheduler = leader(app, clock)
    strict = definition("strict", task="t.strict", args=[1, 2, 3], schedule=HOURLY)
    last_run = datetime.now(timezone.utc) - timedelta(hours=2)  # overdue: due at once
    put_raw(raw, b"redbeat:strict", {"definition": strict, "meta": encode_meta(last_run, 3)})
    add_due(app, GOOD)
    auditor = QueueAuditor(redis_client)
    ticks = 0
    with caplog.at_level(logging.DEBUG, logger="safe_redbeat"):
        while not redis_client.hlen(DEAD_KEY) and ticks < 10:
            scheduler.tick()
            ticks += 1
            clock.now += 1.5  # past the republish backoff
        for _ in range(3):  # nothing more happens to it
            scheduler.tick()
            clock.now += 1.5
    assert ticks == 5, f"moved to the dead letters after {ticks} ticks, not at attempt 5"
    assert sent_entries(auditor) == GOOD
    assert redis_client.hlen(PENDING_KEY) == 0
    ((stored_id, record),) = redis_client.hgetall(DEAD_KEY).items()
    task_id = str(stored_id)
    letter = json.loads(record)
    assert (letter["entry"], letter["task"], letter["attempts"]) == ("strict", "t.strict", 5)
    assert "TypeError" in letter["last_error"], letter
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "'strict'" in errors[0] and "5 attempts" in errors[0], errors
    attempts = [r for r in caplog.records if "could not send 'strict'" in r.getMessage()]
    assert len(attempts) == 5, [r.getMessage() for r in attempts]
    assert not [r for r in caplog.records if r.exc_info], "no traceback per failed attempt"
    assert scheduler.is_leader

    env = env_for(redis_url, tmp_path)
    listed = cli_json(env, "dead", "list")["dead"]
    assert [(d["task_id"], d["entry"], d["attempts"]) for d in listed] == [(task_id, "strict", 5)]
    assert "Dead letters:   1" in cli(env, "status").stdout
    retried = cli_json(env, "dead", "retry", task_id)
    assert retried == {"retried": [task_id], "changed": []}
    assert redis_client.hlen(DEAD_KEY) == 0
    again = json.loads(redis_client.hget(PENDING_KEY, task_id) or "{}")
    assert again["entry"] == "strict" and "attempts" not in again, "attempts start over"
    for _ in range(6):  # five more failed attempts: dead again
        scheduler.tick()
        clock.now += 1.5
    assert redis_client.hkeys(DEAD_KEY) == [task_id] and redis_client.hlen(PENDING_KEY) == 0
    assert "Traceback" not in one_line_error(cli(env, "dead", "drop"), 2)
    dropped = cli_json(env, "dead", "drop", "--all")
    assert dropped == {"dropped": [task_id], "changed": []}
    assert redis_client.hlen(DEAD_KEY) == 0 and redis_client.hlen(PENDING_KEY) == 0
    assert raw.exists(b"redbeat:strict"), "the entry itself stays"


# -- 3) numbers that overflow, bytes that are not UTF-8, broken pending records ---------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"definition": definition("p"), "run_now": "inf"}, "run_now"),
        (
            {
                "definition": definition("p"),
                "meta": '{"last_run_at": null, "total_run_count": 1e400}',
            },
            "total_run_count",
        ),
        (
            {"definition": definition("p").replace('"every": 60.0', '"every": 1e400')},
            "definition",
        ),
        ({"definition": definition("p").encode().replace(b"noop", b"n\xff\xfeop")}, "UTF-8"),
        ({"definition": definition("p"), "meta": b'{"last_run_at": "\xc3\x28"}'}, "UTF-8"),
    ],
    ids=["run_now-inf", "run-count-1e400", "every-1e400", "definition-bytes", "meta-bytes"],
)
def test_a_stored_value_nothing_can_decode_parks_only_its_entry(
    app: Celery,
    raw: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, str | bytes],
    named: str,
) -> None:
    assert '"every": 60.0' in definition("p")
    problems = poisoned_ticks(app, raw, caplog, lambda r: [put_raw(r, b"redbeat:p", fields)])
    assert len(problems) == 1, problems
    assert "'p'" in problems[0] and named in problems[0], problems


def test_a_schedule_member_that_is_not_utf8_parks_only_its_entry(
    app: Celery, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    key = b"redbeat:bad-\xff\xfe"
    problems = poisoned_ticks(
        app, raw, caplog, lambda r: [put_raw(r, key, {"definition": definition("bad")})]
    )
    assert len(problems) == 1 and "UTF-8" in problems[0], problems


def test_pending_records_nothing_can_decode_move_to_the_dead_letters(
    app: Celery, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    records = {b"junk-text": b"{not json", b"junk-list": b"[1, 2]", b"junk-\xff": b'{"e": "\xff"}'}

    def write(r: redis.Redis) -> list[bytes]:
        r.hset(PENDING_KEY, mapping=records)  # type: ignore[arg-type]
        return []

    problems = poisoned_ticks(app, raw, caplog, write)
    assert raw.hlen(PENDING_KEY) == 0
    assert raw.hgetall(DEAD_KEY) == records, "kept byte for byte in the dead letters"
    assert len(problems) == 3 and all("dead letters" in p for p in problems), problems


def test_a_schedule_member_naming_a_key_of_another_type_is_dropped_and_the_key_kept(
    app: Celery, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    def write(r: redis.Redis) -> list[bytes]:
        r.set(b"redbeat:text", b"someone else's string")
        r.zadd(SCHEDULE_KEY, {b"redbeat:text": due_now(), KEYS.lease.encode(): due_now()})
        return []

    poisoned_ticks(app, raw, caplog, write)
    assert raw.get(b"redbeat:text") == b"someone else's string"
    assert raw.zscore(SCHEDULE_KEY, b"redbeat:text") is None, "the member pointed at no entry"
    assert raw.zscore(SCHEDULE_KEY, KEYS.lease.encode()) is None
    with Schedule(app) as schedule:
        assert sorted(e.name for e in schedule.list()) == GOOD


def test_owner_set_members_naming_internal_keys_never_delete_them(
    loader_app: Celery, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    scheduler = leader(loader_app, clock)
    redis_client.hset(PENDING_KEY, "some-task-id", "{not json")
    redis_client.hset(DEAD_KEY, "older", "{}")
    redis_client.sadd("redbeat::statics", ":pending", ":dead", ":fence")
    redis_client.sadd("redbeat::loader", ":pending", ":dead")
    fence = redis_client.get("redbeat::fence")
    clock.now += 61  # reconcile: statics and loader own names no source returns
    scheduler.tick()
    assert redis_client.hgetall(DEAD_KEY) == {"older": "{}", "some-task-id": "{not json"}
    assert redis_client.get("redbeat::fence") == fence
    assert scheduler.is_leader


def test_an_empty_pending_record_is_kept_as_a_dead_letter(
    app: Celery, redis_client: redis.Redis
) -> None:
    scheduler = leader(app)
    redis_client.hset(PENDING_KEY, "empty", "")
    scheduler.tick()
    assert redis_client.hgetall(DEAD_KEY) == {"empty": ""}
    assert redis_client.hlen(PENDING_KEY) == 0


def test_a_loader_row_named_with_a_lone_surrogate_is_reported_and_the_rest_applied(
    loader_app: Celery, redis_client: redis.Redis
) -> None:
    loaders.RESULT = [row("bad-\udcff"), row("fine-1"), row("fine-2")]
    leader(loader_app)
    assert loaded_names(redis_client) == {"fine-1", "fine-2"}
    report = reconcile_report(redis_client)
    assert report["created"] == 2 and report["complete"] is False
    assert len(report["errors"]) == 1 and "UTF-8" in report["errors"][0], report


# -- 4) an empty or shrunken load ------------------------------------------------------


def test_an_empty_or_shrunken_load_removes_nothing_until_allowed(
    loader_app: Celery, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    loaders.RESULT = [row(name) for name in "abcd"]
    scheduler = leader(loader_app, clock)
    assert loaded_names(redis_client) == set("abcd")
    metas = {name: redis_client.hget(f"redbeat:{name}", "meta") for name in "abcd"}
    assert all(meta and "last_run_at" in meta for meta in metas.values()), metas
    env = env_for(redis_url, tmp_path)

    loaders.RESULT = []
    clock.now += 61  # past safe_redbeat_reconcile_seconds
    scheduler.tick()
    assert loaded_names(redis_client) == set("abcd"), "an empty load removes nothing"
    assert {n: redis_client.hget(f"redbeat:{n}", "meta") for n in "abcd"} == metas
    status = cli_json(env, "status")
    assert status["last_reconcile"]["removals_held"] == 4, status["last_reconcile"]
    assert "removals held: 4" in cli(env, "status").stdout

    loaders.RESULT = [row("a")]  # the table lost more than half of its rows
    clock.now += 61
    scheduler.tick()
    assert loaded_names(redis_client) == set("abcd")
    assert reconcile_report(redis_client)["removals_held"] == 3

    with Schedule(loader_app) as schedule:
        held = sync_once(schedule, LOADER)
        applied = sync_once(schedule, LOADER, allow_removals=True)
    assert held.held == ["b", "c", "d"] and held.removed == []
    assert applied.removed == ["b", "c", "d"] and applied.held == []
    assert loaded_names(redis_client) == {"a"}
    assert redis_client.hget("redbeat:a", "meta") == metas["a"], "run metadata intact"
    assert scheduler.is_leader


# -- 5) a write-through while the leader's loader call runs -----------------------------


def test_an_entry_written_through_during_a_load_survives_that_reconcile(
    loader_app: Celery, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    loaders.RESULT = [row("a"), row("b")]
    scheduler = leader(loader_app, clock)
    reading, release = threading.Event(), threading.Event()

    def slow_database(rows: list[dict[str, Any]]) -> Callable[[], list[dict[str, Any]]]:
        def load() -> list[dict[str, Any]]:
            reading.set()
            assert release.wait(10), "the test never released the loader"
            return rows  # read before the application's commit: without "new"

        return load

    loaders.RESULT = slow_database([row("a"), row("b")])
    clock.now += 61
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            scheduler.tick()
        except BaseException as exc:  # reported below
            errors.append(exc)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        assert reading.wait(10), "the leader did not call the loader"
        with Schedule(loader_app) as schedule:
            assert upsert_after_commit(schedule, row("new"))
        assert "new" in redis_client.smembers("redbeat::loader")
    finally:
        release.set()
        ticker.join(10)
    assert not ticker.is_alive() and not errors, errors
    assert reconcile_report(redis_client)["removed"] == 0
    assert loaded_names(redis_client) == {"a", "b", "new"}, "the write-through wins"


# -- 6) a deleted loader entry is no longer the loader's --------------------------------


def test_a_manual_entry_under_a_deleted_loader_name_survives_the_next_load(
    loader_app: Celery, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    loaders.RESULT = [row("a"), row("b"), row("c")]
    scheduler = leader(loader_app, clock)
    with Schedule(loader_app) as schedule:
        schedule.delete("a")
        assert redis_client.smembers("redbeat::loader") == {"b", "c"}
        loaders.RESULT = [row("b"), row("c")]  # the row is gone from the database too
        schedule.upsert("a", task="noop", schedule=120)  # then made by hand
        clock.now += 61
        scheduler.tick()
        assert schedule.get("a").schedule.run_every == timedelta(seconds=120)
    assert loaded_names(redis_client) == {"a", "b", "c"}
    assert redis_client.smembers("redbeat::loader") == {"b", "c"}


# -- 7) the guard runs Celery's retries ------------------------------------------------


def test_the_guard_lets_retries_of_a_beat_occurrence_run(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = Celery("guard-retry", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        redbeat_redis_url=redis_url,
        result_backend=None,
        task_default_retry_delay=0,
        worker_hijack_root_logger=False,
    )
    attempts: dict[str, list[int]] = {"manual": [], "auto": []}
    done = threading.Event()

    def manual_run(self: Any) -> str:
        attempts["manual"].append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "ok"

    def auto_run(self: Any) -> str:
        attempts["auto"].append(self.request.retries)
        if self.request.retries == 0:
            raise RuntimeError("first attempt fails")
        done.set()
        return "ok"

    manual = app.task(bind=True, base=OncePerOccurrence, name="retry.manual", max_retries=3)(
        manual_run
    )
    auto = app.task(
        bind=True,
        base=OncePerOccurrence,
        name="retry.auto",
        autoretry_for=(RuntimeError,),
        retry_kwargs={"max_retries": 3, "countdown": 0},
    )(auto_run)

    beat_headers = {"safe_redbeat_scheduled": 1000, "safe_redbeat_entry": "e"}
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        manual.apply_async(task_id="occ-manual", headers=beat_headers)
        auto.apply_async(task_id="occ-auto", headers=beat_headers)
        assert done.wait(15), attempts
        deadline = time.monotonic() + 5
        while attempts["manual"] != [0, 1] and time.monotonic() < deadline:
            time.sleep(0.02)
    assert attempts == {"manual": [0, 1], "auto": [0, 1]}, attempts
    assert redis_client.exists("redbeat::done:occ-manual", "redbeat::done:occ-auto") == 2

    # the same with the retry's request written out (the worker's view of a retry)
    runs: list[int] = []

    def run() -> None:
        runs.append(1)

    guarded = app.task(base=OncePerOccurrence, name="retry.direct")(run)
    for retries in (0, 1, 2, 0):
        guarded.push_request(id="occ-direct", retries=retries, safe_redbeat_scheduled=1000)
        try:
            guarded()
        finally:
            guarded.pop_request()
    assert runs == [1, 1, 1], "retries run; a second copy of the first attempt does not"


# -- 8) run_now in the same second as a claim ------------------------------------------


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_a_run_now_made_during_a_claim_is_sent_at_the_next_tick(
    app: Celery,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    enabled: bool,
) -> None:
    scheduler = leader(app)
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    with Schedule(app) as schedule:
        schedule.upsert("e", task="noop", schedule=3600, enabled=enabled)
        # ran two hours ago: the regular occurrence is due, and is claimed
        redis_client.hset("redbeat:e", "meta", encode_meta(past, 1))
        redis_client.zadd(SCHEDULE_KEY, {"redbeat:e": int(past.timestamp()) + 3600})
        claim = scheduler.shards[0]._settle
        requested: list[datetime] = []

        def run_now_then_claim(ops: Any, **kwargs: Any) -> Any:
            if not requested:  # between the reader's read and the claim
                requested.append(schedule.run_now("e"))
                # run_now.lua moves the score to the request's second; landing in the
                # second the entry is due, that is the score the claim expects
                (op,) = ops
                redis_client.zadd(SCHEDULE_KEY, {op.key: op.expected_score})
            return claim(ops, **kwargs)

        monkeypatch.setattr(scheduler.shards[0], "_settle", run_now_then_claim)
        auditor = QueueAuditor(redis_client)
        scheduler.tick()
        first = auditor.drain()
        scheduler.tick()
        second = auditor.drain()
    assert requested, "the claim ran"
    assert len(first) == (1 if enabled else 0), [m.headers for m in first]
    assert len(second) == 1, "the request is sent at the next tick, not after max_interval"
    assert second[0].headers["safe_redbeat_scheduled"] == int(requested[0].timestamp())
    assert redis_client.hget("redbeat:e", "run_now") is None, "and then consumed"
    scheduler.tick()
    assert auditor.drain() == [], "once"


# -- 9) a key prefix with glob characters ----------------------------------------------


def test_a_prefix_with_glob_characters_sees_its_own_replicas_and_entries_only(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    slow = {"safe_redbeat_lease_seconds": 20.0, "safe_redbeat_renew_seconds": 10.0}
    prefix, lookalike = "r[1]*?:", "r1x:"  # the unescaped glob of the first matches both
    with (
        celery_app("glob", redis_url, redbeat_key_prefix=prefix,
                   safe_redbeat_instance_name="ours", **slow) as ours,
        celery_app("other", redis_url, redbeat_key_prefix=lookalike,
                   safe_redbeat_instance_name="theirs", **slow) as theirs,
    ):  # fmt: skip
        for app in (ours, theirs):
            leader(app)
            with Schedule(app) as schedule:
                schedule.upsert(f"{app.main}-entry", task="noop", schedule=3600)
        with Schedule(ours) as schedule:
            assert [e.name for e in schedule.list()] == ["glob-entry"]
    assert redis_client.scard("r1x::replicas") == 1
    assert redis_client.scard("r[1]*?::replicas") == 1
    status = cli_json(env_for(redis_url, tmp_path, key_prefix=prefix), "status")
    assert [r["instance"] for r in status["replicas"]] == ["ours"], status["replicas"]
    assert status["leader"]["instance"] == "ours"
    assert [d["name"] for d in status["next_due"]] == ["glob-entry"]


# -- 10) the socket timeout follows the renew deadline ---------------------------------


def test_a_short_renew_deadline_alone_is_a_valid_configuration() -> None:
    settings = Settings.from_mapping({"safe_redbeat_renew_seconds": 3})
    assert settings.socket_timeout_seconds == 1.5
    assert Settings.from_mapping({}).socket_timeout_seconds == 5.0
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"safe_redbeat_renew_seconds": 3, "safe_redbeat_socket_timeout": 3})
    assert "safe_redbeat_socket_timeout" in str(info.value)
