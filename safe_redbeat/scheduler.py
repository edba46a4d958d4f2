"""SafeRedBeatScheduler: RedBeat with a fenced lease, claimed dispatch and no crash on loss."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from celery.beat import Scheduler
from celery.schedules import crontab
from celery.utils.log import get_logger
from redbeat.schedulers import RedBeatScheduler
from redis.exceptions import RedisError

from .backoff import Backoff
from .config import Settings
from .connection import sanitize_url, scheduler_client
from .dispatch import (
    CLAIMED,
    GONE,
    ClaimOp,
    Occurrence,
    claim_arguments,
    plan_batch,
)
from .entries import StoredEntry, decode_entry
from .errors import FencedOut, InvalidEntry, LeaseLost
from .heartbeat import Heartbeat, write_heartbeat
from .keys import Keys
from .lease import Holder, Lease
from .loader import LoaderError, call_loader, parse_specs, resolve
from .publisher import Publisher
from .reconcile import Reconciler, ReconcileResult
from .scripts import Scripts
from .specs import EntrySpec

__all__ = ["SafeRedBeatScheduler"]

logger = get_logger("safe_redbeat")


#: Errors that mean "Redis is not answering"; never allowed to escape ``tick()``.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


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
        self._pending_dirty = False
        self._pending_retry_at = 0.0
        self._pending_failures = 0
        self._bad_entries: dict[str, str] = {}
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
        # RedBeat's beat_init handler blocks until it takes the lock; it skips a
        # scheduler without a lock_key. The lease below replaces it.
        self.lock_key = None
        self.lock_timeout = self.safe_settings.lease_seconds

    # -- wiring ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = scheduler_client(self.app, self.safe_settings.socket_timeout)
        return self._client

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(self.client)
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
        try:
            delay = self._tick()
        except LeaseLost as exc:
            self._demote(exc.reason)
            delay = self._poll_delay()
        except REDIS_ERRORS as exc:
            return self._on_redis_error(exc)
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
        elif self._monotonic() >= lease.renew_at():
            self._renew()
        if self._pending_dirty and self._monotonic() >= self._pending_retry_at:
            self._republish_pending()
        if self._reseed_needed:
            self._reseed("entries vanished from Redis (evicted or deleted)")
        elif self._monotonic() >= self._next_reconcile:
            self._reconcile(loader=True)
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
            self._pending_dirty = True
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
        self._last_holder = None
        self._next_heartbeat = 0.0
        self._bad_entries.clear()
        self._reseed("acquired the lease")
        self._pending_dirty = True
        self._pending_retry_at = 0.0
        self._pending_failures = 0

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

    def _redis_now(self) -> datetime:
        seconds, micros = self.client.time()
        return self._as_app_time(seconds + micros / 1e6)

    def _as_app_time(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone(self.app.timezone)

    def _read_due(self) -> DueBatch:
        """Read one batch of due entries: three round trips whatever the batch size."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.exists(self.keys.seeded)
            (seconds, micros), seeded = pipe.execute()
        batch = DueBatch(now=self._as_app_time(seconds + micros / 1e6), seeded=bool(seeded))
        now_ts = int(seconds)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(
                self.keys.schedule,
                0,
                now_ts,
                start=0,
                num=self.safe_settings.batch_size,
                withscores=True,
            )
            pipe.zrangebyscore(
                self.keys.schedule, f"({now_ts}", "+inf", start=0, num=1, withscores=True
            )
            due, upcoming = pipe.execute()
        batch.size = len(due)
        batch.upcoming = upcoming[0][1] if upcoming else None
        if not due:
            return batch
        with self.client.pipeline(transaction=False) as pipe:
            for key, _score in due:
                pipe.hmget(key, "definition", "meta", "version", "run_now")
            rows = pipe.execute()

        def nowfun() -> datetime:
            return batch.now

        for (key, score), (definition, meta, version, run_now) in zip(due, rows, strict=True):
            if definition is None and meta is None and version is None and run_now is None:
                # a ZSET member without its hash: the claim script drops the member
                batch.ops.append(ClaimOp(key, score, "0", -1))
                continue
            try:
                batch.entries.append(
                    decode_entry(
                        key,
                        self.keys.name_of(key),
                        score,
                        definition,
                        meta,
                        version,
                        app=self.app,
                        nowfun=nowfun,
                        run_now_raw=run_now,
                    )
                )
            except InvalidEntry as exc:
                self._report_bad_entry(key, str(definition), exc)
                parked_until = now_ts + int(self.max_interval)
                batch.ops.append(ClaimOp(key, score, version or "0", parked_until))
        return batch

    def _report_bad_entry(self, key: str, raw: str, exc: InvalidEntry) -> None:
        if self._bad_entries.get(key) == raw:
            return
        self._bad_entries[key] = raw
        logger.error(
            "beat: skipping entry %r: %s. Fix or delete the hash %r; it is checked again "
            "every %ss and nothing is deleted.",
            self.keys.name_of(key),
            exc,
            key,
            self.max_interval,
        )

    # -- dispatching --------------------------------------------------------------------

    def _dispatch_due(self) -> float:
        """Claim and publish everything due, batch by batch; return the sleep time."""
        settings = self.safe_settings
        reseeded = False
        while True:
            batch = self._read_due()
            if not batch.seeded and not reseeded:
                self._reseed("the seed marker is gone: Redis lost data or keys were deleted")
                reseeded = True
                continue
            plan = plan_batch(
                batch.entries,
                now=batch.now,
                fence=self._fence(),
                disabled_recheck_seconds=self.max_interval,
                catch_up=settings.catch_up,
                catch_up_grace_seconds=settings.catch_up_grace_seconds,
            )
            plan.ops.extend(batch.ops)
            claimed = self._claim(plan.ops) if plan.ops else []
            for name in plan.skipped:
                logger.info("beat: skipped a missed occurrence of %r (catch_up=skip)", name)
            if claimed:
                self._publish_claimed(claimed)
            if batch.size < settings.batch_size or not plan.ops:
                break
            if self._monotonic() >= self.lease.renew_at():
                self._renew()
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
        token = self.lease.token
        if token is None:
            raise LeaseLost("not holding the lease")
        if self._monotonic() >= self.lease.deadline():
            self._renew()
        entry_keys, argv = claim_arguments(token, ops)
        result = self.scripts.claim(
            keys=[self.keys.lease, self.keys.schedule, self.keys.pending, *entry_keys],
            args=argv,
        )
        if int(result[0]) != 1:
            self.lease.drop()
            raise FencedOut("Redis rejected a claim: the lease key no longer holds our token")
        claimed = []
        for op, code in zip(ops, result[1:], strict=True):
            code = int(code)
            if code == CLAIMED and op.occurrence is not None:
                claimed.append(op.occurrence)
            elif code == GONE:
                self._reseed_needed = True
                logger.warning(
                    "beat: entry %r had a schedule slot but no hash; dropped the slot",
                    self.keys.name_of(op.key),
                )
        return claimed

    def _publish_claimed(self, claimed: Sequence[Occurrence]) -> None:
        """Publish claimed occurrences chunk by chunk, renewing between chunks."""
        report = self.publisher.send(
            claimed, fence=self._fence(), ack=self._ack, keep_leading=self._keep_leading
        )
        if report.kept:
            self._pending_dirty = True

    def _keep_leading(self) -> None:
        self._exit_if_closed()
        if self._monotonic() >= self.lease.renew_at():
            self._renew()

    def _ack(self, task_ids: Sequence[str]) -> None:
        # Not fenced on purpose: an ack records a publish that happened. Refusing it
        # would only make the next leader send the same task id again.
        if task_ids:
            self.client.hdel(self.keys.pending, *task_ids)

    def _republish_pending(self) -> None:
        """Publish pending records (ours or a dead leader's) with their own task ids."""
        occurrences = []
        for task_id, raw in self.client.hscan_iter(self.keys.pending, count=1000):
            try:
                occurrences.append(Occurrence.from_json(task_id, raw))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error(
                    "beat: pending record %r in %r is malformed (%s); left in place",
                    task_id,
                    self.keys.pending,
                    exc,
                )
        report = self.publisher.send(
            occurrences, fence=self._fence(), ack=self._ack, keep_leading=self._keep_leading
        )
        if report.sent:
            logger.info("beat: republished %d pending occurrences", len(report.sent))
        if report.kept:
            self._pending_failures += 1
            self._pending_retry_at = self._monotonic() + self._backoff(self._pending_failures)
        else:
            self._pending_dirty = False
            self._pending_failures = 0

    # -- static entries -----------------------------------------------------------------

    def _reseed(self, reason: str) -> None:
        """Reconcile static entries and the loader's now (fenced), then mark as seeded."""
        logger.info("beat: reconciling the schedule: %s", reason)
        self._reconcile(loader=True)
        self.client.set(self.keys.seeded, "1")
        self._reseed_needed = False

    def _reconcile(self, *, loader: bool) -> None:
        """Static ``beat_schedule`` entries, then (if configured) the user's loader."""
        token = self.lease.token
        if token is None:
            raise LeaseLost("not holding the lease")
        static_specs, static_errors = self._static_specs()
        statics = Reconciler(
            self.client,
            self.keys,
            self.scripts,
            self.app,
            source="beat_schedule",
            owned_key=self.keys.statics,
        ).run(static_specs, token=token, errors=static_errors, renew=self._renew_if_due)
        self._log_reconcile(statics)
        if loader and self.safe_settings.loader:
            result = self._reconcile_loader(token, reserved={s.name for s in static_specs})
            self._log_reconcile(result)
            self.client.set(self.keys.reconcile, result.to_json())
        self._next_reconcile = self._monotonic() + self.safe_settings.reconcile_seconds

    def _reconcile_loader(self, token: str, reserved: set[str]) -> ReconcileResult:
        settings = self.safe_settings
        reconciler = Reconciler(
            self.client,
            self.keys,
            self.scripts,
            self.app,
            source="loader",
            owned_key=self.keys.loaded,
        )
        versions = reconciler.snapshot()  # before the loader reads the database
        try:
            items = call_loader(
                resolve(settings.loader),
                self.app,
                timeout=settings.loader_timeout_seconds,
                wait_step=settings.retry_seconds,
                on_wait=self._renew_if_due,
                monotonic=self._monotonic,
            )
        except LoaderError as exc:
            logger.error(
                "beat: loader %r failed: %s; the current schedule is kept, nothing removed",
                settings.loader,
                exc,
            )
            return ReconcileResult("loader", errors=[str(exc)], complete=False)
        load = parse_specs(items, reserved=reserved)
        return reconciler.run(
            load.specs,
            versions=versions,
            token=token,
            errors=load.errors,
            renew=self._renew_if_due,
        )

    def _log_reconcile(self, result: ReconcileResult) -> None:
        for error in result.errors:
            logger.error("beat: %s: %s", result.source, error)
        changed = result.created or result.updated or result.removed or result.conflicts
        (logger.info if changed or result.errors else logger.debug)("beat: %s", result.summary())

    def _renew_if_due(self) -> None:
        if self._monotonic() >= self.lease.renew_at():
            self._renew()

    def _static_specs(self) -> tuple[list[EntrySpec], list[str]]:
        """``beat_schedule`` (and Celery's default entries) as EntrySpecs."""
        desired: dict[str, Any] = dict(self.app.redbeat_conf.schedule or {})
        desired.update(self._default_entries(desired))
        specs: list[EntrySpec] = []
        errors: list[str] = []
        for name, spec in desired.items():
            try:
                entry = self._maybe_entry(name, spec)
                specs.append(
                    EntrySpec.build(
                        name,
                        entry.task,
                        entry.schedule,
                        entry.args or (),
                        entry.kwargs or {},
                        entry.options or {},
                        getattr(entry, "enabled", True),
                    )
                )
            except Exception as exc:
                errors.append(f"static entry {name!r} in beat_schedule is invalid: {exc}")
        return specs, errors

    def _default_entries(self, desired: dict[str, Any]) -> dict[str, Any]:
        """Celery's own entries (``celery.backend_cleanup``) unless the user defined them."""
        if (
            self.app.conf.result_expires
            and not self.app.backend.supports_autoexpire
            and "celery.backend_cleanup" not in desired
        ):
            return {
                "celery.backend_cleanup": {
                    "task": "celery.backend_cleanup",
                    "schedule": crontab("0", "4", "*"),
                    "options": {"expires": 12 * 3600},
                }
            }
        return {}


@dataclass
class DueBatch:
    """One batch read from Redis: decodable entries, and slots the claim script fixes."""

    now: datetime
    #: False when the marker written after seeding is gone: Redis lost data
    seeded: bool = True
    size: int = 0
    #: score of the first entry due after ``now``, if any
    upcoming: float | None = None
    entries: list[StoredEntry] = field(default_factory=list)
    #: orphaned ZSET members (dropped) and malformed entries (parked, never deleted)
    ops: list[ClaimOp] = field(default_factory=list)
