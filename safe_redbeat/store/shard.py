"""One shard of the schedule as its keys, its script gateway and its entry rows.

With one shard (the default) that is RedBeat's own keys. Both the management API (one
per shard of the layout in use) and the leader's :class:`~safe_redbeat.dispatch.shard.Shard`
(which adds the lease and dispatch) work a shard through one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .keys import Keys
from .rows import EntryRows
from .scripts import Scripts

__all__ = ["ShardStore"]


@dataclass(frozen=True)
class ShardStore:
    """Shard ``index`` of a layout: its keys, scripts and entry rows."""

    index: int
    keys: Keys
    scripts: Scripts
    rows: EntryRows

    @classmethod
    def of(cls, client: Any, app: Any, index: int, keys: Keys) -> ShardStore:
        return cls(index, keys, Scripts(client, keys), EntryRows(client, keys, app))
