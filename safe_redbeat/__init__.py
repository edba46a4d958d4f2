"""Celery beat with RedBeat, safe to run as several replicas.

Enable with ``beat_scheduler = "safe_redbeat.SafeRedBeatScheduler"`` or
``celery beat -S safe_redbeat``.

The names below are imported on first use, so that importing the package (``celery``
does for its ``safe-redbeat`` subcommand, on every ``celery`` command) costs little.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: where each public name lives (``signals`` is a module)
_WHERE = {
    "ConfigurationError": ".errors",
    "EntryNotFound": ".errors",
    "FencedOut": ".errors",
    "InvalidEntry": ".errors",
    "LeaseLost": ".errors",
    "SafeRedBeatError": ".errors",
    "VersionConflict": ".errors",
    "Settings": ".config",
    "EntryInfo": ".schedule",
    "EntrySpec": ".schedule",
    "Schedule": ".schedule",
    "SafeRedBeatScheduler": ".scheduler",
}


def __getattr__(name: str) -> Any:
    if name == "signals":
        return importlib.import_module(".signals", __name__)
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
