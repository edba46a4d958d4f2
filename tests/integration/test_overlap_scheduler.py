"""The overlap policy in the scheduler, tick by tick in this process: both enqueue modes,
one shard and three, a catch-up after the leader was away, and the revoke.

The worker's part is played by :class:`~safe_redbeat.worker.RunTracker` fed with the
headers of the messages the scheduler sent (what ``track_runs`` does in a worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import after_task_publish

from safe_redbeat import SafeRedBeatScheduler, Schedule, signals
from safe_redbeat.dispatch.overlap import Revoker
from safe_redbeat.store.layout import Layout
from safe_redbeat.worker import RunTracker
from testbed.beat import Message, QueueAuditor
from tests.support import KEYS
from tests.support.inprocess import make_app

pytestmark = pytest.mark.integration


@pytest.fixture
def overlapped() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    signals.occurrence_overlapped.connect(receiver, weak=False, dispatch_uid="test-overlap")
    try:
        yield seen
    finally:
        signals.occurrence_overlapped.disconnect(dispatch_uid="test-overlap")


@contextmanager
def connected(signal: Any, receiver: Callable[..., None]) -> Iterator[None]:
    signal.connect(receiver, weak=False, dispatch_uid="test-overlap-built")
    try:
        yield
    finally:
        signal.disconnect(dispatch_uid="test-overlap-built")


class Revoked:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def revoke(self, task_ids: Sequence[str]) -> None:
        self.calls.append(list(task_ids))


def tick_until(scheduler: SafeRedBeatScheduler, done: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scheduler.tick()
        found = done()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def setup(
    redis_url: str, policy: str, enqueue: str, shards: int, **settings: Any
) -> tuple[Celery, SafeRedBeatScheduler, Revoked, RunTracker]:
    app = make_app(
        "overlap", redis_url, safe_redbeat_enqueue=enqueue, safe_redbeat_shards=shards,
        **settings,
    )  # fmt: skip
    scheduler = SafeRedBeatScheduler(app=app)
    revoked = Revoked()
    scheduler.__dict__["revoker"] = revoked
    tick_until(scheduler, lambda: len(scheduler.balancer.led()) == shards, 10)
    with Schedule(app) as schedule:
        schedule.upsert(
            "export", task="noop", schedule=1, overlap=policy, max_runtime=60,
            run_immediately=True,
        )  # fmt: skip
    return app, scheduler, revoked, RunTracker(app)


def started(tracker: RunTracker, message: Message) -> Any:
    run = tracker.run_of(message.task_id, message.headers)
    assert run is not None
    tracker.started(run)
    return run


@pytest.mark.parametrize(("enqueue", "shards"), [("atomic", 1), ("publish", 3)])
def test_skip_sends_nothing_while_a_run_goes_then_the_next_slot(
    redis_url: str,
    redis_client: redis.Redis,
    overlapped: list[dict[str, Any]],
    enqueue: str,
    shards: int,
) -> None:
    app, scheduler, _revoked, tracker = setup(redis_url, "skip", enqueue, shards)
    auditor = QueueAuditor(redis_client)
    try:
        (first,) = tick_until(scheduler, auditor.drain, 5)
        keys = Layout(KEYS, shards).keys_for("export")
        assert first.headers["safe_redbeat_prefix"] == keys.prefix
        run = started(tracker, first)
        assert str(redis_client.hget(keys.running("export"), first.task_id)).endswith(" running")
        time.sleep(2.5)  # the leader was away for two slots: one catch-up run is due
        built: list[str] = []
        with connected(after_task_publish, lambda **kw: built.append(kw["headers"]["id"])):
            tick_until(scheduler, lambda: overlapped, 5)
        assert built == []  # a message the claim is about to skip is not even built
        assert [o["action"] for o in overlapped] == ["skipped"]
        assert overlapped[0]["running"] == (first.task_id,)
        assert auditor.drain() == [] and not redis_client.hlen(keys.pending)
        next_slot = redis_client.zscore(keys.schedule, keys.entry("export"))
        assert next_slot is not None and next_slot > time.time() - 1  # moved on, once
        tracker.ended(run)
        (second,) = tick_until(scheduler, auditor.drain, 5)
        assert second.task_id != first.task_id and len(overlapped) == 1
        assert set(redis_client.hkeys(keys.running("export"))) == {second.task_id}
    finally:
        scheduler.close()
        app.close()


@pytest.mark.parametrize(("enqueue", "shards"), [("publish", 1), ("atomic", 3)])
def test_a_run_moved_to_the_dead_letters_no_longer_counts_as_going(
    redis_url: str,
    redis_client: redis.Redis,
    overlapped: list[dict[str, Any]],
    enqueue: str,
    shards: int,
) -> None:
    """Found by the chaos run with --overlap skip and broker faults: a dead-lettered
    occurrence never reached a worker, yet its run record kept the entry skipped until
    max_runtime (60 s here) had passed."""
    redis_client.sadd("celery", "not a list")  # the queue refuses every message
    app, scheduler, _revoked, _tracker = setup(
        redis_url, "skip", enqueue, shards, safe_redbeat_publish_attempts=2
    )
    auditor = QueueAuditor(redis_client)
    keys = Layout(KEYS, shards).keys_for("export")
    try:
        (dead,) = tick_until(scheduler, lambda: redis_client.hkeys(keys.dead), 10)
        assert redis_client.hkeys(keys.running("export")) == []  # it runs nowhere
        redis_client.delete("celery")  # the queue takes messages again
        (sent,) = tick_until(scheduler, auditor.drain, 5)  # the next slot: was 60 s
        assert sent.task_id != dead
        assert set(redis_client.hkeys(keys.running("export"))) == {sent.task_id}
    finally:
        scheduler.close()
        app.close()


@pytest.mark.parametrize(("enqueue", "shards"), [("publish", 1), ("atomic", 3)])
def test_replace_sends_and_revokes_the_running_one(
    redis_url: str,
    redis_client: redis.Redis,
    overlapped: list[dict[str, Any]],
    enqueue: str,
    shards: int,
) -> None:
    app, scheduler, revoked, tracker = setup(redis_url, "replace", enqueue, shards)
    auditor = QueueAuditor(redis_client)
    try:
        (first,) = tick_until(scheduler, auditor.drain, 5)
        started(tracker, first)
        time.sleep(1.1)
        (second,) = tick_until(scheduler, auditor.drain, 5)
        assert revoked.calls == [[first.task_id]]
        assert [(o["action"], o["task_id"]) for o in overlapped] == [("replaced", second.task_id)]
    finally:
        scheduler.close()
        app.close()


def test_the_revoke_is_sent_from_a_thread_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Control:
        def __init__(self) -> None:
            self.calls: list[tuple[list[str], bool]] = []

        def revoke(self, task_ids: list[str], terminate: bool) -> None:
            self.calls.append((task_ids, terminate))
            if task_ids == ["down"]:
                raise ConnectionError("redis://:secret@broker:6379/0 refused")

    class App:
        control = Control()

    revoker = Revoker(App())
    revoker.revoke(["a", "b"])
    revoker.revoke(["down"])
    assert revoker.join(5)
    assert App.control.calls == [(["a", "b"], True), (["down"], True)]
    assert "could not revoke down" in caplog.text and "secret" not in caplog.text
