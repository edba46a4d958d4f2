"""The model test's world: in-process replicas, two real Redis servers, the faults.

* The schedule's Redis runs under libfaketime with a frozen clock the test moves
  (:class:`~testbed.redis_server.ServerClock`): Redis ``TIME`` (the scheduler's "now"),
  lease TTLs and heartbeats follow it, and the replicas' injected monotonic clock moves
  by the same amounts. Nothing moves on its own: a step sees the same times in every
  run, so a failing sequence replays (the broker's connection handling is real, though).
* The broker is a Redis of its own (AOF on), so it can go away alone: stopped and started
  again with its data, or refusing one entry's messages (that queue's key holds a SET:
  WRONGTYPE on LPUSH).
* :class:`World` drives it all step by step (ticks, writes through ``Schedule``, faults)
  and tells the :class:`~tests.support.model_oracle.Oracle` what it did and saw. The
  regression tests replay a failing sequence with the same methods.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.schedules import crontab
from redbeat.schedules import rrule

from safe_redbeat import SafeRedBeatScheduler, Schedule
from safe_redbeat.errors import EntryNotFound, InvalidEntry, SafeRedBeatError
from safe_redbeat.model.codec import decode_meta
from safe_redbeat.model.occurrence import Occurrence
from safe_redbeat.model.specs import EntrySpec, ScheduleLike
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout, read_layout
from safe_redbeat.sync.reshard import reshard
from testbed.beat import Message
from testbed.redis_server import RedisServer, ServerClock
from tests.support.inprocess import FakeClock
from tests.support.model_oracle import Oracle, Plan, Spec

__all__ = [
    "NAMES",
    "SETTINGS",
    "STATICS",
    "ModelServers",
    "World",
]

#: Lease settings of the replicas (the defaults, with a shorter backoff cap).
SETTINGS: dict[str, Any] = {
    "safe_redbeat_lease_seconds": 15.0,
    "safe_redbeat_renew_seconds": 10.0,
    "safe_redbeat_retry_seconds": 2.0,
    "safe_redbeat_backoff_max_seconds": 8.0,
}

#: Names of the entries the test manages (crc32 mod 2: a, b, c in shard 1; d, e in shard 0).
NAMES = ("a", "b", "c", "d", "e")
#: ``beat_schedule`` of every replica, and the model's plan of each.
STATICS: dict[str, tuple[Plan, dict[str, Any]]] = {
    "s-int": (Plan("interval", every=45), {"task": "model.s-int", "schedule": 45.0}),
    "s-cron": (
        Plan("crontab", every=3),
        {"task": "model.s-cron", "schedule": crontab(minute="*/3")},
    ),
}
BASE = Keys(prefix="redbeat:", lease="redbeat::lock")
#: Every layout the test can reach: one shard (RedBeat's keys) or two.
LAYOUTS = (Layout(BASE, 1), Layout(BASE, 2))


def queue_of(name: str) -> str:
    """Each managed entry sends to its own queue, so one of them can be refused."""
    return f"q.{name}"


def utc(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def schedule_of(plan: Plan) -> ScheduleLike:
    if plan.kind == "interval":
        return plan.every
    if plan.kind == "crontab":
        return f"*/{plan.every} * * * *"
    if plan.kind == "rrule":
        return rrule(plan.freq, dtstart=utc(plan.dtstart), interval=plan.every)
    raise ValueError(f"no schedule for {plan}")


def plan_fields(plan: Plan) -> dict[str, Any]:
    """The EntrySpec fields that give ``plan``."""
    if plan.kind == "once":
        return {"at": utc(plan.at), "schedule": None}
    return {"at": None, "schedule": schedule_of(plan)}


def entry_spec(name: str, spec: Spec) -> EntrySpec:
    fields = plan_fields(spec.plan)
    return EntrySpec.build(
        name,
        f"model.{name}",
        fields["schedule"],
        options={"queue": queue_of(name)},
        enabled=spec.enabled,
        start_time=utc(spec.start_time),
        expires=utc(spec.expires),
        max_runs=spec.max_runs,
        run_immediately=spec.run_immediately,
        at=fields["at"],
    )


class ModelServers:
    """The schedule's Redis (frozen clock, under libfaketime) and the broker's (AOF)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.clock = ServerClock(workdir / "faketime", float(int(time.time())))
        self.schedule = RedisServer(workdir=workdir / "schedule", clock=self.clock)
        self.broker = RedisServer(workdir=workdir / "broker", appendonly=True)

    def __enter__(self) -> ModelServers:
        self.schedule.start()
        self.broker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.broker.stop()
        self.schedule.stop()

    def reset(self, phase: float = 0.0) -> None:
        """Empty both servers (the broker started if it was stopped); the clock goes on to
        ``phase`` seconds past the next whole hour, so that a run sees the same times, and
        the static entries' slots (:data:`STATICS`) at the same moments, whenever it runs
        and whatever ran before it."""
        self.clock.set((self.clock.now // 3600 + 1) * 3600 + phase)
        if not self.broker.running():
            self.broker.start()
        for server in (self.schedule, self.broker):
            client = server.client()
            try:
                client.flushall()
            finally:
                client.close()


#: What the runs of this process did, summed by :meth:`World.close` (printed by the test).
STATS: Counter[str] = Counter()


class World:
    """Replicas, management API, broker and faults of one run, reported to the oracle."""

    def __init__(
        self,
        servers: ModelServers,
        *,
        shards: int = 1,
        catch_up: str = "run_once",
        replicas: int = 2,
        seed: int = 0,
        known: frozenset[str] = frozenset(),
        settings: dict[str, Any] | None = None,
        phase: float = 0.0,
    ) -> None:
        """``settings``: replica settings instead of :data:`SETTINGS`' (lease ones);
        ``phase``: where in the hour the run starts (see :meth:`ModelServers.reset`)."""
        servers.reset(phase)
        self.settings = {**SETTINGS, **(settings or {})}
        self.lease = float(self.settings["safe_redbeat_lease_seconds"])
        self.renew = float(self.settings["safe_redbeat_renew_seconds"])
        self.retry = float(self.settings["safe_redbeat_retry_seconds"])
        self.servers = servers
        self.clock = servers.clock
        self.monotonic = FakeClock()
        self.oracle = Oracle(self.clock.now, catch_up=catch_up, known=known)
        self.seq = 0
        self.log: list[str] = []
        self.refused: set[str] = set()
        self.ticks = 0
        self.slowest_tick = 0.0
        self.client: redis.Redis = servers.schedule.client()
        self.broker: redis.Redis = servers.broker.client()
        self.apps: list[Celery] = []
        self.shards = shards
        self.catch_up = catch_up
        self.seed = seed
        #: a fault to inject inside the next publish (see :meth:`arm`)
        self.armed = ""
        self.generations: dict[int, int] = {}
        self.replicas: list[SafeRedBeatScheduler] = [
            self._replica(index) for index in range(replicas)
        ]
        self.manager = self._app("model-manager")
        self.schedule = Schedule(self.manager)
        for name, (plan, _beat) in STATICS.items():
            self.oracle.written(name, Spec(plan), 0, self.clock.now, static=True)

    def _replica(self, index: int, generation: int = 0) -> SafeRedBeatScheduler:
        """Replica ``index`` (a new process each ``generation``, same instance name)."""
        app = self._app(
            f"model-{index}-{generation}",
            beat_schedule={name: beat for name, (_plan, beat) in STATICS.items()},
            safe_redbeat_instance_name=f"replica-{index}",
            safe_redbeat_shards=self.shards,
            safe_redbeat_catch_up=self.catch_up,
        )
        rng = random.Random(self.seed * 100 + index * 10 + generation)
        scheduler = SafeRedBeatScheduler(app=app, monotonic=self.monotonic, rng=rng)
        publisher = scheduler.publisher
        apply = publisher._apply

        def armed_apply(occurrence: Occurrence, fence: int) -> str | None:
            if self.armed:
                kind, self.armed = self.armed, ""
                self._mid_publish(kind, occurrence)
            return apply(occurrence, fence)

        publisher._apply = armed_apply
        return scheduler

    def _app(self, name: str, **settings: Any) -> Celery:
        app = Celery(name, set_as_current=False)
        app.conf.update(
            broker_url=self.servers.broker.url,
            redbeat_redis_url=self.servers.schedule.url,
            timezone="UTC",
            result_expires=None,
            beat_max_loop_interval=30,
            task_publish_retry=False,
            broker_connection_retry=False,
            broker_connection_max_retries=0,
            **self.settings,
            **settings,
        )
        self.apps.append(app)
        return app

    def close(self) -> None:
        self._count()
        for scheduler in self.replicas:
            try:
                scheduler.close()
            except Exception as exc:  # a closing replica's Redis error is not a finding
                self.log.append(f"close: {exc!r}")
        self.schedule.close()
        for app in self.apps:
            app.close()
        self.client.close()
        self.broker.close()

    def _count(self) -> None:
        STATS["runs"] += 1
        STATS["ticks"] += self.ticks
        STATS["simulated seconds"] += int(self.now - self.oracle.start)
        for line in self.log:
            if line.startswith("#"):
                words = line.split(" ", 3)[2:]
                STATS["step: " + " ".join(w for w in words[:2] if not w.startswith("'"))] += 1
        seen = self.oracle.seen.values()
        STATS["occurrences claimed"] += len(seen)
        STATS["occurrences sent"] += sum(1 for s in seen if s.sends)
        STATS["manual runs sent"] += sum(1 for s in seen if s.sends and s.manual)
        STATS["sent late (> 5s after the slot)"] += sum(
            1 for s in seen if s.sent_at is not None and s.sent_at - s.scheduled > 5
        )
        for tag, hits in self.oracle.known_hits.items():
            STATS[f"known bug hit: {tag}"] += hits
        STATS["second sends while a queue was refused"] += self.oracle.resends
        STATS["second sends after a lease lost before the ack"] += self.oracle.lost_acks
        STATS["slowest tick (ms)"] = max(STATS["slowest tick (ms)"], int(self.slowest_tick * 1000))

    # -- time --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Redis' time (the scheduler's "now")."""
        return self.clock.now

    def advance(self, seconds: float) -> None:
        """Time passes for everyone: Redis' clock and the replicas' monotonic clock."""
        self.clock.advance(seconds)
        self.monotonic.now += seconds

    def _next(self, what: str) -> int:
        self.seq += 1
        self.log.append(f"#{self.seq} {self.oracle.t(self.now)} {what}")
        return self.seq

    # -- replicas ----------------------------------------------------------------------

    def tick(self, index: int) -> None:
        """One tick of replica ``index``; then look at Redis and the broker."""
        seq = self._next(f"tick replica {index}")
        at = self.now  # a pause inside the tick moves the clock: claims may be before it
        started = time.perf_counter()
        try:
            self.replicas[index].tick()
        except (Exception, SystemExit) as exc:
            self.oracle.problem(
                f"tick of replica {index} at {self.oracle.t(self.now)} raised {exc!r}:\n"
                + "".join(traceback.format_exception(exc))
            )
        took = time.perf_counter() - started
        self.ticks += 1
        self.slowest_tick = max(self.slowest_tick, took)
        if took > self.renew:
            self.oracle.problem(
                f"tick of replica {index} at {self.oracle.t(self.now)} took {took:.1f}s, past "
                f"the renew deadline ({self.renew:g}s)"
            )
        self.oracle.observe(seq, at, self.pending(), self.drain())

    def tick_all(self) -> None:
        for index in range(len(self.replicas)):
            self.tick(index)

    def settle(self, rounds: int = 12) -> None:
        """The broker answers again; every replica ticks each ``retry_seconds`` for
        ``rounds`` polls. Then nothing may be overdue, stuck or lost."""
        if self.armed:
            self._next(f"disarmed: {self.armed}")
            self.armed = ""
        if not self.servers.broker.running():
            self.broker_start()
        for _ in range(rounds):
            self.advance(self.retry)
            self.tick_all()
        self._check_settled()

    def _check_settled(self) -> None:
        t = self.oracle.t
        layout = read_layout(self.client, BASE)
        led = sorted(s.index for r in self.replicas for s in r.balancer.led())
        if led != list(range(layout.shards)):
            self.oracle.problem(
                f"after settling at {t(self.now)}: shards led {led}, the layout has {layout.shards}"
            )
        pending = self.pending()
        stuck = sorted(
            f"{entry}@{t(scheduled)}"
            for entry, scheduled in pending.values()
            if entry not in self.refused
        )
        if stuck:
            self.oracle.problem(
                f"after settling at {t(self.now)}: pending records of entries whose queue "
                f"takes messages: {stuck}"
            )
        overdue: list[str] = []  # due more than two polls ago
        for keys in layout.all_keys():
            late: Any = self.client.zrangebyscore(
                keys.schedule, 0, self.now - (2 * self.retry + 1), withscores=True
            )
            overdue.extend(f"{keys.name_of(key)}@{t(score)}" for key, score in late)
            for key in self.client.zrange(keys.schedule, 0, -1):
                if self.client.hget(str(key), "run_now") is not None:
                    overdue.append(f"{keys.name_of(str(key))} (run_now)")
        if overdue:
            self.oracle.problem(f"after settling at {t(self.now)}: overdue: {sorted(overdue)}")
        dead = self.dead()
        lost = [
            f"{s.entry}@{t(s.scheduled)} ({s.task_id})"
            for s in self.oracle.unsent()
            if s.task_id not in pending and s.task_id not in dead
        ]
        if lost:
            self.oracle.problem(
                f"after settling at {t(self.now)}: claimed, never sent, not pending, not a "
                f"dead letter: {lost}"
            )

    # -- what Redis and the broker hold ----------------------------------------------------

    def pending(self) -> dict[str, tuple[str, int]]:
        """Every pending record of every layout: task id -> (entry, scheduled)."""
        return self._records("pending")

    def dead(self) -> dict[str, tuple[str, int]]:
        return self._records("dead")

    def _records(self, kind: str) -> dict[str, tuple[str, int]]:
        found = {}
        for layout in LAYOUTS:
            for keys in layout.all_keys():
                for task_id, raw in self.client.hgetall(getattr(keys, kind)).items():
                    data = json.loads(raw)
                    found[str(task_id)] = (str(data["entry"]), int(data["scheduled"]))
        return found

    def drain(self) -> list[tuple[str, str, int]]:
        """Take every message the broker holds: (task id, entry, scheduled)."""
        if not self.servers.broker.running():
            return []
        queues = ["celery"] + [queue_of(n) for n in NAMES if n not in self.refused]
        with self.broker.pipeline(transaction=True) as pipe:
            for queue in queues:
                pipe.lrange(queue, 0, -1)
            pipe.delete(*queues)
            *lists, _deleted = pipe.execute()
        found = []
        for queue, items in zip(queues, lists, strict=True):
            for raw in reversed(items):  # LPUSH: the oldest is at the right end
                message = Message.parse(raw, 0.0, queue)
                headers = message.headers
                found.append(
                    (
                        message.task_id,
                        str(headers["safe_redbeat_entry"]),
                        int(headers["safe_redbeat_scheduled"]),
                    )
                )
        return found

    def layout(self) -> Layout:
        """The layout stored in the schedule's Redis."""
        return read_layout(self.client, BASE)

    def scores(self) -> dict[str, tuple[float | None, float | None]]:
        """Of each managed name in the layout in use: its schedule score, and the last run
        (or creation anchor) its ``meta`` records."""
        layout = self.layout()
        with self.client.pipeline(transaction=False) as pipe:
            for name in NAMES:
                keys = layout.keys_for(name)
                pipe.zscore(keys.schedule, keys.entry(name))
                pipe.hget(keys.entry(name), "meta")
            found = pipe.execute()
        scores = {}
        for name, score, meta in zip(NAMES, found[::2], found[1::2], strict=True):
            last_run_at, _runs = decode_meta(name, meta)
            scores[name] = (score, None if last_run_at is None else last_run_at.timestamp())
        return scores

    def check(self) -> None:
        """The checks that read Redis after any step."""
        self.oracle.check_waiting(self.now, self.scores())

    # -- the management API --------------------------------------------------------------

    def upsert(self, name: str, spec: Spec) -> None:
        seq = self._next(f"upsert {name!r}: {spec.describe(self.oracle.t)}")
        try:
            self.schedule.put(entry_spec(name, spec))
        except InvalidEntry as exc:
            self.log.append(f"  refused: {exc}")
            return
        self._written(name, spec, seq, "upsert")

    def update(self, name: str, **changes: Any) -> None:
        """``Schedule.update`` with Spec fields (``plan`` for the schedule)."""
        life = self.oracle.current(name)
        seq = self._next(f"update {name!r}: {changes}")
        api: dict[str, Any] = {}
        for field, value in changes.items():
            if field == "plan":
                api.update(plan_fields(value))
            elif field in ("start_time", "expires"):
                api[field] = utc(value)
            else:
                api[field] = value
        try:
            self.schedule.update(name, **api)
        except EntryNotFound:
            self._expect_missing(name, "update")
            return
        except InvalidEntry as exc:
            self.log.append(f"  refused: {exc}")
            return
        if life is None:
            self.oracle.problem(f"update of {name!r} at {self.oracle.t(self.now)} found an entry")
            return
        tag = ""
        if "plan" in changes and changes["plan"].kind == "rrule":
            tag = "rrule-update-lost"  # test_an_update_to_an_rrule_schedule_is_written
        self._written(name, replace(life.spec, **changes), seq, "update", tag)

    def _written(self, name: str, spec: Spec, seq: int, what: str, tag: str = "") -> None:
        """After a write that did not fail: Redis holds what was written (read back), and
        the model has it from now on. If not, the model keeps what Redis still has."""
        wanted = entry_spec(name, spec)
        stored = self.schedule.get(name).spec
        if (stored.definition(), stored.lifecycle) != (wanted.definition(), wanted.lifecycle):
            self.oracle.problem(
                f"{what} of {name!r} at {self.oracle.t(self.now)} did not fail, and Redis does "
                f"not hold it: {stored.definition()} {stored.lifecycle}, not "
                f"{wanted.definition()} {wanted.lifecycle}",
                tag,
            )
            return
        self.oracle.written(name, spec, seq, self.now)

    def enable(self, name: str, enabled: bool = True) -> None:
        self.update(name, enabled=enabled)

    def delete(self, name: str) -> None:
        seq = self._next(f"delete {name!r}")
        try:
            self.schedule.delete(name)
        except EntryNotFound:
            self._expect_missing(name, "delete")
            return
        if self.oracle.current(name) is None:
            self.oracle.problem(f"delete of {name!r} at {self.oracle.t(self.now)} found an entry")
        self.oracle.deleted(name, seq)

    def run_now(self, name: str) -> None:
        seq = self._next(f"run_now {name!r}")
        try:
            requested = self.schedule.run_now(name)
        except EntryNotFound:
            self._expect_missing(name, "run_now")
            return
        self.oracle.requested(name, seq, int(requested.timestamp()))

    def _expect_missing(self, name: str, what: str) -> None:
        if self.oracle.current(name) is not None:
            self.oracle.problem(
                f"{what} of {name!r} at {self.oracle.t(self.now)}: EntryNotFound, the model "
                "has the entry"
            )

    # -- faults ------------------------------------------------------------------------

    def broker_stop(self) -> None:
        self.oracle.broker_stopped(self._next("broker stopped"))
        self.servers.broker.stop()

    def broker_start(self) -> None:
        self.oracle.broker_started(self._next("broker started"))
        self.servers.broker.start()

    def refuse(self, name: str) -> None:
        """The broker refuses ``name``'s messages: its queue key holds a SET."""
        self.oracle.refusing(self._next(f"broker refuses {queue_of(name)!r}"))
        self.broker.delete(queue_of(name))
        self.broker.sadd(queue_of(name), "not a list")
        self.refused.add(name)

    def accept(self, name: str) -> None:
        self.oracle.accepting(self._next(f"broker accepts {queue_of(name)!r} again"))
        self.broker.delete(queue_of(name))
        self.refused.discard(name)

    def steal_lease(self, shard: int, how: str) -> None:
        """``delete`` the lease key of ``shard`` (of the layout in use), or set it to a
        ``foreign`` safe_redbeat holder or a ``stock`` RedBeat token for one lease."""
        layout = read_layout(self.client, BASE)
        keys = layout.keys(shard % layout.shards)
        self._next(f"lease {keys.lease!r}: {how}")
        if how == "delete":
            self.client.delete(keys.lease)
        elif how == "foreign":
            holder = '{"host":"intruder","pid":1,"name":"intruder","nonce":"0"}'
            self.client.set(keys.lease, f"99999999999999999 {holder}", px=int(self.lease * 1000))
        else:
            self.client.set(keys.lease, "0f6e3c2a9b8d4e5f", px=int(self.lease * 1000))

    def restart(self, index: int, *, graceful: bool) -> None:
        """Replica ``index`` exits (``graceful``: as on SIGTERM, releasing its leases; else
        as on SIGKILL: leases and heartbeat stay until they expire) and a new process with
        the same instance name starts."""
        self._next(f"replica {index} {'stops' if graceful else 'is killed'} and starts again")
        old = self.replicas[index]
        if graceful:
            old.close()
        elif old.binding.has_client:
            old.client.close()  # its connections die with it; nothing is released
        old.app.close()
        self.generations[index] = self.generations.get(index, 0) + 1
        self.replicas[index] = self._replica(index, self.generations[index])

    def arm(self, kind: str) -> None:
        """Inject ``kind`` inside the next publish of any replica, before its message goes
        into the broker batch: ``broker-stop``, ``pause`` (the clock jumps past the lease:
        a leader frozen mid-publish) or ``lease-delete`` (of the message's shard)."""
        self._next(f"armed: {kind} inside the next publish")
        self.armed = kind

    def _mid_publish(self, kind: str, occurrence: Occurrence) -> None:
        if kind == "broker-stop":
            if self.servers.broker.running():
                self.broker_stop()
        elif kind == "pause":
            seq = self._next(f"paused mid-publish of {occurrence.entry!r} for {self.lease + 1:g}s")
            self.oracle.lost_mid_publish.append(seq)
            self.advance(self.lease + 1)
        else:
            shard = self.layout().shard_of(occurrence.entry)
            self.oracle.lost_mid_publish.append(self._next(f"mid-publish of {occurrence.entry!r}:"))
            self.steal_lease(shard, "delete")

    def wipe(self) -> None:
        """FLUSHDB of the schedule's Redis: every key, lease and pending record gone."""
        seq = self._next("FLUSHDB of the schedule's Redis")
        self.client.flushdb()
        self.oracle.wiped(seq, self.now)

    def reshard(self, to: int) -> None:
        """``reshard`` to ``to`` shards; the replicas tick while it waits for them."""
        self._next(f"reshard to {to}")

        def sleep(seconds: float) -> None:
            self.advance(seconds)
            self.tick_all()

        try:
            report = reshard(
                self.client,
                BASE,
                to,
                app=self.manager,
                wait_seconds=self.lease + 2 * self.retry,
                poll_seconds=self.retry / 2,
                say=lambda text: self.log.append(f"  {text}"),
                monotonic=self.monotonic,
                sleep=sleep,
            )
        except SafeRedBeatError as exc:  # a lease nobody released: undone, documented
            self.log.append(f"  reshard refused: {exc}")
            return
        self.log.append(f"  {report.summary()}")

    def describe(self) -> str:
        return "\n".join(self.log)
