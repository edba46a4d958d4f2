"""Settings: defaults, validation messages, Celery and Django namespaces."""

from __future__ import annotations

import pytest
from celery import Celery

from safe_redbeat import ConfigurationError, Settings


def test_defaults_follow_the_lease_rule() -> None:
    s = Settings()
    assert (s.lease_seconds, s.renew_seconds, s.retry_seconds) == (15.0, 10.0, 2.0)
    assert s.instance_name


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"lease_seconds": 10, "renew_seconds": 10}, "safe_redbeat_renew_seconds"),
        ({"renew_seconds": 2.3, "retry_seconds": 2}, "safe_redbeat_retry_seconds"),
        ({"retry_seconds": 0}, "safe_redbeat_retry_seconds"),
        ({"lease_seconds": -1}, "safe_redbeat_lease_seconds"),
        ({"socket_timeout": 10}, "safe_redbeat_socket_timeout"),
        ({"batch_size": 0}, "safe_redbeat_batch_size"),
        ({"catch_up": "all"}, "safe_redbeat_catch_up"),
    ],
)
def test_invalid_combinations_name_the_settings(values: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(**values)  # type: ignore[arg-type]
    assert named in str(info.value)
    assert named in info.value.settings


def test_read_from_celery_conf_and_zero_is_not_unset() -> None:
    app = Celery("t", set_as_current=False)
    app.conf.safe_redbeat_lease_seconds = 30
    app.conf.safe_redbeat_retry_seconds = "3"
    app.conf.safe_redbeat_batch_size = 0
    with pytest.raises(ConfigurationError, match="safe_redbeat_batch_size"):
        Settings.from_app(app)
    app.conf.safe_redbeat_batch_size = 50
    s = Settings.from_app(app)
    assert (s.lease_seconds, s.retry_seconds, s.batch_size) == (30.0, 3.0, 50)


def test_read_from_django_celery_namespace() -> None:
    class DjangoSettings:
        CELERY_SAFE_REDBEAT_LEASE_SECONDS = 40
        CELERY_SAFE_REDBEAT_RENEW_SECONDS = 20
        CELERY_SAFE_REDBEAT_INSTANCE_NAME = "pod-a"

    app = Celery("t", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    s = Settings.from_app(app)
    assert (s.lease_seconds, s.renew_seconds, s.instance_name) == (40.0, 20.0, "pod-a")


@pytest.mark.parametrize("bad", [None, True, "soon", [1]])
def test_non_numbers_are_rejected_with_the_setting_name(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="safe_redbeat_lease_seconds must be a number"):
        Settings.from_mapping({"safe_redbeat_lease_seconds": bad})
