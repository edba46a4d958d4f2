"""The Django app: connects write-through signals and, in beat, the optional write-back."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig

__all__ = ["SafeRedBeatDjangoConfig"]


class SafeRedBeatDjangoConfig(AppConfig):  # type: ignore[misc]  # django is untyped
    name = "safe_redbeat.contrib.django_celery_beat"
    # not "django_celery_beat": that label belongs to django-celery-beat itself
    label = "safe_redbeat_django_celery_beat"
    verbose_name = "safe_redbeat (django-celery-beat adapter)"

    def ready(self) -> None:
        from celery.signals import beat_init

        from . import row_signals

        row_signals.connect()
        beat_init.connect(_start_write_back, weak=False, dispatch_uid="safe_redbeat_write_back")


def _start_write_back(sender: Any = None, **kwargs: Any) -> None:
    from .writeback import start_in_beat

    start_in_beat(sender)
