"""The shard layout: which keys hold an entry, and how many leases the schedule has.

With one shard (the default) the keys are RedBeat's own, and stock RedBeat reads them.
With ``K`` shards, an entry called ``name`` belongs to shard::

    crc32(utf8(name)) mod K        (CRC-32/ISO-HDLC, as zlib, Java, Go and Node compute it)

and every key of shard ``n`` starts with ``{<prefix>#<n>/<K>}:``, where ``<prefix>`` is
written with ``%`` as ``%25``, ``{`` as ``%7B`` and ``}`` as ``%7D``: for the default
prefix ``redbeat:`` and 3 shards, shard 2 keeps its lease at ``{redbeat:#2/3}::lock``, its
schedule at ``{redbeat:#2/3}::schedule`` and the entry ``report`` at
``{redbeat:#2/3}:report``. The part in braces is a Redis Cluster hash tag, so one shard's
keys share a slot (its scripts touch them together) and different shards spread over the
cluster's primaries. The tag can be read back (after the last ``#``: the shard and the
count; before it: the escaped prefix), so no two (prefix, shard, count) share a key: two
layouts of one app, or two apps with any prefixes on one Redis, never touch each other's
keys. A prefix that itself looks like a shard's (``{...#<n>/<K>}...``) is refused
(:func:`.keys.check_prefix`).

The layout in use is stored at ``<prefix>:layout`` (JSON ``{"shards": K}``); absent means
one shard. ``safe-redbeat reshard --to K`` changes it while replicas run; during the move
the key also holds ``"moving_to"`` and writes are refused with
:class:`~safe_redbeat.errors.Resharding`.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..config import MAX_SHARDS
from ..errors import SafeRedBeatError
from .keys import Keys

__all__ = [
    "InvalidLayout",
    "Layout",
    "check_shards",
    "decode_layout",
    "is_prefix_of",
    "read_layout",
    "settle_layout",
    "shard_of",
    "shard_prefix",
]


class InvalidLayout(SafeRedBeatError, ValueError):
    """The layout key holds something that is not a layout this version understands."""


def shard_of(name: str, shards: int) -> int:
    """The shard that holds the entry called ``name`` in a layout of ``shards``."""
    if shards == 1:
        return 0
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % shards


def check_shards(shards: object, what: str) -> int:
    """``shards`` as a shard count, or InvalidLayout naming ``what``."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidLayout(f"{what} must be an integer from 1 to {MAX_SHARDS}, got {shards!r}")
    return shards


@dataclass(frozen=True)
class Layout:
    """``shards`` shards below the keys ``base`` (RedBeat's, from the app's settings)."""

    base: Keys
    shards: int = 1
    #: set while ``reshard`` moves the entries to a layout of this many shards
    moving_to: int | None = None
    _keys: tuple[Keys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_shards(self.shards, "the number of shards")
        object.__setattr__(self, "_keys", tuple(_shard_keys(self.base, self.shards)))

    @property
    def moving(self) -> bool:
        return self.moving_to is not None

    def keys(self, index: int) -> Keys:
        """The keys of shard ``index``."""
        return self._keys[index]

    def all_keys(self) -> tuple[Keys, ...]:
        return self._keys

    def shard_of(self, name: str) -> int:
        return shard_of(name, self.shards)

    def keys_for(self, name: str) -> Keys:
        """The keys of the shard that holds the entry called ``name``."""
        return self._keys[shard_of(name, self.shards)]

    def resized(self, shards: int) -> Layout:
        return Layout(self.base, shards)

    def encode(self) -> str:
        data: dict[str, Any] = {"shards": self.shards}
        if self.moving_to is not None:
            data["moving_to"] = self.moving_to
        return json.dumps(data, separators=(",", ":"))

    def describe(self) -> str:
        text = "1 shard" if self.shards == 1 else f"{self.shards} shards"
        if self.moving_to is not None:
            text += f", moving to {self.moving_to}"
        return text


def _escaped(prefix: str) -> str:
    return prefix.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def shard_prefix(prefix: str, index: int, shards: int) -> str:
    """The key prefix of shard ``index`` of ``shards`` below the app's ``prefix``."""
    return "{" + f"{_escaped(prefix)}#{index}/{shards}" + "}:"


def is_prefix_of(base_prefix: str, prefix: str) -> bool:
    """Whether ``prefix`` is ``base_prefix`` or the prefix of one of its shards (in any
    layout): a key prefix of the app's own schedule."""
    if prefix == base_prefix:
        return True
    found = _SHARD_PREFIX.fullmatch(prefix)
    if found is None:
        return False
    index, shards = int(found.group(2)), int(found.group(3))
    return (
        1 < shards <= MAX_SHARDS
        and index < shards
        and (shard_prefix(base_prefix, index, shards) == prefix)
    )


_SHARD_PREFIX = re.compile(r"\{(.*)#(\d{1,6})/(\d{1,6})\}:", re.DOTALL)


def _shard_keys(base: Keys, shards: int) -> list[Keys]:
    if shards == 1:
        return [base]
    found = []
    for index in range(shards):
        prefix = shard_prefix(base.prefix, index, shards)
        found.append(Keys(prefix=prefix, lease=prefix + ":lock", id_prefix=base.prefix))
    return found


def decode_layout(base: Keys, raw: str | bytes | None) -> Layout:
    """The layout stored at ``base.layout`` (``raw``; None: one shard), or InvalidLayout."""
    if raw is None:
        return Layout(base)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise InvalidLayout(
            f"{base.layout!r} holds {str(raw)[:80]!r}, not a JSON object like "
            '{"shards": 3}; write a valid layout with `safe-redbeat reshard --to K`'
        )
    what = f"{base.layout!r} field"
    shards = check_shards(data.get("shards"), f"{what} 'shards'")
    moving_to = data.get("moving_to")
    if moving_to is not None:
        moving_to = check_shards(moving_to, f"{what} 'moving_to'")
    return Layout(base, shards, moving_to)


def read_layout(client: Any, base: Keys) -> Layout:
    """The layout in use (one GET); InvalidLayout if its key holds something else."""
    return decode_layout(base, client.get(base.layout))


def settle_layout(client: Any, base: Keys, wanted: int) -> Layout:
    """The layout in use; a Redis that holds neither a layout nor an unsharded schedule
    (new, or emptied) gets ``wanted`` shards first (``safe_redbeat_shards``; SET NX: the
    first writer wins). Replicas do this before they lead, ``import`` before it writes, so
    both end up in the layout the settings ask for."""
    layout = read_layout(client, base)
    if layout.shards == wanted or layout.moving:
        return layout
    if client.exists(base.layout) or client.exists(base.schedule):
        return layout
    client.set(base.layout, layout.resized(wanted).encode(), nx=True)
    return read_layout(client, base)
