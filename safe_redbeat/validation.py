"""The one set of rules for values that reach a message: names, JSON values, options.

Shared by everything that writes an entry (``EntrySpec``: the API, the CLI, the loader,
``beat_schedule``) and by the decoder of what Redis holds (``entries.decode_entry``), so an
entry another language wrote is held to the same rules as one written through Python. Each
rule raises :class:`~safe_redbeat.errors.InvalidEntry` naming the entry and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import kombu.compression
import kombu.serialization

from .errors import InvalidEntry

__all__ = [
    "BROKER_INTERNAL_KEYS",
    "MAX_NAME_BYTES",
    "RESERVED_OPTIONS",
    "check_json",
    "check_name",
    "check_options",
    "check_text",
]

#: Longest entry name, in UTF-8 bytes (it is part of a Redis key and of every log line).
MAX_NAME_BYTES = 512


_MAX_JSON_DEPTH = 64

#: ``apply_async`` arguments beat sets itself or that cannot come from stored JSON: a
#: stored value would break every publish of the entry.
RESERVED_OPTIONS = frozenset(
    {
        "task_id",
        "producer",
        "connection",
        "router",
        "publisher",
        "link",
        "link_error",
        "add_to_parent",
        "chain",
        "chord",
        "group_id",
        "root_id",
        "parent_id",
    }
)


#: Keys kombu's Redis transport keeps for itself (``unacked_key`` and friends; bindings are
#: ``_kombu.binding.<exchange>``): a queue of that name would push onto a hash or a set.
BROKER_INTERNAL_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})
_BROKER_INTERNAL_PREFIX = "_kombu."
#: kombu's separator of a priority queue's key (``<queue>\x06\x16<priority>``)
_PRIORITY_SEPARATOR = "\x06\x16"
#: ``delivery_mode`` names kombu knows (an int is taken as is)
_DELIVERY_MODES = frozenset({"transient", "persistent"})


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(key: str, field_name: str, value: str) -> str:
    """``value`` if it is valid UTF-8 text (no lone surrogates from undecodable bytes)."""
    if not _is_text(value):
        raise InvalidEntry(key, field_name, "is not valid UTF-8")
    return value


def check_name(name: object) -> str:
    """Return ``name`` if it can be an entry name; raise InvalidEntry otherwise.

    Names starting with ``:`` are refused: ``<prefix>:schedule``, ``<prefix>:lock`` and the
    other internal keys are exactly the keys such entries would get.
    """
    if not isinstance(name, str) or not name:
        raise InvalidEntry(ascii(name), "name", "must be a non-empty string")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEntry(ascii(name), "name", "is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidEntry(
            name[:40] + "...", "name", f"is {size} bytes long; at most {MAX_NAME_BYTES}"
        )
    if name.startswith(":"):
        raise InvalidEntry(
            name,
            "name",
            "must not start with ':' (it would collide with internal keys such as "
            "<prefix>:schedule, <prefix>:lock and <prefix>:pending)",
        )
    if "::" in name:
        raise InvalidEntry(
            name,
            "name",
            "must not contain '::', RedBeat's separator of internal keys: on a Redis shared "
            "by several apps such a name could be another app's internal key (app 'app:' "
            "with the name 'x::schedule' is the schedule of app 'app:x:')",
        )
    return name


def check_json(key: str, path: str, value: Any) -> None:
    """Plain JSON only: the pending record of a claimed run is encoded with ``json``."""
    problem = _json_problem(value, 0)
    if problem is not None:
        where, text = problem
        raise InvalidEntry(key, path + where, text)


def _json_problem(value: Any, depth: int) -> tuple[str, str] | None:
    """``(where below the value, what is wrong)``, or None for plain JSON.

    Called for every value of every entry a loader returns: exact type checks first, and
    the path of a problem is only built once there is one.
    """
    kind = type(value)
    if kind is str:
        return None if _is_text(value) else ("", "is not valid UTF-8")
    if value is None or kind is bool or kind is int:
        return None
    if kind is float:
        return None if math.isfinite(value) else ("", f"{value!r} is not valid JSON")
    if depth >= _MAX_JSON_DEPTH:
        return ("", f"nested deeper than {_MAX_JSON_DEPTH} levels")
    if kind is dict or (kind is not list and kind is not tuple and isinstance(value, Mapping)):
        for item_key, item in value.items():
            if not isinstance(item_key, str):
                return ("", f"JSON object keys must be strings, got {item_key!r}")
            if not _is_text(item_key):
                return ("", "is not valid UTF-8")
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return (f"[{item_key!r}]{problem[0]}", problem[1])
        return None
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return (f"[{index}]{problem[0]}", problem[1])
        return None
    if isinstance(value, str):
        return None if _is_text(value) else ("", "is not valid UTF-8")
    if isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", f"{value!r} is not valid JSON")
    return (
        "",
        f"{type(value).__name__} is not JSON-serialisable; args, kwargs and options must be "
        "plain JSON (None, bool, int, float, str, list, dict with str keys)",
    )


def check_options(key: str, options: Mapping[str, Any]) -> None:
    """``apply_async`` options Celery can send: plain JSON, ``headers`` a mapping, none of
    :data:`RESERVED_OPTIONS`."""
    if not options:  # most entries: nothing to check
        return
    check_json(key, "options", options)
    reserved = sorted(set(options) & RESERVED_OPTIONS)
    if reserved:
        raise InvalidEntry(
            key,
            f"options[{reserved[0]!r}]",
            f"is set by beat itself and cannot be stored (reserved: {', '.join(reserved)})",
        )
    headers = options.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise InvalidEntry(
            key,
            "options['headers']",
            f"must be a JSON object of message headers, got {type(headers).__name__}",
        )
    for name in ("queue", "exchange", "routing_key", "serializer", "compression"):
        value = options.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidEntry(key, f"options[{name!r}]", f"must be a string, got {value!r}")
    for name in ("priority", "countdown", "time_limit", "soft_time_limit"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidEntry(key, f"options[{name!r}]", f"must be a number, got {value!r}")
    _check_kombu_options(key, options)
    expires = options.get("expires")
    if expires is not None and (
        isinstance(expires, bool) or not isinstance(expires, int | float | str)
    ):
        raise InvalidEntry(
            key, "options['expires']", f"must be seconds or an ISO 8601 time, got {expires!r}"
        )


def _check_kombu_options(key: str, options: Mapping[str, Any]) -> None:
    """Values kombu refuses when it publishes: each would fail every run of the entry."""
    compression = options.get("compression")
    if compression is not None:
        try:
            kombu.compression.get_encoder(compression)  # type: ignore[no-untyped-call,unused-ignore]
        except KeyError:
            known = ", ".join(sorted(kombu.compression.encoders()))  # type: ignore[no-untyped-call,unused-ignore]
            raise InvalidEntry(
                key,
                "options['compression']",
                f"unknown compression {compression!r}; kombu here knows {known} "
                "(or their short names: gzip, bzip2, lzma, ...)",
            ) from None
    serializer = options.get("serializer")
    if serializer is not None and serializer not in kombu.serialization.registry.name_to_type:
        known = ", ".join(sorted(kombu.serialization.registry.name_to_type))
        raise InvalidEntry(
            key, "options['serializer']", f"unknown serializer {serializer!r}; one of {known}"
        )
    mode = options.get("delivery_mode")
    if mode is not None and not (
        (isinstance(mode, int) and not isinstance(mode, bool) and mode in (1, 2))
        or mode in _DELIVERY_MODES
    ):
        raise InvalidEntry(
            key,
            "options['delivery_mode']",
            f"must be 1, 2, 'transient' or 'persistent', got {mode!r}",
        )
    priority = options.get("priority")
    if priority is not None and not (0 <= priority <= 255 and float(priority).is_integer()):
        raise InvalidEntry(
            key, "options['priority']", f"must be an integer from 0 to 255, got {priority!r}"
        )
    for name in ("queue", "routing_key"):
        value = options.get(name)
        if value is not None and (
            value in BROKER_INTERNAL_KEYS
            or value.startswith(_BROKER_INTERNAL_PREFIX)
            or _PRIORITY_SEPARATOR in value
        ):
            raise InvalidEntry(
                key,
                f"options[{name!r}]",
                f"{value!r} names a key the Redis broker keeps for itself (kombu's "
                f"{', '.join(sorted(BROKER_INTERNAL_KEYS))}, _kombu.*); use another name",
            )
