"""Entries as RedBeat stores them: decode, encode, and compute their next due time.

The hash of an entry keeps RedBeat's fields (``definition``, ``meta``) so stock RedBeat
can read it, and adds ``version`` (grows by one on each change of the definition).
Times are computed against a ``now`` passed in (Redis server time), never the local clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, maybe_schedule, solar
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder

from ..errors import InvalidEntry
from .entry import StoredEntry
from .lifecycle import Lifecycle, decode_state
from .validation import check_json, check_options, check_text

__all__ = [
    "decode_entry",
    "decode_meta",
    "decode_timestamp",
    "encode_definition",
    "encode_meta",
    "encode_schedule",
    "meta_encoder",
    "solar_schedule",
]

#: Solar events (Celery's ``solar``; django-celery-beat's ``SolarSchedule.event``).
SOLAR_EVENTS = (
    "dawn_astronomical",
    "dawn_nautical",
    "dawn_civil",
    "sunrise",
    "solar_noon",
    "sunset",
    "dusk_civil",
    "dusk_nautical",
    "dusk_astronomical",
)


class _Encoder(RedBeatJSONEncoder):  # type: ignore[misc]  # redbeat is untyped
    """RedBeat's encoder, plus Celery's ``solar`` (a form of ours; docs/storage-format.md)."""

    def default(self, obj: Any) -> Any:
        if isinstance(obj, solar):
            return {"__type__": "solar", "event": obj.event, "lat": obj.lat, "lon": obj.lon}
        return super().default(obj)


def solar_schedule(key: str, event: Any, lat: Any, lon: Any) -> solar:
    """Celery's ``solar`` for ``event`` at ``lat``/``lon`` (degrees), checked field by field
    (InvalidEntry naming it). It needs the ``ephem`` package (the ``solar`` extra)."""
    if event not in SOLAR_EVENTS:
        raise _fail(key, "schedule.event", f"unknown solar event {event!r} (known: "
                    f"{', '.join(SOLAR_EVENTS)})")  # fmt: skip
    degrees = []
    for name, value, limit in (("lat", lat, 90), ("lon", lon, 180)):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number) or abs(number) > limit:
            raise _fail(
                key, f"schedule.{name}", f"must be degrees from -{limit} to {limit}, got {value!r}"
            )
        degrees.append(number)
    try:
        import ephem  # noqa: F401  # the slot search uses it directly
    except ImportError:
        raise _fail(
            key,
            "schedule",
            "a solar schedule needs the ephem package: pip install 'safe-redbeat[solar]'",
        ) from None
    return solar(event, degrees[0], degrees[1])


# One instance each: json.loads/dumps(cls=...) would build a new one per call, which
# costs a few microseconds per entry on every tick. Both are stateless.
_DECODER = RedBeatJSONDecoder()
_ENCODER = _Encoder(sort_keys=True)


def _value_encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode`` for a definition's args, kwargs and options, with CPython's C
    encoder made once: ``JSONEncoder.encode`` makes one per call, which costs more than
    encoding a small value (a loader's reconcile encodes 100k of them). Falls back to
    ``_ENCODER.encode`` where there is no C encoder, or it answers a probe differently.
    Without cycle detection: the values are plain JSON (``check_json``)."""
    documented: Callable[[Any], str] = _ENCODER.encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return documented
    try:
        c_encode = make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring_ascii,
            None,
            _ENCODER.key_separator,
            _ENCODER.item_separator,
            True,
            False,
            True,
        )

        def encode(value: Any) -> str:
            return "".join(c_encode(value, 0))

        probe = {"b": [1, 2.5, None, True, "\u00e9\U0001f600", 1e300], "a": {"y": (), "x": -0.0}}
        if encode(probe) == documented(probe):
            return encode
    except Exception:  # another signature: use the documented way
        pass
    return documented


_encode_value = _value_encoder()


def _loads(raw: str | bytes) -> Any:
    if isinstance(raw, str):
        return _DECODER.decode(raw)
    return json.loads(raw, cls=RedBeatJSONDecoder)


def _fail(key: str, field_name: str, problem: str) -> InvalidEntry:
    return InvalidEntry(key, field_name, problem)


#: Largest run count or timestamp accepted from Redis (beyond it, arithmetic overflows).
_MAX_NUMBER = 2**53


def _json_field(key: str, field_name: str, raw: str | bytes) -> Any:
    """Decode one JSON field with RedBeat's decoder; any failure is an InvalidEntry."""
    if isinstance(raw, str):
        check_text(key, field_name, raw)
    try:
        return _loads(raw)
    except Exception as exc:  # ValueError, OverflowError, TypeError, KeyError, ...
        raise _fail(
            key, field_name, f"not valid RedBeat JSON ({type(exc).__name__}: {exc})"
        ) from None


def _count(key: str, field_name: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, field_name, f"must be a whole number, got {value!r}")
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= _MAX_NUMBER:
        raise _fail(key, field_name, f"must be a whole number from 0 to 2**53, got {value!r}")
    return int(value)


def _schedule(key: str, raw: Any, app: Any) -> BaseSchedule:
    if isinstance(raw, Mapping) and raw.get("__type__") == "solar":
        unknown = set(raw) - {"__type__", "event", "lat", "lon"}
        if unknown:
            raise _fail(key, "definition.schedule", f"unknown solar fields {sorted(unknown)}")
        raw = solar_schedule(key, raw.get("event"), raw.get("lat"), raw.get("lon"))
    if isinstance(raw, Mapping) and "__type__" in raw:
        raise _fail(
            key,
            "definition.schedule",
            f"unknown schedule type {raw['__type__']!r} (known: interval, crontab, rrule, solar)",
        )
    if not isinstance(raw, BaseSchedule):
        raise _fail(key, "definition.schedule", f"not a schedule: {raw!r}")
    run_every = getattr(raw, "run_every", None)
    if isinstance(run_every, timedelta):
        seconds = run_every.total_seconds()
        if not math.isfinite(seconds) or seconds <= 0:
            raise _fail(key, "definition.schedule.every", f"must be positive, got {seconds!r}")
    try:
        return maybe_schedule(raw, app=app)
    except Exception as exc:
        raise _fail(key, "definition.schedule", f"{type(exc).__name__}: {exc}") from None


def decode_entry(
    key: str,
    name: str,
    score: float,
    definition_raw: str | None,
    meta_raw: str | None,
    version_raw: str | None,
    *,
    app: Any,
    nowfun: Any = None,
    run_now_raw: str | None = None,
    lifecycle_raw: str | None = None,
    state_raw: str | None = None,
    sent_at_raw: str | None = None,
) -> StoredEntry:
    """Decode an entry hash; raise InvalidEntry naming the key and the bad field.

    Every value is treated as hostile (another language may have written it): whatever it
    holds, the only exception raised is InvalidEntry.
    """
    check_text(key, "name", name)
    if not definition_raw:
        raise _fail(key, "definition", "missing (the hash has no definition field)")
    definition = _json_field(key, "definition", definition_raw)
    if not isinstance(definition, Mapping):
        raise _fail(key, "definition", "must be a JSON object")
    task = definition.get("task")
    if not isinstance(task, str) or not task:
        raise _fail(key, "definition.task", "must be a non-empty task name")
    schedule = _schedule(key, definition.get("schedule"), app)
    if nowfun is not None:
        schedule.nowfun = nowfun
    args = definition.get("args") or []
    kwargs = definition.get("kwargs") or {}
    options = definition.get("options") or {}
    if not isinstance(args, list | tuple):
        raise _fail(key, "definition.args", "must be a JSON array")
    if not isinstance(kwargs, Mapping):
        raise _fail(key, "definition.kwargs", "must be a JSON object")
    if not isinstance(options, Mapping):
        raise _fail(key, "definition.options", "must be a JSON object")
    check_json(key, "definition.args", args)
    check_json(key, "definition.kwargs", kwargs)
    check_options(key, options)
    enabled = definition.get("enabled", True)
    if not isinstance(enabled, bool | int) or enabled not in (True, False):
        raise _fail(key, "definition.enabled", f"must be true or false, got {enabled!r}")
    last_run_at, total_run_count = decode_meta(key, meta_raw)
    version = "0" if version_raw is None else version_raw
    if not _DIGITS.fullmatch(version):
        raise _fail(key, "version", f"must be a non-negative integer, got {version!r}")
    run_now: int | None = None
    if run_now_raw:
        run_now = decode_timestamp(key, "run_now", run_now_raw)
    return StoredEntry(
        sent_at=_sent_at(sent_at_raw),
        lifecycle=Lifecycle.decode(key, lifecycle_raw),
        state=decode_state(key, state_raw),
        run_now=run_now,
        run_now_raw=run_now_raw or None,
        key=key,
        name=name,
        task=task,
        schedule=schedule,
        args=list(args),
        kwargs=dict(kwargs),
        options=dict(options),
        enabled=bool(enabled),
        last_run_at=last_run_at,
        total_run_count=total_run_count,
        version=version,
        score=score,
        meta_raw=meta_raw,
        definition_raw=definition_raw,
    )


_DIGITS = re.compile(r"[0-9]{1,15}")


def decode_timestamp(key: str, field_name: str, raw: str) -> int:
    """Whole seconds since the epoch from a stored number (``run_now``, a score)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _fail(key, field_name, f"must be a timestamp, got {raw!r}") from None
    if not math.isfinite(value) or not 0 <= value <= _MAX_NUMBER:
        raise _fail(key, field_name, f"must be a timestamp, got {raw!r}")
    return int(value)


def _sent_at(raw: str | None) -> float | None:
    """``sent_at``: whole Redis seconds; anything else is no record (never parks)."""
    if raw is None or not _DIGITS.fullmatch(str(raw)):
        return None
    return float(raw)


def decode_meta(key: str, meta_raw: str | None) -> tuple[datetime | None, int]:
    """``(last_run_at, total_run_count)`` from a ``meta`` field; None/0 when absent."""
    if not meta_raw:
        return None, 0
    meta = _json_field(key, "meta", meta_raw)
    if not isinstance(meta, Mapping):
        raise _fail(key, "meta", "must be a JSON object")
    last_run_at = meta.get("last_run_at")
    total_run_count = _count(key, "meta.total_run_count", meta.get("total_run_count"))
    if last_run_at is not None and not isinstance(last_run_at, datetime):
        raise _fail(key, "meta.last_run_at", f"not a datetime: {last_run_at!r}")
    if last_run_at is not None and last_run_at.tzinfo is None:
        raise _fail(key, "meta.last_run_at", "has no time zone")
    return last_run_at, total_run_count


def encode_definition(
    name: str,
    task: str,
    schedule: BaseSchedule,
    args: Any = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    enabled: bool = True,
    *,
    schedule_json: str | None = None,
) -> str:
    """RedBeat's ``definition`` JSON for an entry (sorted keys, so equal means equal).

    ``schedule_json``: :func:`encode_schedule` of ``schedule``, when the caller has it
    (a loader's rows share a few schedules).
    """
    if schedule_json is None:
        schedule_json = encode_schedule(schedule)
    # the object with its keys in sorted order, each value encoded on its own: one encoder
    # call for a usual entry (its kwargs) instead of one for the whole object
    return (
        f'{{"args": {_encode_value(list(args)) if args else "[]"}, '
        f'"enabled": {"true" if enabled else "false"}, '
        f'"kwargs": {_encode_value(_dict(kwargs)) if kwargs else "{}"}, '
        f'"name": {_ENCODER.encode(name)}, '
        f'"options": {_encode_value(_dict(options)) if options else "{}"}, '
        f'"schedule": {schedule_json}, "task": {_ENCODER.encode(task)}}}'
    )


def _dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return mapping if type(mapping) is dict else dict(mapping)


def encode_schedule(schedule: BaseSchedule) -> str:
    """A schedule's RedBeat JSON, as :func:`encode_definition` writes it."""
    return str(_ENCODER.encode(schedule))


def encode_meta(last_run_at: datetime | None, total_run_count: int = 0) -> str:
    meta = {"last_run_at": last_run_at, "total_run_count": total_run_count}
    return str(_ENCODER.encode(meta))


def meta_encoder(last_run_at: datetime) -> Callable[[int], str]:
    """``encode_meta(last_run_at, n)`` for many ``n``, encoding the datetime once."""
    encoded = _ENCODER.encode(last_run_at)

    def encode(total_run_count: int) -> str:
        return f'{{"last_run_at": {encoded}, "total_run_count": {int(total_run_count)}}}'

    return encode
