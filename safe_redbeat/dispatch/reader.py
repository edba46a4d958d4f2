"""Reading due entries: one batch in two round trips, whatever its size.

Malformed entries are reported once (per content) and parked ``recheck_seconds`` ahead by the
claim script, never deleted; a schedule slot whose hash is gone is dropped by it.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery.utils.log import get_logger

from .. import signals
from ..errors import InvalidEntry
from ..model.entry import StoredEntry
from ..store.keys import Keys
from ..store.rows import EntryRows
from ..store.scripts import Scripts
from ..store.wire import NEVER
from .plan import ClaimOp, park

__all__ = ["DueBatch", "DueReader"]

logger = get_logger("safe_redbeat")

#: Parked entries remembered as reported (a bound; past it, each is reported once more).
_MAX_REPORTED = 10_000


@dataclass
class DueBatch:
    """One batch read from Redis: decodable entries, and slots the claim script fixes."""

    now: datetime
    #: False when the marker written after seeding is gone: Redis lost data
    seeded: bool = True
    size: int = 0
    #: how many pending records (claimed, not yet published) there are
    pending: int = 0
    #: score of the first entry due after ``now``, if any
    upcoming: float | None = None
    entries: list[StoredEntry] = field(default_factory=list)
    #: orphaned ZSET members (dropped) and malformed entries (parked, never deleted)
    ops: list[ClaimOp] = field(default_factory=list)


@dataclass(eq=False)
class DueReader:
    """Reads due entries of one schedule, with Redis' clock as "now"."""

    client: Any
    keys: Keys
    scripts: Scripts
    app: Any
    _: KW_ONLY
    batch_size: int
    recheck_seconds: float
    _reported: dict[str, str] = field(default_factory=dict, init=False)

    def forget_reported(self) -> None:
        """Report malformed entries again (after a leadership change)."""
        self._reported.clear()

    def _as_app_time(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone(self.app.timezone)

    def read(self) -> DueBatch:
        """Read one batch of due entries: two round trips whatever the batch size."""
        read = self.scripts.due(self.batch_size)
        now_ts = read.seconds
        batch = DueBatch(
            now=self._as_app_time(now_ts + read.micros / 1e6),
            seeded=read.seeded,
            pending=read.pending,
        )
        due = read.due
        batch.size = len(due)
        batch.upcoming = read.upcoming[1] if read.upcoming else None
        if not due:
            return batch
        rows = EntryRows(self.client, self.keys, self.app).read(
            [key for key, _score in due], scores=[score for _key, score in due], now=batch.now
        )
        for row in rows.rows:
            score = float(row.score or 0.0)
            if not row.exists:
                # a ZSET member without its hash: the claim script drops the member
                batch.ops.append(ClaimOp(row.key, score, "0", NEVER))
                continue
            try:
                batch.entries.append(row.decode(self.app, batch.now))
            except Exception as exc:  # InvalidEntry; anything else is a decoder bug
                problem = exc.problem if isinstance(exc, InvalidEntry) else repr(exc)
                field_name = exc.field if isinstance(exc, InvalidEntry) else "?"
                self.report(row.key, f"{field_name}: {problem}", row.fields[:4])
                parked_until = now_ts + int(self.recheck_seconds)
                batch.ops.append(park(row.key, score, row.fields[2] or "0", parked_until))
        return batch

    def report(self, key: str, problem: str, content: object = None) -> None:
        """Log a parked entry once per (problem, content) until the leadership changes."""
        seen = repr((problem, content))
        if self._reported.get(key) == seen:
            return
        if len(self._reported) >= _MAX_REPORTED:
            self._reported.clear()
        self._reported[key] = seen
        signals.entry_parked.send(self, entry=self.keys.name_of(key), reason=problem)
        logger.warning(
            "beat: parked entry %r: %s. Fix or delete the hash %r; it is checked again "
            "every %ss and nothing is deleted.",
            self.keys.name_of(key),
            problem,
            key,
            self.recheck_seconds,
        )
