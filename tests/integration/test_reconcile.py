"""Reconcile by content: an unchanged load writes nothing, a change in any field is written.

Every path a reconcile can take is run: with the snapshot taken before loading (the
leader and ``sync``: unchanged entries are told by the snapshot's digests), without one
(the reconcile reads its own), and with versions only (every entry compared by
``diff.lua``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery

from safe_redbeat import Schedule
from safe_redbeat.store.scripts import NO_DIGEST
from safe_redbeat.sync.loader import parse_specs
from safe_redbeat.sync.reconcile import Reconciler, ReconcileResult, Snapshot
from tests.support import KEYS
from tests.support.inprocess import celery_app

pytestmark = pytest.mark.integration

START = datetime(2030, 1, 1, 12, 0)


def rows() -> list[dict[str, Any]]:
    """Loader rows using every field a row can carry (fresh objects on each call)."""
    return [
        {"name": "interval", "task": "noop", "schedule": 60},
        {"name": "cron", "task": "noop", "schedule": "*/5 * * * *", "tz": "Europe/Berlin"},
        {
            "name": "rich",
            "task": "noop",
            "schedule": 300,
            "args": [1, "a", [2.5, None]],
            "kwargs": {"b": {"y": True, "x": [1, 2]}, "a": "\u00e9"},
            "options": {"queue": "q", "priority": 3, "headers": {"h": "v"}},
        },
        {
            "name": "lifetime",
            "task": "noop",
            "schedule": "0 3 * * *",
            "start_time": START,
            "expires": START + timedelta(days=30),
            "max_runs": 5,
        },
        {"name": "off", "task": "noop", "schedule": 120, "enabled": False},
        {"name": "once", "task": "noop", "at": datetime(2031, 6, 1, 9, 30)},
        {"name": "soon", "task": "noop", "schedule": 3600, "run_immediately": True},
    ]


def same_rows_written_differently() -> list[dict[str, Any]]:
    """:func:`rows` with equal content in other forms: key order, tuples, floats, aware
    datetimes, a source ``last_run_at`` (used only when Redis has no run history)."""
    loaded = rows()
    loaded[0] = {"schedule": 60.0, "task": "noop", "name": "interval"}
    loaded[2]["args"] = (1, "a", (2.5, None))
    loaded[2]["kwargs"] = {"a": "\u00e9", "b": {"x": [1, 2], "y": True}}
    loaded[3]["start_time"] = START.replace(tzinfo=timezone.utc)
    loaded[4]["last_run_at"] = datetime(2020, 1, 1, tzinfo=timezone.utc)
    return loaded


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("reconcile", redis_url) as app:
        yield app


@pytest.fixture
def reconciler(app: Celery) -> Iterator[Reconciler]:
    with Schedule(app) as schedules:
        yield Reconciler(
            schedules.client,
            schedules.keys,
            schedules.shards()[0].scripts,
            app,
            source="loader",
            owned_key=schedules.keys.loader,
        )


def with_snapshot(reconciler: Reconciler, items: list[dict[str, Any]]) -> ReconcileResult:
    """As the leader and ``sync`` do: the snapshot first, then the load."""
    snapshot = reconciler.snapshot()
    return reconciler.run(parse_specs(items).specs, versions=snapshot)


def without_snapshot(reconciler: Reconciler, items: list[dict[str, Any]]) -> ReconcileResult:
    return reconciler.run(parse_specs(items).specs)


def versions_only(reconciler: Reconciler, items: list[dict[str, Any]]) -> ReconcileResult:
    """Versions without digests: every entry goes through ``diff.lua``."""
    versions = dict(reconciler.snapshot())
    return reconciler.run(parse_specs(items).specs, versions=versions)


PATHS = [with_snapshot, without_snapshot, versions_only]
Path = Callable[[Reconciler, list[dict[str, Any]]], ReconcileResult]


def write_commands(client: redis.Redis) -> int:
    """Write commands the server executed so far, those run inside scripts included."""
    writes = {name for name, info in client.command().items() if "write" in info["flags"]}
    stats = client.info("commandstats")
    return sum(
        stat["calls"]
        for key, stat in stats.items()
        if key.removeprefix("cmdstat_").split("|")[0] in writes
    )


def stored(client: redis.Redis, name: str) -> dict[str, str]:
    return {str(field): str(value) for field, value in client.hgetall(KEYS.entry(name)).items()}


@pytest.mark.parametrize("path", PATHS)
def test_an_unchanged_load_writes_nothing(
    reconciler: Reconciler, redis_client: redis.Redis, path: Path
) -> None:
    first = path(reconciler, rows())
    assert len(first.created) == len(rows()) and not first.errors
    before = {row["name"]: stored(redis_client, row["name"]) for row in rows()}
    writes = write_commands(redis_client)
    for items in (rows(), same_rows_written_differently()):
        result = path(reconciler, items)
        assert (result.created, result.updated, result.removed) == ([], [], [])
        assert (result.unchanged, result.conflicts, result.errors) == (len(items), [], [])
    assert write_commands(redis_client) == writes
    assert {row["name"]: stored(redis_client, row["name"]) for row in rows()} == before


#: (row, field, new value): each a change a reconcile must write
CHANGES = [
    ("interval", "schedule", 61),
    ("interval", "schedule", "*/5 * * * *"),
    ("cron", "schedule", "*/10 * * * *"),
    ("interval", "task", "other"),
    ("rich", "args", [1, "a", [2.5, 0]]),
    ("rich", "args", []),
    ("rich", "kwargs", {"b": {"y": False, "x": [1, 2]}, "a": "\u00e9"}),
    ("rich", "kwargs", {"b": {"y": True, "x": [1, 2.0]}, "a": "\u00e9"}),
    ("rich", "kwargs", {"b": {"y": True, "x": [1, 2]}, "a": "e"}),
    ("rich", "options", {"queue": "other", "priority": 3, "headers": {"h": "v"}}),
    ("rich", "options", {"queue": "q", "priority": 3, "headers": {"h": "w"}}),
    ("rich", "options", {}),
    ("off", "enabled", True),
    ("interval", "enabled", False),
    ("lifetime", "start_time", START + timedelta(days=1)),
    ("lifetime", "expires", None),
    ("lifetime", "max_runs", 6),
    ("cron", "tz", "America/New_York"),
    ("cron", "tz", None),
    ("interval", "expires", datetime(2040, 1, 1)),
    ("interval", "run_immediately", True),
    ("soon", "run_immediately", False),
    ("once", "at", datetime(2031, 6, 1, 9, 31)),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("name", "field", "value"), CHANGES, ids=[f"{n}-{f}-{v!r}" for n, f, v in CHANGES]
)
def test_a_change_in_any_field_is_written(
    reconciler: Reconciler,
    redis_client: redis.Redis,
    path: Path,
    name: str,
    field: str,
    value: Any,
) -> None:
    path(reconciler, rows())
    before = {row["name"]: stored(redis_client, row["name"]) for row in rows()}
    changed = rows()
    row = next(row for row in changed if row["name"] == name)
    row[field] = value
    result = path(reconciler, changed)
    assert (result.updated, result.created, result.conflicts, result.errors) == ([name], [], [], [])
    assert result.unchanged == len(changed) - 1
    after = {row["name"]: stored(redis_client, row["name"]) for row in rows()}
    assert after[name]["version"] == "2"
    expected = parse_specs([row]).specs[0].in_zone(timezone.utc)
    assert after[name]["definition"] == expected.definition()
    assert after[name].get("lifecycle", "") == expected.lifecycle.encode()
    assert after[name] != before[name]
    assert {k: v for k, v in after.items() if k != name} == {
        k: v for k, v in before.items() if k != name
    }


def test_a_write_after_the_snapshot_is_kept_when_the_load_matches_the_snapshot(
    app: Celery, reconciler: Reconciler, redis_client: redis.Redis
) -> None:
    """The loader read its database before an application's write-through: its rows are
    what the snapshot holds, so nothing is written over the application's newer entry."""
    with_snapshot(reconciler, rows())
    snapshot = reconciler.snapshot()
    with Schedule(app) as schedules:
        schedules.upsert("interval", task="noop", schedule=90)
    writes = write_commands(redis_client)
    result = reconciler.run(parse_specs(rows()).specs, versions=snapshot)
    assert (result.updated, result.conflicts, result.unchanged) == ([], [], len(rows()))
    assert write_commands(redis_client) == writes
    assert '"every": 90.0' in stored(redis_client, "interval")["definition"]


def test_the_snapshot_holds_versions_and_content_digests(
    reconciler: Reconciler, raw: redis.Redis
) -> None:
    with_snapshot(reconciler, rows())
    raw.hdel(KEYS.entry("off"), "definition")  # a hash without a definition
    raw.sadd(KEYS.loader, "gone")  # owned, no entry
    snapshot = reconciler.snapshot()
    assert isinstance(snapshot, Snapshot)
    assert snapshot == {**{row["name"]: 1 for row in rows()}, "gone": 0}
    assert snapshot.digests["off"] == snapshot.digests["gone"] == NO_DIGEST
    spec = parse_specs([rows()[3]]).specs[0].in_zone(timezone.utc)
    content = spec.definition() + "\n" + spec.lifecycle.encode()
    assert snapshot.digests["lifetime"] == hashlib.sha1(content.encode()).hexdigest()


@pytest.mark.parametrize(
    "members", [set(), {"a"}, {"", "a", "b c"}, {"a", "line\nbreak", "x"}, {"\n", "a"}]
)
def test_members_reads_a_set_whatever_its_members_hold(
    reconciler: Reconciler, raw: redis.Redis, members: set[str]
) -> None:
    if members:
        raw.sadd("some-set", *members)
    assert sorted(reconciler.scripts.members("some-set")) == sorted(members)
