"""A minimal Django project whose periodic tasks live in django-celery-beat's table and
are scheduled by safe_redbeat (see README.md here and docs/django-celery-beat.md)."""

from .celery import app as celery_app

__all__ = ["celery_app"]
