"""Exponential backoff with jitter from tenacity, usable outside a retry loop.

The beat loop cannot block inside ``tick()`` while Redis is down (a standby must stay
responsive to SIGTERM and the pidbox), so instead of wrapping calls in ``Retrying`` the
scheduler asks the strategy for the n-th wait and returns it as the tick's delay.
"""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_logger
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from .. import signals

__all__ = ["Backoff", "FailureRun"]

logger = get_logger("safe_redbeat")


class Backoff:
    """``wait_exponential_jitter`` from ``first`` seconds up to ``cap``, jitter ``first``."""

    def __init__(self, first: float, cap: float) -> None:
        try:  # tenacity >= 9.1 names the first wait "multiplier"
            self._strategy = wait_exponential_jitter(multiplier=first, max=cap, jitter=first)
        except TypeError:
            self._strategy = wait_exponential_jitter(initial=first, max=cap, jitter=first)
        self._state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 1)."""
        self._state.attempt_number = attempt  # the strategy reads nothing else
        return float(self._strategy(self._state))


class FailureRun:
    """Redis failures in a row: counted, said once, backed off; ``sender`` signals them."""

    def __init__(self, sender: Any, first: float, cap: float) -> None:
        self.sender = sender
        self._backoff = Backoff(first, cap)
        self.failures = 0

    def failed(self, exc: BaseException, where: str) -> float:
        """Count one failure and say so (WARNING for the first); the wait before the next."""
        self.failures += 1
        signals.redis_error.send(self.sender, error=exc)
        log = logger.warning if self.failures == 1 else logger.debug
        log(
            "beat: Redis error (%s: %s) talking to %s; retrying with backoff",
            type(exc).__name__,
            exc,
            where,
        )
        return self.delay()

    def delay(self) -> float:
        """The wait after the current run of failures (at least one)."""
        return self._backoff.delay(max(self.failures, 1))

    def answered(self) -> None:
        """Redis answered: the run of failures is over."""
        if self.failures:
            logger.info("beat: Redis answers again after %d failed attempts", self.failures)
            self.failures = 0
