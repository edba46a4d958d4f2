"""Leadership: the lease as the beat loop lives it.

Elected (take the lease, say so), kept (renew before the renew deadline), lost (demote
without raising), given up (release on close); and what a Redis failure costs: a jittered
exponential backoff, and demotion once the renew deadline passed without Redis answering.
The heartbeat of this replica (``safe-redbeat status``) is written from here too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from celery.utils.log import get_logger

from . import signals
from .backoff import Backoff
from .config import Settings
from .connection import CLIENT_ERRORS
from .errors import LeaseLost
from .heartbeat import Heartbeat, write_heartbeat
from .keys import Keys
from .lease import Lease

__all__ = ["Leadership"]

logger = get_logger("safe_redbeat")


class Leadership:
    """One replica's leadership; ``sender`` (the scheduler) is the sender of its signals.

    ``lease`` builds the :class:`Lease` on first use (it needs a Redis client, which may not
    be reachable yet); ``on_elected`` runs after each acquisition, before dispatching.
    """

    def __init__(
        self,
        sender: Any,
        settings: Settings,
        keys: Keys,
        *,
        lease: Callable[[], Lease],
        client: Callable[[], Any],
        on_elected: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.sender = sender
        self.settings = settings
        self.keys = keys
        self._make_lease = lease
        self._client = client
        self._on_elected = on_elected
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self._lease: Lease | None = None
        self._backoff = Backoff(settings.retry_seconds, settings.backoff_max_seconds)
        #: Redis errors in a row
        self.failures = 0
        self._last_holder: str | None = None
        self._next_heartbeat = 0.0

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

    def lead(self) -> bool:
        """Take the lease if it is free (then ``on_elected``), or renew it when due.

        False: another replica leads (logged once per holder).
        """
        lease = self.lease
        if lease.held:
            self.renew_if_due()
            return True
        holder = lease.try_acquire()
        if holder is not None:
            described = holder.describe()
            if described != self._last_holder:
                logger.info("beat: standby; the lease is held by %s", described)
                self._last_holder = described
            return False
        logger.info(
            "beat: acquired the lease %r as %s (fence %s)",
            self.keys.lease,
            self.settings.instance_name,
            lease.fence,
        )
        signals.leadership(self.sender, signals.ACQUIRED, lease.fence)
        self._last_holder = None
        self._next_heartbeat = 0.0
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
                    f"no renewal for {self.settings.renew_seconds}s (renew deadline passed): {exc}"
                ) from exc
            raise

    def renew_in(self) -> float:
        """Seconds until the next planned renewal (0 if due)."""
        return max(self.lease.renew_at() - self.monotonic(), 0.0)

    def demote(self, reason: str) -> None:
        """Stop leading (the lease was lost); Redis is not touched."""
        lease = self._lease
        fence = lease.fence if lease is not None else None
        if lease is not None:
            lease.drop()
        logger.warning("beat: lost the lease (fence %s): %s; now a standby", fence, reason)
        signals.leadership(self.sender, signals.LOST, fence, reason)
        self._last_holder = None
        self._next_heartbeat = 0.0

    def release(self) -> None:
        """Give the lease up (on close) so a standby takes over at once."""
        lease = self._lease
        if lease is None or not lease.held:
            return
        fence = lease.fence
        try:
            released = lease.release()
        except CLIENT_ERRORS as exc:
            logger.warning("beat: could not release the lease: %s", exc)
            return
        if released:
            logger.info("beat: released the lease (fence %s)", fence)
            signals.leadership(self.sender, signals.RELEASED, fence)

    # -- delays and failures ----------------------------------------------------------

    def poll_delay(self) -> float:
        """A standby's sleep: ``retry_seconds``, jittered down by up to a fifth."""
        return self.settings.retry_seconds * (0.8 + 0.2 * self.rng.random())

    def backoff(self) -> float:
        """The wait after the current run of failures (at least one)."""
        return self._backoff.delay(max(self.failures, 1))

    def on_redis_error(self, exc: BaseException, where: str) -> float:
        """Count a failure, say so once, demote past the renew deadline; the tick's delay."""
        self.failures += 1
        signals.redis_error.send(self.sender, error=exc)
        log = logger.warning if self.failures == 1 else logger.debug
        log(
            "beat: Redis error (%s: %s) talking to %s; retrying with backoff",
            type(exc).__name__,
            exc,
            where,
        )
        delay = self.backoff()
        lease = self._lease
        if lease is not None and lease.held:
            now = self.monotonic()
            if now >= lease.deadline():
                self.demote(f"Redis unreachable past the renew deadline ({exc})")
            else:
                delay = min(delay, max(lease.deadline() - now, 0.05))
        return delay

    def on_redis_answer(self) -> None:
        """A tick went through: the run of failures is over."""
        if self.failures:
            logger.info("beat: Redis answers again after %d failed attempts", self.failures)
            self.failures = 0

    # -- heartbeat ----------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Write this replica's heartbeat every ``retry_seconds``; a failure is only logged."""
        now = self.monotonic()
        if now < self._next_heartbeat:
            return
        s = self.settings
        lease = self.lease
        leading = lease.valid()
        try:
            write_heartbeat(
                self._client(),
                self.keys,
                Heartbeat(
                    instance=s.instance_name,
                    role="leader" if leading else "standby",
                    fence=lease.fence if leading else None,
                    leading_for=round(now - lease.acquired_at, 3) if leading else 0.0,
                    ttl=max(s.lease_seconds, 3 * s.retry_seconds),
                ),
            )
        except CLIENT_ERRORS as exc:  # the next tick finds out and backs off
            logger.debug("beat: heartbeat not written: %s", exc)
            return
        self._next_heartbeat = now + s.retry_seconds
