"""Plan and claim the occurrences of one batch of due entries.

For each entry read as due, :func:`plan_batch` decides (:mod:`..model.decide`) what
``claim.lua`` should do: claim an occurrence (:mod:`..model.occurrence`) and move the
score, move the score only, or park a malformed entry. An occurrence of an entry with an
overlap policy carries it (:class:`~..store.scripts.Overlap`): whether its previous run
still goes is decided by the claim itself. :func:`settle_claim` reads the script's answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import FencedOut
from ..model.codec import encode_meta, meta_encoder
from ..model.decide import decide
from ..model.entry import StoredEntry, to_timestamp
from ..model.occurrence import Occurrence, task_id_for
from ..model.slots import writer_score
from ..store.keys import Keys
from ..store.scripts import Claim, ClaimCode, ClaimResult, Overlap
from ..store.wire import PARK

__all__ = ["ClaimOp", "Plan", "Running", "Settled", "park", "plan_batch", "settle_claim"]


@dataclass(frozen=True)
class ClaimOp(Claim):
    """A :class:`~safe_redbeat.store.scripts.Claim` with the occurrence it records."""

    occurrence: Occurrence | None = None
    #: the entry's stored definition, when it sends an occurrence (its messages' source)
    definition: str = ""

    def pending_record(self) -> str:
        if self.occurrence is None or self.pushes:
            return ""
        return f"{self.occurrence.task_id} {self.occurrence.record}"


@dataclass
class Plan:
    """What one batch asks Redis to do, and when the scheduler should look again."""

    ops: list[ClaimOp] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: entries whose slot was skipped: their previous message went out late (``sent_at``)
    coalesced: list[str] = field(default_factory=list)
    #: (entry key, problem) of entries whose schedule could not be computed: parked
    parked: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds until the earliest selected-but-not-yet-due entry is due.
    next_due_in: float | None = None

    def note_next(self, seconds: float) -> None:
        if self.next_due_in is None or seconds < self.next_due_in:
            self.next_due_in = seconds


def park(key: str, score: float, version: str, until: int) -> ClaimOp:
    """Move a malformed entry's slot to ``until``, leaving everything else as it is."""
    return ClaimOp(key, score, version, until, run_now=PARK)


def plan_batch(
    entries: Iterable[StoredEntry],
    *,
    now: datetime,
    fence: int,
    recheck_seconds: float,
    catch_up: str = "run_once",
    catch_up_grace_seconds: float = 60.0,
    id_prefix: str | None = None,
    keys: Keys | None = None,
) -> Plan:
    """Decide, for each due entry read from Redis, what the claim script should do.

    An entry whose schedule fails to compute (whatever it raises) is parked
    ``recheck_seconds`` ahead and listed in ``Plan.parked``; the others go on.
    Task ids derive from ``id_prefix`` + name (``Keys.task_key``), else the entry's key.
    ``keys`` (the shard's) name the running keys of entries with an overlap policy; an
    entry with one is claimed without it when they are not given.
    """
    plan = Plan()
    now_ts = to_timestamp(now)
    meta_at_now = meta_encoder(now)
    park_until = now_ts + int(recheck_seconds)
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
                keys,
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
    keys: Keys | None,
) -> ClaimOp | None:
    scheduled = int(entry.score)
    if entry.run_now is not None:
        # a manual run: sent once, the regular schedule and last run stay as they were
        occurrence = _occurrence(entry, entry.run_now, fence, id_prefix, keys, kind="\x00run_now")
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
            occurrence=occurrence,
            run_now=entry.run_now_raw or "",
            definition=entry.definition_raw,
            overlap=_overlap(entry, occurrence, keys, regular, ""),
        )
    if not entry.enabled:
        return ClaimOp(entry.key, entry.score, entry.version, park_until)
    step = decide(entry, now, catch_up=catch_up, grace=catch_up_grace_seconds)
    if step.next_due_in is not None:
        plan.note_next(step.next_due_in)
    if step.skipped:
        plan.skipped.append(entry.name)
    if step.coalesced:
        plan.coalesced.append(entry.name)
    if not (step.send or step.meta or step.state) and step.new_score == scheduled:
        return None
    meta = ""
    if step.meta is not None:
        at, count = step.meta
        meta = meta_at_now(count) if at is now else encode_meta(at, count)
    claimed = _occurrence(entry, scheduled, fence, id_prefix, keys) if step.send else None
    return ClaimOp(
        entry.key,
        entry.score,
        entry.version,
        step.new_score,
        meta,
        occurrence=claimed,
        new_state=step.state,
        definition=entry.definition_raw if claimed is not None else "",
        overlap=_overlap(entry, claimed, keys, step.unsent_score, step.unsent_state),
    )


def _occurrence(
    entry: StoredEntry,
    scheduled: int,
    fence: int,
    id_prefix: str | None,
    keys: Keys | None,
    kind: str = "",
) -> Occurrence:
    key = entry.key if id_prefix is None else id_prefix + entry.name
    lc = entry.lifecycle
    tracked = keys is not None and lc.has_overlap_policy
    return Occurrence(
        task_id=task_id_for(key, scheduled, kind),
        entry=entry.name,
        task=entry.task,
        args=entry.args,
        kwargs=entry.kwargs,
        options=entry.options,
        scheduled=scheduled,
        fence=fence,
        prefix=keys.prefix if tracked and keys is not None else "",
        max_runtime=lc.max_runtime if tracked else None,
    )


def _overlap(
    entry: StoredEntry,
    occurrence: Occurrence | None,
    keys: Keys | None,
    unsent_score: int,
    unsent_state: str,
) -> Overlap | None:
    """The overlap policy the claim of ``occurrence`` applies, if its entry has one."""
    lc = entry.lifecycle
    if occurrence is None or keys is None or not lc.has_overlap_policy:
        return None
    assert lc.max_runtime is not None  # checked with the policy
    return Overlap(
        policy=lc.overlap,
        running_key=keys.running(entry.name),
        running_index=keys.running_index,
        max_runtime_ms=max(round(lc.max_runtime * 1000), 1),
        task_id=occurrence.task_id,
        unsent_score=unsent_score,
        unsent_state=unsent_state,
    )


@dataclass
class Settled:
    """What a claim did: the occurrences to publish, those it enqueued itself, and slots
    that pointed at no entry."""

    #: claimed and recorded pending: to publish
    claimed: list[Occurrence] = field(default_factory=list)
    #: claimed and pushed onto their broker queues in the same step (atomic enqueue)
    enqueued: list[Occurrence] = field(default_factory=list)
    #: operations whose message the script could not push (nothing written for them)
    queue_refused: list[ClaimOp] = field(default_factory=list)
    #: entry keys whose hash was gone: ``claim.lua`` dropped their schedule slot
    gone: list[str] = field(default_factory=list)
    #: occurrences not sent: their entry's previous run still goes (``overlap="skip"``)
    skipped: list[Running] = field(default_factory=list)
    #: occurrences sent while their entry's previous runs still go (``"replace"``): the
    #: runs to revoke
    replacing: list[Running] = field(default_factory=list)


@dataclass(frozen=True)
class Running:
    """An occurrence the claim found its entry's other runs going for."""

    occurrence: Occurrence
    #: the task ids of the runs that still count as going
    running: tuple[str, ...]


def settle_claim(ops: Sequence[ClaimOp], result: ClaimResult) -> Settled:
    """Read ``claim.lua``'s answer to ``ops``; FencedOut if Redis refused the claim."""
    if result.fenced_out:
        raise FencedOut("Redis rejected a claim: the lease key no longer holds our token")
    settled = Settled()
    for index, (op, code) in enumerate(zip(ops, result.codes, strict=True)):
        if code is ClaimCode.CLAIMED and op.occurrence is not None:
            (settled.enqueued if op.pushes else settled.claimed).append(op.occurrence)
            others = result.running.get(index)
            if others:
                settled.replacing.append(Running(op.occurrence, tuple(others)))
        elif code is ClaimCode.SKIPPED and op.occurrence is not None:
            settled.skipped.append(Running(op.occurrence, tuple(result.running.get(index, ()))))
        elif code is ClaimCode.GONE:
            settled.gone.append(op.key)
        elif code is ClaimCode.QUEUE_REFUSED:
            settled.queue_refused.append(op)
    return settled
