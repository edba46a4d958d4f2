"""The same table operations under django-celery-beat's ``DatabaseScheduler`` and under
safe_redbeat with the adapter (each a real ``celery beat`` of the example project, one
after the other, on the same sqlite file and the suite's Redis): the rows and the sends
are compared row by row.

Rows: a ``one_off`` interval, a clocked one-off, an interval that expires, a clocked
one-off that finishes and is enabled again, an interval with a start time, and a solar
row whose sunrise is a few seconds after the start. Where ``DatabaseScheduler`` itself
falls short, :data:`ONCE_MORE` and :data:`DRIFTING` say how, and the test holds both sides
to it (docs/django-celery-beat.md says why ours is right).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from testbed.beat import BeatCluster, QueueAuditor
from testbed.settings import FAST
from tests.support import django_project

dcb = pytest.importorskip("django_celery_beat")
ephem = pytest.importorskip("ephem")

pytestmark = pytest.mark.integration

DATABASE_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
SAFE = "safe_redbeat.SafeRedBeatScheduler"
SETTINGS = {
    **FAST,
    "safe_redbeat_loader": "safe_redbeat.contrib.django_celery_beat:load",
    "beat_max_loop_interval": 1,  # DatabaseScheduler looks at the table every second
}
#: Where DatabaseScheduler falls short, as this test holds it (docs/django-celery-beat.md).
#: Its shortfalls depend on when its loop wakes up, so the test allows them, never
#: requires them:
#: - "again": a finished one-off enabled again is often not sent again (1 send, not 2):
#:   its entry keeps the run it remembers although the row says 0 runs;
#: - "expiring", "start-time": its loop wakes up to a second late and an interval counts
#:   from the late send, so its slots drift: one send more or fewer in the window;
#: - "expiring": it may go on sending the row after its ``expires`` until it looks at the
#:   row again (seen: 4 sends where 2 slots came before the expiry), never fewer than one
#:   send under ours;
#: - it often disables a finished one-off only when it next looks at the entry (not
#:   within 4 s);
#: - its ``total_run_count`` lags its sends: it saves the counts in batches (at its sync and
#:   when it stops), and a stop does not always save the last ones.
ONCE_MORE = {"again": (1, 2)}
DRIFTING = ("expiring", "start-time")
LATE_DISABLE = "(finished one-off disabled within 4 s)"
#: The oracle is the DatabaseScheduler of django-celery-beat 2.6 and later. Earlier
#: releases differ again (2.5 records no run of a row it disables as expired and, under
#: Celery 5.3, never sends the solar row here): there only our side is checked.
ORACLE = tuple(int(part) for part in dcb.__version__.split(".")[:2]) >= (2, 6)


def sunrise_longitude(at: datetime) -> float:
    """A longitude (latitude 0) where the sun rises at ``at`` (to a millisecond)."""
    observer, sun, lon = ephem.Observer(), ephem.Sun(), 0.0
    observer.lat, observer.pressure, observer.horizon = "0", 0, "-0:34"
    target = ephem.Date(at.replace(tzinfo=None))
    for _ in range(8):
        observer.lon = str(lon)
        rising = observer.next_rising(sun, start=ephem.Date(target - 0.5))
        lon = (lon + (rising - target) * 360.0 + 180.0) % 360.0 - 180.0
    return round(lon, 6)


def table_operations(t0: datetime, run_for: float) -> dict[str, Any]:
    """Create the rows at ``t0`` (their times relative to it), wait ``run_for`` seconds
    with one change on the way; return what was seen on the way."""
    from django_celery_beat.models import (
        ClockedSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    every2 = IntervalSchedule.objects.create(every=2, period="seconds")
    task = "reports.ping"
    PeriodicTask.objects.create(name="one-off", task=task, interval=every2, one_off=True)
    at = ClockedSchedule.objects.create(clocked_time=t0 + timedelta(seconds=3))
    PeriodicTask.objects.create(name="clocked", task=task, clocked=at, one_off=True)
    PeriodicTask.objects.create(
        name="expiring", task=task, interval=every2, expires=t0 + timedelta(seconds=5.5)
    )
    soon = ClockedSchedule.objects.create(clocked_time=t0 + timedelta(seconds=1))
    PeriodicTask.objects.create(name="again", task=task, clocked=soon, one_off=True)
    PeriodicTask.objects.create(
        name="start-time", task=task, interval=every2, start_time=t0 + timedelta(seconds=3)
    )
    sun = SolarSchedule.objects.create(
        event="sunrise", latitude=0, longitude=sunrise_longitude(t0 + timedelta(seconds=5))
    )
    PeriodicTask.objects.create(name="solar", task=task, solar=sun)

    def wait_until(check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check() and time.monotonic() < deadline:
            time.sleep(0.1)

    # the finished one-off is disabled (by the scheduler, else by the admin: DatabaseScheduler
    # disables it late), then enabled again
    wait_until(lambda: not PeriodicTask.objects.get(name="again").enabled, 4.0)
    row = PeriodicTask.objects.get(name="again")
    disabled_in_time = not row.enabled
    if row.enabled:
        row.enabled = False
        row.save()
    row.enabled = True
    row.save()
    time.sleep(max(0.0, run_for - (datetime.now(timezone.utc) - t0).total_seconds()))
    return {"disabled_in_time": disabled_in_time}


@pytest.fixture
def project(redis_url: str) -> Iterator[Path]:
    db_path = django_project.setup()
    from safe_redbeat.contrib.django_celery_beat.row_signals import close_schedules

    django_project.use_redis(redis_url)
    try:
        yield db_path
    finally:
        close_schedules()


def run_under(
    scheduler: str, beat_procs: BeatCluster, db_path: Path, redis_client: redis.Redis
) -> tuple[dict[str, int], dict[str, tuple[bool, int, bool]]]:
    """The sends per row and the rows (enabled, total_run_count, last_run_at set) after
    :func:`table_operations` under ``scheduler``."""
    from django.test import override_settings
    from django_celery_beat.models import PeriodicTask

    redis_client.flushdb()
    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=scheduler == SAFE):
        django_project.clear_tables()
        (beat,) = beat_procs.start(
            1,
            name_prefix=scheduler.split(".")[-1].split(":")[-1],
            app=django_project.CELERY_APP,
            settings=SETTINGS,
            scheduler=scheduler,
            extra_env=django_project.beat_env(db_path, write_back=0.3),
        )
        beat.wait_for_log("beat: Starting", timeout=20)
        deadline = time.monotonic() + 20
        while scheduler == SAFE and not redis_client.exists("redbeat::lock"):
            assert time.monotonic() < deadline, beat.log_tail()
            time.sleep(0.05)
        time.sleep(1.0)  # both read the table once before the rows come
        seen = table_operations(datetime.now(timezone.utc), run_for=12.0)
        beat.terminate()  # DatabaseScheduler writes its run counts when it stops
        assert beat.wait(15) is not None, beat.log_tail()
    auditor = QueueAuditor(redis_client)
    auditor.drain()
    sends: dict[str, int] = {}
    for message in auditor.messages:
        # django-celery-beat before 2.6 passes the name as a message property, later
        # releases as a header
        name = str(
            message.headers.get("periodic_task_name")
            or message.properties.get("periodic_task_name")
        )
        sends[name] = sends.get(name, 0) + 1
    rows = {
        row.name: (row.enabled, row.total_run_count, row.last_run_at is None)
        for row in PeriodicTask.objects.all()
    }
    rows[LATE_DISABLE] = (seen["disabled_in_time"], 0, False)
    return sends, rows


def test_the_same_table_operations_give_the_same_rows_and_sends(
    project: Path, beat_procs: BeatCluster, redis_client: redis.Redis
) -> None:
    theirs_sent: dict[str, int] = {}
    theirs_rows: dict[str, tuple[bool, int, bool]] = {}
    if ORACLE:
        theirs_sent, theirs_rows = run_under(DATABASE_SCHEDULER, beat_procs, project, redis_client)
    ours_sent, ours_rows = run_under(SAFE, beat_procs, project, redis_client)
    names = sorted(ours_rows)
    report = "\n".join(
        f"{n:12} DatabaseScheduler sent {theirs_sent.get(n, 0)} row {theirs_rows.get(n)}; "
        f"safe_redbeat sent {ours_sent.get(n, 0)} row {ours_rows.get(n)}"
        for n in names
    )
    print(report)
    for name in names if ORACLE else ():
        theirs, ours = theirs_sent.get(name, 0), ours_sent.get(name, 0)
        if name in ONCE_MORE:
            at_least, expected = ONCE_MORE[name]
            assert ours == expected and at_least <= theirs <= expected, report
        elif name == "expiring":
            assert theirs >= ours - 1, report
        elif name in DRIFTING:
            assert abs(ours - theirs) <= 1, report
        else:
            assert theirs == ours, report
        (t_enabled, t_count, t_never), (o_enabled, o_count, o_never) = (
            theirs_rows[name],
            ours_rows[name],
        )
        if name == LATE_DISABLE:
            assert o_enabled, report  # theirs: either
            continue
        assert (t_enabled, t_never) == (o_enabled, o_never), report
        # total_run_count: the runs each sent (0 for a one-off saved as finished)
        assert o_count == (0 if name in ("one-off", "clocked", "again") else ours), report
        if name in ("one-off", "clocked", "again"):
            assert t_count == 0, report
        else:
            assert t_count <= theirs, report
    # what each row must show, under safe_redbeat
    assert ours_sent == {
        "one-off": 1, "clocked": 1, "expiring": 2, "again": 2, "start-time": 5, "solar": 1,
    }, report  # fmt: skip
    assert ours_rows[LATE_DISABLE][0], "safe_redbeat did not disable the one-off in 4 s"
    assert ours_rows["one-off"] == ours_rows["clocked"] == (False, 0, True), report
    assert ours_rows["again"] == (False, 0, True), report
    assert ours_rows["expiring"] == (False, 2, True), report
    assert ours_rows["solar"] == (True, 1, False), report
