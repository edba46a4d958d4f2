"""Celery beat with RedBeat, safe to run as several replicas.

Enable with ``beat_scheduler = "safe_redbeat.SafeRedBeatScheduler"`` or
``celery beat -S safe_redbeat``.
"""

from __future__ import annotations

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
from .scheduler import SafeRedBeatScheduler

__all__ = [
    "ConfigurationError",
    "EntryNotFound",
    "FencedOut",
    "InvalidEntry",
    "LeaseLost",
    "SafeRedBeatError",
    "SafeRedBeatScheduler",
    "Settings",
    "VersionConflict",
]

__version__ = "0.1.0"
