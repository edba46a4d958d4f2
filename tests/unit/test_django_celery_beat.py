"""The django-celery-beat mapping, row type by row type, against django-celery-beat's own
schedule objects and ``ModelEntry`` (real Django, real models, a migrated sqlite file)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("django_celery_beat")

from safe_redbeat.model.entry import to_timestamp
from safe_redbeat.model.slots import writer_score
from safe_redbeat.sync.loader import parse_specs
from tests.support import django_project

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
LAST_RUNS = [NOW - timedelta(seconds=s) for s in (0, 7, 59, 3600, 86400 * 3)]


@pytest.fixture(scope="module")
def django_db() -> Iterator[None]:
    django_project.setup()
    from django.test import override_settings

    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=False):
        yield
        django_project.clear_tables()


@pytest.fixture
def models(django_db: None) -> Iterator[Any]:
    from django_celery_beat import models as dcb

    django_project.clear_tables()
    yield dcb


def celery_app() -> Any:
    from examples.django_celery_beat import celery_app as app

    return app


def item_of(row: Any) -> Any:
    from safe_redbeat.contrib.django_celery_beat.mapping import periodic_tasks, row_to_item

    fresh = periodic_tasks().get(pk=row.pk)  # as the loader reads it
    return row_to_item(fresh)


def spec_of(row: Any) -> Any:
    load = parse_specs([item_of(row)])
    assert not load.errors, load.errors
    return load.specs[0]


def django_next(row: Any, last_run_at: datetime) -> int:
    """The next run django-celery-beat's own schedule object computes, as a timestamp."""
    schedule = row.schedule
    schedule.nowfun = lambda: NOW
    return to_timestamp(NOW + schedule.remaining_estimate(last_run_at))


@pytest.mark.parametrize(
    ("every", "period"),
    [(1, "seconds"), (45, "seconds"), (5, "minutes"), (2, "hours"), (1, "days")],
)
def test_an_interval_row_runs_when_django_celery_beat_would_run_it(
    models: Any, every: int, period: str
) -> None:
    interval = models.IntervalSchedule.objects.create(every=every, period=period)
    row = models.PeriodicTask.objects.create(name="i", task="reports.ping", interval=interval)
    spec = spec_of(row)
    for last in LAST_RUNS:
        ours = writer_score(spec.schedule, spec.lifecycle, last, 1, NOW)
        assert ours == max(django_next(row, last), to_timestamp(NOW)), (every, period, last)


@pytest.mark.parametrize(
    "fields",
    [
        {"minute": "*/5"},
        {"minute": "0", "hour": "3"},
        {"minute": "30", "hour": "4,16", "day_of_week": "mon-fri"},
        {"minute": "0", "hour": "0", "day_of_month": "1", "month_of_year": "*/3"},
        {"minute": "15 ,45", "hour": "*"},  # admins type spaces; django strips them too
    ],
)
def test_a_crontab_row_runs_when_django_celery_beat_would_run_it(
    models: Any, fields: dict[str, str]
) -> None:
    cron = models.CrontabSchedule.objects.create(timezone="UTC", **fields)
    row = models.PeriodicTask.objects.create(name="c", task="reports.ping", crontab=cron)
    spec = spec_of(row)
    for last in LAST_RUNS:
        ours = writer_score(spec.schedule, spec.lifecycle, last, 1, NOW)
        assert ours == max(django_next(row, last), to_timestamp(NOW)), (fields, last)


def test_message_options_args_and_kwargs_are_what_model_entry_sends(models: Any) -> None:
    from django_celery_beat.schedulers import ModelEntry

    interval = models.IntervalSchedule.objects.create(every=10, period="seconds")
    row = models.PeriodicTask.objects.create(
        name="opts",
        task="reports.ping",
        interval=interval,
        args='[1, "two"]',
        kwargs='{"fmt": "pdf"}',
        queue="reports",
        exchange="ex",
        routing_key="rk",
        priority=0,
        headers='{"tenant": "acme"}',
        expire_seconds=120,
        description="shown in the admin only",
    )
    spec = spec_of(row)
    entry = ModelEntry(row, app=celery_app())
    assert list(spec.args) == entry.args
    assert spec.kwargs == entry.kwargs
    ours, theirs = dict(spec.options), dict(entry.options)
    # django-celery-beat 2.9 sends periodic_task_name as a header, older versions as an
    # option; we always send the header
    theirs.pop("periodic_task_name", None)
    theirs["headers"] = {**theirs["headers"], "periodic_task_name": "opts"}
    assert ours == theirs
    assert ours["priority"] == 0
    assert ours["headers"] == {"tenant": "acme", "periodic_task_name": "opts"}


def test_a_disabled_row_is_loaded_disabled(models: Any) -> None:
    interval = models.IntervalSchedule.objects.create(every=10, period="seconds")
    row = models.PeriodicTask.objects.create(
        name="off", task="reports.ping", interval=interval, enabled=False
    )
    assert spec_of(row).enabled is False


@pytest.mark.parametrize(
    ("field", "text"),
    [("args", "[1, 2"), ("kwargs", "{'single': 'quotes'}"), ("headers", "not json")],
)
def test_a_row_whose_json_does_not_parse_is_reported_by_name_and_the_rest_load(
    models: Any, field: str, text: str
) -> None:
    interval = models.IntervalSchedule.objects.create(every=10, period="seconds")
    models.PeriodicTask.objects.create(name="good", task="reports.ping", interval=interval)
    bad = models.PeriodicTask.objects.create(
        name="bad", task="reports.ping", interval=interval, **{field: text}
    )
    good = models.PeriodicTask.objects.get(name="good")
    load = parse_specs([item_of(bad), item_of(good)])
    assert [spec.name for spec in load.specs] == ["good"]
    assert list(load.rejected) == ["bad"]
    assert load.rejected["bad"].startswith(f"entry 'bad': {field}: is not valid JSON")
    assert load.complete  # the other rows reconcile in full; Redis keeps what it had for bad


def test_a_solar_row_runs_when_django_celery_beat_would_run_it(models: Any) -> None:
    pytest.importorskip("ephem")
    solar = models.SolarSchedule.objects.create(event="sunset", latitude=48.85, longitude=2.35)
    row = models.PeriodicTask.objects.create(name="dusk", task="reports.ping", solar=solar)
    spec = spec_of(row)
    assert (spec.schedule.event, spec.schedule.lat, spec.schedule.lon) == ("sunset", 48.85, 2.35)
    for last in LAST_RUNS:
        ours = writer_score(spec.schedule, spec.lifecycle, last, 1, NOW)
        assert ours == max(django_next(row, last), to_timestamp(NOW)), last


def test_lifecycle_fields_are_mapped_to_the_loader_contract(models: Any) -> None:
    cron = models.CrontabSchedule.objects.create(minute="0", hour="9", timezone="Europe/Paris")
    start = datetime(2026, 4, 1, tzinfo=timezone.utc)
    expires = datetime(2026, 5, 1, tzinfo=timezone.utc)
    last = datetime(2026, 3, 13, 8, 0, tzinfo=timezone.utc)
    row = models.PeriodicTask.objects.create(
        name="paris", task="reports.ping", crontab=cron, one_off=True,
        start_time=start, expires=expires,
    )  # fmt: skip
    models.PeriodicTask.objects.filter(pk=row.pk).update(last_run_at=last)
    item = item_of(row)
    assert item["tz"] == "Europe/Paris"
    assert item["max_runs"] == 1
    assert (item["start_time"], item["expires"], item["last_run_at"]) == (start, expires, last)
    assert "expires" not in item["options"]


def test_the_overlap_policy_is_set_in_the_rows_headers(models: Any) -> None:
    from safe_redbeat.contrib.django_celery_beat.admin import schedulable_error

    interval = models.IntervalSchedule.objects.create(every=1, period="hours")
    row = models.PeriodicTask.objects.create(
        name="export", task="reports.export", interval=interval,
        headers='{"tenant": "acme", "safe_redbeat_overlap": "skip", '
        '"safe_redbeat_max_runtime": 5400}',
    )  # fmt: skip
    spec = spec_of(row)
    assert (spec.lifecycle.overlap, spec.lifecycle.max_runtime) == ("skip", 5400)
    assert spec.options["headers"] == {"tenant": "acme", "periodic_task_name": "export"}
    row.headers = '{"safe_redbeat_overlap": "skip"}'  # no max_runtime: refused at the field
    error = schedulable_error(row)
    assert error is not None and error.field == "max_runtime"
    from safe_redbeat.contrib.django_celery_beat.admin import _form_field

    assert _form_field(row, error.field) == "headers"


def test_a_clocked_row_is_a_one_off_at_its_time(models: Any) -> None:
    at = datetime(2026, 3, 14, 12, 0, tzinfo=timezone.utc)
    clocked = models.ClockedSchedule.objects.create(clocked_time=at)
    row = models.PeriodicTask.objects.create(
        name="once", task="reports.ping", clocked=clocked, one_off=True
    )
    item = item_of(row)
    assert "schedule" not in item and "max_runs" not in item
    # a clocked time that passed runs at once, as DatabaseScheduler runs it
    assert (item["at"], item["run_immediately"]) == (at, True)
    schedule = row.schedule  # django-celery-beat's clocked
    schedule.nowfun = lambda: NOW
    assert NOW + schedule.remaining_estimate(None) == item["at"]
