"""SafeRedBeatScheduler: RedBeat with a fenced lease, claimed dispatch and no crash on loss.

The Celery adapter. It binds the app once (:mod:`.store.binding`: settings, keys, the
Redis client), gives each shard what it needs (:class:`~.dispatch.shard.ShardContext`),
and runs one tick: decide which shards this replica leads (:mod:`.leader.balance`), then
for each of them keep its lease and dispatch what is due (:mod:`.dispatch.shard`: read,
republish pending, plan, claim, publish and acknowledge). With one shard, the default,
that is one lease over the whole schedule. See ``docs/architecture.md``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from celery.beat import Scheduler
from celery.utils.log import get_logger
from redbeat.schedulers import RedBeatScheduler

from . import signals
from .dispatch.enqueue import Enqueuer
from .dispatch.overlap import Revoker
from .dispatch.publisher import Publisher
from .dispatch.shard import Shard, ShardContext
from .errors import LeaseLost
from .leader.balance import Balancer
from .leader.heartbeat import remove_heartbeat
from .observe import monitoring  # noqa: F401  (starts metrics and JSON logs on beat_init)
from .observe.health import LoopWatch
from .store.binding import Binding
from .store.connection import CLIENT_ERRORS
from .store.keys import isolates
from .store.layout import Layout
from .store.persistence import count_redis_only, read_persistence

__all__ = ["SafeRedBeatScheduler"]

logger = get_logger("safe_redbeat")

#: seconds after a replica first leads before it looks at Redis' persistence (the check
#: counts the entries only Redis holds: a scan of the schedule, kept off the first ticks)
PERSISTENCE_CHECK_AFTER = 5.0


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
    * With ``safe_redbeat_shards`` above 1 each shard has its own lease and the replicas
      share them out, so they dispatch side by side.
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
        self.binding = binding = Binding.of(app, lock_key=lock_key)
        self.safe_settings = s = binding.settings
        self._monotonic = monotonic
        self._closed = False
        #: when the loop ticked and planned to tick again (read by ``/healthz``)
        self.loop = LoopWatch(monotonic)
        #: Redis' persistence was looked at once this replica led (see _check_persistence)
        self._persistence_checked = False
        #: when the check is due: a few seconds after this replica first led, so that its
        #: count of the entries (a scan of the schedule) never delays the first dispatch
        self._persistence_due: float | None = None
        super().__init__(app, lock_key=lock_key, lock_timeout=lock_timeout, **kwargs)
        self.keys = binding.keys
        self._check_keys(app)
        # RedBeat's beat_init handler blocks until it takes the lock; it skips a
        # scheduler without a lock_key. The lease below replaces it.
        self.lock_key = None
        self.lock_timeout = s.lease_seconds
        context = ShardContext(
            app=app,
            settings=s,
            client=binding.client,
            publisher=lambda: self.publisher,
            enqueuer=lambda: self.enqueuer,
            build_entry=self._maybe_entry,
            keep_alive=self._keep_alive,
            signal_sender=self,
            revoke=lambda task_ids: self.revoker.revoke(task_ids),
            recheck_seconds=float(self.max_interval),
            monotonic=monotonic,
        )
        self.balancer = Balancer(
            self,
            s,
            self.keys,
            client=binding.client,
            make_shard=lambda index, layout: Shard(context, index, layout),
            app=app,
            where=binding.url,
            monotonic=monotonic,
            rng=rng,
            enqueue_mode=self._enqueue_mode,
        )

    def _check_keys(self, app: Any) -> None:
        """Say at start-up what the keys' names risk (nothing is written here)."""
        keys = self.keys
        if not isolates(keys.prefix):
            logger.warning(
                "beat: redbeat_key_prefix %r does not end with ':' or holds '::': another app "
                "on this Redis could share its keys; use a prefix like 'app:' "
                "(docs/storage-format.md)",
                keys.prefix,
            )
        if not app.redbeat_conf.lock_key:
            logger.warning(
                "beat: redbeat_lock_key is unset; RedBeat would run unlocked, "
                "safe_redbeat always leases %r",
                keys.lease,
            )
        self.binding.check_cluster_keys()

    # -- one tick -----------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Which shards to lead, then dispatch of what is due in each. Never raises on Redis."""
        self._exit_if_closed()
        if self.safe_settings.enqueue == "atomic" and self.enqueuer.decided is None:
            # refuse to start (ConfigurationError) before leading anything
            try:
                self.enqueuer.mode()
            except CLIENT_ERRORS as exc:
                logger.warning("beat: cannot tell yet whether atomic enqueue is possible: %s", exc)
                return self.safe_settings.retry_seconds
        started = time.perf_counter()
        try:
            delays = [self.balancer.poll_if_due()]
            delays.extend(self._work(shard) for shard in self.balancer.led())
        finally:
            duration = time.perf_counter() - started
            signals.tick_finished.send(self, duration=duration, leader=self.is_leader)
        self.balancer.heartbeat()
        if not self._persistence_checked and self.is_leader:
            now = self._monotonic()
            if self._persistence_due is None:
                self._persistence_due = now + PERSISTENCE_CHECK_AFTER
            elif now >= self._persistence_due:
                self._check_persistence()
        delay = min(delays)
        self.loop.ticked(delay)
        return delay

    def _check_persistence(self) -> None:
        """Once, :data:`PERSISTENCE_CHECK_AFTER` seconds after this replica first led: WARN
        if Redis persists nothing and
        holds entries nothing writes again after it lost its data (neither
        ``beat_schedule`` nor the loader owns them)."""
        client = self.binding.client()
        try:
            persistence = read_persistence(client)
            only = 0
            if persistence.persists is False:
                only = count_redis_only(client, self.layout.all_keys())
        except CLIENT_ERRORS as exc:
            logger.debug("beat: Redis persistence not read (tried again next tick): %s", exc)
            return
        self._persistence_checked = True
        logger.debug("beat: Redis persistence: %s", persistence.mode)
        if only:
            logger.warning(
                "beat: Redis at %s persists nothing (no AOF, no RDB save points) and holds "
                "%d %s not from beat_schedule or the loader: a restart of Redis loses them "
                "for good. Turn on persistence, or back them up with `safe-redbeat export` "
                "(README: After Redis loses its data)",
                self.binding.url,
                only,
                "entry that is" if only == 1 else "entries that are",
            )

    def _work(self, shard: Shard) -> float:
        """Keep ``shard``'s lease and dispatch what is due in it; the seconds until again."""
        leadership = shard.leadership
        wait = leadership.resume_at - self._monotonic()
        if wait > 0:  # backing off after Redis errors in this shard
            return wait
        try:
            leadership.renew_if_due()
            delay = shard.dispatch()
        except LeaseLost as exc:
            leadership.demote(exc.reason, exc.cause)
            self.balancer.poll_soon()  # the lease may be free: try again at the next tick
            return self.balancer.poll_delay()
        except CLIENT_ERRORS as exc:
            if leadership.held:
                # A claim whose reply was lost, or a failed ack, leaves pending records
                # no new leader republishes while we keep the lease: republish them.
                shard.outbox.retry_now()
            return leadership.on_redis_error(exc, self.binding.url)
        leadership.on_redis_answer()
        return delay

    def _keep_alive(self, busy: Shard) -> None:
        """While ``busy``'s dispatch takes long: stop if closed, keep the others going."""
        self._exit_if_closed()
        self.loop.progressed()
        self.balancer.keep_others(busy)

    def _exit_if_closed(self) -> None:
        # Celery's SIGTERM handler calls close() and then raises SystemExit in whatever
        # frame runs; a publish it interrupts fails on the connection close() released,
        # and that error can replace the SystemExit. Never go on leading after close().
        if self._closed:
            raise SystemExit(0)

    def close(self) -> None:
        self._closed = True
        if self.binding.has_client:
            try:
                remove_heartbeat(self.binding.client(), self.keys, self.balancer.token)
            except CLIENT_ERRORS as exc:
                logger.debug("beat: heartbeat not removed: %s", exc)
        self.balancer.release_all("closing")
        Scheduler.close(self)

    # -- Celery hooks ---------------------------------------------------------------------

    def setup_schedule(self) -> None:
        # Celery calls this from __init__ on every starting replica. Writing here would
        # rewrite the live schedule before holding the lease (RedBeat #198); statics are
        # installed once this replica leads their shard.
        logger.debug("beat: static entries are installed once this replica leads")

    @property
    def schedule(self) -> dict[str, Any]:
        """Entries due now in the shards this replica leads, read-only (RedBeat's version
        deletes while reading)."""
        return {
            entry.name: entry
            for shard in self.balancer.led()
            for entry in shard.reader.read().entries
        }

    @property
    def info(self) -> str:
        """The lines ``celery beat`` prints at start-up."""
        s = self.safe_settings
        return "\n".join(
            [
                f"       . redis -> {self.binding.url}",
                f"       . lease -> `{self.keys.lease}` lease {s.lease_seconds}s, "
                f"renew deadline {s.renew_seconds}s, retry {s.retry_seconds}s",
                f"       . shards -> {s.shards} configured (the layout stored in Redis wins)",
                f"       . instance -> {s.instance_name}",
            ]
        )

    # -- parts --------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The replica's Redis client (made on first use: Redis may not answer yet)."""
        return self.binding.client()

    @cached_property
    def publisher(self) -> Publisher:
        """One publisher, on Celery's producer, for every shard."""
        return Publisher(self.app, lambda: self.producer)

    @cached_property
    def revoker(self) -> Revoker:
        """Revokes the runs that occurrences of ``overlap="replace"`` entries replace."""
        return Revoker(self.app)

    def _enqueue_mode(self) -> str:
        decided = self.enqueuer.decided
        return "" if decided is None else decided.name

    @cached_property
    def enqueuer(self) -> Enqueuer:
        """The enqueue mode (decided once both Redis connections answer) and the
        messages it pushes, on the same producer as the publisher."""
        return Enqueuer(self.app, self.safe_settings, self.binding.client, lambda: self.producer)

    @property
    def layout(self) -> Layout:
        """The shard layout this replica works."""
        return self.balancer.layout

    @property
    def shards(self) -> list[Shard]:
        """Every shard of the layout (led by this replica or not), by index."""
        return self.balancer.shards

    @property
    def is_leader(self) -> bool:
        """True while this replica leads a shard and is inside its renew deadline."""
        return self.balancer.elected()
