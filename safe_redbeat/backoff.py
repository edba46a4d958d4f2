"""Exponential backoff with jitter from tenacity, usable outside a retry loop.

The beat loop cannot block inside ``tick()`` while Redis is down (a standby must stay
responsive to SIGTERM and the pidbox), so instead of wrapping calls in ``Retrying`` the
scheduler asks the strategy for the n-th wait and returns it as the tick's delay.
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_exponential_jitter

__all__ = ["Backoff"]


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
