"""The django-celery-beat adapter with real Django (the example project on a sqlite file),
real django-celery-beat models and migrations, real beat replicas and the suite's Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from io import StringIO
from pathlib import Path
from typing import Any

import celery
import pytest
import redis

pytest.importorskip("django_celery_beat")

from testbed.beat import BeatCluster, BeatProcess, QueueAuditor
from testbed.settings import FAST
from tests.support import KEYS, django_project

pytestmark = pytest.mark.integration


SETTINGS = {
    **FAST,
    "safe_redbeat_loader": "safe_redbeat.contrib.django_celery_beat:load",
    # long: what reaches Redis within a test got there by write-through
    "safe_redbeat_reconcile_seconds": 60.0,
}


@pytest.fixture
def project(redis_url: str) -> Iterator[Path]:
    """Django set up, its tables empty, the example's Celery app on this test's Redis."""
    db_path = django_project.setup()
    from safe_redbeat.contrib.django_celery_beat.row_signals import close_schedules

    django_project.use_redis(redis_url)
    try:
        yield db_path
    finally:
        close_schedules()


def start_beats(beat_procs: BeatCluster, db_path: Path, n: int, **env: Any) -> list[BeatProcess]:
    return beat_procs.start(
        n,
        app=django_project.CELERY_APP,
        settings=SETTINGS,
        extra_env=django_project.beat_env(db_path, **env),
    )


def leader_of(procs: list[BeatProcess], redis_client: redis.Redis, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = redis_client.get(KEYS.lease) or ""
        for proc in procs:
            if proc.instance and proc.instance in value:
                return proc
        time.sleep(0.05)
    raise AssertionError(f"no leader within {timeout}s: {redis_client.get('redbeat::lock')!r}")


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def interval_task(name: str, every: int, **fields: Any) -> Any:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
    return PeriodicTask.objects.create(name=name, task="reports.ping", interval=interval, **fields)


def sent(auditor: QueueAuditor, name: str) -> list[Any]:
    auditor.drain()
    return [m for m in auditor.messages if m.headers.get("safe_redbeat_entry") == name]


def test_orm_changes_reach_running_replicas_without_a_restart(
    project: Path, beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    from django.test import override_settings
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=False):
        interval_task("seeded", 1)  # only the leader's load can bring it to Redis
    procs = start_beats(beat_procs, project, 2, write_back=0.3)
    leader_of(procs, redis_client)
    auditor = QueueAuditor(redis_client)
    wait_until(lambda: sent(auditor, "seeded"), 10, "a message of the row loaded by the leader")

    row = interval_task("ping", 1, kwargs='{"n": 1}', queue="celery")
    assert redis_client.exists("redbeat:ping"), "not written through at commit"
    wait_until(lambda: sent(auditor, "ping"), 10, "a message of the new row")
    first = sent(auditor, "ping")[0]
    assert first.kwargs == {"n": 1}
    assert first.headers["periodic_task_name"] == "ping"

    # the admin shows runs (write-back from the leader)
    wait_until(lambda: PeriodicTask.objects.get(pk=row.pk).total_run_count >= 1, 10, "write-back")
    assert PeriodicTask.objects.get(pk=row.pk).last_run_at is not None

    # an edit changes the schedule without a restart
    row.kwargs = '{"n": 2}'
    row.interval = IntervalSchedule.objects.create(every=2, period="seconds")
    row.save()
    assert redis_client.hget("redbeat:ping", "version") == "2"
    wait_until(lambda: any(m.kwargs == {"n": 2} for m in sent(auditor, "ping")), 10, "n=2")

    # a disabled row stops
    row.enabled = False
    row.save()
    time.sleep(1.0)  # a message claimed before the commit may still arrive
    before = len(sent(auditor, "ping"))
    time.sleep(3.0)  # longer than the interval
    assert len(sent(auditor, "ping")) == before, "a disabled row kept running"

    # a deleted row is removed
    row.delete()
    assert not redis_client.exists("redbeat:ping")
    assert redis_client.zscore("redbeat::schedule", "redbeat:ping") is None
    assert all(proc.alive() for proc in procs), beat_procs.report()


def test_a_bulk_update_announced_with_update_changed_reaches_redis(
    project: Path, redis_client: redis.Redis
) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    for name in ("a", "b", "c"):
        interval_task(name, 60)
    assert redis_client.exists("redbeat:a", "redbeat:b", "redbeat:c") == 3
    PeriodicTask.objects.filter(name__in=["a", "b"]).update(enabled=False)  # no signals
    assert '"enabled": true' in str(redis_client.hget("redbeat:a", "definition"))
    PeriodicTasks.update_changed()
    for name, enabled in (("a", "false"), ("b", "false"), ("c", "true")):
        assert f'"enabled": {enabled}' in str(redis_client.hget(f"redbeat:{name}", "definition"))


def test_rows_that_cannot_be_scheduled_are_reported_and_the_rest_still_load(
    project: Path, redis_client: redis.Redis
) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=False):
        interval_task("hourly", 3600)
        interval_task("broken", 3600, kwargs="{not json")
        interval_task("bad-args", 3600, args="[1,")
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="2 rows could not be scheduled"):
        call_command("safe_redbeat_sync", "--dry-run", stdout=out, stderr=err)
    assert "would create hourly" in out.getvalue()
    assert not redis_client.exists("redbeat:hourly"), "--dry-run wrote"
    with pytest.raises(CommandError, match="2 rows could not be scheduled"):
        call_command("safe_redbeat_sync", stdout=out, stderr=err)
    assert "entry 'broken': kwargs: is not valid JSON" in err.getvalue()
    assert "entry 'bad-args': args: is not valid JSON" in err.getvalue()
    assert "create hourly" in out.getvalue()
    assert "(incomplete load" not in out.getvalue()
    assert redis_client.exists("redbeat:hourly")
    assert not redis_client.exists("redbeat:broken", "redbeat:bad-args")


def test_an_empty_table_does_not_empty_redis(project: Path, redis_client: redis.Redis) -> None:
    from django.core.management import call_command
    from django.test import override_settings
    from django_celery_beat.models import PeriodicTask

    for name in ("a", "b"):
        interval_task(name, 60)
    call_command("safe_redbeat_sync", stdout=StringIO())
    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=False):
        PeriodicTask.objects.all().delete()  # e.g. a restore gone wrong
    from django.core.management.base import CommandError

    out = StringIO()
    with pytest.raises(CommandError, match="2 removals were held back"):
        call_command("safe_redbeat_sync", stdout=out, stderr=StringIO())
    assert "held removal a" in out.getvalue()
    assert redis_client.exists("redbeat:a", "redbeat:b") == 2
    call_command("safe_redbeat_sync", "--allow-removals", stdout=StringIO())
    assert redis_client.exists("redbeat:a", "redbeat:b") == 0


def test_a_new_row_first_runs_at_its_next_slot(
    project: Path, beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    procs = start_beats(beat_procs, project, 1)
    leader_of(procs, redis_client)
    auditor = QueueAuditor(redis_client)
    created = time.time()
    interval_task("every-3s", 3)
    messages = wait_until(lambda: sent(auditor, "every-3s"), 10, "first run")
    scheduled = int(messages[0].headers["safe_redbeat_scheduled"])
    assert scheduled >= int(created) + 2, "a new row ran before its next slot"


@pytest.mark.skipif(
    celery.VERSION < (5, 4),
    reason="the oracle is wrong there: Celery 5.3 computes the remaining time of a crontab "
    "in another zone than the app's off by that zone's offset (09:00 Tokyo as 09:00 UTC)",
)
def test_a_crontab_row_in_its_own_timezone_is_due_when_django_celery_beat_says(
    project: Path, redis_client: redis.Redis
) -> None:
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from examples.django_celery_beat import celery_app
    from safe_redbeat import Schedule

    cron = CrontabSchedule.objects.create(minute="0", hour="9", timezone="Asia/Tokyo")
    row = PeriodicTask.objects.create(name="tokyo", task="reports.ping", crontab=cron)
    with Schedule(celery_app) as schedules:
        info = schedules.get("tokyo")
    ours = info.next_run_at
    assert ours is not None
    now = datetime.now(timezone.utc)
    theirs = now + row.schedule.remaining_estimate(now)
    assert abs((ours - theirs).total_seconds()) < 2, (ours, theirs)


def test_a_clocked_one_off_runs_once_when_the_leader_is_killed_at_its_time(
    project: Path, beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    from django_celery_beat.models import ClockedSchedule, PeriodicTask

    procs = start_beats(beat_procs, project, 2)
    leader = leader_of(procs, redis_client)
    auditor = QueueAuditor(redis_client)
    at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
    clocked = ClockedSchedule.objects.create(clocked_time=at)
    PeriodicTask.objects.create(name="once", task="reports.ping", clocked=clocked, one_off=True)
    wait_until(lambda: time.time() >= at.timestamp(), 10, "the clocked time")
    wait_until(lambda: sent(auditor, "once") or time.time() >= at.timestamp() + 0.5, 5, "send")
    leader.kill()  # SIGKILL at its time: before, during or just after the publish
    standby = next(proc for proc in procs if proc is not leader)
    assert leader_of([standby], redis_client, timeout=15) is standby
    time.sleep(3.0)  # the new leader republishes anything left pending
    messages = sent(auditor, "once")
    assert len({m.task_id for m in messages}) == 1, [m.task_id for m in messages]
    assert int(messages[0].headers["safe_redbeat_scheduled"]) == int(at.timestamp())


def test_write_back_reads_the_loader_s_entries_of_every_shard(
    project: Path, redis_client: redis.Redis
) -> None:
    from django_celery_beat.models import PeriodicTask

    from examples.django_celery_beat import celery_app
    from safe_redbeat import Schedule
    from safe_redbeat.contrib.django_celery_beat.writeback import WriteBack
    from safe_redbeat.model.codec import encode_meta
    from safe_redbeat.store.layout import Layout

    layout = Layout(KEYS, 3)
    redis_client.set(KEYS.layout, layout.encode())
    names = [f"row-{i}" for i in range(6)]
    assert len({layout.shard_of(name) for name in names}) == 3
    for name in names:
        interval_task(name, 60)  # written through into the row's shard
        keys = layout.keys_for(name)
        assert redis_client.sismember(keys.loader, name)
        ran = datetime(2026, 1, 1, tzinfo=timezone.utc)
        redis_client.hset(keys.entry(name), "meta", encode_meta(ran, 4))
    assert not redis_client.exists(KEYS.loader)
    with Schedule(celery_app) as schedule:
        assert sorted(WriteBack(schedule).flush().runs) == names
    rows = PeriodicTask.objects.filter(name__in=names)
    # the run history Redis keeps, not a count of passes that saw it change
    assert sorted((r.name, r.total_run_count) for r in rows) == [(name, 4) for name in names]
    assert all(r.last_run_at == ran for r in rows)
