"""Plan, claim and describe the occurrences of one batch of due entries.

An *occurrence* is one entry at one scheduled time: the entry's ZSET score when it was
claimed. Its task id is derived from both (uuid5), so any leader that sends the same
occurrence sends the same id, and a worker-side guard can drop a second copy.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .entries import StoredEntry, encode_meta, meta_encoder, next_score, to_timestamp
from .lifecycle import decide

__all__ = [
    "HEADER_ENTRY",
    "HEADER_FENCE",
    "HEADER_SCHEDULED",
    "ClaimOp",
    "Occurrence",
    "Plan",
    "plan_batch",
    "task_id_for",
]

#: Message headers set on every task we send.
HEADER_FENCE = "safe_redbeat_fence"
HEADER_SCHEDULED = "safe_redbeat_scheduled"
HEADER_ENTRY = "safe_redbeat_entry"

_TASK_ID_NAMESPACE = uuid.UUID("6f1c1d56-3f43-4a52-9d1e-6a0f2f6b7c15")

# claim.lua's per operation result codes
CLAIMED = 1
SCORE_MOVED = 0
GONE = 2
VERSION_CHANGED = 3


def task_id_for(entry_key: str, scheduled: int, kind: str = "") -> str:
    """Deterministic task id of the occurrence of ``entry_key`` scheduled at ``scheduled``.

    ``kind`` separates occurrences that are not part of the schedule (``"run_now"``).
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

    def to_json(self) -> str:
        return json.dumps(
            {
                "entry": self.entry,
                "task": self.task,
                "args": self.args,
                "kwargs": self.kwargs,
                "options": self.options,
                "scheduled": self.scheduled,
                "fence": self.fence,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, task_id: str, raw: str) -> Occurrence:
        data = json.loads(raw)
        return cls(
            task_id=task_id,
            entry=str(data["entry"]),
            task=str(data["task"]),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            options=dict(data.get("options") or {}),
            scheduled=int(data["scheduled"]),
            fence=int(data["fence"]),
        )

    def headers(self, sender_fence: int) -> dict[str, Any]:
        return {
            "celery_beat_task": True,
            HEADER_FENCE: sender_fence,
            HEADER_SCHEDULED: self.scheduled,
            HEADER_ENTRY: self.entry,
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
    #: a terminal state recorded in the same claim (``finished``, ``expired``), or ''
    new_state: str = ""

    def argv(self) -> list[str]:
        record = ""
        if self.occurrence is not None:
            record = f"{self.occurrence.task_id} {self.occurrence.to_json()}"
        return [
            _score_text(self.expected_score),
            self.expected_version,
            str(self.new_score),
            self.new_meta,
            record,
            self.new_state,
        ]


@dataclass
class Plan:
    """What one batch asks Redis to do, and when the scheduler should look again."""

    ops: list[ClaimOp] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: Seconds until the earliest selected-but-not-yet-due entry is due.
    next_due_in: float | None = None

    def note_next(self, seconds: float) -> None:
        if self.next_due_in is None or seconds < self.next_due_in:
            self.next_due_in = seconds


def _score_text(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else repr(score)


def plan_batch(
    entries: Iterable[StoredEntry],
    *,
    now: datetime,
    fence: int,
    disabled_recheck_seconds: float,
    catch_up: str = "run_once",
    catch_up_grace_seconds: float = 60.0,
) -> Plan:
    """Decide, for each due entry read from Redis, what the claim script should do."""
    plan = Plan()
    now_ts = to_timestamp(now)
    meta_at_now = meta_encoder(now)
    for entry in entries:
        scheduled = int(entry.score)
        if entry.run_now is not None:
            # a manual run: sent once, the regular schedule and last run stay as they were
            occurrence = _occurrence(entry, entry.run_now, fence, kind="\x00run_now")
            regular = next_score(entry.schedule, entry.last_run_at, now)
            plan.ops.append(ClaimOp(entry.key, entry.score, entry.version, regular, "", occurrence))
            continue
        if not entry.enabled:
            parked = now_ts + int(disabled_recheck_seconds)
            plan.ops.append(ClaimOp(entry.key, entry.score, entry.version, parked))
            continue
        step = decide(entry, now, catch_up=catch_up, grace=catch_up_grace_seconds)
        if step.next_due_in is not None:
            plan.note_next(step.next_due_in)
        if step.skipped:
            plan.skipped.append(entry.name)
        if not (step.send or step.meta or step.state) and step.new_score == scheduled:
            continue
        meta = ""
        if step.meta is not None:
            at, count = step.meta
            meta = meta_at_now(count) if at is now else encode_meta(at, count)
        claimed = _occurrence(entry, scheduled, fence) if step.send else None
        plan.ops.append(
            ClaimOp(
                entry.key, entry.score, entry.version, step.new_score, meta, claimed, step.state
            )
        )
    return plan


def _occurrence(entry: StoredEntry, scheduled: int, fence: int, kind: str = "") -> Occurrence:
    return Occurrence(
        task_id=task_id_for(entry.key, scheduled, kind),
        entry=entry.name,
        task=entry.task,
        args=entry.args,
        kwargs=entry.kwargs,
        options=entry.options,
        scheduled=scheduled,
        fence=fence,
    )


def claim_arguments(token: str, ops: Sequence[ClaimOp]) -> tuple[list[str], list[str]]:
    """KEYS tail and ARGV of ``claim.lua`` for ``ops`` (after the three fixed keys)."""
    argv = [token]
    for op in ops:
        argv.extend(op.argv())
    return [op.key for op in ops], argv
