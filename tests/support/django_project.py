"""Django in the test process: the example project, on a migrated sqlite file.

Django is configured once per process, so every test module that needs it calls
:func:`setup` and shares the same database file; tests empty the tables they use.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SETTINGS_MODULE = "tests.apps.django_settings"
#: ``-A`` of beat processes that run the example project
CELERY_APP = "examples.django_celery_beat"

_DB_PATH: Path | None = None


def setup() -> Path:
    """Configure Django with the example project, migrate, return the sqlite path."""
    global _DB_PATH
    if _DB_PATH is not None:
        return _DB_PATH
    import django
    from django.core.management import call_command

    workdir = Path(tempfile.mkdtemp(prefix="srb-django-"))
    path = workdir / "db.sqlite3"
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    os.environ["EXAMPLE_DB_PATH"] = str(path)
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    _DB_PATH = path
    return path


def clear_tables() -> None:
    """Delete every periodic task and schedule row (with signals: write-through runs)."""
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    for model in (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
        model.objects.all().delete()


def use_redis(redis_url: str) -> None:
    """Point the example's Celery app at ``redis_url`` (schedule and broker), with its
    tables empty (write-through off while they are emptied) and no cached Schedule or
    RedBeat connection of an earlier test left."""
    from django.test import override_settings

    from examples.django_celery_beat import celery_app
    from safe_redbeat.contrib.django_celery_beat.row_signals import close_schedules

    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=False):
        clear_tables()
    close_schedules()
    for cached in ("redbeat_conf", "redbeat_redis"):
        vars(celery_app).pop(cached, None)
    # both spellings: older Celery looks the CELERY_ (Django) key up first
    celery_app.conf.update(
        redbeat_redis_url=redis_url,
        broker_url=redis_url,
        CELERY_REDBEAT_REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
    )


def beat_env(db_path: Path, *, write_back: float | None = None) -> dict[str, str]:
    """Extra environment of a beat process running the example project."""
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "EXAMPLE_DB_PATH": str(db_path)}
    if write_back is not None:
        env["SRB_WRITE_BACK"] = str(write_back)
    return env
