"""Which shards this replica leads: the layout in use, taking free shards, handing over.

Every ``retry_seconds`` (jittered) a replica polls: it reads the layout stored in Redis,
the heartbeats of the other replicas and, with several shards, who holds each lease. Then:

* **target**: each live replica aims at ``ceil(K / live replicas)`` shards. A replica is
  live while its heartbeat is younger than ``2.5 * retry_seconds``, so a replica that died
  without releasing drops out of the count before its leases expire.
* **take**: below target, a replica takes free shards at once. At or above target it takes
  a shard only once it saw it free at two polls in a row, so one nobody else wants (a
  miscount) is never left unled.
* **hand over**: above target, and only while another live replica is below it, a replica
  releases one shard per poll after two polls in a row of surplus, and does not take that
  shard back for ``3 * retry_seconds``. Releasing (not waiting for expiry) makes the
  hand-over take one poll; the two-poll rule and the cool-down keep shards from bouncing.

While ``safe-redbeat reshard`` moves the schedule to another layout a replica leads no
shard; it works the new layout once the move ends.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from celery.utils.log import get_logger

from ..config import Settings
from ..errors import ConfigurationError, LeaseLost
from ..store.connection import CLIENT_ERRORS, check_cluster_keys
from ..store.keys import Keys
from ..store.layout import InvalidLayout, Layout, read_layout, settle_layout
from .backoff import FailureRun
from .heartbeat import Heartbeat, new_token, prune_heartbeats, write_heartbeat
from .leadership import Leadership

__all__ = ["Balancer", "Shard"]


class Shard(Protocol):
    """What the balancer needs of a shard the replica works."""

    @property
    def index(self) -> int: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def leadership(self) -> Leadership: ...


S = TypeVar("S", bound=Shard)


logger = get_logger("safe_redbeat")

#: A heartbeat older than this many ``retry_seconds`` is a replica that stopped ticking.
LIVE_AGE = 2.5
#: Polls in a row a condition must hold before acting on it (take at target, hand over).
STEADY_POLLS = 2
#: A handed-over shard is not taken back for this many ``retry_seconds``.
COOL_DOWN = 3.0


class Balancer(Generic[S]):
    """The shards of ``layout`` one replica works; ``make_shard`` builds shard ``i`` of a
    layout. ``signal_sender`` sends the signals of its failures; ``where`` (the Redis URL,
    without password) is named in their log lines."""

    def __init__(
        self,
        signal_sender: Any,
        settings: Settings,
        base: Keys,
        *,
        client: Callable[[], Any],
        make_shard: Callable[[int, Layout], S],
        where: str = "Redis",
        app: Any,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        token: str = "",
        enqueue_mode: Callable[[], str] = lambda: "",
    ) -> None:
        self.signal_sender = signal_sender
        #: the replica's enqueue mode, for its heartbeat ("" until decided)
        self.enqueue_mode = enqueue_mode
        self.where = where
        #: this replica process' own token (heartbeat.new_token): how replicas are counted
        self.token = token or new_token()
        self.settings = settings
        self.base = base
        self._client = client
        self._make_shard = make_shard
        self.app = app
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.layout = Layout(base)
        self.shards: list[S] = [make_shard(0, self.layout)]
        #: the layout is being changed (or unusable): lead nothing
        self.paused = False
        #: shards this replica aims at, and live replicas counted at the last poll
        self.target = 1
        self.live = 1
        self.failures = FailureRun(
            signal_sender, settings.retry_seconds, settings.backoff_max_seconds
        )
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        #: monotonic time this replica's heartbeat was last written (None: not yet)
        self.heartbeat_at: float | None = None
        self._free_polls: dict[int, int] = {}
        self._surplus_polls = 0
        self._others: list[Heartbeat] = []
        self._handed: dict[int, float] = {}
        self._said: set[str] = set()
        self._led_before: tuple[int, ...] = ()
        #: tokens of other live replicas found using this replica's instance name
        self._namesakes: set[str] = set()

    # -- what the tick asks ------------------------------------------------------------

    def led(self) -> list[S]:
        """The shards this replica holds the lease of, in index order."""
        return [shard for shard in self.shards if shard.leadership.held]

    def elected(self) -> bool:
        """True while this replica leads a shard inside its renew deadline."""
        return any(shard.leadership.elected for shard in self.shards)

    @property
    def live_limit(self) -> float:
        """Age at which a heartbeat no longer counts as a live replica's."""
        return LIVE_AGE * self.settings.retry_seconds

    def poll_delay(self) -> float:
        """A standby's sleep: ``retry_seconds``, jittered down by up to a fifth."""
        return self.settings.retry_seconds * (0.8 + 0.2 * self.rng.random())

    def poll_soon(self) -> None:
        """Poll at the next tick (a lease was just lost)."""
        self._next_poll = 0.0

    def poll_if_due(self) -> float:
        """Poll when due (layout, replicas, leases; take and hand over); seconds to the next.

        A replica that leads nothing polls at every tick: its ticks are paced by the delay
        this returns.
        """
        now = self.monotonic()
        if now >= self._next_poll or not self.led():
            try:
                self._poll()
            except CLIENT_ERRORS as exc:
                self._next_poll = self.monotonic() + self.failures.failed(exc, self.where)
            else:
                self.failures.answered()
                self._next_poll = self.monotonic() + self.poll_delay()
            self._say_led()
        return max(self._next_poll - self.monotonic(), 0.0)

    def heartbeat(self) -> None:
        """Write this replica's heartbeat every ``retry_seconds``; a failure is only logged."""
        now = self.monotonic()
        if now < self._next_heartbeat:
            return
        s = self.settings
        led = [shard for shard in self.shards if shard.leadership.elected]
        first = led[0].leadership.lease if led else None
        try:
            write_heartbeat(
                self._client(),
                self.base,
                Heartbeat(
                    instance=s.instance_name,
                    role="leader" if led else "standby",
                    leading_for=round(now - first.acquired_at, 3) if first is not None else 0.0,
                    ttl=max(s.lease_seconds, 3 * s.retry_seconds),
                    shards=tuple(shard.index for shard in led),
                    fences=tuple(shard.leadership.lease.fence or 0 for shard in led),
                    shard_count=self.layout.shards,
                    token=self.token,
                    enqueue=self.enqueue_mode(),
                ),
            )
        except CLIENT_ERRORS as exc:  # the next tick finds out and backs off
            logger.debug("beat: heartbeat not written: %s", exc)
            return
        self.heartbeat_at = now
        self._next_heartbeat = now + s.retry_seconds

    def keep_others(self, busy: S) -> None:
        """Renew the leases of the led shards other than ``busy`` (whose dispatch takes
        long) when due, and write the heartbeat when due. A lost lease demotes only its
        shard; a Redis error is left for that shard's next turn."""
        for shard in self.led():
            if shard is busy:
                continue
            try:
                shard.leadership.renew_if_due()
            except LeaseLost as exc:
                shard.leadership.demote(exc.reason, exc.cause)
            except CLIENT_ERRORS as exc:
                logger.debug("beat: renewal of %r failed (%s); retried at its turn", shard, exc)
        self.heartbeat()

    def release_all(self, why: str) -> None:
        for shard in self.led():
            shard.leadership.release(why)

    # -- one poll ----------------------------------------------------------------------

    def _poll(self) -> None:
        client = self._client()
        self._follow(self._read_layout(client))
        if self.paused:
            return
        self._count_replicas(client)
        if self.layout.shards == 1:
            # one lease: whoever finds it free takes it, as an unsharded RedBeat would
            shard = self.shards[0]
            if not shard.leadership.held:
                self._take(shard)
            return
        free = self._free_shards(client)
        self._take_free(free)
        self._hand_over()

    def _read_layout(self, client: Any) -> Layout | None:
        """The layout stored in Redis; adopted from the settings if Redis has none yet."""
        try:
            layout = read_layout(client, self.base)
        except InvalidLayout as exc:
            keeping = self.layout.describe()
            self._say_once("invalid", logger.error, "beat: %s; keeping %s", exc, keeping)
            return None
        wanted = self.settings.shards
        if layout.shards == wanted or layout.moving:
            return layout
        # a new (or emptied) Redis gets the configured layout, unless another replica did
        layout = settle_layout(client, self.base, wanted)
        if layout.shards != wanted and not layout.moving:
            self._say_once(
                f"differs:{layout.shards}",
                logger.warning,
                "beat: Redis holds a schedule of %s; safe_redbeat_shards = %d is not used "
                "(`safe-redbeat reshard --to %d` moves the schedule)",
                layout.describe(),
                wanted,
                wanted,
            )
        return layout

    def _follow(self, layout: Layout | None) -> None:
        """Work ``layout`` from now on: hand every lease back first if it changes."""
        if layout is None:
            return
        if layout.moving:
            if not self.paused:
                logger.warning(
                    "beat: the schedule is being resharded (%s); leading no shard until the "
                    "move ends",
                    layout.describe(),
                )
                self.release_all("the schedule is being resharded")
            self.paused = True
            return
        if layout.shards != self.layout.shards or self.paused:
            problem = self._unusable(layout)
            if problem:
                self._say_once("unusable", logger.error, "beat: %s; leading no shard", problem)
                self.release_all(problem)
                self.paused = True
                return
            if layout.shards != self.layout.shards:
                logger.info(
                    "beat: working a schedule of %s (was %s)",
                    layout.describe(),
                    self.layout.describe(),
                )
                self.release_all("the shard layout changed")
                self.layout = layout
                self.shards = [self._make_shard(i, layout) for i in range(layout.shards)]
                self._free_polls.clear()
                self._handed.clear()
                self._next_heartbeat = 0.0
            self.paused = False
            self._said.discard("unusable")

    def _unusable(self, layout: Layout) -> str | None:
        """Why this replica cannot work ``layout`` (a Redis Cluster slot rule), or None."""
        try:
            for keys in layout.all_keys():
                check_cluster_keys(self.app, keys, self._client())
        except ConfigurationError as exc:
            return str(exc)
        return None

    def _count_replicas(self, client: Any) -> None:
        """Live replicas by token (never by name), and namesakes of this one."""
        limit = self.live_limit
        live = [
            found.heartbeat
            for found in prune_heartbeats(client, self.base)
            if found.heartbeat.token != self.token and found.age <= limit
        ]
        self._others = [other for other in live if other.shard_count == self.layout.shards]
        self.live = len(self._others) + 1
        self.target = math.ceil(self.layout.shards / self.live)
        self._check_name(live)

    def _check_name(self, others: list[Heartbeat]) -> None:
        """One ERROR per other live replica that uses this replica's instance name."""
        me = self.settings.instance_name
        namesakes = {other.token: other for other in others if other.instance == me}
        for token in namesakes.keys() - self._namesakes:
            other = namesakes[token]
            logger.error(
                "beat: another live replica uses this replica's instance name %r (host %s, "
                "pid %s); give each replica its own safe_redbeat_instance_name, or leave it "
                "unset (<host>:<pid>). Both still work, told apart by token, but status "
                "and health cannot tell which is which.",
                me,
                other.host,
                other.pid,
            )
        self._namesakes = set(namesakes)

    def _free_shards(self, client: Any) -> set[int]:
        """Shards whose lease key is absent (one pipeline of GETs)."""
        with client.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                pipe.exists(shard.keys.lease)
            found = pipe.execute()
        free = {shard.index for shard, exists in zip(self.shards, found, strict=True) if not exists}
        self._free_polls = {index: self._free_polls.get(index, 0) + 1 for index in free}
        return free

    def _take_free(self, free: set[int]) -> None:
        now = self.monotonic()
        held = len(self.led())
        candidates = [s for s in self.shards if s.index in free and not s.leadership.held]
        self.rng.shuffle(candidates)  # replicas starting together spread over the shards
        for shard in candidates:
            if self._handed.get(shard.index, 0.0) > now:
                continue
            steady = self._free_polls.get(shard.index, 0) >= STEADY_POLLS
            if (held < self.target or steady) and self._take(shard):
                held += 1

    def _take(self, shard: S) -> bool:
        """Try to lead ``shard`` (seeding it when elected); False if someone else holds it."""
        try:
            return shard.leadership.try_acquire()
        except LeaseLost as exc:  # lost while seeding right after the acquisition
            shard.leadership.demote(exc.reason, exc.cause)
            return False

    def _hand_over(self) -> None:
        led = self.led()
        below = any(len(other.shards) < self.target for other in self._others)
        if len(led) <= self.target or not below:
            self._surplus_polls = 0
            return
        self._surplus_polls += 1
        if self._surplus_polls < STEADY_POLLS:
            return
        self._surplus_polls = 0
        shard = max(led, key=lambda s: s.leadership.lease.acquired_at)  # the newest
        self._handed[shard.index] = self.monotonic() + COOL_DOWN * self.settings.retry_seconds
        shard.leadership.release(
            f"handing over: leading {len(led)} shards, {self.live} live replicas aim at "
            f"{self.target} each"
        )

    # -- saying things once -------------------------------------------------------------

    def _say_led(self) -> None:
        led = tuple(shard.index for shard in self.led())
        if led != self._led_before and self.layout.shards > 1:
            logger.info(
                "beat: leading shards %s of %d (aim %d, %d live replicas)",
                list(led),
                self.layout.shards,
                self.target,
                self.live,
            )
        self._led_before = led

    def _say_once(self, what: str, log: Callable[..., None], message: str, *args: Any) -> None:
        if what not in self._said:
            self._said.add(what)
            log(message, *args)
