"""Entry rows: the one place that reads an entry's hash, and the rule every writer follows.

Every reader of entries — the leader's due batch, the catch-up after a late publish,
:class:`~safe_redbeat.Schedule`'s ``get`` and ``list``, beat hooks, metrics, reshard —
reads them here: which fields (:data:`FIELDS`), Redis' clock as ``now`` (one ``TIME`` in
the same pipeline), what a key of another Redis type means (no entry: WRONGTYPE is never
raised), and how a row becomes a :class:`~safe_redbeat.model.entry.StoredEntry`
(:meth:`Row.decode`, InvalidEntry naming the field).

Every writer of a definition — ``Schedule`` and the reconcile of ``beat_schedule`` and
the loader — stores the score and ``meta`` that :func:`plan_write` gives (a new entry
counts from now or its source's last run; unreadable ``meta`` is kept and the schedule
counts from now).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import ResponseError

from ..errors import InvalidEntry
from ..model.codec import decode_entry, decode_meta, encode_meta
from ..model.entry import StoredEntry
from ..model.slots import new_entry_anchor, writer_score
from ..model.specs import EntrySpec
from .keys import Keys

__all__ = ["FIELDS", "EntryRows", "Row", "Rows", "WritePlan", "plan_write", "redis_now"]

#: The fields of an entry hash that say what it is and when it runs.
FIELDS = ("definition", "meta", "version", "run_now", "lifecycle", "state", "sent_at")
_NONE = (None,) * len(FIELDS)


def redis_now(reply: Sequence[Any], zone: Any = timezone.utc) -> datetime:
    """Redis ``TIME`` (``[seconds, microseconds]``) as an aware datetime in ``zone``."""
    seconds, micros = reply
    return datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, tz=timezone.utc).astimezone(
        zone
    )


@dataclass(frozen=True)
class Row:
    """One entry hash as read: its key, score (None if not in the schedule, or not read)
    and the raw :data:`FIELDS`."""

    key: str
    name: str
    score: float | None
    fields: tuple[Any, ...]

    @property
    def exists(self) -> bool:
        """The key holds an entry hash (a definition, or any of its fields)."""
        return any(value is not None for value in self.fields[:4])

    @property
    def definition(self) -> Any:
        return self.fields[0]

    @property
    def meta(self) -> Any:
        return self.fields[1]

    @property
    def run_now(self) -> Any:
        return self.fields[3]

    @property
    def state(self) -> Any:
        return self.fields[5]

    def decode(self, app: Any, now: datetime | None = None) -> StoredEntry:
        """The entry this row holds; InvalidEntry naming the field if it cannot be used.

        With ``now`` its schedule tells time by it (the leader's Redis clock); without,
        by the app's clock (an entry handed to the user).
        """
        definition, meta, version, run_now, lifecycle, state, sent_at = self.fields
        return decode_entry(
            self.key,
            self.name,
            -1.0 if self.score is None else self.score,
            definition,
            meta,
            version,
            app=app,
            nowfun=None if now is None else (lambda: now),
            run_now_raw=run_now,
            lifecycle_raw=lifecycle,
            state_raw=state,
            sent_at_raw=sent_at,
        )


@dataclass(frozen=True)
class Rows:
    """Rows read in one round trip, with Redis' clock at that moment."""

    now: datetime
    rows: list[Row]


class EntryRows:
    """Reads the entry hashes of one shard (``keys``) of ``app``'s schedule."""

    def __init__(self, client: Any, keys: Keys, app: Any) -> None:
        self.client = client
        self.keys = keys
        self.app = app

    def read(
        self,
        entry_keys: Sequence[str],
        *,
        scores: Sequence[float | None] | None = None,
        with_scores: bool = False,
        now: datetime | None = None,
    ) -> Rows:
        """The rows of ``entry_keys`` and Redis' ``now`` (one pipeline). ``scores`` are the
        ones already known; ``with_scores`` reads them from the schedule instead. ``now``
        (read with them already, as ``due.lua`` does) saves the ``TIME``."""
        with self.client.pipeline(transaction=False) as pipe:
            if now is None:
                pipe.time()
            for key in entry_keys:
                pipe.hmget(key, *FIELDS)
                if with_scores:
                    pipe.zscore(self.keys.schedule, key)
            # a key of another type answers WRONGTYPE: it holds no entry
            replies = pipe.execute(raise_on_error=False)
        if now is None:
            time_reply, *replies = replies
            if isinstance(time_reply, Exception):
                raise time_reply
            now = redis_now(time_reply, self.app.timezone)
        step = 2 if with_scores else 1
        found = []
        for index, key in enumerate(entry_keys):
            fields = replies[index * step]
            if with_scores:
                raw_score = replies[index * step + 1]
                score = None if not isinstance(raw_score, int | float | str) else float(raw_score)
            else:
                score = None if scores is None else scores[index]
            values = _NONE if isinstance(fields, ResponseError) else tuple(fields)
            found.append(Row(key, self.keys.name_of(key), score, values))
        return Rows(now, found)

    def read_one(self, entry_key: str) -> tuple[Row, datetime, bool]:
        """One row with its score, Redis' ``now``, and whether the key holds another type."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hmget(entry_key, *FIELDS)
            pipe.zscore(self.keys.schedule, entry_key)
            time_reply, fields, score = pipe.execute(raise_on_error=False)
        for reply in (time_reply, score):
            if isinstance(reply, Exception):
                raise reply
        wrong_type = isinstance(fields, ResponseError)
        values = _NONE if wrong_type else tuple(fields)
        row = Row(entry_key, self.keys.name_of(entry_key), _score(score), values)
        return row, redis_now(time_reply, self.app.timezone), wrong_type

    def definitions(self, entry_keys: Sequence[str]) -> list[Any]:
        """The ``definition`` field of each key (None: none, or not a hash)."""
        with self.client.pipeline(transaction=False) as pipe:
            for key in entry_keys:
                pipe.hget(key, "definition")
            replies = pipe.execute(raise_on_error=False)
        return [None if isinstance(reply, Exception) else reply for reply in replies]

    def metas(self, entry_keys: Sequence[str]) -> tuple[datetime, list[Any]]:
        """Redis' ``now`` and the ``meta`` field of each key (what a writer depends on)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for key in entry_keys:
                pipe.hget(key, "meta")
            time_reply, *replies = pipe.execute(raise_on_error=False)
        if isinstance(time_reply, Exception):
            raise time_reply
        metas = [None if isinstance(reply, Exception) else reply for reply in replies]
        return redis_now(time_reply, timezone.utc), metas

    def hashes(self, entry_keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """Every field of each hash, to copy it whole (None: no hash there)."""
        with self.client.pipeline(transaction=False) as pipe:
            for key in entry_keys:
                pipe.hgetall(key)
            replies = pipe.execute(raise_on_error=False)
        return [reply if isinstance(reply, dict) and reply else None for reply in replies]


def _score(raw: Any) -> float | None:
    return None if raw is None else float(raw)


@dataclass(frozen=True)
class WritePlan:
    """What a write of a definition stores beside it, decided at Redis' ``now``."""

    #: the ZSET score: the next slot (or ``now`` for the leader to decide)
    score: int
    #: ``meta`` to store: the anchor of a new entry; a kept one is left as it is
    new_meta: str
    #: the run history the score was computed from
    last_run_at: datetime | None
    total_run_count: int


def plan_write(
    spec: EntrySpec,
    meta: str | None,
    now: datetime,
    *,
    key: str,
    run_now: str | None = None,
) -> WritePlan:
    """The writer's rule for ``spec`` over the stored ``meta``.

    A new entry (no ``meta``) counts from ``now``, or from its source's last run
    (``spec.last_run_at``), and stores that as ``meta`` with the source's run count
    (``spec.total_run_count``, usually 0). An existing one keeps its run
    history; ``meta`` that cannot be read is kept as it is and the schedule counts from
    ``now`` (the leader reports the entry when it reads it). A pending manual run
    (``run_now``) earlier than the next slot becomes the score, as ``upsert.lua`` does.
    """
    new_meta = encode_meta(None)
    if meta is None:
        last_run_at = new_entry_anchor(spec.lifecycle, spec.last_run_at, now)
        runs = spec.total_run_count
        new_meta = encode_meta(last_run_at, runs)
    else:
        try:
            last_run_at, runs = decode_meta(key, meta)
        except InvalidEntry:
            last_run_at, runs = now, 0
    score = writer_score(spec.schedule, spec.lifecycle, last_run_at, runs, now)
    if run_now:
        requested = int(float(run_now))
        if score < 0 or requested < score:
            score = requested
    return WritePlan(score, new_meta, last_run_at, runs)
