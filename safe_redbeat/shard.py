"""One shard of the schedule as a replica works it: its lease, and dispatch of what is due.

With one shard (the default) this is the whole schedule. Everything in here is bound to
the shard's keys: its lease and fence, its entries, pending records and seed marker, so
every guarantee that holds for the schedule holds for each shard on its own.

What dispatch does, in order: read due (:mod:`.reader`), republish what is pending
(:mod:`.outbox`), plan (:mod:`.dispatch`), claim (``claim.lua``), publish and acknowledge
(:mod:`.outbox`, :mod:`.publisher`). See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from celery.utils.log import get_logger

from . import signals, wiring
from .catchup import coalesce
from .dispatch import ClaimOp, Occurrence, Plan, plan_batch, settle_claim
from .errors import FencedOut
from .keys import Keys
from .publisher import SendReport
from .reader import DueBatch

if TYPE_CHECKING:
    from .scheduler import SafeRedBeatScheduler

__all__ = ["Shard"]

logger = get_logger("safe_redbeat")


class Shard:
    """Shard ``index`` of the schedule, worked by ``scheduler`` (its Celery adapter)."""

    def __init__(self, scheduler: SafeRedBeatScheduler, index: int, keys: Keys) -> None:
        self.scheduler = scheduler
        self.index = index
        self.keys = keys

    def __repr__(self) -> str:
        return f"<Shard {self.index} {self.keys.prefix!r}>"

    # -- parts (built on first use: Redis may not answer yet; see :mod:`.wiring`) ------

    scripts = cached_property(wiring.scripts)
    leadership = cached_property(wiring.leadership)
    reader = cached_property(wiring.reader)
    outbox = cached_property(wiring.outbox)
    seeder = cached_property(wiring.seeder)

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self) -> float:
        """Keep the seed, then dispatch what is due; the seconds until the next tick."""
        self.seeder.upkeep(self.leadership.token(), self.leadership.renew_if_due)
        return self._dispatch_due()

    def _dispatch_due(self) -> float:
        """Read due → republish pending → (plan → claim → publish + ack) per batch."""
        s = self.scheduler.safe_settings
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
            coalesce(self.scheduler.client, self.keys, self.scheduler.app, report.sent, self._claim)
        elif batch.pending and self.outbox.refusing:
            # claim nothing new while the broker refuses what is pending: after the
            # outage each entry runs once, not once per period it lasted
            return self._wait_for_broker()
        while True:
            plan = self._plan(batch)
            claimed = self._claim(plan.ops) if plan.ops else []
            signals.batch_claimed.send(
                self.scheduler, claimed=len(claimed), skipped=len(plan.skipped)
            )
            for name in plan.skipped:
                logger.info("beat: skipped a missed occurrence of %r (catch_up=skip)", name)
            if claimed and self._publish_claimed(claimed).refused:
                return self._wait_for_broker()
            if batch.size < s.batch_size or not plan.ops:
                break
            self._keep_leading()
            batch = self._read_due()
        waits = [float(self.scheduler.max_interval), self.leadership.renew_in()]
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
        s = self.scheduler.safe_settings
        plan = plan_batch(
            batch.entries,
            now=batch.now,
            fence=self.leadership.fence(),
            disabled_recheck_seconds=self.scheduler.max_interval,
            catch_up=s.catch_up,
            catch_up_grace_seconds=s.catch_up_grace_seconds,
            id_prefix=self.keys.task_key(""),
        )
        plan.ops.extend(batch.ops)
        for key, problem in plan.parked:
            self.reader.report(key, problem)
        return plan

    def _claim(self, ops: Sequence[ClaimOp]) -> list[Occurrence]:
        self.leadership.renew_if_due()  # re-verifies the lease after a pause, before claiming
        try:
            settled = settle_claim(ops, self.scripts.claim(self.leadership.token(), ops))
        except FencedOut:
            self.leadership.lease.drop()
            raise
        for key in settled.gone:
            self.seeder.reseed_needed = True
            logger.warning(
                "beat: entry %r had a schedule slot but no hash; dropped the slot",
                self.keys.name_of(key),
            )
        return settled.claimed

    def _publish_claimed(self, claimed: Sequence[Occurrence]) -> SendReport:
        """Publish claimed occurrences chunk by chunk, renewing between chunks."""
        return self.outbox.publish(
            claimed,
            fence=self.leadership.fence(),
            token=self.leadership.token(),
            keep_leading=self._keep_leading,
        )

    def _keep_leading(self) -> None:
        """Between batches and publish chunks: stop if closed, renew this shard's lease,
        and keep the replica's other leases and heartbeat while this shard takes long."""
        self.scheduler._exit_if_closed()
        self.leadership.renew_if_due()
        self.scheduler.balancer.keep_others(self)

    # -- leadership events ------------------------------------------------------------

    def on_elected(self) -> None:
        self.reader.forget_reported()
        self.reseed("acquired the lease")
        self.outbox.retry_now()

    def reseed(self, reason: str) -> None:
        """Reconcile statics and the loader now (fenced), then mark the shard seeded."""
        self.seeder.seed(self.leadership.token(), self.leadership.renew_if_due, reason)
