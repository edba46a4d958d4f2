"""The project's Celery app, configured from Django settings (``CELERY_*``)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_celery_beat.settings")

app = Celery("django_celery_beat_example")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
