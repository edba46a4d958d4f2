"""What the leader does with one due, enabled entry: send it, move it, or retire it.

Rules (README, "When entries run"): an entry with no run history runs at its next slot,
counted from when it was created (Celery's ``ScheduleEntry``): writers record the creation
time as ``meta.last_run_at`` with ``total_run_count`` 0; an entry found without any (stock
RedBeat, another language) is anchored at the leader's ``now``. ``run_immediately`` opts
out. After an outage a missed entry runs once (``catch_up="run_once"``) or skips late
occurrences (``"skip"``). ``max_runs``, ``expires`` and one-offs end an entry in the same
fenced claim that sends its last run. Whether the previous run still goes (the overlap
policy) is decided inside the claim, which Redis runs: a :class:`Step` that sends says
what to write if the claim skips it instead.

Everything here is pure: time comes in as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

from .entry import NEVER, StoredEntry
from .lifecycle import EXPIRED, FINISHED, TERMINAL, Lifecycle, zone_of
from .slots import first_slot, score_of

__all__ = ["Step", "decide"]


@dataclass(frozen=True)
class Step:
    """What the leader does with one due, enabled entry (see :func:`decide`)."""

    send: bool = False
    new_score: int = NEVER
    #: ``(last_run_at, total_run_count)`` to write as ``meta``; None leaves it alone
    meta: tuple[datetime, int] | None = None
    #: a terminal state to record in the same claim; ``''`` records nothing
    state: str = ""
    #: the occurrence was not sent because of ``catch_up="skip"``
    skipped: bool = False
    #: the occurrence was not sent: the entry's previous message went out late, after
    #: (or within half a period before) this slot, and is its run for it
    coalesced: bool = False
    #: seconds until the entry is due, when it is not due yet
    next_due_in: float | None = None
    #: what the claim writes instead when it does not send the occurrence after all (the
    #: overlap policy ``skip``, decided inside the claim): the next slot and a state, as if
    #: the slot had been skipped; the run count and ``meta`` stay as they are
    unsent_score: int = NEVER
    unsent_state: str = ""


def decide(
    entry: StoredEntry,
    now: datetime,
    *,
    catch_up: str = "run_once",
    grace: float = 60.0,
) -> Step:
    """Send, move or retire one enabled entry read as due at ``now``.

    Claimed occurrences are scheduled at the entry's score (their task id derives from
    it); ``meta`` then records ``now`` as the last run.
    """
    lc = entry.lifecycle
    runs = entry.total_run_count
    if entry.state in TERMINAL:
        return Step(new_score=NEVER)
    if lc.at is not None:
        return _decide_once(entry, lc, now, catch_up, grace)
    if lc.max_runs is not None and runs >= lc.max_runs:
        return Step(new_score=NEVER, state=FINISHED)
    schedule = entry.schedule
    zone = zone_of(lc, schedule.tz)
    now_epoch = now.timestamp()
    last = entry.last_run_at
    anchor: tuple[datetime, int] | None = None
    slot: float | None
    if last is None and not lc.run_immediately:
        # no run history: counted from now, as if created now (Celery's ScheduleEntry)
        anchor = (now, runs)
        slot = first_slot(schedule, lc, now, now, zone)
    elif last is None:
        start = lc.start_time
        slot = now_epoch if start is None or start <= now else start.timestamp()
    else:
        slot = first_slot(schedule, lc, last, now, zone)
    expires = None if lc.expires is None else lc.expires.timestamp()
    if slot is None:
        return Step(new_score=NEVER, meta=anchor)
    if expires is not None and slot > expires:
        return Step(new_score=NEVER, meta=anchor, state=EXPIRED)
    if slot > now_epoch:
        return Step(new_score=score_of(slot), meta=anchor, next_due_in=slot - now_epoch)
    if expires is not None and now_epoch > expires + grace:
        return Step(new_score=NEVER, state=EXPIRED)
    scheduled = int(entry.score)
    following = first_slot(schedule, lc, now, now, zone)
    state = ""
    new_score = score_of(following)
    if following is not None and expires is not None and following > expires:
        new_score, state = NEVER, EXPIRED
    elif new_score != NEVER and new_score <= scheduled:
        new_score = scheduled + 1
    if catch_up == "skip" and now_epoch - scheduled > grace:
        return Step(new_score=new_score, meta=(now, runs), state=state, skipped=True)
    if _sent_late_for(entry, scheduled, now, zone):
        return Step(new_score=new_score, meta=(now, runs), state=state, coalesced=True)
    unsent_score, unsent_state = new_score, state
    if lc.max_runs is not None and runs + 1 >= lc.max_runs:
        new_score, state = NEVER, FINISHED
    return Step(
        send=True,
        new_score=new_score,
        meta=(now, runs + 1),
        state=state,
        unsent_score=unsent_score,
        unsent_state=unsent_state,
    )


def _decide_once(
    entry: StoredEntry, lc: Lifecycle, now: datetime, catch_up: str, grace: float
) -> Step:
    assert lc.at is not None
    if entry.total_run_count >= 1:
        return Step(new_score=NEVER, state=FINISHED)
    at = lc.at.timestamp()
    now_epoch = now.timestamp()
    last = entry.last_run_at
    if now_epoch < at:
        # record when it was first seen, so a late read knows it existed before its time
        anchor = (now, 0) if last is None and not lc.run_immediately else None
        return Step(new_score=math.floor(at), meta=anchor, next_due_in=at - now_epoch)
    if (lc.expires is not None and at > lc.expires.timestamp()) or (
        lc.start_time is not None and at < lc.start_time.timestamp()
    ):
        return Step(new_score=NEVER, state=EXPIRED)
    if lc.expires is not None and now_epoch > lc.expires.timestamp() + grace:
        # missed while no leader ticked, read only after its expiry: as a periodic entry
        return Step(new_score=NEVER, state=EXPIRED)
    if not lc.run_immediately:
        created = now_epoch if last is None else last.timestamp()
        if created >= at and created - at > grace:
            # created, or re-seeded after data loss, after its time: not re-run unless
            # that was within the grace (or asked for with run_immediately)
            return Step(new_score=NEVER, state=EXPIRED)
    if catch_up == "skip" and now_epoch - int(entry.score) > grace:
        # its occurrence (scheduled at the score: its time, or when it was written after
        # it) was missed during an outage: late as any other occurrence
        return Step(new_score=NEVER, meta=(now, 0), state=EXPIRED, skipped=True)
    # a one-off not sent because its entry's previous run still goes is not run at all
    return Step(send=True, new_score=NEVER, meta=(now, 1), state=FINISHED, unsent_state=EXPIRED)


def _sent_late_for(entry: StoredEntry, scheduled: int, now: datetime, zone: tzinfo) -> bool:
    """Whether the entry's last message, sent late (``sent_at``, recorded after a publish
    that hung or a republish), is the run of the slot ``scheduled``: the slot came before
    it, or within half a period after it, and nothing was claimed since.

    As after a late republish (:mod:`~safe_redbeat.dispatch.catchup`), but decided from
    what Redis holds, so any replica leading next skips it (the one that sent late may
    have lost its lease meanwhile).
    """
    sent_at, last = entry.sent_at, entry.last_run_at
    if sent_at is None or last is None or last.timestamp() >= sent_at:
        return False
    if entry.total_run_count < 1:
        return False  # a new entry of that name: the late message was its predecessor's
    slot_at = datetime.fromtimestamp(scheduled, tz=timezone.utc)
    following = first_slot(entry.schedule, entry.lifecycle, slot_at, now, zone)
    half = 0.0 if following is None else (following - scheduled) / 2
    return scheduled <= sent_at + half
