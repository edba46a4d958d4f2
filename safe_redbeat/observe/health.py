"""Liveness and readiness of the beat replica in this process, for ``/healthz`` and ``/readyz``.

Both are read by the HTTP server's thread from what the beat loop last recorded; neither
calls Redis, so a probe costs microseconds and answers even while Redis does not.

* **Liveness** (:meth:`Probes.health`): the loop is at most ``safe_redbeat_liveness_seconds``
  later than it planned to be. After each tick the loop sleeps the delay the tick returned
  (a standby about ``retry_seconds``, a replica backing off from Redis errors up to
  ``backoff_max_seconds``); a tick that does not return — stuck inside a broker publish, a
  Redis call without a timeout, a deadlock — makes it late. A long dispatch that still
  moves (between broker batches, where the leader renews its leases) counts as progress.
  A Redis outage does not fail it: the loop backs off as planned.
* **Readiness** (:meth:`Probes.ready`): live, the last poll of Redis answered, and this
  replica's heartbeat was written less than ``2.5 * retry_seconds`` ago (the age at which
  the other replicas stop counting it as a live replica). A standby is ready: it is there
  to take over.

A SIGSTOPped process cannot answer at all: the probe times out, which fails it too.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopWatch", "Probes", "Verdict"]


class LoopWatch:
    """When the beat loop ticked, what it planned next, and when it last made progress.

    Written by the beat loop (the scheduler's thread), read by the probes (another
    thread): plain float attributes, each written in one step.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        now = monotonic()
        #: monotonic time the last tick returned (None before the first)
        self.last_tick: float | None = None
        #: by when the loop should have started its next tick
        self.due = now
        #: the last sign of life inside a tick (between broker batches, renewals)
        self.progress = now
        self.ticks = 0

    def ticked(self, delay: float) -> None:
        """A tick returned, asking to sleep ``delay`` seconds."""
        now = self.monotonic()
        self.last_tick = now
        self.due = now + max(delay, 0.0)
        self.ticks += 1

    def progressed(self) -> None:
        """A long tick moves on (a batch published, leases renewed)."""
        self.progress = self.monotonic()

    def late(self) -> float:
        """Seconds the loop is behind its plan (0 while it sleeps as it said it would)."""
        return max(self.monotonic() - max(self.due, self.progress), 0.0)


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: pass or fail, and one line saying why."""

    ok: bool
    text: str


class Probes:
    """``/healthz`` and ``/readyz`` of ``scheduler`` (a SafeRedBeatScheduler)."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = weakref.ref(scheduler)

    def health(self) -> Verdict:
        scheduler = self._scheduler()
        if scheduler is None:
            return Verdict(False, "stopped: the scheduler is closed")
        watch: LoopWatch = scheduler.loop
        limit = scheduler.safe_settings.liveness_limit
        late = watch.late()
        if late > limit:
            return Verdict(
                False,
                f"stuck: the beat loop is {late:.1f}s behind its plan (limit {limit:g}s); "
                f"{_last_tick(watch)}",
            )
        return Verdict(True, f"ok: {_last_tick(watch)}")

    def ready(self) -> Verdict:
        live = self.health()
        if not live.ok:
            return Verdict(False, f"not ready: {live.text}")
        scheduler = self._scheduler()
        if scheduler is None:
            return Verdict(False, "not ready: the scheduler is closed")
        balancer = scheduler.balancer
        failures = balancer.failures.failures
        if failures:
            return Verdict(False, f"not ready: Redis is failing ({failures} attempts in a row)")
        written = balancer.heartbeat_at
        if written is None:
            return Verdict(False, "not ready: no heartbeat written yet")
        limit = balancer.live_limit
        age = max(scheduler.loop.monotonic() - written, 0.0)
        if age > limit:
            return Verdict(False, f"not ready: heartbeat written {age:.1f}s ago (limit {limit:g}s)")
        return Verdict(True, f"ready: {_role(scheduler)}; heartbeat written {age:.1f}s ago")


def _last_tick(watch: LoopWatch) -> str:
    if watch.last_tick is None:
        return "no tick finished yet"
    return f"last tick {max(watch.monotonic() - watch.last_tick, 0.0):.1f}s ago"


def _role(scheduler: Any) -> str:
    led = [shard.index for shard in scheduler.shards if shard.leadership.elected]
    if not led:
        return "standby"
    if scheduler.layout.shards == 1:
        return "leader"
    return f"leader of shards {led} of {scheduler.layout.shards}"
