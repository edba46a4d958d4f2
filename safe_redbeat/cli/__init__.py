"""The ``safe-redbeat`` command (also ``python -m safe_redbeat``).

Status, health probes and schedule management from a shell, a CI job or a Kubernetes
``exec`` probe; also ``celery -A proj safe-redbeat ...`` (the ``celery.commands`` entry
point). ``-A/--app`` names the Celery app as ``celery -A`` does. Output is a
human-readable table; ``--json`` prints one JSON object instead (schemas in
``docs/cli.md``). An error is one line on stderr and a distinct exit code (``EXIT_*``).

Modules: ``context`` (loading the app, Redis, errors and exit codes), ``params`` (how
durations, JSON and times are read), ``output`` (tables and JSON forms), ``status``
(``status``, ``health``), ``entries`` (the schedule commands and ``sync``), ``dead``,
``reshard``, ``backup`` (``export``, ``import``), ``group`` (the click group and the
console script; cheap to import), ``commands`` (the click commands). Every change goes
through :class:`~safe_redbeat.schedule.Schedule` (also ``import``:
:mod:`safe_redbeat.backup`) or :func:`~safe_redbeat.writethrough.sync_once`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import (
        EXIT_APP,
        EXIT_CONFLICT,
        EXIT_INVALID,
        EXIT_NOT_FOUND,
        EXIT_OK,
        EXIT_REDIS,
        EXIT_RESHARD,
        EXIT_UNHEALTHY,
        EXIT_USAGE,
    )
    from .group import main, safe_redbeat

__all__ = [
    "EXIT_APP",
    "EXIT_CONFLICT",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REDIS",
    "EXIT_RESHARD",
    "EXIT_UNHEALTHY",
    "EXIT_USAGE",
    "main",
    "safe_redbeat",
]


def __getattr__(name: str) -> Any:
    """The names above, imported on first use: ``celery`` imports this package for its
    ``safe-redbeat`` subcommand on every command it runs."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = ".group" if name in ("main", "safe_redbeat") else ".context"
    return getattr(importlib.import_module(where, __name__), name)
