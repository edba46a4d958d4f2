"""Property: whatever another program writes into the keys the scheduler reads, no tick
raises, every well-formed entry is dispatched once, and nothing is written to an entry's
hash unless that entry was dispatched.

Hypothesis generates the values (bytes that are not UTF-8, huge and non-finite numbers,
wrong JSON types, nested garbage, empty strings) for every field: the entry hash fields
``definition``/``meta``/``version``/``run_now`` and their JSON sub-fields, schedule members
and scores in the due range, pending records, statics and loader set members, the lease
value of another holder, heartbeats and the reconcile report. Driven in this process
against the suite's real Redis; the CLI runs once at the end, on the last example's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safe_redbeat import SafeRedBeatScheduler
from testbed.beat import QueueAuditor
from tests.apps import loaders
from tests.integration.test_bad_input import GOOD, VALID_DEFINITION, add_due
from tests.integration.test_cli import cli, env_for
from tests.support import KEYS
from tests.support.inprocess import FakeClock, celery_app

pytestmark = pytest.mark.integration

PREFIX = b"redbeat:"
SCHEDULE, PENDING, DEAD = b"redbeat::schedule", b"redbeat::pending", b"redbeat::dead"
LEASE, RECONCILE = KEYS.lease.encode(), b"redbeat::reconcile"
INTERNAL = (b":schedule", b":pending", b":dead", b":lock", b":statics", b":loader", b":fence")

#: JSON number literals ``json.dumps`` cannot write: they decode to inf or a huge int
NUMBER_LITERALS = ["1e400", "-1e400", "Infinity", "-Infinity", "NaN", "9" * 400, "-0", "1e-400"]
_PLACEHOLDER = "\x00number\x00"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.just(_PLACEHOLDER),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def json_text(draw: st.DrawFn, value: st.SearchStrategy[Any] = json_values) -> bytes:
    """JSON text of ``value``, with number literals no encoder writes spliced in."""
    text = json.dumps(draw(value))
    while f'"{_PLACEHOLDER}"'.replace("\x00", "\\u0000") in text:
        literal = draw(st.sampled_from(NUMBER_LITERALS))
        text = text.replace(f'"{_PLACEHOLDER}"'.replace("\x00", "\\u0000"), literal, 1)
    return text.encode()


raw_bytes = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"", b"\xff\xfe", b"\xc3\x28", b"inf", b"nan", b"-1", b"1e400", b"9" * 40]),
)
any_value = st.one_of(raw_bytes, json_text())

#: definition sub-fields replaced by a hostile JSON value (None: the whole field)
DEFINITION_PATHS = [
    ("task",),
    ("args",),
    ("kwargs",),
    ("options",),
    ("options", "headers"),
    ("options", "queue"),
    ("options", "priority"),
    ("options", "expires"),
    ("enabled",),
    ("schedule",),
    ("schedule", "every"),
    ("schedule", "__type__"),
    ("schedule", "minute"),
    ("name",),
]
CRONTAB = {"__type__": "crontab", "minute": "*", "hour": "*", "day_of_week": "*",
           "day_of_month": "*", "month_of_year": "*"}  # fmt: skip


@st.composite
def definitions(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(any_value)
    definition: dict[str, Any] = json.loads(json.dumps(VALID_DEFINITION))
    path = draw(st.sampled_from(DEFINITION_PATHS))
    if path[0] == "schedule" and draw(st.booleans()):
        definition["schedule"] = dict(CRONTAB)
    target = definition
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[path[-1]] = _PLACEHOLDER
    text = json.dumps(definition).replace(
        f'"{_PLACEHOLDER}"'.replace("\x00", "\\u0000"), draw(json_text()).decode()
    )
    return text.encode()


@st.composite
def metas(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(any_value)
    last = draw(st.one_of(json_values, st.fixed_dictionaries({"__type__": st.just("datetime"),
                                                               "year": json_values})))  # fmt: skip
    count = draw(json_values)
    text = json.dumps({"last_run_at": last, "total_run_count": count})
    return text.replace(f'"{_PLACEHOLDER}"'.replace("\x00", "\\u0000"), "1e400").encode()


entry_hashes = st.fixed_dictionaries(
    {},
    optional={
        b"definition": definitions(),
        b"meta": metas(),
        b"version": any_value,
        b"run_now": any_value,
    },
)


@st.composite
def poison(draw: st.DrawFn) -> dict[str, Any]:
    now = int(datetime.now(timezone.utc).timestamp())
    entries = draw(st.lists(entry_hashes, min_size=1, max_size=3))
    scores = draw(
        st.lists(
            st.sampled_from([0, 1, now - 86400, now - 3600, now - 60, now - 1]),
            min_size=len(entries),
            max_size=len(entries),
        )
    )
    members = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=12).map(lambda b: PREFIX + b),
                st.sampled_from(INTERNAL).map(lambda b: PREFIX + b),
                st.binary(max_size=12),
            ),
            max_size=3,
        )
    )
    names = st.one_of(st.binary(max_size=12), st.sampled_from(INTERNAL), st.just(b""))
    return {
        "entries": list(zip(entries, scores, strict=True)),
        "members": members,
        "pending": draw(st.dictionaries(st.binary(max_size=10), any_value, max_size=3)),
        "statics": draw(st.lists(names, max_size=3)),
        "loader": draw(st.lists(names, max_size=3)),
        "lease": draw(any_value),
        "heartbeats": draw(st.dictionaries(st.binary(max_size=8), any_value, max_size=2)),
        "reconcile": draw(any_value),
    }


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    loaders.RESULT = []  # an empty load: the loader's owned names are read, none removed
    with celery_app("hostile", redis_url, safe_redbeat_loader="tests.apps.loaders:load") as app:
        yield app


def _write(raw: redis.Redis, data: dict[str, Any]) -> dict[bytes, dict[bytes, bytes]]:
    """Write the poison next to the good entries; return the poisoned hashes as written."""
    hashes: dict[bytes, dict[bytes, bytes]] = {}
    for index, (fields, score) in enumerate(data["entries"]):
        key = PREFIX + b"poison-%d" % index
        if fields:
            raw.hset(key, mapping=fields)
            hashes[key] = dict(fields)
        raw.zadd(SCHEDULE, {key: score})
    for member in data["members"]:
        if raw.type(member) in (b"none", b"hash") and member not in hashes:
            raw.zadd(SCHEDULE, {member: 1})
            if raw.exists(member):
                hashes[member] = dict(raw.hgetall(member))  # type: ignore[arg-type]
        else:  # an internal key: pointed at from the schedule
            raw.zadd(SCHEDULE, {member: 1})
    if data["pending"]:
        raw.hset(PENDING, mapping=data["pending"])
    taken = {PREFIX + b"poison-%d" % i for i in range(len(data["entries"]))}
    for set_key, names in ((b"redbeat::statics", data["statics"]), (b"redbeat::loader",
                                                                     data["loader"])):  # fmt: skip
        for name in names:
            if PREFIX + name not in taken and name not in {g.encode() for g in GOOD}:
                raw.sadd(set_key, name)
    return hashes


def test_no_stored_value_stops_a_tick_or_a_good_entry(
    app: Celery, raw: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=poison())
    def check(data: dict[str, Any]) -> None:
        raw.flushdb()
        ticks_with_poison(app, raw, data)
        examples.append(1)

    examples: list[int] = []
    check()
    assert len(examples) >= 30, "the property ran on too few examples to mean anything"
    # the CLI, once, on the last example's data and one more of each value only it reads
    for value in (b"\xff\xfe", b"[1e400]", b'{"role": []}', b""):
        raw.set(b"redbeat::replica:x-" + value, value, ex=30)
    raw.set(RECONCILE, b'{"errors": "\xff", "removals_held": 1e400, "source": []}')
    env = env_for(redis_url, tmp_path)
    for command in ("status", "list"):
        result = cli(env, command, "--json")
        assert result.returncode == 0, (command, result.stderr)
        assert isinstance(json.loads(result.stdout), dict)


def ticks_with_poison(app: Celery, raw: redis.Redis, data: dict[str, Any]) -> None:
    clock = FakeClock()
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
    scheduler.tick()
    assert scheduler.is_leader
    add_due(app, GOOD)
    hashes = _write(raw, data)
    auditor = QueueAuditor(raw)
    clock.now += 61  # the next tick reconciles too: statics and loader sets are read
    for _ in range(3):
        scheduler.tick()
        clock.now += 1
    sent = auditor.drain()
    entries = [m.headers.get("safe_redbeat_entry") for m in sent]
    assert sorted(e for e in entries if e in GOOD) == GOOD, entries
    assert scheduler.is_leader
    for key, fields in hashes.items():
        name = key[len(PREFIX) :].decode("utf-8", "surrogateescape")
        if name not in entries:  # only a dispatch writes to an entry's hash, ...
            after, before = raw.hgetall(key), dict(fields)
            if not before.get(b"meta"):  # ... or the first run's anchor of a valid entry
                after.pop(b"meta", None)
                before.pop(b"meta", None)
            assert after == before, key
    sent_ids = {m.task_id for m in sent}
    for task_id, record in data["pending"].items():
        kept = raw.hget(PENDING, task_id) == record or raw.hget(DEAD, task_id) == record
        assert kept or task_id.decode("utf-8", "replace") in sent_ids, (task_id, record)

    # values only the CLI and standbys read
    for instance, value in data["heartbeats"].items():
        raw.set(b"redbeat::replica:" + instance, value, ex=30)
    raw.set(RECONCILE, data["reconcile"])
    raw.set(LEASE, data["lease"], px=30_000)  # another holder's lease
    standby = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    for _ in range(2):
        standby.tick()
    assert not standby.is_leader
    scheduler.tick()  # the old leader finds the lease taken
    assert not scheduler.is_leader
