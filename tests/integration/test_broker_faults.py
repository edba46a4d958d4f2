"""The broker is a component that fails too: down, or refusing one message.

The broker here is its own real Redis server (with AOF, so a restart keeps its queues),
apart from the schedule's. A replica is driven in this process with the real clock, its
ticks called as beat would call them (the tick's delay, capped), while the broker is
stopped or one queue key is made a SET. What must hold:

* while the broker is down the leader claims nothing new, so after the outage each entry
  runs once for the whole outage, not once per period it lasted (and never under two task
  ids);
* a message the broker refuses on its own (its queue key holds another type, options
  kombu rejects) is not taken for an outage: every other entry keeps running, and the
  refused one is dead-lettered after ``safe_redbeat_publish_attempts``.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler, Schedule
from testbed.redis_server import RedisServer
from tests.support import KEYS
from tests.support.inprocess import FAST

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(appendonly=True, workdir=tmp_path_factory.mktemp("broker")) as server:
        yield server


@pytest.fixture
def broker_client(broker: RedisServer) -> Iterator[redis.Redis]:
    if not broker.running():
        broker.start()
    client = broker.client()
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def app(redis_url: str, broker: RedisServer, broker_client: redis.Redis) -> Iterator[Celery]:
    app = Celery("broker-faults", set_as_current=False)
    app.conf.update(
        broker_url=broker.url,
        redbeat_redis_url=redis_url,
        timezone="UTC",
        result_expires=None,
        beat_max_loop_interval=5,
        safe_redbeat_publish_attempts=3,
        **FAST,
    )
    try:
        yield app
    finally:
        app.close()


@dataclass(frozen=True)
class Sent:
    task_id: str
    entry: str
    scheduled: int


def sent_messages(client: redis.Redis, *queues: str) -> list[Sent]:
    """Every message in ``queues`` of the broker (kombu's Redis transport: one LIST each)."""
    found = []
    for queue in queues:
        for raw in client.lrange(queue, 0, -1):
            headers = json.loads(raw)["headers"]
            entry = headers["safe_redbeat_entry"]
            found.append(Sent(headers["id"], entry, int(headers["safe_redbeat_scheduled"])))
    return found


def run_ticks(
    scheduler: SafeRedBeatScheduler, seconds: float, until: Callable[[], bool] | None = None
) -> None:
    """Tick as beat does (sleeping the tick's delay, at most 0.2 s) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        delay = scheduler.tick()
        if until is not None and until():
            return
        time.sleep(min(max(delay, 0.01), 0.2))


def two_ids(messages: list[Sent]) -> dict[tuple[str, int], set[str]]:
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for message in messages:
        ids[message.entry, message.scheduled].add(message.task_id)
    return {occurrence: found for occurrence, found in ids.items() if len(found) > 1}


def test_a_broker_outage_yields_one_run_per_entry_not_a_burst(
    app: Celery, broker: RedisServer, broker_client: redis.Redis, redis_client: redis.Redis
) -> None:
    schedules = Schedule(app)
    schedules.upsert("every-second", "noop", 1.0)
    schedules.upsert("every-2s", "noop", 2.0)
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        run_ticks(scheduler, 5.0, until=lambda: broker_client.llen("celery") >= 3)
        assert broker_client.llen("celery") >= 3, "nothing was sent before the outage"

        before = {m.task_id for m in sent_messages(broker_client, "celery")}
        broker.stop()
        most_pending = 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            time.sleep(min(max(scheduler.tick(), 0.01), 0.2))
            most_pending = max(most_pending, redis_client.hlen(KEYS.pending))
        # at most what was due when the broker went away: one occurrence per entry
        assert most_pending <= 2, f"{most_pending} occurrences claimed while the broker was down"

        broker.start()
        up = time.time()
        run_ticks(scheduler, 10.0, until=lambda: redis_client.hlen(KEYS.pending) == 0)
        assert redis_client.hlen(KEYS.pending) == 0
        run_ticks(scheduler, 2.5)
    finally:
        scheduler.close()

    messages = sent_messages(broker_client, "celery")
    assert not two_ids(messages), f"occurrences under two task ids: {two_ids(messages)}"
    # the occurrences the outage released: sent after it, scheduled before its end
    released = {(m.entry, m.scheduled) for m in messages if m.task_id not in before}
    during = Counter(entry for entry, scheduled in released if scheduled < up)
    assert during, "the outage window holds no run at all: the test did not hit it"
    burst = {entry: runs for entry, runs in during.items() if runs > 1}
    assert not burst, f"more than one run per entry for one outage: {burst}"
    after = [m for m in messages if m.scheduled > up + 0.5 and m.entry == "every-second"]
    assert after, "the entry did not go on running after the outage"


def test_a_queue_key_of_another_type_is_that_entrys_fault_not_the_brokers(
    app: Celery, broker_client: redis.Redis, redis_client: redis.Redis
) -> None:
    schedules = Schedule(app)
    schedules.upsert("good", "noop", 1.0)
    schedules.upsert("bad", "noop", 1.0, options={"queue": "poisoned"})
    broker_client.sadd("poisoned", "not a queue")  # another program's key
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        run_ticks(scheduler, 6.0)
    finally:
        scheduler.close()

    good = sent_messages(broker_client, "celery")
    occurrences = {m.scheduled for m in good}
    assert len(occurrences) >= 4, f"the good entry ran {len(occurrences)} times in 6 s"
    dead = redis_client.hgetall(KEYS.dead)
    assert dead, "the refused message was never dead-lettered"
    assert all(json.loads(record)["entry"] == "bad" for record in dead.values())
    assert all(json.loads(record)["attempts"] == 3 for record in dead.values())


def test_a_batch_failing_on_one_queue_still_delivers_the_others(
    app: Celery, broker_client: redis.Redis, redis_client: redis.Redis
) -> None:
    """The queue is declared while it is a list, then another program makes it a SET: the
    broker batch itself fails (WRONGTYPE on LPUSH) after pushing the others."""
    schedules = Schedule(app)
    for index in range(5):
        schedules.upsert(f"good-{index}", "noop", 1.0)
    schedules.upsert("bad", "noop", 1.0, options={"queue": "poisoned"})
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        run_ticks(scheduler, 5.0, until=lambda: broker_client.llen("poisoned") >= 1)
        assert broker_client.llen("poisoned") >= 1
        broker_client.delete("poisoned")
        broker_client.sadd("poisoned", "not a queue")
        poisoned_at = time.time()
        run_ticks(scheduler, 6.0)
    finally:
        scheduler.close()

    good = [m for m in sent_messages(broker_client, "celery") if m.scheduled > poisoned_at]
    for index in range(5):
        runs = {m.scheduled for m in good if m.entry == f"good-{index}"}
        assert len(runs) >= 4, f"good-{index} ran {len(runs)} times in 6 s beside the bad queue"
    copies = Counter(m.task_id for m in good)
    resent = {task_id: n for task_id, n in copies.items() if n > 1}
    # one batch may be re-sent message by message once (same ids), never every period
    assert len(resent) <= 5, f"{len(resent)} task ids sent more than once: {resent}"
    assert max(copies.values()) <= 2
    assert redis_client.hlen(KEYS.dead) >= 1, "the refused message was never dead-lettered"


def test_options_kombu_rejects_stop_only_that_entry(
    app: Celery, broker_client: redis.Redis, redis_client: redis.Redis
) -> None:
    """Stored by another program (the API refuses them): kombu would raise KeyError, which
    its Redis transport reports as a connection error. The reader parks the entry."""
    schedules = Schedule(app)
    schedules.upsert("good", "noop", 1.0)
    schedules.upsert("bad", "noop", 1.0)
    definition = json.loads(redis_client.hget("redbeat:bad", "definition") or "{}")
    definition["options"] = {"compression": "zstd-typo"}
    redis_client.hset("redbeat:bad", "definition", json.dumps(definition))
    scheduler = SafeRedBeatScheduler(app=app)
    try:
        run_ticks(scheduler, 6.0)
    finally:
        scheduler.close()

    runs = {m.scheduled for m in sent_messages(broker_client, "celery") if m.entry == "good"}
    assert len(runs) >= 4, f"the good entry ran {len(runs)} times in 6 s"
    assert not [m for m in sent_messages(broker_client, "celery") if m.entry == "bad"]
    assert redis_client.hlen(KEYS.pending) == 0
