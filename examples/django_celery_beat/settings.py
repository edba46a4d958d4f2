"""Settings of the example project: admin, django-celery-beat, safe_redbeat.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and ``EXAMPLE_DB_PATH`` (default
``db.sqlite3`` next to this file) come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    # after django_celery_beat: write-through, write-back, manage.py safe_redbeat_sync
    "safe_redbeat.contrib.django_celery_beat",
    "examples.django_celery_beat.reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "examples.django_celery_beat.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        # beat replicas and the admin share the file: wait for a lock instead of failing,
        # and (Django 5.1+) take it when a transaction begins, so that two transactions
        # that read and then write never deadlock (SQLite answers "database is locked"
        # at once then, without waiting)
        "OPTIONS": {
            "timeout": 20,
            **({"transaction_mode": "IMMEDIATE"} if django.VERSION >= (5, 1) else {}),
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# -- Celery, RedBeat and safe_redbeat (read by celery.py with namespace="CELERY") -------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_REDBEAT_REDIS_URL = REDIS_URL
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "safe_redbeat.SafeRedBeatScheduler"
CELERY_SAFE_REDBEAT_LOADER = "safe_redbeat.contrib.django_celery_beat:load"

# the Celery app whose Redis the admin's changes are written to (default: the current app)
SAFE_REDBEAT_CELERY_APP = "examples.django_celery_beat:celery_app"

# copy run history back to the rows, and save finished one-offs and expired rows disabled,
# every 10 s (the default; None: off)
SAFE_REDBEAT_WRITE_BACK_SECONDS: float | None = 10
