"""RedBeat's ``definition`` JSON: written piece by piece, byte for byte what RedBeat's
encoder writes for the whole object (a reconcile compares stored bytes by digest)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from celery.schedules import BaseSchedule, crontab
from celery.schedules import schedule as interval
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedules import rrule

from safe_redbeat.model import codec

CASES: list[tuple[Any, ...]] = [
    ("a", "t", interval(60), (), {}, {}, True),
    ("a", "t", interval(60), [], None, None, 1),
    (
        "\u00fc\u540d \u2028",
        "pkg.task",
        crontab("*/5", "1,2"),
        (1, "x", None, [1.5, {"b": 1, "a": 2}], -0.0, 2**70),
        {"z": 1, "a": {"y": [], "b": "\u00e9\U0001f600"}, "m": 1e300},
        {"queue": "q", "headers": {"b": 1, "a": 2}, "priority": 3},
        False,
    ),
    (
        "r",
        "t",
        rrule("MINUTELY", dtstart=datetime(2024, 1, 1, tzinfo=timezone.utc), count=1),
        ['\x00\n\t"\\'],
        {"k": 1e-7, "t": True, "n": None},
        {"expires": 30},
        True,
    ),
]


def whole(
    name: str,
    task: str,
    schedule: BaseSchedule,
    args: Any,
    kwargs: Any,
    options: Any,
    enabled: Any,
) -> str:
    definition = {
        "name": name,
        "task": task,
        "schedule": schedule,
        "args": list(args or ()),
        "kwargs": dict(kwargs or {}),
        "options": dict(options or {}),
        "enabled": bool(enabled),
    }
    return json.dumps(definition, cls=RedBeatJSONEncoder, sort_keys=True)


@pytest.mark.parametrize("case", CASES)
def test_a_definition_is_what_redbeats_encoder_writes_for_the_whole_object(
    case: tuple[Any, ...],
) -> None:
    assert codec.encode_definition(*case) == whole(*case)


@pytest.mark.parametrize("case", CASES)
def test_without_a_c_encoder_the_documented_one_writes_the_same(
    case: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    monkeypatch.setattr(codec, "_encode_value", codec._value_encoder())
    assert codec._encode_value == codec._ENCODER.encode
    assert codec.encode_definition(*case) == whole(*case)
