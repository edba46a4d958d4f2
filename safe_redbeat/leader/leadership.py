"""Leadership: the lease of one shard as the beat loop lives it.

Elected (take the lease, say so), kept (renew before the renew deadline), lost (demote
without raising), given up (release on close or hand-over); and what a Redis failure
costs: a jittered exponential backoff, and demotion once the renew deadline passed without
Redis answering. Which shards a replica tries to lead is :mod:`.balance`'s choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery.utils.log import get_logger

from .. import signals
from ..config import Settings
from ..errors import LeaseLost, LossCause
from ..store.connection import CLIENT_ERRORS
from ..store.keys import Keys
from .backoff import FailureRun
from .lease import Lease

__all__ = ["Leadership"]

logger = get_logger("safe_redbeat")


class Leadership:
    """One replica's leadership of shard ``shard``; ``signal_sender`` (the scheduler, as
    :mod:`~safe_redbeat.signals` documents) sends its signals.

    ``lease`` builds the :class:`Lease` on first use (it needs a Redis client, which may not
    be reachable yet); ``on_elected`` runs after each acquisition, before dispatching.
    """

    def __init__(
        self,
        signal_sender: Any,
        settings: Settings,
        keys: Keys,
        *,
        lease: Callable[[], Lease],
        on_elected: Callable[[], None],
        shard: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.signal_sender = signal_sender
        self.settings = settings
        self.keys = keys
        self._make_lease = lease
        self._on_elected = on_elected
        self.shard = shard
        self.monotonic = monotonic
        self._lease: Lease | None = None
        #: Redis errors in a row while working this shard
        self.failures = FailureRun(
            signal_sender, settings.retry_seconds, settings.backoff_max_seconds
        )
        #: monotonic time before which the shard is not worked again (backing off)
        self.resume_at = 0.0
        self._last_holder: str | None = None

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            self._lease = self._make_lease()
        return self._lease

    @property
    def elected(self) -> bool:
        """True while this replica holds the lease and is inside its renew deadline."""
        return self._lease is not None and self._lease.valid()

    @property
    def held(self) -> bool:
        return self._lease is not None and self._lease.held

    def token(self) -> str:
        token = self.lease.token
        if token is None:
            raise LeaseLost("not holding the lease")
        return token

    def fence(self) -> int:
        fence = self.lease.fence
        if fence is None:
            raise LeaseLost("not holding the lease")
        return fence

    # -- upkeep -------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it is free, then run ``on_elected``; False if it is held."""
        lease = self.lease
        holder = lease.try_acquire()
        if holder is not None:
            described = holder.describe()
            if described != self._last_holder:
                logger.info(
                    "beat: standby; the lease is held by %s (%r)", described, self.keys.lease
                )
                self._last_holder = described
            return False
        logger.info(
            "beat: acquired the lease %r as %s (fence %s)",
            self.keys.lease,
            self.settings.instance_name,
            lease.fence,
        )
        self._say(signals.ACQUIRED, lease.fence)
        self._last_holder = None
        self._on_elected()
        return True

    def renew_if_due(self) -> None:
        """Renew when the next renewal is planned; LeaseLost past the renew deadline."""
        if self.monotonic() < self.lease.renew_at():
            return
        try:
            self.lease.renew()
        except CLIENT_ERRORS as exc:
            if self.monotonic() >= self.lease.deadline():
                self.lease.drop()
                raise LeaseLost(
                    f"no renewal for {self.settings.renew_seconds}s (renew deadline passed): {exc}",
                    LossCause.RENEW_DEADLINE,
                ) from exc
            raise

    def renew_in(self) -> float:
        """Seconds until the next planned renewal (0 if due)."""
        return max(self.lease.renew_at() - self.monotonic(), 0.0)

    def demote(self, reason: str, cause: LossCause = LossCause.OTHER) -> None:
        """Stop leading (the lease was lost); Redis is not touched."""
        lease = self._lease
        fence = lease.fence if lease is not None else None
        if lease is not None:
            lease.drop()
        logger.warning(
            "beat: lost the lease (fence %s): %s; now a standby (%r)",
            fence,
            reason,
            self.keys.lease,
        )
        self._say(signals.LOST, fence, reason, cause)
        self._last_holder = None

    def release(self, why: str = "closing") -> None:
        """Give the lease up (on close, or to hand it over) so a standby takes it at once."""
        lease = self._lease
        if lease is None or not lease.held:
            return
        fence = lease.fence
        try:
            released = lease.release()
        except CLIENT_ERRORS as exc:
            logger.warning("beat: could not release the lease %r: %s", self.keys.lease, exc)
            return
        if released:
            logger.info("beat: released the lease (fence %s): %s (%r)", fence, why, self.keys.lease)
            self._say(signals.RELEASED, fence)

    def _say(
        self,
        change: str,
        fence: int | None,
        reason: str | None = None,
        cause: LossCause | None = None,
    ) -> None:
        signals.leadership(
            self.signal_sender,
            change,
            fence,
            reason,
            cause=cause,
            instance=self.settings.instance_name,
            shard=self.shard,
        )

    # -- delays and failures ----------------------------------------------------------

    def backoff(self) -> float:
        """The wait after the current run of failures (at least one)."""
        return self.failures.delay()

    def on_redis_error(self, exc: BaseException, where: str) -> float:
        """Count a failure, say so once, demote past the renew deadline; the tick's delay."""
        delay = self.failures.failed(exc, where)
        lease = self._lease
        if lease is not None and lease.held:
            now = self.monotonic()
            if now >= lease.deadline():
                self.demote(
                    f"Redis unreachable past the renew deadline ({exc})",
                    LossCause.REDIS_UNREACHABLE,
                )
            else:
                delay = min(delay, max(lease.deadline() - now, 0.05))
        self.resume_at = self.monotonic() + delay
        return delay

    def on_redis_answer(self) -> None:
        """The shard's work went through: the run of failures is over."""
        self.failures.answered()
