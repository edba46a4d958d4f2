"""A model-based test of the whole scheduler: random steps, every promise checked after each.

Two in-process replicas (one or two shards) are ticked by hand against a real schedule
Redis whose clock the test sets (libfaketime, frozen; the replicas' monotonic clock moves
with it) and a real broker Redis of its own. Hypothesis draws the steps: entries written
through ``Schedule`` (interval, crontab, rrule (one with a dtstart months back), one-off;
``start_time``, ``expires``, ``max_runs``, ``run_immediately``), updated, enabled,
disabled, deleted, run now; ticks of either replica; time passing, a little or past the
lease; the broker stopped and started with its data, or refusing one entry's messages
(WRONGTYPE); a lease deleted or taken by someone else; a fault inside a publish (broker
stopped, leader frozen past its lease, lease deleted); a replica killed or stopped and
started again; the schedule's Redis wiped (FLUSHDB); a reshard between one and two
shards; and "settle" (the broker answers, the replicas tick for a while: then nothing may
be overdue, stuck pending or lost).

The rules checked are in :mod:`tests.support.model_oracle`; the steps are in
:mod:`tests.support.model_world`. A failure prints the steps (Hypothesis), the world's
event log and every broken rule; ``tests/integration/test_model_regressions.py`` holds the
bugs found, each replayed as a plain test.

Profiles (environment variable ``SAFE_REDBEAT_MODEL``):

* ``ci`` (default): 40 examples of up to 50 steps, about 25 s on 2 cores;
* ``long``: 600 examples of up to 100 steps (``SAFE_REDBEAT_MODEL=long pytest -s
  tests/integration/test_model.py``), a run on purpose: up to an hour, stops at the
  first failure. ``-s`` prints what the examples did (steps, sends, known bugs hit).

While a bug it found is open, its tag in :data:`KNOWN` has the oracle count its findings
instead of failing, so a long run goes on to find others (``SAFE_REDBEAT_MODEL_KNOWN=1``
fails on them too); every bug found so far is fixed and the set is empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.support.model_oracle import Plan, Spec
from tests.support.model_world import NAMES, STATS, ModelServers, World

pytestmark = pytest.mark.integration

DAY = 86400

#: every phase but "explain" (it traces every line of a failing run again: minutes)
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
settings.register_profile(
    "model-ci",
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    phases=PHASES,
)
settings.register_profile(
    "model-long",
    max_examples=600,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    phases=PHASES,
)
PROFILE = "model-" + os.environ.get("SAFE_REDBEAT_MODEL", "ci")
#: pytest-timeout's limit for the test (the suite's default, 300 s, cuts a long run)
TIMEOUT = 3600 if PROFILE == "model-long" else 300

#: Tags of bugs already reported, each with an xfail regression test in
#: test_model_regressions.py: the oracle counts their findings without failing.
#: SAFE_REDBEAT_MODEL_KNOWN=1 fails on them too.
KNOWN: frozenset[str] = frozenset()  # every bug found so far is fixed


# -- what to write ------------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """A spec with times relative to the moment it is written (absolute: :meth:`spec`)."""

    kind: str
    every: int
    freq: str = ""
    ago: int = 0
    at_in: int = 0
    start_in: int | None = None
    expires_in: int | None = None
    max_runs: int | None = None
    run_immediately: bool = False
    enabled: bool = True

    def plan(self, now: int) -> Plan:
        if self.kind == "rrule":
            return Plan("rrule", every=self.every, freq=self.freq, dtstart=now - self.ago)
        if self.kind == "once":
            return Plan("once", at=now + self.at_in)
        return Plan(self.kind, every=self.every)

    def spec(self, now: float) -> Spec:
        base = int(now)
        start = None if self.start_in is None else base + self.start_in
        expires = None
        if self.expires_in is not None:
            expires = (start if start is not None else base) + self.expires_in
        return Spec(
            self.plan(base),
            enabled=self.enabled,
            start_time=start,
            expires=expires,
            max_runs=None if self.kind == "once" else self.max_runs,
            run_immediately=self.run_immediately,
        )


OLD_RRULES = st.tuples(
    st.just("HOURLY"),
    st.just(1),
    st.sampled_from([14 * DAY + 123, 60 * DAY + 7, 120 * DAY + 5 * 3600 + 17]),
)
RECENT_RRULES = st.tuples(
    st.just("MINUTELY"), st.sampled_from([1, 3]), st.sampled_from([0, 29, 600])
)
OLD_MINUTELY = st.tuples(st.just("MINUTELY"), st.just(1), st.sampled_from([21 * DAY, 30 * DAY]))

schedules = st.one_of(
    st.builds(lambda every: ("interval", every, "", 0, 0), st.sampled_from([15, 40, 90, 300])),
    st.builds(lambda every: ("crontab", every, "", 0, 0), st.sampled_from([1, 2, 5])),
    st.builds(
        lambda r: ("rrule", r[1], r[0], r[2], 0),
        st.one_of(RECENT_RRULES, OLD_RRULES, OLD_MINUTELY),
    ),
    st.builds(lambda at: ("once", 0, "", 0, at), st.sampled_from([-300, -30, 10, 60, 240])),
)
starts = st.one_of(st.none(), st.sampled_from([10, 60, 300, 900]))
expiries = st.one_of(st.none(), st.sampled_from([60, 300, 1800]))
max_runs = st.one_of(st.none(), st.integers(1, 3))


@st.composite
def drafts(draw: st.DrawFn) -> Draft:
    kind, every, freq, ago, at_in = draw(schedules)
    return Draft(
        kind,
        every,
        freq,
        ago,
        at_in,
        start_in=draw(starts),
        expires_in=draw(expiries),
        max_runs=draw(max_runs),
        run_immediately=draw(st.sampled_from([False, False, False, True])),
        enabled=draw(st.sampled_from([True, True, True, False])),
    )


#: an update: ("plan", Draft) or (field, value relative to now)
changes = st.one_of(
    st.tuples(st.just("plan"), drafts()),
    st.tuples(st.just("start_time"), starts),
    st.tuples(st.just("expires"), expiries),
    st.tuples(st.just("max_runs"), max_runs),
)
OPS = st.sampled_from(["update", "update", "enable", "disable", "delete", "run_now"])
BROKER_FAULTS = st.sampled_from(["broker-stop", "broker-start", "refuse", "accept"])
LEASE_FAULTS = st.sampled_from(["delete", "foreign", "stock"])


# -- the machine --------------------------------------------------------------------------


class ModelMachine(RuleBasedStateMachine):
    """Steps on a :class:`World`; every broken rule fails the example with the event log."""

    servers: ModelServers

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    @initialize(
        shards=st.sampled_from([1, 1, 2]),
        catch_up=st.sampled_from(["run_once", "run_once", "skip"]),
        seed=st.integers(0, 1000),
        phase=st.integers(0, 359).map(lambda half_seconds: half_seconds / 2),
    )
    def start(self, shards: int, catch_up: str, seed: int, phase: float) -> None:
        self.world = World(
            self.servers, shards=shards, catch_up=catch_up, seed=seed, known=KNOWN, phase=phase
        )
        self.w.tick_all()

    def teardown(self) -> None:
        if self.world is not None:
            self.world.close()

    @invariant()
    def every_rule_holds(self) -> None:
        if self.world is None:
            return
        self.w.check()
        problems = self.w.oracle.problems
        if problems:
            raise AssertionError(
                f"{len(problems)} broken rule(s):\n- "
                + "\n- ".join(problems)
                + "\n\nevents:\n"
                + self.w.describe()
            )

    # -- the management API -----------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), draft=drafts())
    def upsert(self, name: str, draft: Draft) -> None:
        self.w.upsert(name, draft.spec(self.w.now))

    @rule(op=OPS, data=st.data())
    def manage(self, op: str, data: st.DataObject) -> None:
        """A change of an entry that exists (mostly): update, enable, delete, run now."""
        w = self.w
        existing = [name for name in NAMES if w.oracle.current(name) is not None]
        name = data.draw(st.sampled_from(existing or list(NAMES)), label="name")
        if op == "update":
            field, drawn = data.draw(changes, label="change")
            value: Plan | int | None
            if isinstance(drawn, Draft):
                value = drawn.plan(int(w.now))
            elif field in ("start_time", "expires") and drawn is not None:
                value = int(w.now) + drawn
            else:
                value = drawn
            w.update(name, **{field: value})
        elif op in ("enable", "disable"):
            w.enable(name, op == "enable")
        elif op == "delete":
            w.delete(name)
        else:
            w.run_now(name)

    # -- time and ticks ---------------------------------------------------------------

    @rule(replica=st.integers(0, 1), seconds=st.sampled_from([0, 0.5, 1, 2, 3, 5]))
    def tick(self, replica: int, seconds: float) -> None:
        self.w.advance(seconds)
        self.w.tick(replica)

    @rule(seconds=st.sampled_from([0.5, 1, 2, 5, 10]))
    def tick_both(self, seconds: float) -> None:
        self.w.advance(seconds)
        self.w.tick_all()

    @rule(rounds=st.integers(2, 5))
    def tick_rounds(self, rounds: int) -> None:
        """Both replicas tick every ``retry_seconds`` for a while, as beat would."""
        for _ in range(rounds):
            self.w.advance(2)
            self.w.tick_all()

    @rule(seconds=st.sampled_from([5, 12, 30, 20, 45, 120, 600, 3600]))
    def jump(self, seconds: float) -> None:
        """Time passes and nobody ticks: a pause of every replica, or a clock jump."""
        self.w._next(f"clock jumps {seconds}s")
        self.w.advance(seconds)

    # -- faults -----------------------------------------------------------------------

    @rule(fault=BROKER_FAULTS, name=st.sampled_from(NAMES))
    def broker(self, fault: str, name: str) -> None:
        """The broker stops (its data kept) or starts, or refuses one entry's messages."""
        w = self.w
        up = w.servers.broker.running()
        if fault == "broker-stop" and up:
            w.broker_stop()
        elif fault == "broker-start" and not up:
            w.broker_start()
        elif fault == "refuse" and up and name not in w.refused:
            w.refuse(name)
        elif fault == "accept" and up and w.refused:
            w.accept(sorted(w.refused)[0])

    @rule(how=LEASE_FAULTS, shard=st.integers(0, 1))
    def lease(self, how: str, shard: int) -> None:
        """A shard's lease is deleted, or taken by someone else for one lease period."""
        self.w.steal_lease(shard, how)

    @rule(kind=st.sampled_from(["broker-stop", "pause", "lease-delete"]))
    def mid_publish(self, kind: str) -> None:
        """A fault inside the next publish: the broker stops, the leader freezes past its
        lease, or its lease is deleted, between claim and broker."""
        self.w.arm(kind)

    @rule(replica=st.integers(0, 1), graceful=st.booleans())
    def restart(self, replica: int, graceful: bool) -> None:
        """A replica exits (SIGTERM: releases its leases; SIGKILL: they expire) and starts."""
        self.w.restart(replica, graceful=graceful)

    @rule(what=st.sampled_from(["reshard", "reshard", "reshard", "wipe"]))
    def disaster(self, what: str) -> None:
        """A reshard between one and two shards, or the schedule's Redis wiped (FLUSHDB)."""
        w = self.w
        if what == "wipe":
            w.wipe()
        else:
            w.reshard(2 if w.layout().shards == 1 else 1)

    @rule()
    def settle(self) -> None:
        self.w.settle()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServers]:
    with ModelServers(Path(tmp_path_factory.mktemp("model"))) as servers:
        yield servers


@pytest.mark.timeout(TIMEOUT)
def test_random_steps_keep_every_promise(servers: ModelServers) -> None:
    class Machine(ModelMachine):
        pass

    Machine.servers = servers
    try:
        run_state_machine_as_test(Machine, settings=settings.get_profile(PROFILE))
    finally:
        print(f"\nmodel test ({PROFILE}):")
        for what, count in sorted(STATS.items()):
            print(f"  {what}: {count}")
