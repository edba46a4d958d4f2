"""Catch-up coalescing: a late republish is the one catch-up run of its entry.

A leader paused (or killed) between claim and acknowledgement leaves a pending record; the
next leader republishes it late. If the entry's next slot has passed meanwhile (or comes
within half a period of the republish), sending that slot too would run the entry twice
within moments under two task ids. Celery's rule is one run for what was missed, so that
slot is skipped: the entry moves to its following slot, and ``meta.last_run_at`` records
the republish. The move is an
ordinary fenced ``claim.lua`` operation that compares score and version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from celery.utils.log import get_logger

from ..errors import InvalidEntry
from ..model.codec import encode_meta
from ..model.entry import StoredEntry
from ..model.lifecycle import EXPIRED, TERMINAL, zone_of
from ..model.occurrence import Occurrence, task_id_for
from ..model.slots import first_slot
from ..store.keys import Keys
from ..store.rows import EntryRows
from ..store.wire import NEVER
from .plan import ClaimOp

__all__ = ["coalesce", "coalesce_ops", "read_entries"]

logger = get_logger("safe_redbeat")


def read_entries(
    client: Any, keys: Keys, app: Any, entry_keys: Sequence[str]
) -> tuple[datetime, list[StoredEntry]]:
    """Redis' ``now`` and the decodable entries among ``entry_keys`` (one round trip)."""
    rows = EntryRows(client, keys, app).read(entry_keys, with_scores=True)
    entries = []
    for row in rows.rows:
        if row.definition is None or row.score is None:
            continue
        try:
            entries.append(row.decode(app, rows.now))
        except InvalidEntry:
            continue  # the reader reports and parks it
    return rows.now, entries


def regular_keys(keys: Keys, republished: Iterable[Occurrence]) -> list[str]:
    """Entry keys of republished *scheduled* occurrences (manual runs do not count)."""
    found: dict[str, None] = {}
    for occurrence in republished:
        task_key = keys.task_key(occurrence.entry)
        if occurrence.task_id == task_id_for(task_key, occurrence.scheduled):
            found[keys.entry(occurrence.entry)] = None
    return list(found)


def coalesce_ops(entries: Iterable[StoredEntry], now: datetime) -> list[ClaimOp]:
    """Skip each entry's next slot if it passed, or comes within half a period of ``now``."""
    ops = []
    now_epoch = now.timestamp()
    for entry in entries:
        score = entry.score
        lc = entry.lifecycle
        if (
            score < 0
            or entry.total_run_count < 1  # a new entry of that name: not the one that ran
            or not entry.enabled
            or entry.run_now is not None
            or entry.state in TERMINAL
            or lc.at is not None  # a one-off has no next slot
        ):
            continue
        zone = zone_of(lc, entry.schedule.tz)
        base = now
        if score > now_epoch:
            slot_at = datetime.fromtimestamp(score, tz=timezone.utc)
            following = first_slot(entry.schedule, lc, slot_at, now, zone)
            if following is None or score - now_epoch > (following - score) / 2:
                continue  # far enough from the republish: it runs as scheduled
            base = slot_at
        slot = first_slot(entry.schedule, lc, base, now, zone)
        state = ""
        new_score = NEVER if slot is None else int(slot // 1)
        if slot is not None and lc.expires is not None and slot > lc.expires.timestamp():
            new_score, state = NEVER, EXPIRED
        if new_score != NEVER and new_score <= int(score):
            new_score = int(score) + 1
        meta = encode_meta(now, entry.total_run_count)
        ops.append(ClaimOp(entry.key, score, entry.version, new_score, meta, new_state=state))
    return ops


def coalesce(
    client: Any,
    keys: Keys,
    app: Any,
    republished: Sequence[Occurrence],
    claim: Callable[[Sequence[ClaimOp]], object],
) -> None:
    """A late republish is the catch-up run: skip each entry's slot that passed too."""
    entry_keys = regular_keys(keys, republished)
    if not entry_keys:
        return
    now, entries = read_entries(client, keys, app, entry_keys)
    ops = coalesce_ops(entries, now)
    if ops:
        claim(ops)
        logger.info(
            "beat: %d overdue occurrences skipped: the republished ones are their catch-up",
            len(ops),
        )
