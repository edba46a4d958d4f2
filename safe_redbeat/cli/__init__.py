"""The ``safe-redbeat`` command (also ``python -m safe_redbeat``).

Status, health probes and schedule management from a shell, a CI job or a Kubernetes
``exec`` probe. ``-A/--app`` names the Celery app as ``celery -A`` does. Output is a
human-readable table; ``--json`` prints one JSON object instead (schemas in
``docs/cli.md``). An error is one line on stderr and a distinct exit code (``EXIT_*``).

Modules: ``context`` (loading the app, Redis, errors and exit codes), ``output``
(tables and JSON forms), ``status`` (``status``, ``health``), ``entries`` (the schedule
commands and ``sync``), ``main`` (arguments). Every change goes through
:class:`~safe_redbeat.schedule.Schedule` or :func:`~safe_redbeat.writethrough.sync_once`.
"""

from __future__ import annotations

from .context import (
    EXIT_APP,
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REDIS,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
)
from .main import build_parser, main

__all__ = [
    "EXIT_APP",
    "EXIT_CONFLICT",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REDIS",
    "EXIT_UNHEALTHY",
    "EXIT_USAGE",
    "build_parser",
    "main",
]
