"""One entry as the leader and the management API see it: decoded from its hash, validated.

Built by :func:`.codec.decode_entry` from the fields :class:`~safe_redbeat.store.rows.EntryRows`
read; nothing else constructs one from Redis.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery.schedules import BaseSchedule

from .lifecycle import Lifecycle

__all__ = ["NEVER", "StoredEntry", "to_timestamp"]

#: The ZSET score of an entry with no next run (finished, expired, an rrule that ended):
#: RedBeat's own convention, which the scripts share (``store/wire.py``).
NEVER = -1


def to_timestamp(dt: datetime) -> int:
    """Whole UTC seconds since the epoch, as RedBeat scores them."""
    return calendar.timegm(dt.utctimetuple())


@dataclass
class StoredEntry:
    """One entry read from Redis, decoded and validated."""

    key: str
    name: str
    task: str
    schedule: BaseSchedule
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    last_run_at: datetime | None
    total_run_count: int
    version: str
    score: float
    meta_raw: str | None = field(default=None, repr=False)
    #: a pending "run now" request: the Redis time (whole seconds) it was made at
    run_now: int | None = None
    #: ``run_now`` as stored: the claim clears the request only if it still holds this
    run_now_raw: str | None = field(default=None, repr=False)
    #: lifetime fields (hash field ``lifecycle``) and recorded state (field ``state``)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    state: str = ""
    #: Redis time (seconds) the entry's last message went out, if it went out late
    sent_at: float | None = None
    #: the ``definition`` field as stored (what its messages are built from)
    definition_raw: str = field(default="", repr=False, compare=False)
