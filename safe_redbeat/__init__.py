"""Celery beat with RedBeat, safe to run as several replicas.

Enable with ``beat_scheduler = "safe_redbeat.SafeRedBeatScheduler"`` or
``celery beat -S safe_redbeat``.
"""

from __future__ import annotations

from . import signals
from .config import Settings
from .errors import (
    ConfigurationError,
    EntryNotFound,
    FencedOut,
    InvalidEntry,
    LeaseLost,
    SafeRedBeatError,
    VersionConflict,
)
from .observe import monitoring  # noqa: F401  (starts metrics and JSON logs on beat_init)
from .schedule import EntryInfo, EntrySpec, Schedule
from .scheduler import SafeRedBeatScheduler

__all__ = [
    "ConfigurationError",
    "EntryInfo",
    "EntryNotFound",
    "EntrySpec",
    "FencedOut",
    "InvalidEntry",
    "LeaseLost",
    "SafeRedBeatError",
    "SafeRedBeatScheduler",
    "Schedule",
    "Settings",
    "VersionConflict",
    "signals",
]

__version__ = "0.1.0"
