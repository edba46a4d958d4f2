"""SafeRedBeatScheduler: RedBeat with a fenced lease, claimed dispatch and no crash on loss."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from celery.beat import Scheduler
from celery.utils.log import get_logger
from redbeat.schedulers import RedBeatScheduler

from . import signals
from .backoff import Backoff
from .catchup import coalesce_ops, read_entries, regular_keys
from .config import Settings
from .connection import CLIENT_ERRORS, check_cluster_keys, sanitize_url, scheduler_client
from .dispatch import ClaimOp, Occurrence, plan_batch
from .errors import FencedOut, LeaseLost
from .heartbeat import Heartbeat, write_heartbeat
from .keys import Keys
from .lease import Holder, Lease
from .outbox import Outbox
from .publisher import Publisher, SendReport
from .reader import DueBatch, DueReader
from .scripts import ClaimCode, Scripts
from .seeding import Seeder

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
        self.safe_settings = Settings.from_app(app)
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._backoff_strategy = Backoff(
            self.safe_settings.retry_seconds, self.safe_settings.backoff_max_seconds
        )
        self._client: Any = None
        self._lease_obj: Lease | None = None
        self._scripts: Scripts | None = None
        self._publisher: Publisher | None = None
        self._failures = 0
        self._last_holder: str | None = None
        self._outbox: Outbox | None = None
        self._reader: DueReader | None = None
        self._seeder: Seeder | None = None
        self._closed = False
        self._next_heartbeat = 0.0
        self._next_reconcile = 0.0
        self._reseed_needed = False
        super().__init__(app, lock_key=lock_key, lock_timeout=lock_timeout, **kwargs)
        self.keys = Keys.from_app(app)
        if lock_key:
            self.keys = replace(self.keys, lease=lock_key)
        elif not app.redbeat_conf.lock_key:
            logger.warning(
                "beat: redbeat_lock_key is unset; RedBeat would run unlocked, "
                "safe_redbeat always leases %r",
                self.keys.lease,
            )
        check_cluster_keys(app, self.keys)
        # RedBeat's beat_init handler blocks until it takes the lock; it skips a
        # scheduler without a lock_key. The lease below replaces it.
        self.lock_key = None
        self.lock_timeout = self.safe_settings.lease_seconds

    # -- wiring ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = scheduler_client(self.app, self.safe_settings.socket_timeout_seconds)
        return self._client

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(self.client, self.keys)
        return self._scripts

    @property
    def lease(self) -> Lease:
        if self._lease_obj is None:
            self._lease_obj = Lease(
                self.client,
                self.keys,
                self.safe_settings,
                scripts=self.scripts,
                monotonic=self._monotonic,
            )
        return self._lease_obj

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.app, lambda: self.producer)
        return self._publisher

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lease and is inside its renew deadline."""
        return self._lease_obj is not None and self._lease_obj.valid()

    def setup_schedule(self) -> None:
        # Celery calls this from __init__ on every starting replica. Writing here would
        # rewrite the live schedule before holding the lease (RedBeat #198); statics are
        # installed by _on_elected instead.
        logger.debug("beat: static entries are installed once this replica leads")

    @property
    def schedule(self) -> dict[str, Any]:
        """Entries due now, read-only (RedBeat's version deletes while reading)."""
        return {entry.name: entry for entry in self._read_due().entries}

    # -- the loop ---------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: lease upkeep, then dispatch of what is due. Never raises on Redis."""
        self._exit_if_closed()
        started = time.perf_counter()
        try:
            delay = self._tick()
        except LeaseLost as exc:
            self._demote(exc.reason)
            delay = self._poll_delay()
        except REDIS_ERRORS as exc:
            return self._on_redis_error(exc)
        finally:
            signals.tick_finished.send(
                self, duration=time.perf_counter() - started, leader=self.is_leader
            )
        if self._failures:
            logger.info("beat: Redis answers again after %d failed attempts", self._failures)
            self._failures = 0
        try:
            self._maybe_heartbeat()
        except REDIS_ERRORS as exc:  # the next tick finds out and backs off
            logger.debug("beat: heartbeat not written: %s", exc)
        return delay

    def _maybe_heartbeat(self) -> None:
        now = self._monotonic()
        if now < self._next_heartbeat:
            return
        s = self.safe_settings
        lease = self.lease
        leading = lease.valid()
        write_heartbeat(
            self.client,
            self.keys,
            Heartbeat(
                instance=s.instance_name,
                role="leader" if leading else "standby",
                fence=lease.fence if leading else None,
                leading_for=round(now - lease.acquired_at, 3) if leading else 0.0,
                ttl=max(s.lease_seconds, 3 * s.retry_seconds),
            ),
        )
        self._next_heartbeat = now + s.retry_seconds

    def _tick(self) -> float:
        lease = self.lease
        if not lease.held:
            holder = lease.try_acquire()
            if holder is not None:
                self._note_standby(holder)
                return self._poll_delay()
            self._on_elected()
        else:
            self._renew_if_due()
        if self._reseed_needed:
            self._reseed("entries vanished from Redis (evicted or deleted)")
        elif self._monotonic() >= self._next_reconcile:
            self._reconcile()
        return self._dispatch_due()

    def _renew(self) -> None:
        try:
            self.lease.renew()
        except REDIS_ERRORS as exc:
            if self._monotonic() >= self.lease.deadline():
                self.lease.drop()
                raise LeaseLost(
                    f"no renewal for {self.safe_settings.renew_seconds}s "
                    f"(renew deadline passed): {exc}"
                ) from exc
            raise

    def _poll_delay(self) -> float:
        retry = self.safe_settings.retry_seconds
        return retry * (0.8 + 0.2 * self._rng.random())

    def _backoff(self, attempt: int) -> float:
        return self._backoff_strategy.delay(attempt)

    def _on_redis_error(self, exc: BaseException) -> float:
        self._failures += 1
        signals.redis_error.send(self, error=exc)
        log = logger.warning if self._failures == 1 else logger.debug
        log(
            "beat: Redis error (%s: %s) talking to %s; retrying with backoff",
            type(exc).__name__,
            exc,
            sanitize_url(self.app.redbeat_conf.redis_url),
        )
        delay = self._backoff(self._failures)
        lease = self._lease_obj
        if lease is not None and lease.held:
            # A claim whose reply was lost, or a failed ack, leaves pending records that
            # no new leader will republish while we keep the lease: republish them.
            self.outbox.retry_now()
            now = self._monotonic()
            if now >= lease.deadline():
                self._demote(f"Redis unreachable past the renew deadline ({exc})")
            else:
                delay = min(delay, max(lease.deadline() - now, 0.05))
        return delay

    def _note_standby(self, holder: Holder) -> None:
        described = holder.describe()
        if described != self._last_holder:
            logger.info("beat: standby; the lease is held by %s", described)
            self._last_holder = described

    def _demote(self, reason: str) -> None:
        lease = self._lease_obj
        if lease is not None:
            fence = lease.fence
            lease.drop()
        else:
            fence = None
        logger.warning("beat: lost the lease (fence %s): %s; now a standby", fence, reason)
        signals.leadership(self, signals.LOST, fence, reason)
        self._last_holder = None
        self._next_heartbeat = 0.0

    def _on_elected(self) -> None:
        lease = self.lease
        logger.info(
            "beat: acquired the lease %r as %s (fence %s)",
            self.keys.lease,
            self.safe_settings.instance_name,
            lease.fence,
        )
        signals.leadership(self, signals.ACQUIRED, lease.fence)
        self._last_holder = None
        self._next_heartbeat = 0.0
        self.reader.forget_reported()
        self._reseed("acquired the lease")
        self.outbox.retry_now()

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
        lease = self._lease_obj
        if lease is not None and lease.held:
            fence = lease.fence
            try:
                released = lease.release()
            except REDIS_ERRORS as exc:
                logger.warning("beat: could not release the lease: %s", exc)
            else:
                if released:
                    logger.info("beat: released the lease (fence %s)", fence)
                    signals.leadership(self, signals.RELEASED, fence)
        Scheduler.close(self)

    @property
    def info(self) -> str:
        s = self.safe_settings
        return "\n".join(
            [
                f"       . redis -> {sanitize_url(self.app.redbeat_conf.redis_url)}",
                f"       . lease -> `{self.keys.lease}` lease {s.lease_seconds}s, "
                f"renew deadline {s.renew_seconds}s, retry {s.retry_seconds}s",
                f"       . instance -> {s.instance_name}",
            ]
        )

    # -- reading ----------------------------------------------------------------------

    @property
    def reader(self) -> DueReader:
        if self._reader is None:
            self._reader = DueReader(
                self.client,
                self.keys,
                self.scripts,
                self.app,
                batch_size=self.safe_settings.batch_size,
                park_seconds=self.max_interval,
            )
        return self._reader

    def _read_due(self) -> DueBatch:
        return self.reader.read()

    # -- dispatching --------------------------------------------------------------------

    def _dispatch_due(self) -> float:
        """Claim and publish everything due, batch by batch; return the sleep time."""
        settings = self.safe_settings
        batch = self._read_due()
        if not batch.seeded:
            self._reseed("the seed marker is gone: Redis lost data or keys were deleted")
            batch = self._read_due()
        if self.outbox.should_republish(batch.pending):
            report = self.outbox.republish(
                fence=self._fence(), token=self._token(), keep_leading=self._keep_leading
            )
            if report.refused:  # claim nothing new while the broker refuses messages
                return self._backoff(max(self._failures, 1))
            if report.sent:
                self._coalesce(report.sent)
        while True:
            plan = plan_batch(
                batch.entries,
                now=batch.now,
                fence=self._fence(),
                disabled_recheck_seconds=self.max_interval,
                catch_up=settings.catch_up,
                catch_up_grace_seconds=settings.catch_up_grace_seconds,
            )
            plan.ops.extend(batch.ops)
            for key, problem in plan.parked:
                self.reader.report(key, problem)
            claimed = self._claim(plan.ops) if plan.ops else []
            signals.batch_claimed.send(self, claimed=len(claimed), skipped=len(plan.skipped))
            for name in plan.skipped:
                logger.info("beat: skipped a missed occurrence of %r (catch_up=skip)", name)
            refused = False
            if claimed:
                refused = bool(self._publish_claimed(claimed).refused)
            if refused or batch.size < settings.batch_size or not plan.ops:
                break
            self._renew_if_due()
            batch = self._read_due()
        waits = [float(self.max_interval), max(self.lease.renew_at() - self._monotonic(), 0.0)]
        if batch.upcoming is not None:
            waits.append(max(float(batch.upcoming) - batch.now.timestamp(), 0.0))
        if plan.next_due_in is not None:
            waits.append(max(plan.next_due_in, 0.0))
        return min(waits)

    def _fence(self) -> int:
        fence = self.lease.fence
        if fence is None:
            raise LeaseLost("not holding the lease")
        return fence

    def _claim(self, ops: Sequence[ClaimOp]) -> list[Occurrence]:
        self._renew_if_due()  # re-verifies the lease after a pause, before claiming
        result = self.scripts.claim(self._token(), ops)
        if result.fenced_out:
            self.lease.drop()
            raise FencedOut("Redis rejected a claim: the lease key no longer holds our token")
        claimed = []
        for op, code in zip(ops, result.codes, strict=True):
            if code is ClaimCode.CLAIMED and op.occurrence is not None:
                claimed.append(op.occurrence)
            elif code is ClaimCode.GONE:
                self._reseed_needed = True
                logger.warning(
                    "beat: entry %r had a schedule slot but no hash; dropped the slot",
                    self.keys.name_of(op.key),
                )
        return claimed

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(
                self.client,
                self.keys,
                self.scripts,
                self.publisher,
                self.safe_settings,
                monotonic=self._monotonic,
            )
        return self._outbox

    def _publish_claimed(self, claimed: Sequence[Occurrence]) -> SendReport:
        """Publish claimed occurrences chunk by chunk, renewing between chunks."""
        return self.outbox.publish(
            claimed, fence=self._fence(), token=self._token(), keep_leading=self._keep_leading
        )

    def _keep_leading(self) -> None:
        self._exit_if_closed()
        self._renew_if_due()

    def _coalesce(self, republished: Sequence[Occurrence]) -> None:
        """A late republish is the catch-up run: skip each entry's slot that passed too."""
        entry_keys = regular_keys(self.keys, republished)
        if not entry_keys:
            return
        now, entries = read_entries(self.client, self.keys, self.app, entry_keys)
        ops = coalesce_ops(entries, now)
        if ops:
            self._claim(ops)
            logger.info(
                "beat: %d overdue occurrences skipped: the republished ones are their catch-up",
                len(ops),
            )

    # -- seeding ------------------------------------------------------------------------

    @property
    def seeder(self) -> Seeder:
        if self._seeder is None:
            self._seeder = Seeder(
                self.app,
                self.client,
                self.keys,
                self.scripts,
                self.safe_settings,
                build_entry=self._maybe_entry,
                monotonic=self._monotonic,
            )
        return self._seeder

    def _reseed(self, reason: str) -> None:
        """Reconcile statics and the loader now (fenced), then mark the schedule seeded."""
        logger.info("beat: reconciling the schedule: %s", reason)
        self.seeder.seed(self._token(), self._renew_if_due)
        self._reseed_needed = False
        self._next_reconcile = self._monotonic() + self.safe_settings.reconcile_seconds

    def _reconcile(self) -> None:
        self.seeder.reconcile(self._token(), self._renew_if_due)
        self._next_reconcile = self._monotonic() + self.safe_settings.reconcile_seconds

    def _token(self) -> str:
        token = self.lease.token
        if token is None:
            raise LeaseLost("not holding the lease")
        return token

    def _renew_if_due(self) -> None:
        if self._monotonic() >= self.lease.renew_at():
            self._renew()
