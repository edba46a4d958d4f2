"""Plan, claim and describe the occurrences of one batch of due entries.

An *occurrence* is one entry at one scheduled time: the entry's ZSET score when it was
claimed. Its task id is derived from both (uuid5), so any leader that sends the same
occurrence sends the same id, and a worker-side guard can drop a second copy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .entries import StoredEntry, encode_meta, meta_encoder, to_timestamp
from .errors import FencedOut, InvalidEntry
from .lifecycle import decide, writer_score
from .scripts import ClaimCode, ClaimResult
from .validation import check_options, check_text

__all__ = [
    "HEADER_ENTRY",
    "HEADER_FENCE",
    "HEADER_PERIODIC_TASK_NAME",
    "HEADER_SCHEDULED",
    "ClaimOp",
    "Occurrence",
    "Plan",
    "Settled",
    "plan_batch",
    "settle_claim",
    "task_id_for",
]

#: Message headers set on every task we send.
HEADER_FENCE = "safe_redbeat_fence"
HEADER_SCHEDULED = "safe_redbeat_scheduled"
HEADER_ENTRY = "safe_redbeat_entry"
#: django-celery-beat's header naming the periodic task (read by django-celery-results)
HEADER_PERIODIC_TASK_NAME = "periodic_task_name"

_TASK_ID_NAMESPACE = uuid.UUID("6f1c1d56-3f43-4a52-9d1e-6a0f2f6b7c15")

#: ``ClaimOp.run_now`` of an operation that parks a malformed entry
PARKED = "-"

# claim.lua's per operation result codes
CLAIMED = ClaimCode.CLAIMED
SCORE_MOVED = ClaimCode.SCORE_MOVED
GONE = ClaimCode.GONE
VERSION_CHANGED = ClaimCode.VERSION_CHANGED


def task_id_for(entry_key: str, scheduled: int, kind: str = "") -> str:
    """Deterministic task id of the occurrence of ``entry_key`` scheduled at ``scheduled``.

    ``entry_key`` is the entry's key in the unsharded layout (``Keys.task_key``), so a
    reshard does not change the ids. ``kind`` separates occurrences that are not part of
    the schedule (``"run_now"``).
    """
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{entry_key}\x00{scheduled}{kind}"))


@dataclass(frozen=True)
class Occurrence:
    """A claimed occurrence: everything needed to publish it, now or after a crash."""

    task_id: str
    entry: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    scheduled: int
    fence: int

    #: publish attempts that failed on this message itself (not on the broker)
    attempts: int = 0
    #: the last such failure, one line
    last_error: str = ""
    #: the record exactly as stored in Redis (compare-and-set needs the stored text)
    raw: str = field(default="", compare=False, repr=False)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "entry": self.entry,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "scheduled": self.scheduled,
            "fence": self.fence,
        }
        if self.attempts:
            data["attempts"] = self.attempts
            data["last_error"] = self.last_error
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @property
    def record(self) -> str:
        """The pending record as Redis holds it."""
        return self.raw or self.to_json()

    @classmethod
    def from_json(cls, task_id: str, raw: str) -> Occurrence:
        """Decode a pending or dead-letter record; ValueError naming what is wrong."""
        try:
            check_text(task_id, "task id", task_id)
            check_text(task_id, "record", raw)
            data = json.loads(raw)
        except (ValueError, InvalidEntry) as exc:
            raise ValueError(f"not a JSON record ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        entry, task = data.get("entry"), data.get("task")
        if not isinstance(entry, str) or not isinstance(task, str) or not task:
            raise ValueError("'entry' and 'task' must be strings")
        args, kwargs = data.get("args") or [], data.get("kwargs") or {}
        options = data.get("options") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("'args' must be an array and 'kwargs' an object")
        if not isinstance(options, dict):
            raise ValueError("'options' must be an object")
        try:
            check_options(entry, options)
        except InvalidEntry as exc:
            raise ValueError(str(exc)) from None
        return cls(
            task_id=task_id,
            entry=entry,
            task=task,
            args=args,
            kwargs=kwargs,
            options=options,
            scheduled=_whole(data, "scheduled"),
            fence=_whole(data, "fence"),
            attempts=_whole(data, "attempts", 0),
            last_error=str(data.get("last_error") or ""),
            raw=raw,
        )

    def failed(self, error: str) -> Occurrence:
        """This occurrence after one more failed publish attempt."""
        return replace(self, attempts=self.attempts + 1, last_error=error, raw="")

    def headers(self, sender_fence: int) -> dict[str, Any]:
        return {
            "celery_beat_task": True,
            HEADER_FENCE: sender_fence,
            HEADER_SCHEDULED: self.scheduled,
            HEADER_ENTRY: self.entry,
            HEADER_PERIODIC_TASK_NAME: self.entry,
        }


@dataclass(frozen=True)
class ClaimOp:
    """One operation of ``claim.lua``: claim an occurrence, or just move a score."""

    key: str
    expected_score: float
    expected_version: str
    new_score: int
    new_meta: str = ""
    occurrence: Occurrence | None = None
    #: the ``run_now`` value this claim sends (cleared only if it is still that value);
    #: ``"-"`` parks the entry without regard to a pending request
    run_now: str = ""
    #: a terminal state recorded in the same claim (``finished``, ``expired``), or ''
    new_state: str = ""


@dataclass
class Plan:
    """What one batch asks Redis to do, and when the scheduler should look again."""

    ops: list[ClaimOp] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: (entry key, problem) of entries whose schedule could not be computed: parked
    parked: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds until the earliest selected-but-not-yet-due entry is due.
    next_due_in: float | None = None

    def note_next(self, seconds: float) -> None:
        if self.next_due_in is None or seconds < self.next_due_in:
            self.next_due_in = seconds


def park(key: str, score: float, version: str, until: int) -> ClaimOp:
    """Move a malformed entry's slot to ``until``, leaving everything else as it is."""
    return ClaimOp(key, score, version, until, run_now=PARKED)


def _whole(data: dict[str, Any], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name!r} must be a whole number, got {value!r}")
    return value


def plan_batch(
    entries: Iterable[StoredEntry],
    *,
    now: datetime,
    fence: int,
    disabled_recheck_seconds: float,
    catch_up: str = "run_once",
    catch_up_grace_seconds: float = 60.0,
    id_prefix: str | None = None,
) -> Plan:
    """Decide, for each due entry read from Redis, what the claim script should do.

    An entry whose schedule fails to compute (whatever it raises) is parked
    ``disabled_recheck_seconds`` ahead and listed in ``Plan.parked``; the others go on.
    Task ids derive from ``id_prefix`` + name (``Keys.task_key``), else the entry's key.
    """
    plan = Plan()
    now_ts = to_timestamp(now)
    meta_at_now = meta_encoder(now)
    park_until = now_ts + int(disabled_recheck_seconds)
    for entry in entries:
        try:
            op = _plan_entry(
                plan,
                entry,
                now,
                meta_at_now,
                fence,
                park_until,
                catch_up,
                catch_up_grace_seconds,
                id_prefix,
            )
        except Exception as exc:  # a schedule Celery cannot compute: park this one entry
            plan.parked.append((entry.key, f"{type(exc).__name__}: {exc}"))
            op = park(entry.key, entry.score, entry.version, park_until)
        if op is not None:
            plan.ops.append(op)
    return plan


def _plan_entry(
    plan: Plan,
    entry: StoredEntry,
    now: datetime,
    meta_at_now: Any,
    fence: int,
    park_until: int,
    catch_up: str,
    catch_up_grace_seconds: float,
    id_prefix: str | None,
) -> ClaimOp | None:
    scheduled = int(entry.score)
    if entry.run_now is not None:
        # a manual run: sent once, the regular schedule and last run stay as they were
        occurrence = _occurrence(entry, entry.run_now, fence, id_prefix, kind="\x00run_now")
        regular = (
            writer_score(
                entry.schedule, entry.lifecycle, entry.last_run_at, entry.total_run_count, now
            )
            if entry.enabled
            else park_until
        )
        return ClaimOp(
            entry.key,
            entry.score,
            entry.version,
            regular,
            "",
            occurrence,
            run_now=entry.run_now_raw or "",
        )
    if not entry.enabled:
        return ClaimOp(entry.key, entry.score, entry.version, park_until)
    step = decide(entry, now, catch_up=catch_up, grace=catch_up_grace_seconds)
    if step.next_due_in is not None:
        plan.note_next(step.next_due_in)
    if step.skipped:
        plan.skipped.append(entry.name)
    if not (step.send or step.meta or step.state) and step.new_score == scheduled:
        return None
    meta = ""
    if step.meta is not None:
        at, count = step.meta
        meta = meta_at_now(count) if at is now else encode_meta(at, count)
    claimed = _occurrence(entry, scheduled, fence, id_prefix) if step.send else None
    return ClaimOp(
        entry.key, entry.score, entry.version, step.new_score, meta, claimed, new_state=step.state
    )


def _occurrence(
    entry: StoredEntry, scheduled: int, fence: int, id_prefix: str | None, kind: str = ""
) -> Occurrence:
    key = entry.key if id_prefix is None else id_prefix + entry.name
    return Occurrence(
        task_id=task_id_for(key, scheduled, kind),
        entry=entry.name,
        task=entry.task,
        args=entry.args,
        kwargs=entry.kwargs,
        options=entry.options,
        scheduled=scheduled,
        fence=fence,
    )


@dataclass
class Settled:
    """What a claim did: the occurrences to publish, and slots that pointed at no entry."""

    claimed: list[Occurrence] = field(default_factory=list)
    #: entry keys whose hash was gone: ``claim.lua`` dropped their schedule slot
    gone: list[str] = field(default_factory=list)


def settle_claim(ops: Sequence[ClaimOp], result: ClaimResult) -> Settled:
    """Read ``claim.lua``'s answer to ``ops``; FencedOut if Redis refused the claim."""
    if result.fenced_out:
        raise FencedOut("Redis rejected a claim: the lease key no longer holds our token")
    settled = Settled()
    for op, code in zip(ops, result.codes, strict=True):
        if code is ClaimCode.CLAIMED and op.occurrence is not None:
            settled.claimed.append(op.occurrence)
        elif code is ClaimCode.GONE:
            settled.gone.append(op.key)
    return settled
