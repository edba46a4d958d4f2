"""SafeRedBeatScheduler: RedBeat with a fenced lease, claimed dispatch and no crash on loss.

The Celery adapter: it wires the parts together and runs one tick. What a tick does, in
order: keep leadership (:mod:`.leadership`), read what is due (:mod:`.reader`), republish
what is pending (:mod:`.outbox`), plan (:mod:`.dispatch`), claim (``claim.lua``), publish
and acknowledge (:mod:`.outbox`, :mod:`.publisher`). See ``docs/architecture.md``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from celery.beat import Scheduler
from celery.utils.log import get_logger
from redbeat.schedulers import RedBeatScheduler

from . import signals, wiring
from .catchup import coalesce
from .config import Settings
from .connection import CLIENT_ERRORS
from .dispatch import ClaimOp, Occurrence, Plan, plan_batch, settle_claim
from .errors import FencedOut, LeaseLost
from .lease import Lease
from .publisher import SendReport
from .reader import DueBatch

__all__ = ["SafeRedBeatScheduler"]

logger = get_logger("safe_redbeat")

#: Errors that mean "Redis is not answering"; never allowed to escape ``tick()``.
REDIS_ERRORS: tuple[type[BaseException], ...] = CLIENT_ERRORS


class SafeRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """A RedBeat scheduler that is safe to run as several replicas.

    * The lease (RedBeat's lock key) is taken without blocking inside :meth:`tick`; a
      standby's tick returns after ``safe_redbeat_retry_seconds``.
    * Losing the lease never raises: the replica stops dispatching, logs one WARNING and
      tries again with exponential backoff while Redis fails.
    * Every write to the schedule is fenced inside Redis by the lease token, and each
      due occurrence is claimed (and recorded as pending) before it is published with a
      deterministic task id.
    * Nothing is written before this replica holds the lease; static ``beat_schedule``
      entries are installed right after each acquisition.
    """

    def __init__(
        self,
        app: Any,
        lock_key: str | None = None,
        lock_timeout: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        self.safe_settings = s = Settings.from_app(app)
        self._monotonic = monotonic
        self._client: Any = None
        self._closed = False
        super().__init__(app, lock_key=lock_key, lock_timeout=lock_timeout, **kwargs)
        self.keys = wiring.keys(app, lock_key)
        # RedBeat's beat_init handler blocks until it takes the lock; it skips a
        # scheduler without a lock_key. The lease below replaces it.
        self.lock_key = None
        self.lock_timeout = s.lease_seconds
        self.leadership = wiring.leadership(self, rng)

    # -- one tick -----------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: leadership upkeep, then dispatch of what is due. Never raises on Redis."""
        self._exit_if_closed()
        started = time.perf_counter()
        try:
            delay = self._tick()
        except LeaseLost as exc:
            self.leadership.demote(exc.reason)
            delay = self.leadership.poll_delay()
        except REDIS_ERRORS as exc:
            if self.leadership.held:
                # A claim whose reply was lost, or a failed ack, leaves pending records
                # no new leader republishes while we keep the lease: republish them.
                self.outbox.retry_now()
            return self.leadership.on_redis_error(exc, self._redis_url)
        finally:
            duration = time.perf_counter() - started
            signals.tick_finished.send(self, duration=duration, leader=self.is_leader)
        self.leadership.on_redis_answer()
        self.leadership.heartbeat()
        return delay

    def _tick(self) -> float:
        if not self.leadership.lead():  # standby: another replica leads
            return self.leadership.poll_delay()
        self.seeder.upkeep(self.leadership.token(), self.leadership.renew_if_due)
        return self._dispatch_due()

    def _dispatch_due(self) -> float:
        """Read due → republish pending → (plan → claim → publish + ack) per batch."""
        batch = self._read_due()
        if not batch.seeded:
            self._reseed("the seed marker is gone: Redis lost data or keys were deleted")
            batch = self._read_due()
        if self.outbox.should_republish(batch.pending):
            report = self.outbox.republish(
                fence=self.leadership.fence(),
                token=self.leadership.token(),
                keep_leading=self._keep_leading,
            )
            if report.refused:  # claim nothing new while the broker refuses messages
                return self.leadership.backoff()
            coalesce(self.client, self.keys, self.app, report.sent, self._claim)
        while True:
            plan = self._plan(batch)
            claimed = self._claim(plan.ops) if plan.ops else []
            signals.batch_claimed.send(self, claimed=len(claimed), skipped=len(plan.skipped))
            for name in plan.skipped:
                logger.info("beat: skipped a missed occurrence of %r (catch_up=skip)", name)
            refused = bool(claimed) and bool(self._publish_claimed(claimed).refused)
            if refused or batch.size < self.safe_settings.batch_size or not plan.ops:
                break
            self.leadership.renew_if_due()
            batch = self._read_due()
        waits = [float(self.max_interval), self.leadership.renew_in()]
        if batch.upcoming is not None:
            waits.append(max(float(batch.upcoming) - batch.now.timestamp(), 0.0))
        if plan.next_due_in is not None:
            waits.append(max(plan.next_due_in, 0.0))
        return min(waits)

    def _read_due(self) -> DueBatch:
        return self.reader.read()

    def _plan(self, batch: DueBatch) -> Plan:
        s = self.safe_settings
        plan = plan_batch(
            batch.entries,
            now=batch.now,
            fence=self.leadership.fence(),
            disabled_recheck_seconds=self.max_interval,
            catch_up=s.catch_up,
            catch_up_grace_seconds=s.catch_up_grace_seconds,
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
            self.lease.drop()
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
        self._exit_if_closed()
        self.leadership.renew_if_due()

    # -- leadership events ------------------------------------------------------------

    def _on_elected(self) -> None:
        self.reader.forget_reported()
        self._reseed("acquired the lease")
        self.outbox.retry_now()

    def _reseed(self, reason: str) -> None:
        """Reconcile statics and the loader now (fenced), then mark the schedule seeded."""
        self.seeder.seed(self.leadership.token(), self.leadership.renew_if_due, reason)

    def _exit_if_closed(self) -> None:
        # Celery's SIGTERM handler calls close() and then raises SystemExit in whatever
        # frame runs; a publish it interrupts fails on the connection close() released,
        # and that error can replace the SystemExit. Never go on leading after close().
        if self._closed:
            raise SystemExit(0)

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            try:
                self._client.delete(self.keys.replica(self.safe_settings.instance_name))
            except REDIS_ERRORS as exc:
                logger.debug("beat: heartbeat not removed: %s", exc)
        self.leadership.release()
        Scheduler.close(self)

    # -- Celery hooks ---------------------------------------------------------------------

    def setup_schedule(self) -> None:
        # Celery calls this from __init__ on every starting replica. Writing here would
        # rewrite the live schedule before holding the lease (RedBeat #198); statics are
        # installed by _on_elected instead.
        logger.debug("beat: static entries are installed once this replica leads")

    @property
    def schedule(self) -> dict[str, Any]:
        """Entries due now, read-only (RedBeat's version deletes while reading)."""
        return {entry.name: entry for entry in self._read_due().entries}

    info = property(wiring.info)

    # -- wiring (built on first use: Redis may not answer yet; see :mod:`.wiring`) ------

    client = property(wiring.client)
    _redis_url = property(wiring.redis_url)
    scripts = cached_property(wiring.scripts)
    publisher = cached_property(wiring.publisher)
    reader = cached_property(wiring.reader)
    outbox = cached_property(wiring.outbox)
    seeder = cached_property(wiring.seeder)

    @property
    def lease(self) -> Lease:
        return self.leadership.lease

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lease and is inside its renew deadline."""
        return self.leadership.elected
