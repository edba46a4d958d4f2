"""The model test's oracle: what each entry should do, and the rules every message obeys.

Pure, no I/O: :mod:`tests.support.model_world` tells it what was written (with Redis'
time, which the test sets), and after each tick what it saw in the pending hashes and
the broker queues. Each broken rule is one line in :attr:`Oracle.problems`.

Events are numbered (``seq``) in the order the test made them: a write, a tick, a fault.
An occurrence is *claimed* at the tick where its task id first shows up, in a pending
record or in a queue, and *sent* at the tick where it first shows up in a queue. The
schedule's Redis has a frozen clock, so both times are exact.

Rules (README, "The guarantee, exactly" and "When entries run"):

* a task id is ``uuid5(entry key, scheduled)`` (or the ``run_now`` form), and reaches the
  broker once: nothing in the model (no crash, no lost reply) may make it go out twice,
  except once while the broker refuses some queue (a broker batch that failed on one
  message's queue key is sent again message by message);
* nothing is claimed for a deleted entry, a regular run of a disabled one, or a manual run
  nobody requested;
* no run before the entry's first slot or its ``start_time``, nor claimed later than
  ``catch_up_grace_seconds`` after ``expires``; at most ``max_runs`` runs, one for a
  one-off; with ``catch_up="skip"`` nothing claimed later than the grace;
* one catch-up run per outage: of two runs of one entry, the later one's slot is not
  before the time the earlier one was sent (else both were overdue when the first went
  out: several runs of one entry at once).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from safe_redbeat.model.occurrence import task_id_for

__all__ = [
    "GRACE",
    "Incarnation",
    "Oracle",
    "Plan",
    "Seen",
    "Spec",
]

#: ``safe_redbeat_catch_up_grace_seconds`` (the default) of the replicas under test.
GRACE = 60.0
#: Scores are whole seconds, times are not.
TOLERANCE = 1.0
#: The prefix task ids derive from (RedBeat's default, unsharded, whatever the layout).
ID_PREFIX = "redbeat:"


@dataclass(frozen=True)
class Plan:
    """A schedule the model computes without the library: its slots, in UTC seconds.

    ``interval``: every ``every`` seconds from the last run. ``crontab``: ``*/every`` in the
    minute field (``every`` divides 60, the app runs in UTC: multiples of ``60 * every``).
    ``rrule``: ``dtstart + n * every`` minutes (``MINUTELY``) or hours (``HOURLY``).
    ``once``: at ``at``.
    """

    kind: str
    every: int = 0
    freq: str = ""
    dtstart: int = 0
    at: int = 0

    @property
    def step(self) -> int:
        if self.kind == "interval":
            return self.every
        if self.kind == "crontab":
            return 60 * self.every
        if self.kind == "rrule":
            return (60 if self.freq == "MINUTELY" else 3600) * self.every
        return 0

    def slot_after(self, t: float) -> float | None:
        """The first slot strictly after ``t`` (an interval counts from ``t``)."""
        if self.kind == "interval":
            return t + self.every
        if self.kind == "crontab":
            return float((math.floor(t / self.step) + 1) * self.step)
        if self.kind == "rrule":
            if t < self.dtstart:
                return float(self.dtstart)
            return float(
                self.dtstart + (math.floor((t - self.dtstart) / self.step) + 1) * self.step
            )
        return float(self.at) if self.at > t else None

    def describe(self, t: Callable[[float], str] = str) -> str:
        if self.kind == "interval":
            return f"every {self.every}s"
        if self.kind == "crontab":
            return f"*/{self.every} * * * *"
        if self.kind == "rrule":
            return f"rrule {self.freq} x{self.every} from {t(self.dtstart)}"
        return f"once at {t(self.at)}"


@dataclass(frozen=True)
class Spec:
    """What was written for an entry: its plan and lifetime fields (UTC seconds)."""

    plan: Plan
    enabled: bool = True
    start_time: int | None = None
    expires: int | None = None
    max_runs: int | None = None
    run_immediately: bool = False

    def first_slot(self, created: float, *, anchored: bool = True) -> float | None:
        """When an entry written with this spec at ``created`` runs first (README: a new
        entry runs at its next slot; an interval at its ``start_time`` if that is later
        than its creation, a crontab or rrule at its first slot at or after it).

        ``anchored``: the entry was created without ``run_immediately``, so its creation
        time is recorded as its last run and a later ``run_immediately`` changes nothing.
        Not anchored and not ``run_immediately`` (any more): the leader anchors it when it
        reads it, which is not before ``created``; this is then a lower bound.
        """
        plan, start = self.plan, self.start_time
        if plan.kind == "once":
            return float(plan.at)
        if not anchored and self.run_immediately:
            return created if start is None else max(created, float(start))
        if plan.kind == "interval":
            if start is not None and start > created:
                return float(start)
            return created + plan.every
        after = created if start is None else max(created, start - 0.5)
        return plan.slot_after(after)

    def describe(self, t: Callable[[float], str] = str) -> str:
        """One line; ``t`` formats times."""
        parts = [self.plan.describe(t)]
        if not self.enabled:
            parts.append("disabled")
        for name in ("start_time", "expires"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={t(value)}")
        if self.max_runs is not None:
            parts.append(f"max_runs={self.max_runs}")
        if self.run_immediately:
            parts.append("run_immediately")
        return ", ".join(parts)


@dataclass(frozen=True)
class Written:
    seq: int
    at: float
    spec: Spec


@dataclass
class Incarnation:
    """One life of an entry name: from its creation (or a re-seed) to its deletion."""

    name: str
    static: bool
    created_seq: int
    created_at: float
    specs: list[Written]
    deleted_seq: int | None = None
    #: (seq, requested time) of each run_now request
    requests: list[tuple[int, int]] = field(default_factory=list)
    #: regular occurrences claimed, in claim order
    claims: list[Seen] = field(default_factory=list)

    @property
    def anchored(self) -> bool:
        """Created without ``run_immediately``: its creation time is its last run."""
        return not self.specs[0].spec.run_immediately

    def first_slot(self, spec: Spec) -> float | None:
        return spec.first_slot(self.created_at, anchored=self.anchored)

    def spec_at(self, seq: int) -> Written:
        """The spec in force at event ``seq`` (the last one written before it)."""
        found = self.specs[0]
        for written in self.specs:
            if written.seq < seq:
                found = written
        return found

    @property
    def spec(self) -> Spec:
        return self.specs[-1].spec

    def alive_at(self, seq: int) -> bool:
        return self.created_seq < seq and (self.deleted_seq is None or seq < self.deleted_seq)


@dataclass
class Seen:
    """One task id, from the tick it was first seen to the tick it reached the broker."""

    task_id: str
    entry: str
    scheduled: int
    manual: bool
    claim_seq: int
    claim_at: float
    incarnation: Incarnation | None
    sent_seq: int | None = None
    sent_at: float | None = None
    sends: int = 0


class Oracle:
    """The model's view of every entry, and the problems found so far."""

    def __init__(
        self, start: float, *, catch_up: str = "run_once", known: frozenset[str] = frozenset()
    ) -> None:
        self.start = start
        self.catch_up = catch_up
        #: tags of bugs already reported (each has a regression test): not counted again
        self.known = known
        #: findings left out because of ``known``, by tag
        self.known_hits: dict[str, int] = {}
        self.lives: dict[str, list[Incarnation]] = {}
        self.seen: dict[str, Seen] = {}
        #: task ids by (entry, scheduled, manual): one each
        self.ids: dict[tuple[str, int, bool], set[str]] = {}
        self.problems: list[str] = []
        #: seq of the last wipe of the schedule's Redis (claims before it may be lost)
        self.wiped_seq = -1
        #: (stopped, started again or None) seqs of each broker outage
        self.outages: list[tuple[int, int | None]] = []
        #: (from, until or None) seqs of each time the broker refused a queue
        self.refusals: list[tuple[int, int | None]] = []
        #: second sends of one task id while a queue was refused (documented)
        self.resends = 0
        #: seqs of leases lost inside a publish (the leader frozen past it, or it deleted)
        self.lost_mid_publish: list[int] = []
        #: second sends of one task id after its first publisher lost the lease before
        #: acknowledging it (README: publish mode; a kombu without batches pushes each
        #: message as it is handed over, so the ones before the loss are out)
        self.lost_acks = 0

    # -- time in messages -------------------------------------------------------------

    def t(self, at: float | None) -> str:
        """``at`` as seconds since the start of the run (``t+12.5``)."""
        return "never" if at is None else f"t{at - self.start:+.1f}"

    def problem(self, text: str, tag: str = "") -> None:
        """Report a broken rule; one of a ``known`` bug (``tag``) is only counted."""
        if tag and tag in self.known:
            self.known_hits[tag] = self.known_hits.get(tag, 0) + 1
            return
        self.problems.append(text)

    # -- what the test did --------------------------------------------------------------

    def current(self, name: str) -> Incarnation | None:
        """The entry's live incarnation, if it exists."""
        lives = self.lives.get(name)
        if lives and lives[-1].deleted_seq is None:
            return lives[-1]
        return None

    def written(self, name: str, spec: Spec, seq: int, at: float, *, static: bool = False) -> None:
        """An upsert (or update, enable, disable) of ``name`` at event ``seq``, Redis time
        ``at``: a new incarnation if the entry did not exist."""
        life = self.current(name)
        if life is None:
            life = Incarnation(name, static, seq, at, [Written(seq, at, spec)])
            self.lives.setdefault(name, []).append(life)
        else:
            life.specs.append(Written(seq, at, spec))

    def deleted(self, name: str, seq: int) -> None:
        life = self.current(name)
        if life is not None:
            life.deleted_seq = seq

    def requested(self, name: str, seq: int, requested: int) -> None:
        life = self.current(name)
        if life is not None:
            life.requests.append((seq, requested))

    def wiped(self, seq: int, at: float) -> None:
        """Every key of the schedule's Redis is gone: entries written through the API are
        gone for good, ``beat_schedule`` entries come back as new (re-seeded after ``at``)."""
        self.wiped_seq = seq
        for name in list(self.lives):
            life = self.current(name)
            if life is None:
                continue
            life.deleted_seq = seq
            if life.static:
                self.written(name, life.spec, seq, at, static=True)

    def broker_stopped(self, seq: int) -> None:
        self.outages.append((seq, None))

    def broker_started(self, seq: int) -> None:
        if self.outages and self.outages[-1][1] is None:
            self.outages[-1] = (self.outages[-1][0], seq)

    def refusing(self, seq: int) -> None:
        self.refusals.append((seq, None))

    def accepting(self, seq: int) -> None:
        """The broker takes every queue's messages again (the test lifts one refusal at a
        time; the earliest open one ends)."""
        for index, (start, end) in enumerate(self.refusals):
            if end is None:
                self.refusals[index] = (start, seq)
                return

    @staticmethod
    def _overlaps(periods: list[tuple[int, int | None]], first: int, last: int) -> bool:
        return any(start <= last and (end is None or end >= first) for start, end in periods)

    def broker_down_between(self, first: int, last: int) -> bool:
        """Whether the broker was stopped at some event from ``first`` to ``last``."""
        return self._overlaps(self.outages, first, last)

    def refused_between(self, first: int, last: int) -> bool:
        """Whether the broker refused some queue at some event from ``first`` to ``last``."""
        return self._overlaps(self.refusals, first, last)

    # -- what the test saw --------------------------------------------------------------

    def observe(
        self,
        seq: int,
        at: float,
        pending: dict[str, tuple[str, int]],
        messages: list[tuple[str, str, int]],
    ) -> None:
        """After the tick ``seq`` at Redis time ``at``: the pending records (task id ->
        entry, scheduled) and the messages that reached the broker (task id, entry,
        scheduled) since the previous look."""
        for task_id, (entry, scheduled) in pending.items():
            if task_id not in self.seen:
                self._claimed(task_id, entry, scheduled, seq, at)
        for task_id, entry, scheduled in messages:
            seen = self.seen.get(task_id) or self._claimed(task_id, entry, scheduled, seq, at)
            seen.sends += 1
            first = seen.sent_seq if seen.sent_seq is not None else seq
            if seen.sends == 2 and self.refused_between(first, seq):
                self.resends += 1  # README: a batch failed on one message's queue key
            elif seen.sends == 2 and any(first <= s <= seq for s in self.lost_mid_publish):
                self.lost_acks += 1
            elif seen.sends >= 2:
                self.problem(
                    f"{entry!r}: the occurrence scheduled at {self.t(scheduled)} reached the "
                    f"broker {seen.sends} times with task id {task_id} (first at "
                    f"{self.t(seen.sent_at)}, again at {self.t(at)}); only a lease lost "
                    "before its acknowledgement, or a batch failing on a refused message, "
                    "sends one again, once"
                )
            if seen.sent_seq is None:
                seen.sent_seq, seen.sent_at = seq, at
                if not seen.manual and seen.incarnation is not None:
                    self._check_catch_up(seen)

    def _claimed(self, task_id: str, entry: str, scheduled: int, seq: int, at: float) -> Seen:
        key = ID_PREFIX + entry
        manual = task_id == task_id_for(key, scheduled, "\x00run_now")
        if not manual and task_id != task_id_for(key, scheduled):
            self.problem(
                f"{entry!r}: task id {task_id} is not derived from the entry and its "
                f"scheduled time {self.t(scheduled)}"
            )
        ids = self.ids.setdefault((entry, scheduled, manual), set())
        ids.add(task_id)
        if len(ids) > 1:
            self.problem(
                f"{entry!r}: the {'manual run' if manual else 'occurrence'} at "
                f"{self.t(scheduled)} was claimed under {len(ids)} task ids: {sorted(ids)}"
            )
        life = self._life_at(entry, seq)
        seen = Seen(task_id, entry, scheduled, manual, seq, at, life)
        self.seen[task_id] = seen
        what = "a manual run" if manual else f"the occurrence scheduled at {self.t(scheduled)}"
        if life is None:
            self.problem(f"{entry!r}: {what} was claimed at {self.t(at)}, the entry did not exist")
            return seen
        if manual:
            if not any(r_seq < seq and r == scheduled for r_seq, r in life.requests):
                self.problem(f"{entry!r}: {what} at {self.t(scheduled)} nobody requested")
            return seen
        self._check_regular(life, seen)
        life.claims.append(seen)
        return seen

    def _life_at(self, name: str, seq: int) -> Incarnation | None:
        for life in reversed(self.lives.get(name, [])):
            if life.alive_at(seq):
                return life
        return None

    # -- rules ---------------------------------------------------------------------------

    def _check_regular(self, life: Incarnation, seen: Seen) -> None:
        """The lifecycle rules for a regular occurrence claimed at ``seen.claim_at``."""
        written = life.spec_at(seen.claim_seq)
        spec, name, s, now = written.spec, life.name, seen.scheduled, seen.claim_at
        what = (
            f"{name!r} ({spec.describe(self.t)}): the run scheduled at {self.t(s)}, claimed "
            f"at {self.t(now)}"
        )
        if not spec.enabled:
            self.problem(f"{what}, while the entry was disabled (since {self.t(written.at)})")
        if spec.start_time is not None and s < spec.start_time - TOLERANCE:
            self.problem(f"{what}, is before its start_time {self.t(spec.start_time)}")
        if spec.expires is not None and (
            now > spec.expires + GRACE + TOLERANCE or s > spec.expires + GRACE
        ):
            self.problem(
                f"{what}, is more than the grace after expires {self.t(spec.expires)}",
                "one-off-after-expiry" if spec.plan.kind == "once" else "",
            )
        if self.catch_up == "skip" and now - s > GRACE + TOLERANCE:
            self.problem(f"{what}, is later than the grace with catch_up='skip'")
        runs = len(life.claims) + 1
        if spec.max_runs is not None and runs > spec.max_runs:
            self.problem(f"{what}, is run {runs} of max_runs={spec.max_runs}")
        if spec.plan.kind == "once":
            earlier = [c for c in life.claims if life.spec_at(c.claim_seq).spec.plan.kind == "once"]
            if earlier:
                self.problem(f"{what}, is a second run of a one-off")
            if s < spec.plan.at - TOLERANCE:
                self.problem(f"{what}, is before the one-off's time")
            created = life.created_at
            if not spec.run_immediately and created - spec.plan.at > GRACE:
                self.problem(f"{what}: the one-off was written {created - spec.plan.at:.0f}s late")
        if not life.claims:
            firsts = [life.first_slot(w.spec) for w in life.specs if w.seq < seen.claim_seq]
            known = [f for f in firsts if f is not None]
            if not known:
                self.problem(f"{what}, though it has no slot at all")
            elif s < min(known) - TOLERANCE:
                self.problem(
                    f"{what}, is before its first slot {self.t(min(known))} (created at "
                    f"{self.t(life.created_at)})"
                )

    def _check_catch_up(self, seen: Seen) -> None:
        """Of two runs of one entry, the later one's slot is not before the earlier was sent."""
        life = seen.incarnation
        assert life is not None
        sent = sorted((c for c in life.claims if c.sent_at is not None), key=lambda c: c.scheduled)
        index = bisect.bisect_left([c.scheduled for c in sent], seen.scheduled)
        pairs = []
        if index > 0:
            pairs.append((sent[index - 1], seen))
        if index + 1 < len(sent):
            pairs.append((seen, sent[index + 1]))
        for earlier, later in pairs:
            assert earlier.sent_at is not None
            if later.scheduled < earlier.sent_at - TOLERANCE:
                lost = any(
                    earlier.claim_seq <= seq <= later.claim_seq for seq in self.lost_mid_publish
                )
                self.problem(
                    f"{life.name!r} ({life.spec.describe(self.t)}): two runs for one outage: "
                    f"the run scheduled at {self.t(earlier.scheduled)} went out at "
                    f"{self.t(earlier.sent_at)} (task {earlier.task_id}), the one scheduled at "
                    f"{self.t(later.scheduled)} (before that) went out at "
                    f"{self.t(later.sent_at)} (task {later.task_id})",
                    "lease-lost-in-republish" if lost else "",
                )

    def check_waiting(
        self, now: float, scores: dict[str, tuple[float | None, float | None]]
    ) -> None:
        """Entries that never ran and wait for their first slot: the score Redis holds is
        not later than that slot (or the last write, if later). ``scores``: by name, the
        score and the anchor ``meta.last_run_at`` records (used only for an entry created
        with ``run_immediately``, which the leader anchors when it reads it without)."""
        for name, (score, anchor) in scores.items():
            life = self.current(name)
            if life is None or life.static or life.claims or score is None or score < 0:
                continue
            spec = life.spec
            if not spec.enabled or life.requests:
                continue
            if life.anchored:
                first = life.first_slot(spec)
            elif anchor is not None:  # anchored by the leader: run_immediately is moot
                first = spec.first_slot(anchor, anchored=True)
            elif spec.run_immediately:
                first = life.first_slot(spec)
            else:
                continue  # the leader anchors it when it reads it: no bound yet
            if first is None or now >= first:
                continue
            bound = max(first, life.specs[-1].at)
            if score > bound + TOLERANCE:
                stale = any(
                    seen.entry == name
                    and seen.incarnation is not life
                    and (seen.sent_seq or 0) > life.created_seq
                    for seen in self.seen.values()
                )
                self.problem(
                    f"{name!r} ({spec.describe(self.t)}), written at {self.t(life.created_at)}: "
                    f"its first run should be at {self.t(first)}, Redis has it at "
                    f"{self.t(score)}",
                    "old-republish-coalesces-new" if stale else "",
                )

    def unsent(self) -> list[Seen]:
        """Claimed occurrences that never reached the broker, except those a wipe lost."""
        return [s for s in self.seen.values() if s.sends == 0 and s.claim_seq > self.wiped_seq]
