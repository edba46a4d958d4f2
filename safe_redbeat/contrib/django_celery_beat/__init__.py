"""django-celery-beat's ``PeriodicTask`` table and admin, scheduled by safe_redbeat.

Install with ``pip install 'safe-redbeat[django]'`` and add this package to
``INSTALLED_APPS`` (after ``django_celery_beat``), then::

    CELERY_BEAT_SCHEDULER = "safe_redbeat.SafeRedBeatScheduler"
    CELERY_SAFE_REDBEAT_LOADER = "safe_redbeat.contrib.django_celery_beat:load"

- :func:`load` maps every ``PeriodicTask`` row (enabled or not) to a loader entry; the
  leader reconciles Redis with it after each acquisition and every
  ``safe_redbeat_reconcile_seconds``. A row that cannot be scheduled (JSON that does not
  parse, say) is refused by the admin form, else reported by name and skipped; the other
  rows still load in full.
- Saves and deletes of rows (and ``PeriodicTasks.update_changed()`` after bulk updates)
  reach Redis after the transaction commits (``SAFE_REDBEAT_WRITE_THROUGH``, default on).
- ``SAFE_REDBEAT_WRITE_BACK_SECONDS`` (default 10; ``None``: off) copies ``last_run_at``
  and ``total_run_count`` back to the rows from the leading beat, and saves finished
  one-offs and expired rows disabled, as ``DatabaseScheduler`` does.
- The admin: the ``PeriodicTask`` form refuses rows that cannot be scheduled; a Beat page
  shows leaders, replicas, pending, lag, held removals and dead letters (``admin.py``).
- ``python manage.py safe_redbeat_sync [--dry-run]`` runs one reconcile.

See docs/django-celery-beat.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LOADER_PATH", "load"]

#: The value of ``safe_redbeat_loader`` that selects this adapter.
LOADER_PATH = "safe_redbeat.contrib.django_celery_beat:load"


def load(app: Any) -> list[Any]:
    """The loader hook: every ``PeriodicTask`` row as a loader entry (see ``mapping``)."""
    from .mapping import load_rows

    return load_rows(app)
