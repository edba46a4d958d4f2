"""One shard of the schedule as a replica works it: its lease, and dispatch of what is due.

With one shard (the default) this is the whole schedule. Everything in here is bound to
the shard's keys: its lease and fence, its entries, pending records and seed marker, so
every guarantee that holds for the schedule holds for each shard on its own.

A shard gets what it needs from the replica as a :class:`ShardContext` (client, app,
settings, clock, publisher, loader slot, a keep-alive callback) and builds its parts from
it on first use (Redis may not answer yet): lease and leadership, reader, outbox, seeder.

What dispatch does, in order: read due (:mod:`.reader`), republish what is pending
(:mod:`.outbox`), plan (:mod:`.plan`), claim (``claim.lua``; what it found still running
under an overlap policy: :mod:`.overlap`), publish and acknowledge (:mod:`.outbox`,
:mod:`.publisher`). See ``docs/architecture.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from celery.utils.log import get_logger

from .. import signals
from ..config import Settings
from ..errors import FencedOut
from ..leader.leadership import Leadership
from ..leader.lease import Lease
from ..model.occurrence import Occurrence
from ..observe import sent as sent_log
from ..store.keys import Keys
from ..store.layout import Layout
from ..store.scripts import Scripts
from ..sync.loader import LoaderSlot
from ..sync.seeding import Seeder
from . import overlap
from .catchup import coalesce, regular_keys
from .enqueue import Enqueuer, calls
from .outbox import Outbox
from .plan import ClaimOp, Plan, Settled, plan_batch, settle_claim
from .publisher import Publisher, SendReport
from .reader import DueBatch, DueReader

__all__ = ["Shard", "ShardContext"]

logger = get_logger("safe_redbeat")


@dataclass(frozen=True)
class ShardContext:
    """What a shard gets from the replica that works it, and nothing more of it."""

    app: Any
    settings: Settings
    #: the replica's Redis client, made on first use (Redis may not answer yet)
    client: Callable[[], Any]
    #: the replica's publisher: one Celery producer for every shard
    publisher: Callable[[], Publisher]
    #: the replica's enqueue mode and message builder (on the same producer)
    enqueuer: Callable[[], Enqueuer]
    #: a ``beat_schedule`` item as a Celery entry (the scheduler's ``_maybe_entry``)
    build_entry: Callable[[str, Any], Any]
    #: the replica's upkeep while this shard's dispatch takes long: stop (SystemExit) if
    #: the replica was closed, renew its other leases and its heartbeat when due
    keep_alive: Callable[[Shard], None]
    #: the sender of the signals of this shard's parts (the scheduler, see signals.py)
    signal_sender: Any
    #: revoke (and terminate) runs an occurrence replaces (``overlap="replace"``); best
    #: effort, never blocking (:class:`.overlap.Revoker`)
    revoke: Callable[[Sequence[str]], None]
    #: how long a disabled or parked entry waits before it is read again
    recheck_seconds: float
    monotonic: Callable[[], float] = time.monotonic
    #: one loader call in flight, whichever shard of the replica asks
    loader_slot: LoaderSlot = field(default_factory=LoaderSlot)


class Shard:
    """Shard ``index`` of ``layout``, worked by one replica (``context``)."""

    def __init__(self, context: ShardContext, index: int, layout: Layout) -> None:
        self.context = context
        self.index = index
        self.layout = layout
        self.keys: Keys = layout.keys(index)

    def __repr__(self) -> str:
        return f"<Shard {self.index} {self.keys.prefix!r}>"

    # -- parts (built on first use: Redis may not answer yet) --------------------------

    @cached_property
    def scripts(self) -> Scripts:
        return Scripts(self.context.client(), self.keys)

    @cached_property
    def leadership(self) -> Leadership:
        c = self.context
        return Leadership(
            c.signal_sender,
            c.settings,
            self.keys,
            lease=lambda: Lease(
                c.client(), self.keys, c.settings, scripts=self.scripts, monotonic=c.monotonic
            ),
            on_elected=self.on_elected,
            shard=self.index,
            monotonic=c.monotonic,
        )

    @cached_property
    def reader(self) -> DueReader:
        c = self.context
        return DueReader(
            c.client(),
            self.keys,
            self.scripts,
            c.app,
            batch_size=c.settings.batch_size,
            recheck_seconds=c.recheck_seconds,
        )

    @cached_property
    def outbox(self) -> Outbox:
        c = self.context
        return Outbox(
            c.client(), self.keys, self.scripts, c.publisher(), c.settings, monotonic=c.monotonic
        )

    @cached_property
    def seeder(self) -> Seeder:
        c = self.context
        return Seeder(
            c.app,
            c.client(),
            self.keys,
            self.scripts,
            c.settings,
            build_entry=c.build_entry,
            monotonic=c.monotonic,
            loader_slot=c.loader_slot,
            shard=self.index,
            shards=self.layout.shards,
            owned_keys=tuple(keys.loader for keys in self.layout.all_keys()),
        )

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self) -> float:
        """Keep the seed, then dispatch what is due; the seconds until the next tick."""
        self.seeder.keep_seeded(self.leadership.token(), self.leadership.renew_if_due)
        return self._dispatch_due()

    def _dispatch_due(self) -> float:
        """Read due → republish pending → (plan → claim → publish + ack) per batch."""
        s = self.context.settings
        batch = self._read_due()
        if not batch.seeded:
            self.reseed("the seed marker is gone: Redis lost data or keys were deleted")
            batch = self._read_due()
        if self.outbox.should_republish(batch.pending):
            report = self.outbox.republish(
                fence=self.leadership.fence(),
                token=self.leadership.token(),
                keep_leading=self._keep_leading,
            )
            if report.refused:
                return self._wait_for_broker()
            self._sent_late(report.sent)
            self._coalesce(report.sent)
            # the republish may have taken long (a broker that hung): plan at Redis' time
            # now, with the scores the coalescing moved, not from the batch read before it
            batch = self._read_due()
        elif batch.pending and self.outbox.refusing:
            # claim nothing new while the broker refuses what is pending: after the
            # outage each entry runs once, not once per period it lasted
            return self._wait_for_broker()
        while True:
            plan = self._plan(batch)
            claimed, enqueued = self._claim_and_enqueue(plan.ops) if plan.ops else ([], 0)
            signals.batch_claimed.send(
                self.context.signal_sender,
                claimed=len(claimed) + enqueued,
                skipped=len(plan.skipped),
            )
            for name in plan.skipped:
                logger.info("beat: skipped a missed occurrence of %r (catch_up=skip)", name)
            if plan.coalesced:
                logger.info(
                    "beat: %d slots skipped that passed while the previous message of their "
                    "entry was sent late: that message is their run (%s)",
                    len(plan.coalesced),
                    ", ".join(repr(name) for name in plan.coalesced[:5]),
                )
            if claimed and self._publish_claimed(claimed).refused:
                return self._wait_for_broker()
            if batch.size < s.batch_size or not plan.ops:
                break
            self._keep_leading()
            batch = self._read_due()
        waits = [self.context.recheck_seconds, self.leadership.renew_in()]
        if batch.upcoming is not None:
            waits.append(max(float(batch.upcoming) - batch.now.timestamp(), 0.0))
        if plan.next_due_in is not None:
            waits.append(max(plan.next_due_in, 0.0))
        return min(waits)

    def _wait_for_broker(self) -> float:
        """The tick's delay while the broker refuses: until the next republish, renewing."""
        return max(min(self.outbox.retry_in(), self.leadership.renew_in()), 0.05)

    def _read_due(self) -> DueBatch:
        return self.reader.read()

    def _plan(self, batch: DueBatch) -> Plan:
        s = self.context.settings
        plan = plan_batch(
            batch.entries,
            now=batch.now,
            fence=self.leadership.fence(),
            recheck_seconds=self.context.recheck_seconds,
            catch_up=s.catch_up,
            catch_up_grace_seconds=s.catch_up_grace_seconds,
            id_prefix=self.keys.task_key(""),
            keys=self.keys,
        )
        plan.ops.extend(batch.ops)
        for key, problem in plan.parked:
            self.reader.report(key, problem)
        return plan

    def _claim(self, ops: Sequence[ClaimOp]) -> list[Occurrence]:
        """Claim ``ops`` (no message pushed); the occurrences to publish."""
        return self._settle(ops).claimed

    def _claim_and_enqueue(self, ops: Sequence[ClaimOp]) -> tuple[list[Occurrence], int]:
        """Claim ``ops``; with atomic enqueue, push each message in the same fenced step.

        Returns the occurrences left to publish (claimed pending: the publish path, or
        messages the claim could not push) and how many were enqueued by the claim.
        """
        enqueuer = self.context.enqueuer()
        mode = enqueuer.mode()
        if not mode.atomic or not any(op.occurrence is not None for op in ops):
            return self._claim(ops), 0
        c = self.context
        fence = self.leadership.fence()
        busy = overlap.likely_skipped(c.client(), ops)  # their messages are not built
        built = iter(
            enqueuer.prepare(
                [op for index, op in enumerate(ops) if index not in busy],
                fence,
                c.client(),
                self.keys,
                self._keep_leading,
            )
        )
        prepared = [op if index in busy else next(built) for index, op in enumerate(ops)]
        to_publish: list[Occurrence] = []
        enqueued = 0
        for number, call in enumerate(calls(prepared)):
            if number:
                self._keep_leading()
            settled = self._settle(call, databases=mode.databases)
            to_publish.extend(settled.claimed)
            enqueued += len(settled.enqueued)
            signals.acking(self.outbox, _nothing, fence=fence, republished=False)(settled.enqueued)
            sent_log.announce(c.settings, settled.enqueued, fence=fence, republished=False)
            if settled.queue_refused:
                for op in settled.queue_refused:
                    logger.warning(
                        "beat: the broker queue of %r holds another type than a list, or may "
                        "not be written; its occurrence is published instead (and fails there "
                        "until the key is fixed): %s",
                        self.keys.name_of(op.key),
                        ", ".join(sorted({key for _verb, key, _value in op.pushes})),
                    )
                to_publish.extend(
                    self._claim([replace(op, pushes=()) for op in settled.queue_refused])
                )
        return to_publish, enqueued

    def _settle(
        self, ops: Sequence[ClaimOp], *, databases: tuple[int, int] | None = None
    ) -> Settled:
        self.leadership.renew_if_due()  # re-verifies the lease after a pause, before claiming
        try:
            reply = self.scripts.claim(self.leadership.token(), ops, databases=databases)
            settled = settle_claim(ops, reply)
        except FencedOut:
            self.leadership.lease.drop()
            raise
        if settled.skipped or settled.replacing:
            overlap.report(self.context.signal_sender, settled, self.context.revoke)
        for key in settled.gone:
            self.seeder.reseed_needed = True
            logger.warning(
                "beat: entry %r had a schedule slot but no hash; dropped the slot",
                self.keys.name_of(key),
            )
        return settled

    def _publish_claimed(self, claimed: Sequence[Occurrence]) -> SendReport:
        """Publish claimed occurrences chunk by chunk, renewing between chunks.

        A publish that took longer than ``retry_seconds`` (a broker that hung) is late like
        a republish after an outage: its entries' ``sent_at`` is recorded, and whichever
        replica claims them next skips the slots that passed meanwhile (``model.decide``),
        so the late message is the entry's one run for them.
        """
        monotonic = self.context.monotonic
        started = monotonic()
        report = self.outbox.publish(
            claimed,
            fence=self.leadership.fence(),
            token=self.leadership.token(),
            keep_leading=self._keep_leading,
        )
        if report.sent and monotonic() - started > self.context.settings.retry_seconds:
            self._sent_late(report.sent)
        return report

    def _keep_leading(self) -> None:
        """Between batches and publish chunks: stop if closed, renew this shard's lease,
        and keep the replica's other leases and heartbeat while this shard takes long."""
        self.context.keep_alive(self)
        self.leadership.renew_if_due()

    def _sent_late(self, sent: Sequence[Occurrence]) -> None:
        self.scripts.sent_late(regular_keys(self.keys, sent))

    def _coalesce(self, sent: Sequence[Occurrence]) -> None:
        coalesce(self.context.client(), self.keys, self.context.app, sent, self._claim)

    # -- leadership events ------------------------------------------------------------

    def on_elected(self) -> None:
        self.context.enqueuer().mode()  # decided (and said) once, when first elected
        self.reader.forget_reported()
        self.reseed("acquired the lease")
        self.outbox.retry_now()

    def reseed(self, reason: str) -> None:
        """Reconcile statics and the loader now (fenced), then mark the shard seeded."""
        self.seeder.seed(self.leadership.token(), self.leadership.renew_if_due, reason)


def _nothing(_sent: Sequence[Occurrence]) -> None:
    """The acknowledgement of an atomic enqueue: the claim itself (no pending record)."""
