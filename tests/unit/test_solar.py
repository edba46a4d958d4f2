"""Solar schedules: validated, stored in their JSON form, and due when Celery's ``solar``
says (the slot search against Celery's own, polar night and day included)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.schedules import solar

pytest.importorskip("ephem")

from safe_redbeat.errors import InvalidEntry
from safe_redbeat.model.codec import decode_entry, encode_schedule
from safe_redbeat.model.decide import decide
from safe_redbeat.model.entry import StoredEntry, to_timestamp
from safe_redbeat.model.lifecycle import Lifecycle
from safe_redbeat.model.slots import slot_after, writer_score
from safe_redbeat.model.specs import EntrySpec, to_schedule

APP = Celery("solar-tests")
UTC = timezone.utc
PARIS = (48.8566, 2.3522)
TROMSO = (69.6496, 18.956)  # no sunrise from late November to mid January

#: (event, latitude, longitude, after): days with the event, and polar night and day
CASES = [
    ("sunrise", *PARIS, datetime(2026, 3, 14, 9, 26, tzinfo=UTC)),
    ("sunset", *PARIS, datetime(2026, 3, 29, 0, 30, tzinfo=UTC)),  # the night DST starts
    ("solar_noon", 0.0, 0.0, datetime(2026, 1, 1, tzinfo=UTC)),
    ("dawn_civil", -33.87, 151.21, datetime(2026, 7, 1, 12, tzinfo=UTC)),
    ("dusk_nautical", 40.71, -74.01, datetime(2026, 11, 1, 5, 59, tzinfo=UTC)),
    ("sunrise", *TROMSO, datetime(2026, 12, 10, tzinfo=UTC)),  # polar night
    ("dawn_astronomical", *TROMSO, datetime(2026, 6, 10, tzinfo=UTC)),  # midnight sun
]


def celery_next(event: str, lat: float, lon: float, after: datetime) -> float:
    schedule = solar(event, lat, lon, app=APP)
    schedule.nowfun = lambda: after
    return float((after + schedule.remaining_estimate(after)).timestamp())


@pytest.mark.parametrize(("event", "lat", "lon", "after"), CASES)
def test_the_next_event_is_the_one_celery_s_solar_finds(
    event: str, lat: float, lon: float, after: datetime
) -> None:
    if lat == TROMSO[0] and not hasattr(solar, "_next_event"):
        pytest.skip("Celery before 5.7 checks again after the next anti-transit instead")
    ours = slot_after(solar(event, lat, lon), after, after, UTC)
    assert ours is not None and ours > after.timestamp()
    assert ours == pytest.approx(celery_next(event, lat, lon, after), abs=1e-3)


def test_a_sunrise_in_the_polar_night_is_the_first_one_after_it() -> None:
    after = datetime(2026, 12, 10, tzinfo=UTC)
    slot = slot_after(solar("sunrise", *TROMSO), after, after, UTC)
    assert slot is not None
    assert datetime(2027, 1, 10, tzinfo=UTC) < datetime.fromtimestamp(slot, UTC)
    assert datetime.fromtimestamp(slot, UTC) < datetime(2027, 1, 20, tzinfo=UTC)


def test_a_solar_schedule_is_stored_in_its_json_form_and_read_back() -> None:
    spec = EntrySpec.build("dawn", "reports.ping", solar("sunrise", *PARIS))
    definition = spec.definition()
    form = json.loads(definition)["schedule"]
    assert form == {"__type__": "solar", "event": "sunrise", "lat": PARIS[0], "lon": PARIS[1]}
    assert encode_schedule(spec.schedule) == json.dumps(form, sort_keys=True)
    stored = decode_entry("redbeat:dawn", "dawn", 0.0, definition, None, "1", app=APP)
    assert isinstance(stored.schedule, solar)
    assert (stored.schedule.event, stored.schedule.lat, stored.schedule.lon) == ("sunrise", *PARIS)
    assert to_schedule(form) == stored.schedule  # the mapping form is accepted too


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"event": "moonrise", "lat": 1, "lon": 1}, "schedule.event"),
        ({"event": "sunrise", "lat": 91, "lon": 1}, "schedule.lat"),
        ({"event": "sunrise", "lat": 1, "lon": "east"}, "schedule.lon"),
        ({"event": "sunrise", "lat": float("nan"), "lon": 1}, "schedule.lat"),
        ({"event": "sunrise", "lat": 1, "lon": 1, "elevation": 3}, "schedule"),
    ],
)
def test_a_bad_solar_schedule_is_refused_naming_the_field(
    form: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidEntry) as caught:
        to_schedule({"__type__": "solar", **form}, "dawn")
    assert caught.value.field == field
    definition = json.dumps(
        {"name": "dawn", "task": "t", "schedule": {"__type__": "solar", **form}}
    )
    with pytest.raises(InvalidEntry, match="dawn"):
        decode_entry("redbeat:dawn", "dawn", 0.0, definition, None, "1", app=APP)


def test_a_time_zone_is_refused_for_a_solar_schedule() -> None:
    with pytest.raises(InvalidEntry, match="a solar event does not depend on a time zone"):
        EntrySpec.build("dawn", "t", solar("sunrise", *PARIS), tz="Europe/Paris")


def test_without_ephem_a_solar_schedule_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ephem", None)
    with pytest.raises(InvalidEntry, match=r"pip install 'safe-redbeat\[solar\]'"):
        to_schedule({"__type__": "solar", "event": "sunrise", "lat": 1, "lon": 1}, "dawn")


def test_the_leader_sends_a_solar_entry_at_the_event_and_moves_it_to_the_next_day() -> None:
    schedule = solar("sunrise", *PARIS)
    created = datetime(2026, 3, 14, 9, 26, tzinfo=UTC)
    first = writer_score(schedule, Lifecycle(), created, 0, created)
    sunrise = datetime.fromtimestamp(first, UTC)
    assert sunrise.date() == created.date() + timedelta(days=1) and sunrise.hour == 6
    now = sunrise + timedelta(seconds=2)
    stored = StoredEntry(
        key="redbeat:dawn", name="dawn", task="t", schedule=schedule, args=[], kwargs={},
        options={}, enabled=True, last_run_at=created, total_run_count=0, version="1",
        score=first, lifecycle=Lifecycle(),
    )  # fmt: skip
    step = decide(stored, now)
    assert step.send and step.meta == (now, 1)
    next_day = datetime.fromtimestamp(step.new_score, UTC)
    assert next_day.date() == sunrise.date() + timedelta(days=1)
    assert abs(to_timestamp(next_day) - first - 86400) < 300  # a day later, give or take
