"""Shift this process' wall clock by $SRB_CLOCK_SKEW seconds (chaos tests only).

Used only when libfaketime is not installed; it shifts ``time.time`` and
``time.time_ns`` (what Celery, kombu and RedBeat read), not ``datetime.now``.
"""

from __future__ import annotations

import os
import time

_OFFSET = float(os.environ.get("SRB_CLOCK_SKEW") or 0)

if _OFFSET:
    _real_time = time.time
    _real_time_ns = time.time_ns

    def _skewed_time() -> float:
        return _real_time() + _OFFSET

    def _skewed_time_ns() -> int:
        return _real_time_ns() + int(_OFFSET * 1e9)

    time.time = _skewed_time
    time.time_ns = _skewed_time_ns
