"""Monitoring settings: read with the others, checked once, errors name the setting."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from safe_redbeat import ConfigurationError
from safe_redbeat.config import Settings, unknown_settings
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


def test_the_http_port_and_its_deprecated_aliases() -> None:
    found = settings(safe_redbeat_http_port=9808, safe_redbeat_http_addr="127.0.0.1")
    assert (found.serve_port, found.serve_addr, found.notices) == (9808, "127.0.0.1", ())
    old = settings(safe_redbeat_metrics_port=9100, safe_redbeat_metrics_addr="::1")
    assert (old.serve_port, old.serve_addr) == (9100, "::1")
    [notice] = old.notices
    assert "safe_redbeat_metrics_port (use safe_redbeat_http_port)" in notice
    assert "safe_redbeat_metrics_addr (use safe_redbeat_http_addr)" in notice
    both = settings(safe_redbeat_http_port=1, safe_redbeat_metrics_port=2)
    assert both.serve_port == 1 and "metrics_port is ignored" in both.notices[0]
    assert settings().serve_port is None and settings().serve_addr == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("safe_redbeat_http_port", "9808"),
        ("safe_redbeat_http_port", -1),
        ("safe_redbeat_http_addr", ""),
        ("safe_redbeat_liveness_seconds", 0),
        ("safe_redbeat_log_sent", "no"),
    ],
)
def test_bad_http_and_log_values_name_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(**{name: value})
    assert info.value.settings == (name,) and name in str(info.value)


def test_liveness_bound_defaults_to_the_health_rule_plus_a_loader_call() -> None:
    assert settings().liveness_limit == 10.0  # max(3 * retry, renew)
    assert settings(safe_redbeat_retry_seconds=4).liveness_limit == 12.0
    with_loader = settings(safe_redbeat_loader="m:f", safe_redbeat_loader_timeout_seconds=20)
    assert with_loader.liveness_limit == 30.0
    assert settings(safe_redbeat_liveness_seconds=3).liveness_limit == 3.0


def test_log_sent_is_on_unless_switched_off() -> None:
    assert settings().log_sent is True
    assert settings(safe_redbeat_log_sent=False).log_sent is False


def test_unknown_settings_are_named_with_the_nearest_known_one() -> None:
    found = settings(
        safe_redbeat_lease_second=20,
        safe_redbeat_metric_port=9808,
        safe_redbeat_zzz=1,
        redbeat_lock_timout=5,
        redbeat_key_prefix="app:",
        SAFE_REDBEAT_WRITE_THROUGH=False,  # the Django adapter's own setting
    )
    [notice] = found.notices
    assert notice == (
        "settings nobody reads (misspelled?): "
        "redbeat_lock_timout (did you mean redbeat_lock_timeout?), "
        "safe_redbeat_lease_second (did you mean safe_redbeat_lease_seconds?), "
        "safe_redbeat_metric_port (did you mean safe_redbeat_http_port?), "
        "safe_redbeat_zzz"
    )


def test_uppercase_settings_celery_does_not_read_are_unknown() -> None:
    app = Celery("monitoring-settings", set_as_current=False)
    app.conf.update(SAFE_REDBEAT_LEASE_SECONDS=20, REDBEAT_KEY_PREFIX="app:")
    assert unknown_settings(app.conf) == [
        ("SAFE_REDBEAT_LEASE_SECONDS", "safe_redbeat_lease_seconds")
    ]


def test_unknown_settings_under_the_django_namespace_are_named_as_written() -> None:
    class DjangoSettings:
        CELERY_SAFE_REDBEAT_RENEW_SECOND = 5
        CELERY_SAFE_REDBEAT_RETRY_SECONDS = 1
        CELERY_REDBEAT_REDIS_URL = "redis://localhost:6379/1"

    app = Celery("monitoring-settings", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert unknown_settings(app.conf, namespace=app.namespace) == [
        ("CELERY_SAFE_REDBEAT_RENEW_SECOND", "CELERY_SAFE_REDBEAT_RENEW_SECONDS")
    ]
    found = Settings.from_app(app)
    assert found.retry_seconds == 1 and "CELERY_SAFE_REDBEAT_RENEW_SECONDS?" in found.notices[0]
