"""Validation of entries before anything is written (no Redis involved)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery
from celery.schedules import BaseSchedule, crontab, solar
from celery.schedules import schedule as interval
from redbeat.decoder import RedBeatJSONDecoder
from redbeat.schedules import rrule

from safe_redbeat import EntrySpec, InvalidEntry, Schedule
from safe_redbeat.model.specs import check_expected_version, check_name, to_schedule
from safe_redbeat.sync.loader import parse_specs


def spec(**overrides: Any) -> EntrySpec:
    values: dict[str, Any] = {"name": "e", "task": "noop", "schedule": 60}
    values.update(overrides)
    return EntrySpec.build(**values)


def invalid(make: Callable[[], object]) -> InvalidEntry:
    with pytest.raises(InvalidEntry) as caught:
        make()
    return caught.value


# -- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90, interval(timedelta(seconds=90))),
        (0.5, interval(timedelta(seconds=0.5))),
        (timedelta(minutes=5), interval(timedelta(minutes=5))),
        (interval(timedelta(hours=1)), interval(timedelta(hours=1))),
        (crontab(minute="*/15", hour="9-17"), crontab(minute="*/15", hour="9-17")),
        ("0 3 * * mon-fri", crontab(minute="0", hour="3", day_of_week="mon-fri")),
        ({"__type__": "interval", "every": 30}, interval(timedelta(seconds=30))),
        ({"__type__": "crontab", "hour": "4", "minute": 0}, crontab(hour="4", minute=0)),
    ],
)
def test_accepted_schedule_forms_convert_to_celery_schedules(
    value: Any, expected: BaseSchedule
) -> None:
    assert to_schedule(value, "e") == expected


def test_rrule_is_accepted_as_object_and_as_json_form() -> None:
    start = datetime(2030, 1, 1, 6, 0, tzinfo=timezone.utc)
    obj = rrule("DAILY", dtstart=start, byhour=[6])
    assert to_schedule(obj, "e") is obj
    encoded = json.loads(spec(schedule=obj).definition())["schedule"]
    assert encoded["__type__"] == "rrule"
    from_json = to_schedule(encoded, "e")
    assert isinstance(from_json, rrule)
    assert from_json.dtstart == start


def test_a_solar_schedule_without_its_fields_is_rejected_naming_the_field() -> None:
    error = invalid(lambda: to_schedule(solar.__new__(solar), "sunrise-job"))
    assert error.key == "sunrise-job"
    assert error.field == "schedule.event"
    assert "unknown solar event None" in error.problem


@pytest.mark.parametrize(
    "value",
    [object(), [1, 2], None, True, b"0 3 * * *", {"__type__": "sundial"}, {"hour": 3}],
)
def test_unknown_schedule_types_are_rejected(value: Any) -> None:
    error = invalid(lambda: to_schedule(value, "e"))
    assert error.field == "schedule"


@pytest.mark.parametrize("seconds", [0, -5, float("inf"), float("nan"), 1e300])
def test_intervals_must_be_positive_and_finite(seconds: float) -> None:
    assert invalid(lambda: to_schedule(seconds, "e")).field == "schedule"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("0 25 * * *", "schedule.hour"),
        ("61 * * * *", "schedule.minute"),
        ("* * 0 * *", "schedule.day_of_month"),
        ("* * * 13 *", "schedule.month_of_year"),
        ("* * * * funday", "schedule.day_of_week"),
        ({"__type__": "crontab", "minute": "x"}, "schedule.minute"),
        ({"__type__": "crontab", "hour": "24"}, "schedule.hour"),
    ],
)
def test_a_bad_crontab_field_is_named(value: Any, field: str) -> None:
    error = invalid(lambda: to_schedule(value, "e"))
    assert error.field == field
    assert "invalid crontab field" in error.problem


def test_a_crontab_that_never_matches_is_rejected() -> None:
    error = invalid(lambda: to_schedule("0 0 30 2 *", "e"))
    assert error.field.startswith("schedule.")


def test_a_crontab_field_that_cannot_be_stored_as_json_is_named() -> None:
    error = invalid(lambda: to_schedule(crontab(minute={0, 30}), "e"))
    assert error.field == "schedule.minute"


def test_a_cron_string_needs_five_fields() -> None:
    error = invalid(lambda: to_schedule("0 3 * *", "e"))
    assert "5 fields" in error.problem


def test_the_callers_schedule_object_is_not_mutated() -> None:
    original = crontab(hour=3, minute=0)
    stored = spec(schedule=original).schedule
    assert stored == original
    assert stored is not original
    assert original.nowfun is None


# -- names, task, args ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ":schedule", ":lock", ":pending", ":anything", None, 5])
def test_empty_names_and_names_of_internal_keys_are_rejected(name: Any) -> None:
    error = invalid(lambda: spec(name=name))
    assert error.field == "name"


def test_ordinary_names_are_accepted() -> None:
    for name in ("report-daily", "a:b", "with space", "ünï"):
        assert check_name(name) == name


@pytest.mark.parametrize("task", ["", "   ", None, 3, ["noop"]])
def test_task_must_be_a_non_empty_string(task: Any) -> None:
    assert invalid(lambda: spec(task=task)).field == "task"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"args": (object(),)}, "args[0]"),
        ({"args": [1, {"when": datetime.now()}]}, "args[1]['when']"),
        ({"args": "abc"}, "args"),
        ({"args": {"a": 1}}, "args"),
        ({"args": 5}, "args"),
        ({"kwargs": {"x": {1, 2}}}, "kwargs['x']"),
        ({"kwargs": {1: "a"}}, "kwargs"),
        ({"kwargs": {"x": Decimal("1.5")}}, "kwargs['x']"),
        ({"kwargs": [("a", 1)]}, "kwargs"),
        ({"options": {"expires": datetime.now()}}, "options['expires']"),
        ({"options": {"priority": float("nan")}}, "options['priority']"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_args_kwargs_and_options_must_be_plain_json(overrides: dict[str, Any], field: str) -> None:
    error = invalid(lambda: spec(**overrides))
    assert error.field == field
    assert error.key == "e"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"compression": "zstd-typo"}, "options['compression']"),
        ({"serializer": "nope"}, "options['serializer']"),
        ({"delivery_mode": "x"}, "options['delivery_mode']"),
        ({"delivery_mode": 3}, "options['delivery_mode']"),
        ({"priority": 3.5}, "options['priority']"),
        ({"priority": 256}, "options['priority']"),
        ({"queue": "_kombu.binding.celery"}, "options['queue']"),
        ({"queue": "unacked"}, "options['queue']"),
        ({"queue": "unacked_index"}, "options['queue']"),
        ({"routing_key": "unacked_mutex"}, "options['routing_key']"),
        ({"queue": "q\x06\x163"}, "options['queue']"),
    ],
)
def test_options_kombu_cannot_send_are_rejected_when_written(
    options: dict[str, Any], field: str
) -> None:
    """Each would fail every publish of the entry (kombu raises, or the queue's key holds
    a set or hash of the broker's own)."""
    assert invalid(lambda: spec(options=options)).field == field


def test_options_kombu_sends_are_accepted() -> None:
    spec(
        options={
            "compression": "gzip",
            "serializer": "json",
            "delivery_mode": "persistent",
            "priority": 9,
            "queue": "reports",
            "routing_key": "reports",
        }
    )
    spec(options={"delivery_mode": 1, "priority": 0.0})


def test_deeply_nested_values_are_rejected_not_recursed_forever() -> None:
    value: list[Any] = []
    value.append(value)
    assert invalid(lambda: spec(args=(value,))).field.startswith("args")


def test_invalid_entry_is_a_value_error_carrying_key_field_and_problem() -> None:
    error = invalid(lambda: spec(name="bad", schedule="0 25 * * *"))
    assert isinstance(error, ValueError)
    assert (error.key, error.field) == ("bad", "schedule.hour")
    assert "bad" in str(error) and "schedule.hour" in str(error)


@pytest.mark.parametrize("version", [-1, 1.0, "1", True])
def test_expected_version_must_be_none_or_a_non_negative_int(version: Any) -> None:
    assert invalid(lambda: check_expected_version("e", version)).field == "expected_version"


def test_expected_version_accepts_none_and_non_negative_ints() -> None:
    for version in (None, 0, 7):
        check_expected_version("e", version)


# -- encoding -----------------------------------------------------------------------------


def test_definition_is_redbeat_json_with_all_fields() -> None:
    entry = spec(
        name="r",
        task="reports.daily",
        schedule="0 3 * * *",
        args=[1, "x"],
        kwargs={"fmt": "pdf"},
        options={"queue": "reports"},
        enabled=False,
    )
    raw = entry.definition()
    decoded = json.loads(raw, cls=RedBeatJSONDecoder)
    assert decoded == {
        "name": "r",
        "task": "reports.daily",
        "schedule": crontab(minute="0", hour="3"),
        "args": [1, "x"],
        "kwargs": {"fmt": "pdf"},
        "options": {"queue": "reports"},
        "enabled": False,
    }
    assert list(json.loads(raw)) == sorted(json.loads(raw))
    assert entry.args == (1, "x")


def test_equal_specs_encode_to_equal_bytes() -> None:
    a = spec(kwargs={"a": 1, "b": 2}, schedule=timedelta(seconds=60))
    b = spec(kwargs={"b": 2, "a": 1}, schedule=60.0)
    assert a.definition() == b.definition()


# -- Schedule key checks (no Redis call is made) -----------------------------------------------


def test_schedule_refuses_a_name_whose_key_is_the_configured_lock_key() -> None:
    app = Celery("unit", set_as_current=False)
    app.conf.update(redbeat_redis_url="redis://127.0.0.1:1/0", redbeat_lock_key="lock")
    sched = Schedule(app, client=_NoCalls())
    error = invalid(lambda: sched.upsert("lock", "noop", 60))
    assert error.field == "name"
    assert "internal key" in error.problem
    app.close()


class _NoCalls:
    """A client that fails the test if anything reaches it."""

    def register_script(self, script: str) -> object:
        return self

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Redis was called ({name}) before validation")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a script ran before validation")


# -- a spec constructed field by field ------------------------------------------------------


def test_a_spec_constructed_field_by_field_is_cleaned_up_and_checked_before_it_is_written() -> None:
    loose = EntrySpec(name="e", task="noop", schedule="*/5 * * * *", args=[1])  # type: ignore[arg-type]
    [loaded] = parse_specs([loose]).specs
    assert loaded.schedule == crontab(minute="*/5") and loaded.args == (1,)
    assert loaded.replace(kwargs={"a": 1}).kwargs == {"a": 1}
    load = parse_specs([EntrySpec(name="e", task="", schedule=interval(timedelta(seconds=5)))])
    assert [spec.name for spec in load.specs] == [] and "task" in load.rejected["e"]
    with pytest.raises(InvalidEntry, match="enabled"):
        spec().replace(enabled="yes")
