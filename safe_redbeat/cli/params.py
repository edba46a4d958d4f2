"""How the command line's values are read: durations, JSON, times; the lifetime options.
Cheap to import (the group's own options use it).

Each reader is a click parameter type, so a bad value is a usage error (exit 2) that names
the option and says what it takes. Durations are written as ``90`` (seconds), ``1.5``,
``90s``, ``5m``, ``1h30m``, ``1d`` or ``250ms``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

__all__ = [
    "DURATION",
    "WHEN",
    "Duration",
    "JsonOf",
    "When",
    "lifetime_options",
    "parse_duration",
]

if TYPE_CHECKING:  # generic from click 8.2 on; subscripted for the type checker only
    ParamType = click.ParamType[Any]
else:
    ParamType = click.ParamType

#: seconds per unit, largest first
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = tuple(_UNITS)
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|d|h|m|s)")
_EXAMPLES = "e.g. 90s, 5m, 1h30m, 1d, 250ms, or a number of seconds"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number (``90``, ``1.5``) or parts with units, largest first
    (``1d``, ``1h30m``, ``2m30s``, ``250ms``); ValueError saying what is accepted."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"not a finite duration: {text!r}")
        return seconds
    parts = list(_PART.finditer(value))
    if not value or "".join(p.group(0) for p in parts) != value:
        raise ValueError(f"not a duration: {text!r} ({_EXAMPLES})")
    ranks = [_ORDER.index(p.group(2)) for p in parts]
    if any(later <= earlier for earlier, later in itertools.pairwise(ranks)):
        raise ValueError(f"not a duration: {text!r} (each unit once, largest first: 1h30m)")
    return sum(float(p.group(1)) * _UNITS[p.group(2)] for p in parts)


class Duration(ParamType):
    """A positive duration (:func:`parse_duration`), in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not seconds > 0:
            self.fail(f"must be a positive duration, got {value!r}", param, ctx)
        return seconds


DURATION = Duration()


class JsonOf(ParamType):
    """A JSON value of one type (``list``: an array, ``dict``: an object)."""

    name = "json"

    def __init__(self, kind: type, label: str) -> None:
        self.kind = kind
        self.label = label

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.kind):
            return value
        try:
            found = json.loads(value)
        except ValueError as exc:
            self.fail(f"not valid JSON ({exc}): {value!r}", param, ctx)
        if not isinstance(found, self.kind):
            self.fail(f"must be a JSON {self.label}, got {value!r}", param, ctx)
        return found


class When(ParamType):
    """ISO 8601 (``2026-12-24T18:30``, ``...+01:00``, ``...Z``); naive = the app's timezone."""

    name = "when"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"not an ISO 8601 date and time (e.g. 2026-12-24T18:30): {value!r}", param, ctx
            )


WHEN = When()


def _zones(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of ``--tz``: the IANA zones this machine knows."""
    from zoneinfo import available_timezones

    return sorted(zone for zone in available_timezones() if zone.startswith(incomplete))


def lifetime_options(*, add: bool) -> list[Callable[[Any], Any]]:
    """One option per lifetime field, from its metadata (``lifetime_fields()``); the
    first-run flag (``--now``) only for ``add``."""
    from ..model.lifecycle import (
        CHOICE,
        COUNT,
        FLAG,
        OVERLAP_POLICIES,
        SECONDS,
        TIME,
        ZONE,
        lifetime_fields,
    )

    #: how a lifetime field of each kind is read: parameter type and metavar
    kinds: dict[str, tuple[ParamType, str]] = {
        TIME: (WHEN, "WHEN"),
        COUNT: (click.IntRange(min=1), "N"),
        ZONE: (click.STRING, "ZONE"),
        CHOICE: (click.Choice(OVERLAP_POLICIES), "|".join(OVERLAP_POLICIES)),
        SECONDS: (DURATION, "DURATION"),
    }
    options: list[Callable[[Any], Any]] = []
    for spec in lifetime_fields():
        kind, name = spec.metadata["kind"], spec.name
        flag = spec.metadata["flag"] or "--" + name.replace("_", "-")
        text = spec.metadata["help"]
        if kind == FLAG:
            if add:
                options.append(click.option(flag, name, is_flag=True, default=False, help=text))
            continue
        kind_type, metavar = kinds[kind]
        complete = _zones if kind == ZONE else None
        options.append(
            click.option(
                flag, name, type=kind_type, metavar=metavar, help=text, shell_complete=complete
            )
        )
    return options
