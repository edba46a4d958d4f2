"""SafeRedBeatScheduler: RedBeat with a fenced lease, claimed dispatch and no crash on loss.

The Celery adapter: it wires the parts together and runs one tick. What a tick does, in
order: decide which shards this replica leads (:mod:`.balance`), then for each of them keep
its lease (:mod:`.leadership`) and dispatch what is due (:mod:`.shard`: read, republish
pending, plan, claim, publish and acknowledge). With one shard, the default, that is one
lease over the whole schedule. See ``docs/architecture.md``.
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

from . import signals, wiring
from .balance import Balancer
from .config import Settings
from .connection import CLIENT_ERRORS
from .errors import LeaseLost
from .heartbeat import remove_heartbeat
from .keys import Keys
from .layout import Layout
from .lease import Lease
from .loader import LoaderSlot
from .shard import Shard

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
        self.safe_settings = s = Settings.from_app(app)
        self._monotonic = monotonic
        self._client: Any = None
        self._closed = False
        self._loader_slot = LoaderSlot()  # one loader call in flight, whichever shard asks
        super().__init__(app, lock_key=lock_key, lock_timeout=lock_timeout, **kwargs)
        self.keys: Keys = wiring.keys(app, lock_key, s.shards)
        # RedBeat's beat_init handler blocks until it takes the lock; it skips a
        # scheduler without a lock_key. The lease below replaces it.
        self.lock_key = None
        self.lock_timeout = s.lease_seconds
        self.balancer = Balancer(
            self,
            s,
            self.keys,
            client=lambda: self.client,
            make_shard=lambda index, keys: Shard(self, index, keys),
            app=app,
            monotonic=monotonic,
            rng=rng,
        )

    # -- one tick -----------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Which shards to lead, then dispatch of what is due in each. Never raises on Redis."""
        self._exit_if_closed()
        started = time.perf_counter()
        try:
            delays = [self.balancer.upkeep()]
            delays.extend(self._work(shard) for shard in self.balancer.led())
        finally:
            duration = time.perf_counter() - started
            signals.tick_finished.send(self, duration=duration, leader=self.is_leader)
        self.balancer.heartbeat()
        return min(delays)

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
            leadership.demote(exc.reason)
            self.balancer.poll_soon()  # the lease may be free: try again at the next tick
            return self.balancer.poll_delay()
        except REDIS_ERRORS as exc:
            if leadership.held:
                # A claim whose reply was lost, or a failed ack, leaves pending records
                # no new leader republishes while we keep the lease: republish them.
                shard.outbox.retry_now()
            return leadership.on_redis_error(exc, self._redis_url)
        leadership.on_redis_answer()
        return delay

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
                remove_heartbeat(self._client, self.keys, self.balancer.token)
            except REDIS_ERRORS as exc:
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

    info = property(wiring.info)

    # -- wiring (built on first use: Redis may not answer yet; see :mod:`.wiring`) ------

    client = property(wiring.client)
    _redis_url = property(wiring.redis_url)
    publisher = cached_property(wiring.publisher)

    @property
    def layout(self) -> Layout:
        """The shard layout this replica works."""
        return self.balancer.layout

    @property
    def shards(self) -> list[Shard]:
        """Every shard of the layout (led by this replica or not), by index."""
        return self.balancer.shards

    @property
    def lease(self) -> Lease:
        """The lease of the first shard this replica leads (else of shard 0)."""
        led = self.balancer.led()
        return (led[0] if led else self.shards[0]).leadership.lease

    @property
    def is_leader(self) -> bool:
        """True while this replica leads a shard and is inside its renew deadline."""
        return self.balancer.elected()
