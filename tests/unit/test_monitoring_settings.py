"""Monitoring settings: read with the others, checked once, errors name the setting."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from safe_redbeat import ConfigurationError
from safe_redbeat.config import Settings
from safe_redbeat.errors import FencedOut, LeaseLost, LossCause
from safe_redbeat.metrics import _state


def settings(**conf: Any) -> Settings:
    app = Celery("monitoring-settings", set_as_current=False)
    app.conf.update(conf)
    return Settings.from_app(app)


def test_defaults_are_off() -> None:
    found = settings()
    assert (found.metrics_port, found.metrics_addr, found.log_format) == (None, "0.0.0.0", "text")
    assert settings(safe_redbeat_metrics_port=0).metrics_port == 0  # any free port


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("safe_redbeat_metrics_port", "9808"),
        ("safe_redbeat_metrics_port", 70000),
        ("safe_redbeat_metrics_port", True),
        ("safe_redbeat_metrics_addr", ""),
        ("safe_redbeat_log_format", "yaml"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**{name: value})
    assert info.value.settings == (name,) and name in str(info.value)


def test_loss_causes_are_a_bounded_set_carried_by_the_error() -> None:
    assert [cause.value for cause in LossCause] == [
        "key_gone",
        "taken",
        "fenced",
        "redis_unreachable",
        "renew_deadline",
        "other",
    ]
    assert FencedOut("rejected").cause is LossCause.FENCED
    assert LeaseLost("gone", LossCause.KEY_GONE).cause is LossCause.KEY_GONE
    assert LeaseLost("something new").cause is LossCause.OTHER


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (None, "parked"),
        ("{not json", "parked"),
        ('{"schedule": 5}', "parked"),
        ('{"task": "t", "schedule": 5}', "active"),
        ('{"task": "t", "schedule": 5, "enabled": false}', "disabled"),
    ],
)
def test_entry_states(raw: str | None, state: str) -> None:
    assert _state(raw) == state
