"""Signals, metrics, JSON logs and beat hooks, with the scheduler ticked in this process.

The real Redis of the suite; the monotonic clock is the fake one, so "the lease expired"
is a jump of it.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.beat import Scheduler
from prometheus_client import CollectorRegistry

import safe_redbeat
from safe_redbeat import SafeRedBeatScheduler, Schedule, signals
from safe_redbeat.dispatch.hooks import patched_hook
from safe_redbeat.metrics import ENTRY_STATES, SchedulerMetrics
from safe_redbeat.model.occurrence import task_id_for
from safe_redbeat.observe import jsonlog
from safe_redbeat.store.layout import Layout
from testbed.beat import QueueAuditor
from tests.support import KEYS
from tests.support.inprocess import FakeClock, add_due, celery_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("monitoring", redis_url, safe_redbeat_publish_attempts=2) as app:
        yield app


class Recorder:
    """Connects to signals; ``events[name]`` lists the keyword arguments of each send."""

    def __init__(self, *names: str) -> None:
        self.events: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        self._connected: list[tuple[Any, Callable[..., None]]] = []
        for name in names:
            signal = getattr(signals, name)

            def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
                kwargs.pop("signal", None)
                self.events[_name].append({"sender": sender, **kwargs})

            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))

    def close(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder("leadership_changed", "occurrence_sent", "occurrences_sent", "tick_finished")
    try:
        yield rec
    finally:
        rec.close()


def test_signals_fire_once_per_event(
    app: Celery, redis_client: redis.Redis, recorder: Recorder
) -> None:
    clock = FakeClock()
    scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
    scheduler.tick()
    acquired = recorder.events["leadership_changed"]
    assert [(e["change"], e["fence"], e["cause"]) for e in acquired] == [
        ("acquired", scheduler.shards[0].leadership.lease.fence, None)
    ]
    assert acquired[0]["sender"] is scheduler and acquired[0]["instance"]

    add_due(app, ["a", "b", "c"])
    scheduler.tick()
    scheduler.tick()  # nothing due any more: no further sends
    sent = recorder.events["occurrence_sent"]
    assert sorted(e["entry"] for e in sent) == ["a", "b", "c"]
    for event in sent:
        assert event["republished"] is False
        assert event["task_id"] == task_id_for(f"redbeat:{event['entry']}", event["scheduled"])
        assert event["fence"] == scheduler.shards[0].leadership.lease.fence
        assert 0 <= event["sent_at"] - event["scheduled"] < 300
    batches = recorder.events["occurrences_sent"]
    assert [len(b["occurrences"]) for b in batches] == [3]

    redis_client.delete(KEYS.lease)
    clock.now += 1  # renewal due: finds the key gone
    scheduler.tick()
    lost = recorder.events["leadership_changed"][1:]
    assert [(e["change"], e["cause"]) for e in lost] == [("lost", "key_gone")]
    assert "lease key is gone" in lost[0]["reason"]

    scheduler.tick()  # reacquires
    scheduler.close()
    changes = [e["change"] for e in recorder.events["leadership_changed"]]
    assert changes == ["acquired", "lost", "acquired", "released"]
    ticks = recorder.events["tick_finished"]
    assert len(ticks) == 5 and all(t["duration"] >= 0 for t in ticks)
    assert [t["leader"] for t in ticks] == [True, True, True, False, True]


def test_a_republished_occurrence_is_signalled_as_republished(
    app: Celery, redis_client: redis.Redis, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_due(app, ["a", "b"])
    app.conf.safe_redbeat_enqueue = "publish"  # a pending record only exists there
    crashed = SafeRedBeatScheduler(app=app, monotonic=FakeClock())

    def die(claimed: object) -> None:
        raise SystemExit(1)

    monkeypatch.setattr(crashed.shards[0], "_publish_claimed", die)  # the process dies here
    with pytest.raises(SystemExit):
        crashed.tick()
    pending = set(redis_client.hgetall("redbeat::pending"))
    assert len(pending) == 2 and recorder.events["occurrence_sent"] == []
    redis_client.delete(KEYS.lease)
    successor = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    successor.tick()
    sent = recorder.events["occurrence_sent"]
    assert {e["task_id"] for e in sent} == pending
    assert all(e["republished"] for e in sent) and len(sent) == 2


def test_metrics_follow_the_scheduler(app: Celery, redis_client: redis.Redis) -> None:
    registry = CollectorRegistry(auto_describe=False)
    metrics = SchedulerMetrics(registry)
    try:
        clock = FakeClock()
        scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        assert value("safe_redbeat_is_leader") == 0
        scheduler.tick()
        assert value("safe_redbeat_is_leader") == 1
        assert value("safe_redbeat_fence") == scheduler.shards[0].leadership.lease.fence
        assert value("safe_redbeat_renew_deadline_seconds") == pytest.approx(2.0)
        assert value("safe_redbeat_lease_seconds_left") == pytest.approx(2.0)  # deprecated name
        assert value("safe_redbeat_leads_shard", shard="0") == 1
        add_due(app, ["a", "b", "c"])
        redis_client.hset("redbeat:broken", mapping={"definition": "{not json", "meta": "{}"})
        redis_client.zadd("redbeat::schedule", {"redbeat:broken": 0})
        scheduler.tick()
        assert value("safe_redbeat_occurrences_claimed_total") == 3
        assert value("safe_redbeat_occurrences_sent_total") == 3
        assert value("safe_redbeat_occurrences_republished_total") == 0
        assert value("safe_redbeat_entries_parked_total") == 1
        assert value("safe_redbeat_occurrences_parked_total") == 1  # deprecated name
        assert value("safe_redbeat_dispatch_lag_seconds_count") == 3
        assert value("safe_redbeat_pending_occurrences") == 0
        assert value("safe_redbeat_dead_occurrences") == 0
        assert value("safe_redbeat_pending") == 0  # deprecated names
        assert value("safe_redbeat_dead") == 0
        assert value("safe_redbeat_entries", state="active") == 3
        assert value("safe_redbeat_entries", state="parked") == 1
        # the test Redis persists nothing; a, b, c and the broken one are no static's
        assert value("safe_redbeat_redis_persistence", mode="none") == 1
        assert value("safe_redbeat_redis_persistence", mode="aof") == 0
        assert value("safe_redbeat_redis_only_entries") == 4
        assert value("safe_redbeat_tick_duration_seconds_count", role="leader") == 2
        assert value("safe_redbeat_reconciles_total", source="beat_schedule", result="ok") == 1
        reconciled = value("safe_redbeat_reconcile_last_success_timestamp_seconds",
                           source="beat_schedule")  # fmt: skip
        assert reconciled is not None and abs(reconciled - time.time()) < 60
        assert len(QueueAuditor(redis_client).drain()) == 3

        redis_client.delete(KEYS.lease)
        clock.now += 1
        scheduler.tick()
        assert value("safe_redbeat_is_leader") == 0
        assert value("safe_redbeat_leads_shard", shard="0") == 0
        assert value("safe_redbeat_fence") == 0
        assert value("safe_redbeat_entries", state="active") is None  # leader only
        assert value("safe_redbeat_redis_only_entries") is None  # leader only
        assert value("safe_redbeat_leadership_changes_total", change="lost", cause="key_gone") == 1
        assert value("safe_redbeat_leadership_changes_total", change="acquired", cause="none") == 1
    finally:
        metrics.close()


def test_json_logs_carry_the_signal_fields(app: Celery, redis_client: redis.Redis) -> None:
    stream = io.StringIO()
    jsonlog.install("replica-a", stream)
    try:
        clock = FakeClock()
        scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
        scheduler.tick()
        redis_client.set(KEYS.lease, '9 {"host":"h","pid":1,"name":"other"}')
        clock.now += 1
        scheduler.tick()
    finally:
        jsonlog.uninstall()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(line["instance"] == "replica-a" for line in lines)
    events = [line for line in lines if line.get("event") == "leadership_changed"]
    assert [(e["change"], e["cause"], e["level"]) for e in events] == [
        ("acquired", None, "INFO"),
        ("lost", "taken", "WARNING"),
    ]
    assert events[1]["fence"] == events[0]["fence"] > 0 and "other" in events[1]["reason"]
    texts = [line["message"] for line in lines if "event" not in line]
    assert any("acquired the lease" in text for text in texts)


def test_a_patched_apply_entry_sees_each_occurrence_and_its_headers_are_sent(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Scheduler.apply_entry
    seen: list[tuple[str, Any]] = []

    def patched(scheduler: Any, entry: Any, **kwargs: Any) -> Any:  # as a monitoring tool does
        seen.append((entry.name, entry.schedule))
        headers = entry.options.pop("headers", {})
        headers["tool-monitor"] = entry.name
        entry.options["headers"] = headers
        return original(scheduler, entry, **kwargs)

    auditor = QueueAuditor(redis_client)
    add_due(app, ["a", "b"])
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    assert patched_hook() is None
    monkeypatch.setattr(Scheduler, "apply_entry", patched)
    assert patched_hook() is not None
    scheduler.tick()
    messages = auditor.wait_for(lambda m: len(m) >= 2, timeout=5)
    assert sorted(name for name, _ in seen) == ["a", "b"]
    assert all(schedule.run_every == timedelta(seconds=60) for _, schedule in seen)
    for message in messages:
        entry = message.headers["safe_redbeat_entry"]
        assert message.headers["tool-monitor"] == entry
        assert message.headers["periodic_task_name"] == entry
        assert message.task_id == task_id_for(
            f"redbeat:{entry}", message.headers["safe_redbeat_scheduled"]
        )
    assert len(auditor.drain()) == 0, "the hook must not send by itself"


def test_with_a_hook_a_pending_record_whose_entry_key_is_not_a_hash_stalls_nothing(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook's schedule lookup answered WRONGTYPE for the record's entry key; the tick
    failed every time, so the good entry was never claimed."""
    original = Scheduler.apply_entry

    def patched(scheduler: Any, entry: Any, **kwargs: Any) -> Any:
        return original(scheduler, entry, **kwargs)

    monkeypatch.setattr(Scheduler, "apply_entry", patched)
    redis_client.set("redbeat:ghost", "a string, not an entry hash")
    record = {"entry": "ghost", "task": "noop", "args": [], "kwargs": {}, "options": {}}
    redis_client.hset(KEYS.pending, "ghost-1", json.dumps({**record, "scheduled": 1, "fence": 1}))
    auditor = QueueAuditor(redis_client)
    add_due(app, ["good"])
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    try:
        scheduler.tick()
        scheduler.tick()
    finally:
        scheduler.close()
    messages = auditor.wait_for(lambda m: len(m) >= 2, timeout=5)
    assert sorted(m.headers["safe_redbeat_entry"] for m in messages) == ["ghost", "good"]
    assert redis_client.hlen(KEYS.pending) == 0


def test_dead_letters_are_signalled_once_and_counted(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = Recorder("occurrence_dead")
    registry = CollectorRegistry(auto_describe=False)
    metrics = SchedulerMetrics(registry)
    try:
        original = app.send_task

        def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "explodes":
                raise ValueError("the task refuses these arguments")
            return original(name, *args, **kwargs)

        monkeypatch.setattr(app, "send_task", send_task)
        clock = FakeClock()
        scheduler = SafeRedBeatScheduler(app=app, monotonic=clock)
        metrics.watch(scheduler)
        scheduler.tick()
        add_due(app, ["bad"], task="explodes")
        redis_client.hset("redbeat::pending", "junk", "not a record")
        for _ in range(8):  # publish_attempts (2) with backoff: the fake clock jumps it
            clock.now += 5
            scheduler.tick()
        events = dead.events["occurrence_dead"]
        assert [(e["entry"], e["attempts"]) for e in events] == [(None, 0), ("bad", 2)]
        assert "refuses these arguments" in events[1]["error"]
        assert events[1]["task_id"] in redis_client.hgetall("redbeat::dead")
        assert registry.get_sample_value("safe_redbeat_occurrences_dead_total") == 2
        assert registry.get_sample_value("safe_redbeat_dead") == 2
    finally:
        dead.close()
        metrics.close()


def test_republished_and_failing_occurrences_pass_the_hook_and_keep_their_record(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Scheduler.apply_entry

    def patched(scheduler: Any, entry: Any, **kwargs: Any) -> Any:
        entry.options["headers"] = {"tool-monitor": entry.name}
        return original(scheduler, entry, **kwargs)

    auditor = QueueAuditor(redis_client)
    add_due(app, ["a"])
    app.conf.safe_redbeat_enqueue = "publish"  # a pending record only exists there
    crashed = SafeRedBeatScheduler(app=app, monotonic=FakeClock())

    def die(claimed: object) -> None:
        raise SystemExit(1)

    monkeypatch.setattr(crashed.shards[0], "_publish_claimed", die)
    with pytest.raises(SystemExit):
        crashed.tick()
    redis_client.delete(KEYS.lease)
    monkeypatch.setattr(Scheduler, "apply_entry", patched)
    successor = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    successor.tick()
    [message] = auditor.wait_for(lambda m: len(m) >= 1, timeout=5)
    assert message.headers["tool-monitor"] == "a"

    # a message failing on its own: the attempt is counted on the stored record, which
    # never takes the hook's headers
    original_send = app.send_task

    def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "explodes":
            raise ValueError("refused")
        return original_send(name, *args, **kwargs)

    monkeypatch.setattr(app, "send_task", send_task)
    add_due(app, ["bad"], task="explodes")
    successor.tick()
    [record] = redis_client.hvals("redbeat::pending")
    stored = json.loads(record)
    assert stored["attempts"] == 1 and "tool-monitor" not in json.dumps(stored["options"])


def test_metrics_of_a_sharded_replica_count_the_shards_it_leads(
    redis_url: str, redis_client: redis.Redis
) -> None:
    layout = Layout(KEYS, 3)
    with celery_app("monitoring-shards", redis_url, safe_redbeat_shards=3) as app:
        clock = FakeClock()
        app.conf.safe_redbeat_instance_name = "a"
        a = SafeRedBeatScheduler(app=app, monotonic=clock)
        a.tick()
        app.conf.safe_redbeat_instance_name = "b"
        b = SafeRedBeatScheduler(app=app, monotonic=clock)
        for _ in range(20):  # b takes one shard from a
            clock.now += 1.0
            a.tick()
            b.tick()
            if {len(a.balancer.led()), len(b.balancer.led())} == {1, 2}:
                break
        with Schedule(app) as schedule:
            for i in range(12):
                schedule.upsert(f"job-{i}", "noop", 3600)
        for index, keys in enumerate(layout.all_keys()):  # 1, 2 and 3 records
            for n in range(index + 1):
                redis_client.hset(keys.pending, f"p{n}", "{}")
                redis_client.hset(keys.dead, f"d{n}", "{}")
        registry = CollectorRegistry(auto_describe=False)
        metrics = SchedulerMetrics(registry)
        try:
            totals = {"pending": 0.0, "dead": 0.0, "active": 0.0, "led": 0.0}
            for scheduler in (a, b):
                metrics.watch(scheduler)
                led = [shard.index for shard in scheduler.balancer.led()]
                value = registry.get_sample_value
                assert value("safe_redbeat_is_leader") == 1
                assert value("safe_redbeat_shards_led") == len(led)
                assert value("safe_redbeat_pending") == sum(i + 1 for i in led)
                assert value("safe_redbeat_dead") == sum(i + 1 for i in led)
                active = value("safe_redbeat_entries", {"state": "active"})
                assert active == sum(redis_client.zcard(layout.keys(i).schedule) for i in led)
                totals["pending"] += value("safe_redbeat_pending") or 0
                totals["dead"] += value("safe_redbeat_dead") or 0
                totals["active"] += active or 0
                totals["led"] += value("safe_redbeat_shards_led") or 0
            assert totals == {"pending": 6, "dead": 6, "active": 12, "led": 3}
            b.close()  # leads nothing now: counts nothing
            metrics.watch(b)
            assert registry.get_sample_value("safe_redbeat_shards_led") == 0
            assert registry.get_sample_value("safe_redbeat_pending") == 0
        finally:
            metrics.close()
            a.close()


def test_entries_are_counted_by_the_state_status_shows(
    app: Celery, redis_client: redis.Redis
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    metrics = SchedulerMetrics(registry)
    now = datetime.now(timezone.utc)
    try:
        with Schedule(app) as schedule:
            schedule.upsert("plain", "noop", 60)
            schedule.upsert("off", "noop", 60, enabled=False)
            schedule.upsert("later", "noop", 60, start_time=now + timedelta(days=1))
            schedule.upsert("over", "noop", 60, expires=now - timedelta(minutes=1))
            schedule.upsert("done", "noop", 60, max_runs=2)
        redis_client.hset("redbeat:done", "state", "finished")  # as the leader records it
        redis_client.hset("redbeat:broken", mapping={"definition": "{not json", "meta": "{}"})
        redis_client.zadd("redbeat::schedule", {"redbeat:broken": 0})
        scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
        metrics.watch(scheduler)
        scheduler.tick()
        found = {
            state: registry.get_sample_value("safe_redbeat_entries", {"state": state})
            for state in ENTRY_STATES
        }
        assert found == {
            "active": 1,
            "disabled": 1,
            "not_started": 1,
            "expired": 1,
            "finished": 1,
            "parked": 1,
        }
        [info] = [m for m in registry.collect() if m.name == "safe_redbeat_build_info"]
        [sample] = info.samples
        assert sample.value == 1 and sample.labels["version"] == safe_redbeat.__version__
        assert all(sample.labels.values()), "no empty label value"
        scheduler.close()
    finally:
        metrics.close()


def test_each_sent_occurrence_is_logged_in_celery_beats_words(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="safe_redbeat")
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    scheduler.tick()
    add_due(app, ["a", "b"])
    scheduler.tick()
    scheduler.close()
    lines = [r.getMessage() for r in caplog.records if "Sending due task" in r.getMessage()]
    messages = QueueAuditor(redis_client).drain()
    assert len(messages) == 2
    expected = sorted(
        f"Scheduler: Sending due task {m.headers['safe_redbeat_entry']} (noop), task id "
        f"{m.task_id}, scheduled "
        + datetime.fromtimestamp(m.headers["safe_redbeat_scheduled"], timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
        for m in messages
    )
    assert sorted(lines) == expected


def test_sent_lines_can_be_switched_off(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="safe_redbeat")
    with celery_app("monitoring-quiet", redis_url, safe_redbeat_log_sent=False) as app:
        scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
        add_due(app, ["a", "b"])
        scheduler.tick()
        scheduler.close()
    assert len(QueueAuditor(redis_client).drain()) == 2
    assert not [r for r in caplog.records if "Sending due task" in r.getMessage()]


def test_json_logs_have_one_occurrence_sent_event_per_occurrence(
    app: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.safe_redbeat_enqueue = "publish"  # a pending record only exists there
    stream = io.StringIO()
    jsonlog.install("replica-a", stream)
    try:
        add_due(app, ["a"])
        crashed = SafeRedBeatScheduler(app=app, monotonic=FakeClock())

        def die(claimed: object) -> None:
            raise SystemExit(1)

        monkeypatch.setattr(crashed.shards[0], "_publish_claimed", die)
        with pytest.raises(SystemExit):
            crashed.tick()
        redis_client.delete(KEYS.lease)
        add_due(app, ["b"])
        successor = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
        successor.tick()
        successor.close()
    finally:
        jsonlog.uninstall()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    sent = [line for line in lines if line.get("event") == "occurrence_sent"]
    messages = {m.headers["safe_redbeat_entry"]: m for m in QueueAuditor(redis_client).drain()}
    assert sorted(e["entry"] for e in sent) == sorted(messages) == ["a", "b"]
    for event in sent:
        message = messages[event["entry"]]
        assert event["task_id"] == message.task_id and event["task"] == "noop"
        assert event["scheduled"] == message.headers["safe_redbeat_scheduled"]
        assert event["fence"] == message.headers["safe_redbeat_fence"]
        assert event["republished"] is (event["entry"] == "a")
        assert event["level"] == "INFO" and event["logger"] == "safe_redbeat"
        assert event["message"].startswith(f"Scheduler: Sending due task {event['entry']} (noop)")
    assert sent[0]["message"].endswith(", republished")
