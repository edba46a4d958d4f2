"""Atomic enqueue: the claim pushes the very message Celery would have pushed.

The golden tests publish the same call through Celery (``apply_async`` on a real Redis
broker) and build it the atomic way, then compare every command and every field of each
message but kombu's delivery tag (a fresh uuid per message). The script tests drive
``claim.lua`` with broker commands: fenced, all or nothing per operation, across
databases, refusing a queue key of another type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.common import Broadcast
from kombu.entity import Exchange, Queue

from safe_redbeat import SafeRedBeatScheduler
from safe_redbeat.config import Settings
from safe_redbeat.dispatch.enqueue import MessageBuilder, NotAtomic, choose_mode
from safe_redbeat.errors import ConfigurationError
from safe_redbeat.model.occurrence import Occurrence
from safe_redbeat.store.scripts import Claim, ClaimCode, Scripts
from testbed.redis_server import RedisServer
from tests.support import KEYS
from tests.support.inprocess import FakeClock, add_due, make_app

pytestmark = pytest.mark.integration

FENCE = 7
SCHEDULED = 1_700_000_000


def occurrence(task: str = "noop", **options: Any) -> Occurrence:
    return Occurrence(
        task_id="5b0a1a43-0c1c-4b5e-9a57-6a2f0b0c0d01",
        entry="nightly",
        task=task,
        args=[1, "two"],
        kwargs={"three": 3.0},
        options=options,
        scheduled=SCHEDULED,
        fence=FENCE,
    )


def noop(*args: Any, **kwargs: Any) -> None:
    return None


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_app("golden", redis_url)
    app.task(name="noop")(noop)
    try:
        yield app
    finally:
        app.close()


def pushed_by_celery(app: Celery, client: redis.Redis, o: Occurrence) -> list[tuple[str, Any]]:
    """What Celery's own publish pushes for ``o``: (queue key, message) per LPUSH."""
    from safe_redbeat.dispatch.publisher import send_through_celery

    before = set(client.keys("*"))
    with app.producer_or_acquire() as producer:
        send_through_celery(app, producer, o, FENCE)
    pushed: list[tuple[str, Any]] = []
    for key in sorted(set(client.keys("*")) - before):
        if client.type(key) == "list":
            pushed.extend((str(key), json.loads(raw)) for raw in client.lrange(key, 0, -1))
            client.delete(key)
    return pushed


def built(app: Celery, o: Occurrence, version_key: tuple[str, str] | None = None) -> Any:
    with app.producer_or_acquire() as producer:
        commands = MessageBuilder(app, lambda: producer).commands(o, FENCE, version_key)
    return commands


def lpushes(commands: Any) -> list[tuple[str, Any]]:
    return [(key, json.loads(value)) for verb, key, value in commands if verb == "lpush"]


def without_tag(message: dict[str, Any]) -> dict[str, Any]:
    properties = dict(message["properties"])
    assert properties.pop("delivery_tag")
    return {**message, "properties": properties}


def timed_headers(message: dict[str, Any]) -> dict[str, Any]:
    """``eta``/``expires`` out of the headers (they depend on the moment of the build)."""
    headers = dict(message["headers"])
    for name in ("eta", "expires"):
        if headers.get(name):
            headers[name] = datetime.fromisoformat(headers[name])
    return {**message, "headers": headers}


CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "priority": {"priority": 7},
    "queue": {"queue": "reports"},
    "exchange and routing key": {"exchange": "celery", "routing_key": "celery"},
    "headers": {"headers": {"x-tenant": "acme", "n": 3}},
    "serializer and compression": {"serializer": "json", "compression": "zlib"},
    "retries and time limits": {"retries": 2, "time_limit": 30, "soft_time_limit": 20},
    "expires": {"expires": 60},
    "countdown": {"countdown": 5},
}


@pytest.mark.parametrize("options", CASES.values(), ids=list(CASES))
def test_the_message_is_the_one_celery_pushes(
    app: Celery, redis_client: redis.Redis, options: dict[str, Any]
) -> None:
    o = occurrence(**options)
    ours = lpushes(built(app, o))
    theirs = pushed_by_celery(app, redis_client, o)
    assert [key for key, _m in ours] == [key for key, _m in theirs]
    assert len(ours) == 1
    mine, celery = (timed_headers(without_tag(m)) for _key, m in (ours[0], theirs[0]))
    for name in ("eta", "expires"):
        if celery["headers"].get(name):
            assert abs((mine["headers"][name] - celery["headers"][name]).total_seconds()) < 2
            mine["headers"][name] = celery["headers"][name]
    assert mine == celery


def test_a_template_fills_in_what_changes_per_occurrence(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = occurrence()
    later = [
        Occurrence(**{**first.__dict__, "task_id": f"t-{n}", "scheduled": SCHEDULED + 60 * n})
        for n in (1, 2, 3)
    ]
    with app.producer_or_acquire() as producer:
        builder = MessageBuilder(app, lambda: producer)
        key = ("redbeat:nightly", '{"task": "noop"}')
        commands = [builder.commands(o, FENCE, key) for o in (first, *later[:2])]
        template = builder._templates[key]
        assert template is not None and template.verified  # the second build agreed
        calls: list[object] = []
        real_send = Celery.send_task
        monkeypatch.setattr(Celery, "send_task", lambda *a, **k: calls.append(a))
        commands.append(builder.commands(later[2], FENCE, key))
        monkeypatch.setattr(Celery, "send_task", real_send)
    for o, ours in zip((first, *later), commands, strict=True):
        (theirs,) = pushed_by_celery(app, redis_client, o)
        ((_key, mine),) = lpushes(ours)
        assert without_tag(mine) == without_tag(theirs[1])
    tags = [lpushes(c)[0][1]["properties"]["delivery_tag"] for c in commands]
    assert len(set(tags)) == 4


def test_messages_that_vary_are_built_every_time(app: Celery) -> None:
    first = occurrence()
    second = Occurrence(**{**first.__dict__, "task_id": "t-2", "scheduled": SCHEDULED + 60})
    stamps = iter(range(100))

    def stamp(headers: dict[str, object], **kwargs: object) -> None:
        headers["stamp"] = next(stamps)  # a receiver that differs per message

    with app.producer_or_acquire() as producer:
        builder = MessageBuilder(app, lambda: producer)
        key = ("redbeat:nightly", '{"task": "noop"}')
        builder.commands(first, FENCE, key)
        assert builder._templates[key] is not None
        from celery.signals import before_task_publish

        # a publish signal receiver: never templated
        before_task_publish.connect(stamp, weak=False)
        try:
            assert not builder.templated(second)
            ours = lpushes(builder.commands(second, FENCE, key))
        finally:
            before_task_publish.disconnect(stamp)
    assert ours[0][1]["headers"]["stamp"] == 0


def test_routes_prefix_and_unregistered_tasks(redis_url: str, redis_client: redis.Redis) -> None:
    app = make_app(
        "routed",
        redis_url,
        task_routes={"billing.*": {"queue": "billing"}},
        broker_transport_options={"global_keyprefix": "pfx:"},
    )
    try:
        o = occurrence(task="billing.close_day")  # not registered here: sent by name
        ours = lpushes(built(app, o))
        theirs = pushed_by_celery(app, redis_client, o)
        assert [key for key, _m in ours] == [key for key, _m in theirs] == ["pfx:billing"]
        assert without_tag(ours[0][1]) == without_tag(theirs[0][1])
    finally:
        app.close()


def test_a_queue_with_x_expires_gets_the_same_expiry_commands(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_app(
        "expiring",
        redis_url,
        task_queues=[Queue("short", Exchange("short"), "short", expires=120)],  # type: ignore[no-untyped-call]
        task_default_queue="short",
    )
    try:
        o = occurrence()
        commands = built(app, o)
        theirs = pushed_by_celery(app, redis_client, o)
        assert [key for key, _m in lpushes(commands)] == [key for key, _m in theirs]
        expiries = [(key, value) for verb, key, value in commands if verb == "pexpire"]
        with app.connection_for_write() as connection:
            kombu_expires = getattr(connection.default_channel, "_expires", None)
        if kombu_expires is None:  # kombu before 5.5 does not expire Redis queues
            assert expiries == []
        else:
            assert expiries and all(value == "120000" for _key, value in expiries)
    finally:
        app.close()


def test_a_fanout_exchange_is_not_atomic(app: Celery) -> None:
    app.conf.task_queues = [Broadcast("broadcast")]  # type: ignore[no-untyped-call]
    with app.producer_or_acquire() as producer:
        builder = MessageBuilder(app, lambda: producer)
        # undeclared, kombu delivers it nowhere: not atomic either (the publish path
        # then does what Celery does)
        with pytest.raises(NotAtomic, match="no queue list"):
            builder.commands(occurrence(queue="broadcast"), FENCE)
        queue = Broadcast("broadcast")  # type: ignore[no-untyped-call]
        queue.bind(producer.channel).declare()  # type: ignore[no-untyped-call]  # as a worker would
        with pytest.raises(NotAtomic, match="fanout"):
            builder.commands(occurrence(queue="broadcast"), FENCE)


def test_a_task_class_overriding_apply_async_is_not_atomic(app: Celery) -> None:
    from celery import Task

    class Once(Task):  # type: ignore[misc]
        def apply_async(self, *args: Any, **kwargs: Any) -> Any:
            return super().apply_async(*args, **kwargs)

    app.task(name="once", base=Once)(noop)
    with pytest.raises(NotAtomic, match="overrides apply_async"):
        built(app, occurrence(task="once"))


# -- the mode ------------------------------------------------------------------------------


def mode_of(app: Celery, client: redis.Redis, enqueue: str = "auto") -> Any:
    with app.producer_or_acquire() as producer:
        return choose_mode(Settings(enqueue=enqueue), app, client, producer)


def test_auto_is_atomic_on_the_schedules_own_server(
    redis_server: RedisServer, redis_client: redis.Redis, redis_db: int
) -> None:
    other_db = (redis_db + 1) % 16
    app = make_app("modes", redis_server.url_for(other_db))
    try:
        mode = mode_of(app, redis_client)
        assert mode.atomic and mode.databases == (other_db, redis_db)
        assert "database" in mode.reason
        assert not mode_of(app, redis_client, "publish").atomic
    finally:
        app.close()


def test_another_server_is_publish_and_atomic_refuses_it(
    tmp_path: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    with RedisServer(workdir=tmp_path / "other") as other:
        app = make_app("elsewhere", other.url_for(0))
        try:
            mode = mode_of(app, redis_client)
            assert not mode.atomic and "another Redis server" in mode.reason
            with pytest.raises(ConfigurationError, match="safe_redbeat_enqueue"):
                mode_of(app, redis_client, "atomic")
        finally:
            app.close()


def test_other_transports_and_eager_apps_publish(redis_client: redis.Redis) -> None:
    app = Celery("memory", broker="memory://", set_as_current=False)
    try:
        assert "transport" in mode_of(app, redis_client).reason
        app.conf.task_always_eager = True
        assert "task_always_eager" in mode_of(app, redis_client).reason
    finally:
        app.close()


# -- claim.lua with broker commands ------------------------------------------------------


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts(redis_client, KEYS)


def seed(client: redis.Redis, name: str, score: int = 100) -> str:
    key = KEYS.entry(name)
    client.hset(key, mapping={"definition": "{}", "version": "1"})
    client.zadd(KEYS.schedule, {key: score})
    return key


def push(key: str, message: str = "m", queue: str = "celery") -> Claim:
    return Claim(key, 100, "1", 200, pushes=(("lpush", queue, message),))


def test_the_claim_pushes_the_message_in_the_same_step(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    key = seed(redis_client, "a")
    token = scripts.acquire('{"name":"t"}', 10_000).value
    result = scripts.claim(token, [push(key, "m1")])
    assert list(result.codes) == [ClaimCode.CLAIMED]
    assert redis_client.lrange("celery", 0, -1) == ["m1"]
    assert redis_client.zscore(KEYS.schedule, key) == 200
    assert not redis_client.exists(KEYS.pending)  # no pending record on this path
    again = scripts.claim(token, [push(key, "m1")])  # a second claim of the same slot
    assert list(again.codes) == [ClaimCode.SCORE_MOVED]
    assert redis_client.llen("celery") == 1


def test_a_stale_leader_pushes_nothing(scripts: Scripts, redis_client: redis.Redis) -> None:
    key = seed(redis_client, "a")
    scripts.acquire('{"name":"t"}', 10_000)
    assert scripts.claim("stale", [push(key)]).fenced_out
    assert not redis_client.exists("celery")
    assert redis_client.zscore(KEYS.schedule, key) == 100


def test_a_queue_of_another_type_fails_its_operation_alone(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    a, b = seed(redis_client, "a"), seed(redis_client, "b")
    redis_client.set("poisoned", "x")
    token = scripts.acquire('{"name":"t"}', 10_000).value
    result = scripts.claim(token, [push(a, queue="poisoned"), push(b, "mb")])
    assert list(result.codes) == [ClaimCode.QUEUE_REFUSED, ClaimCode.CLAIMED]
    assert redis_client.zscore(KEYS.schedule, a) == 100  # nothing written for a
    assert redis_client.get("poisoned") == "x"
    assert redis_client.lrange("celery", 0, -1) == ["mb"]


def test_the_broker_may_live_in_another_database(
    redis_server: RedisServer, scripts: Scripts, redis_client: redis.Redis, redis_db: int
) -> None:
    other_db = (redis_db + 1) % 16
    broker = redis_server.client(other_db)
    try:
        broker.delete("celery")
        key = seed(redis_client, "a")
        token = scripts.acquire('{"name":"t"}', 10_000).value
        result = scripts.claim(token, [push(key, "m")], databases=(other_db, redis_db))
        assert list(result.codes) == [ClaimCode.CLAIMED]
        assert broker.lrange("celery", 0, -1) == ["m"]
        assert not redis_client.exists("celery")
        assert redis_client.zscore(KEYS.schedule, key) == 200  # and back in our database
        # the connection's own database is untouched by the script's SELECT
        assert redis_client.connection_pool.connection_kwargs["db"] == redis_db
        assert redis_client.dbsize() > 0 and redis_client.exists(KEYS.schedule)
    finally:
        broker.delete("celery")
        broker.close()


# -- the scheduler -------------------------------------------------------------------------


def test_the_scheduler_enqueues_atomically_on_one_redis(
    app: Celery, redis_client: redis.Redis
) -> None:
    add_due(app, ["a", "b", "c"])
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    scheduler.tick()  # elected, seeded, due entries claimed and pushed
    scheduler.tick()
    assert scheduler.enqueuer.decided is not None and scheduler.enqueuer.decided.atomic
    messages = [json.loads(raw) for raw in redis_client.lrange("celery", 0, -1)]
    assert sorted(m["headers"]["safe_redbeat_entry"] for m in messages) == ["a", "b", "c"]
    assert not redis_client.exists(KEYS.pending)


def test_a_template_the_second_message_disagrees_with_is_dropped(
    app: Celery, redis_client: redis.Redis
) -> None:
    app.conf.task_protocol = 1  # the task id is inside the (base64) body too
    first = occurrence()
    later = [
        Occurrence(**{**first.__dict__, "task_id": f"t-{n}", "scheduled": SCHEDULED + 60 * n})
        for n in (1, 2)
    ]
    with app.producer_or_acquire() as producer:
        builder = MessageBuilder(app, lambda: producer)
        key = ("redbeat:nightly", '{"task": "noop"}')
        commands = [builder.commands(o, FENCE, key) for o in (first, *later)]
    assert builder._templates[key] is None
    for o, ours in zip((first, *later), commands, strict=True):
        (theirs,) = pushed_by_celery(app, redis_client, o)
        assert without_tag(lpushes(ours)[0][1]) == without_tag(theirs[1])
