"""Monitoring settings: checked once, errors name the setting."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from safe_redbeat import ConfigurationError
from safe_redbeat.metrics import _state
from safe_redbeat.observe.monitoring import MonitoringSettings
from safe_redbeat.signals import lost_cause


def settings(**conf: Any) -> MonitoringSettings:
    app = Celery("monitoring-settings", set_as_current=False)
    app.conf.update(conf)
    return MonitoringSettings.from_app(app)


def test_defaults_are_off() -> None:
    assert settings() == MonitoringSettings(None, "0.0.0.0", "text")
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


def test_loss_causes_are_a_bounded_set() -> None:
    assert lost_cause("the lease key is gone (deleted, expired or Redis lost its data)") == (
        "key_gone"
    )
    assert lost_cause("the lease is held by x (host h, pid 1, fence 2)") == "taken"
    assert lost_cause("no renewal for 10.0s (renew deadline passed): boom") == "renew_deadline"
    assert lost_cause("Redis rejected a claim: the lease key no longer holds our token") == (
        "fenced"
    )
    assert lost_cause("Redis unreachable past the renew deadline (x)") == "redis_unreachable"
    assert lost_cause("something new") == "other"


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
