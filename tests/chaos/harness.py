"""One chaos run: Redis, N supervised beat replicas, an auditor, faults, the oracle."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from safe_redbeat.leader.lease import Holder, parse_token
from safe_redbeat.model.occurrence import HEADER_ENTRY, HEADER_MAX_RUNTIME, HEADER_PREFIX
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout
from safe_redbeat.store.scripts import Scripts
from testbed.beat import Message
from testbed.redis_server import HOST, RedisServer
from testbed.sentinel import SentinelDeployment
from testbed.settings import LEASE, RENEW, RETRY, SOCKET_TIMEOUT
from tests.chaos.cluster import (
    AuditorThread,
    LeaseMonitor,
    Supervisor,
    current_holder,
    skew_env,
    wait_for_leader,
)
from tests.chaos.faults import FAULTS
from tests.chaos.model import (
    BROKER_FAULTS,
    BROKER_REFUSE_ONE,
    FAULT_KINDS,
    SENTINEL_FAILOVER,
    SENTINEL_MODE_FAULTS,
    SHARD_MODE_FAULTS,
    FaultRecord,
    Lifetime,
    Outboxed,
    RunData,
)
from tests.chaos.oracle import OracleSettings, Report, analyze, broker_problems
from tests.chaos.workload import (
    REFUSED_QUEUE,
    build_specs,
    redbeat_app,
    static_schedule,
    write_dynamic,
    write_dynamic_sharded,
)
from tests.support import KEYS

LEASE_KEY = KEYS.lease


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def outboxed(task_id: str, raw: str) -> Outboxed:
    """A pending or dead-letter record; entry and scheduled time None if it is not the JSON
    object safe_redbeat writes (``{"entry": ..., "scheduled": ..., "attempts": ...}``)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Outboxed(task_id, None, None)
    entry, scheduled, attempts = data.get("entry"), data.get("scheduled"), data.get("attempts")
    return Outboxed(
        task_id,
        entry if isinstance(entry, str) else None,
        scheduled if isinstance(scheduled, int) else None,
        attempts if isinstance(attempts, int) else 0,
        str(data.get("last_error") or ""),
    )


@dataclass
class ChaosConfig:
    #: seconds of fault injection (after start-up and the clock-skew phase)
    duration: float = 120.0
    seed: int = 1
    replicas: int = 3
    statics: int = 200
    dynamics: int = 60
    crons: int = 6
    #: interval entries' periods, whole seconds (inclusive range)
    periods: tuple[int, int] = (1, 5)
    lease: float = LEASE
    renew: float = RENEW
    retry: float = RETRY
    socket_timeout: float = SOCKET_TIMEOUT
    backoff_max: float = 2.0
    faults: tuple[str, ...] = FAULT_KINDS
    #: inject each fault kind once (in a seeded order) and stop, whatever ``duration``
    each_once: bool = False
    #: wall-clock offset of replica-0, which leads first; 0 = no skewed replica
    skew: float = 8.0
    #: seconds replica-0 (the skewed one) leads before the first fault
    skew_phase: float = 6.0
    #: random pause before each fault, after the previous failover window closed
    gap: tuple[float, float] = (0.5, 2.5)
    final_quiet: float = 7.0
    loglevel: str = "INFO"
    workdir: Path | None = None
    keep_workdir: bool = False
    oracle: OracleSettings = field(default_factory=OracleSettings)
    #: the schedule behind Redis Sentinel (primary, replica, 3 sentinels); the broker is
    #: the harness' own server. Enables the sentinel-failover fault.
    sentinel: bool = False
    #: seconds the replica is cut off before each primary failure, cycled (0: a plain
    #: failover; > 0: the writes of that many seconds are lost)
    sentinel_lags: tuple[float, ...] = (1.2, 0.0)
    #: the sentinels' down-after-milliseconds
    sentinel_down_after_ms: int = 1500
    #: shards of the schedule (``safe_redbeat_shards``); above 1 the faults hit replicas
    #: leading some shards, and one shard's lease key (``SHARD_MODE_FAULTS``)
    shards: int = 1
    #: the Celery broker on a Redis server of its own (AOF, ``appendfsync always``), not
    #: the schedule's; the broker faults (``BROKER_FAULTS``) need it. With ``sentinel`` the
    #: broker is a server of its own anyway.
    own_broker: bool = False
    #: broker-stop: seconds the broker stays down (range)
    broker_down: tuple[float, float] = (8.0, 12.0)
    #: broker-refuse-one: the refused entry's queue holds a SET at least ``refuse_min``
    #: seconds, until the entry has a dead letter, at most ``refuse_max`` seconds
    refuse_min: float = 6.0
    refuse_max: float = 15.0
    #: ``safe_redbeat_publish_attempts`` (None: the library's default)
    publish_attempts: int | None = None
    #: an overlap policy every entry gets (``skip``, ``replace``; '': none), with
    #: ``max_runtime``; the auditor then ends each run as it takes the message (a worker
    #: whose tasks take no time)
    overlap: str = ""
    max_runtime: float = 30.0

    def beat_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "safe_redbeat_lease_seconds": self.lease,
            "safe_redbeat_renew_seconds": self.renew,
            "safe_redbeat_retry_seconds": self.retry,
            "safe_redbeat_socket_timeout": self.socket_timeout,
            "safe_redbeat_backoff_max_seconds": self.backoff_max,
        }
        if self.shards > 1:
            settings["safe_redbeat_shards"] = self.shards
        if self.publish_attempts is not None:
            settings["safe_redbeat_publish_attempts"] = self.publish_attempts
        return settings

    @property
    def broker_faults(self) -> bool:
        return any(kind in BROKER_FAULTS for kind in self.faults)

    @property
    def failover_allowance(self) -> float:
        return self.lease + self.retry + self.oracle.slack


class Harness:
    """Owns every process of a run; ``with Harness(config) as h: report = h.run()``."""

    def __init__(self, config: ChaosConfig, log: Callable[[str], None] = _stderr) -> None:
        self.config = config
        self.log = log
        self.rng = random.Random(config.seed)
        self.lease_key = LEASE_KEY
        self._own_workdir = config.workdir is None
        self.workdir = config.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.specs = build_specs(
            self.rng,
            statics=config.statics,
            dynamics=config.dynamics,
            crons=config.crons,
            periods=config.periods,
            refused=BROKER_REFUSE_ONE in config.faults,
            lifetime=(
                {"overlap": config.overlap, "max_runtime": config.max_runtime}
                if config.overlap
                else None
            ),
        )
        #: runs the auditor ended (``overlap``), and calls that failed
        self.runs_ended = 0
        self.runs_end_errors = 0
        self._run_scripts: dict[str, Scripts] = {}
        self.lifetimes: dict[str, list[Lifetime]] = {}
        self.faults: list[FaultRecord] = []
        #: the schedule's Redis (only the broker's with ``sentinel``)
        self.server = RedisServer(appendonly=True, workdir=self.workdir / "redis")
        #: the Celery broker's Redis: ``server`` unless it has one of its own
        self.broker_server = (
            RedisServer(appendonly=True, workdir=self.workdir / "broker")
            if config.own_broker and not config.sentinel
            else self.server
        )
        if config.broker_faults and not (config.own_broker or config.sentinel):
            raise ValueError(
                f"{', '.join(k for k in config.faults if k in BROKER_FAULTS)} need the broker "
                f"on a server of its own: ChaosConfig(own_broker=True)"
            )
        self.sentinel: SentinelDeployment | None = None
        if config.sentinel:
            unfit = set(config.faults) - set(SENTINEL_MODE_FAULTS) - set(BROKER_FAULTS)
            if unfit:
                raise ValueError(f"not with the schedule behind Sentinel: {sorted(unfit)}")
            self.sentinel = SentinelDeployment(
                down_after_ms=config.sentinel_down_after_ms, workdir=self.workdir / "sentinel"
            )
        elif SENTINEL_FAILOVER in config.faults:
            raise ValueError(f"{SENTINEL_FAILOVER} needs ChaosConfig(sentinel=True)")
        if config.shards > 1:
            unfit = set(config.faults) - set(SHARD_MODE_FAULTS) - set(BROKER_FAULTS)
            if unfit or config.sentinel:
                raise ValueError(
                    f"not with a sharded schedule: {sorted(unfit) or 'sentinel'}; "
                    f"the sharded faults are {', '.join(SHARD_MODE_FAULTS + BROKER_FAULTS)}"
                )
        #: the schedule's layout: one lease (and pending hash) per shard
        self.layout = Layout(KEYS, config.shards)
        self.lease_keys = [keys.lease for keys in self.layout.all_keys()]
        self.pending_keys = [keys.pending for keys in self.layout.all_keys()]
        self.dead_keys = [keys.dead for keys in self.layout.all_keys()]
        self.monitor: LeaseMonitor | None = None
        self.skew_mechanism = ""
        self.failed = False
        self.started_at = time.time()

    # -- setup / teardown -------------------------------------------------------------

    def __enter__(self) -> Harness:
        self.server.start()
        try:
            if self.broker_server is not self.server:
                self.broker_server.start()
        except BaseException:
            self.server.stop()
            raise
        #: the broker (and the schedule unless it is behind Sentinel or the broker has a
        #: server of its own)
        self.broker = redis.Redis(
            host=HOST, port=self.broker_server.port, decode_responses=True, socket_timeout=5,
            socket_connect_timeout=2,
        )  # fmt: skip
        self.configure_redis()
        schedule_url, options = self.server.url, {}
        #: the schedule's Redis (its current primary behind Sentinel)
        self.admin = self.broker
        if self.broker_server is not self.server:
            self.admin = redis.Redis(
                host=HOST, port=self.server.port, decode_responses=True, socket_timeout=5,
                socket_connect_timeout=2,
            )  # fmt: skip
        if self.sentinel is not None:
            try:
                self.sentinel.start()
            except BaseException:
                self.sentinel.cleanup()
                self.broker.close()
                self.server.stop()
                raise
            schedule_url = self.sentinel.url
            options = self.sentinel.redbeat_options(self.config.socket_timeout)
            self.admin = self.sentinel.client()
        queues = ["celery"] + ([REFUSED_QUEUE] if BROKER_REFUSE_ONE in self.config.faults else [])
        self.auditor = AuditorThread(
            HOST,
            self.broker_server.port,
            queues=queues,
            on_taken=self._end_runs if self.config.overlap else None,
        )
        settings = self.config.beat_settings()
        if options:
            settings["redbeat_redis_options"] = options
        self.supervisor = Supervisor(
            schedule_url,
            self.workdir / "logs",
            settings=settings,
            schedule=static_schedule(self.specs.values()),
            loglevel=self.config.loglevel,
            broker_url=self.broker_server.url,
        )
        self.writer = redbeat_app(schedule_url, options)
        if self.sharded:
            self.monitor = LeaseMonitor(HOST, self.server.port, self.lease_keys)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.supervisor.cleanup()
        self.auditor.stop()
        if self.monitor is not None:
            self.monitor.stop()
        self.admin.close()
        self.broker.close()
        self.writer.close()
        self.server.stop()
        if self.broker_server is not self.server:
            self.broker_paused(False)  # a fault that failed half-way may have left it stopped
            self.broker_server.stop()
        if self.sentinel is not None:
            self.sentinel.cleanup()
        if exc_type is not None:
            self.failed = True
        if self._own_workdir and not self.config.keep_workdir and not self.failed:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _end_runs(self, messages: list[Message]) -> None:
        """The auditor took ``messages``: each run ends at once (``run_ended.lua`` on the
        schedule's Redis, as a worker's ``track_runs`` calls it)."""
        runs = [(m.task_id, found) for m in messages if (found := _run_of(m)) is not None]
        if not runs:
            return
        try:
            with self.admin.pipeline(transaction=False) as pipe:
                for task_id, (prefix, entry) in runs:
                    scripts = self._run_scripts.get(prefix)
                    if scripts is None:
                        keys = Keys(prefix=prefix, lease=prefix + ":lock")
                        scripts = self._run_scripts[prefix] = Scripts(self.admin, keys)
                    k = scripts.keys
                    scripts.raw.run_ended(
                        keys=[k.running(entry), k.running_index, k.entry(entry)],
                        args=[task_id],
                        client=pipe,
                    )
                replies = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            self.runs_end_errors += len(runs)
            return
        failed = sum(isinstance(reply, Exception) for reply in replies)
        self.runs_end_errors += failed
        self.runs_ended += len(runs) - failed

    def configure_redis(self) -> None:
        """``appendfsync everysec`` on ``server``, unless broker-stop may SIGKILL it."""
        # appendfsync always (RedisServer's default) costs an fsync per publish; a clean
        # shutdown flushes the AOF anyway, which is all redis-restart-aof needs. A broker
        # that broker-stop SIGKILLs keeps it: every message it accepted must survive.
        if self.server is self.broker_server and self.config.broker_faults:
            return
        client = redis.Redis(host=HOST, port=self.server.port, socket_timeout=5)
        try:
            client.config_set("appendfsync", "everysec")
        finally:
            client.close()

    def broker_paused(self, paused: bool) -> None:
        """SIGSTOP (``True``) or SIGCONT the broker's server process, by its PID."""
        if self.broker_server.running():
            os.kill(self.broker_server.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def outbox(self, kind: str) -> list[Outboxed]:
        """Every shard's ``"pending"`` records or ``"dead"`` letters, as they are now."""
        keys = self.pending_keys if kind == "pending" else self.dead_keys
        found: list[Outboxed] = []
        for key in keys:
            for task_id, raw in self.admin.hscan_iter(key, count=1000):
                found.append(outboxed(str(task_id), raw))
        return found

    # -- helpers used by the faults ---------------------------------------------------

    @property
    def sharded(self) -> bool:
        return self.config.shards > 1

    def pick_shard(self) -> int:
        """A shard chosen at random (shard 0, drawing nothing, when not sharded)."""
        return self.rng.randrange(self.config.shards) if self.sharded else 0

    def leader(self, timeout: float = 20.0, shard: int | None = None) -> Holder:
        """The holder of ``shard``'s lease (a random shard's), once it is one of our live
        processes."""
        lease_key = self.lease_keys[self.pick_shard() if shard is None else shard]
        deadline = time.monotonic() + timeout
        while True:
            holder = wait_for_leader(
                self.admin, max(deadline - time.monotonic(), 0.1), lease_key=lease_key
            )
            process = self.supervisor.process_of(holder.name)
            if process is not None and process.alive() and process.pid == holder.pid:
                return holder
            if time.monotonic() >= deadline:
                raise AssertionError(f"lease held by {holder.describe()}, not a live replica")
            time.sleep(0.05)

    def shard_details(self, holder: Holder) -> dict[str, Any]:
        """``{"shards": [...]}``: the shards ``holder`` leads now (nothing when not sharded)."""
        if not self.sharded:
            return {}
        values = self.admin.mget(self.lease_keys)
        led = []
        for index, value in enumerate(values):
            found = None if value is None else parse_token(str(value))
            if found is not None and (found.name, found.pid) == (holder.name, holder.pid):
                led.append(index)
        return {"shards": led}

    def wait_mid_dispatch(self, timeout: float) -> int:
        """Wait until claimed occurrences are pending (claimed, not yet acknowledged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.admin.pipeline(transaction=False) as pipe:
                    for key in self.pending_keys:
                        pipe.hlen(key)
                    pending = sum(int(n) for n in pipe.execute())
            except redis.RedisError:
                pending = 0
            if pending:
                return pending
            time.sleep(0.002)
        return 0

    def dynamic_deleted(self, at: float) -> None:
        for name, spec in self.specs.items():
            if spec.source == "dynamic":
                lives = self.lifetimes[name]
                if lives and lives[-1].deleted is None:
                    lives[-1].deleted = at

    def reseed(self) -> None:
        """Write the harness' own entries (again), as an application would."""
        if self.sharded:
            write_dynamic_sharded(self.writer, self.specs.values())
        else:
            write_dynamic(self.writer, self.specs.values())
        created = time.time()
        for name, spec in self.specs.items():
            if spec.source == "dynamic":
                # entry.save() records "last run = now": due one period later (crontab:
                # at the next minute boundary, UTC)
                first_due: float
                if spec.kind == "crontab":
                    first_due = math.ceil(created / 60) * 60
                else:
                    first_due = created + spec.period
                self.lifetimes.setdefault(name, []).append(Lifetime(created, None, first_due))

    # -- the run ----------------------------------------------------------------------

    def run(self) -> tuple[Report, RunData]:
        config = self.config
        self.auditor.start()
        skews: dict[str, float] = {}
        first_env: dict[str, str] = {}
        if config.skew:
            first_env, self.skew_mechanism = skew_env(config.skew)
            skews["replica-0"] = config.skew
        self.supervisor.add("replica-0", first_env)
        self.supervisor.start()
        for lease_key in self.lease_keys:
            wait_for_leader(self.admin, 60, among={"replica-0"}, lease_key=lease_key)
        if self.monitor is not None:
            self.monitor.start()
        self.reseed()
        observe_from = time.time()
        for index in range(1, config.replicas):
            self.supervisor.add(f"replica-{index}")
        self.log(
            f"chaos: {len(self.specs)} entries, {config.replicas} replicas, "
            f"{self.layout.describe()}, seed {config.seed}, "
            f"replica-0 clock {config.skew:+.1f}s ({self.skew_mechanism or 'no skew'}), "
            f"workdir {self.workdir}"
        )
        if self.sharded:
            balanced = self.wait_balanced(30.0)
            self.log(f"chaos: shards shared out after {balanced:.1f}s")
        time.sleep(config.skew_phase)
        holder = current_holder(self.admin, self.lease_keys[0])
        skew_led = holder is not None and holder.name == "replica-0"

        fault_deadline = time.time() + config.duration
        order: list[str] = []
        rounds = 0
        window_end = time.time()
        while True:
            if not order:
                if config.each_once and rounds:
                    break
                order = list(config.faults)
                self.rng.shuffle(order)
                rounds += 1
            if not config.each_once and time.time() >= fault_deadline:
                break
            kind = order.pop(0)
            time.sleep(max(window_end - time.time(), 0) + self.rng.uniform(*config.gap))
            record = FAULTS[kind](self)
            self.faults.append(record)
            window_end = record.recovered + config.failover_allowance
            self.log(
                f"chaos: t+{record.started - observe_from:6.1f}s {kind} "
                f"target={record.target} {record.details}"
            )
        time.sleep(max(window_end - time.time(), 0) + config.final_quiet)
        observe_until = time.time()
        self.auditor.stop()
        if self.monitor is not None:
            self.monitor.stop()
        final_codes = self.supervisor.shutdown()
        dead_letters, pending_at_end = self.outbox("dead"), self.outbox("pending")
        data = RunData(
            specs=self.specs,
            lifetimes={
                name: self.lifetimes.get(name) or [self._static_lifetime(spec, observe_from)]
                for name, spec in self.specs.items()
            },
            messages=self.auditor.sent,
            faults=self.faults,
            exits=list(self.supervisor.exits),
            observe_from=observe_from,
            observe_until=observe_until,
            lease_seconds=config.lease,
            retry_seconds=config.retry,
            skews=skews,
            origins=self._origins(),
            final_returncodes=final_codes,
            shards=config.shards,
            lease_samples=[] if self.monitor is None else list(self.monitor.samples),
            tracebacks=self._tracebacks(),
            dead_letters=dead_letters,
            pending_at_end=pending_at_end,
            info={
                "seed": config.seed,
                "replicas": config.replicas,
                "entries": len(self.specs),
                "skew_mechanism": self.skew_mechanism,
                "skewed_replica_led_first": skew_led,
                "broker": "own server"
                if self.broker_server is not self.server or self.sentinel is not None
                else "the schedule's server",
                "auditor_errors": self.auditor.errors,
                "overlap": {
                    "policy": config.overlap,
                    "runs_ended": self.runs_ended,
                    "end_errors": self.runs_end_errors,
                    **self._overlap_lines(),
                }
                if config.overlap
                else None,
                "lease_monitor_errors": 0 if self.monitor is None else self.monitor.errors,
                "sentinel": None
                if self.sentinel is None
                else {
                    "planned_failovers": len(self.sentinel.promotions),
                    "failovers": self.sentinel.switches(),
                },
                "workdir": str(self.workdir),
                "wall_seconds": round(time.time() - self.started_at, 1),
                "config": {
                    k: v for k, v in asdict(config).items() if k not in ("workdir", "oracle")
                },
            },
        )
        report = analyze(data, config.oracle)
        if report.crashes or report.missing or report.dup_different_id or report.tracebacks:
            self.failed = True
        if config.broker_faults and broker_problems(report):
            self.failed = True
        return report, data

    def wait_balanced(self, timeout: float) -> float:
        """Wait until every shard is led and each replica leads its share (at least
        ``K // replicas``); the seconds it took."""
        assert self.monitor is not None
        started = time.monotonic()
        share = self.config.shards // self.config.replicas
        holders: list[Holder | None] = []
        while time.monotonic() - started < timeout:
            holders = self.monitor.holders()
            counts = {f"replica-{i}": 0 for i in range(self.config.replicas)}
            for holder in holders:
                if holder is not None and holder.name in counts:
                    counts[holder.name] += 1
            if None not in holders and min(counts.values()) >= share:
                return time.monotonic() - started
            time.sleep(0.1)
        led = [None if h is None else h.name for h in holders]
        raise AssertionError(
            f"the {self.config.shards} shards were not shared out among "
            f"{self.config.replicas} replicas within {timeout}s: holders by shard {led}"
        )

    def _tracebacks(self) -> list[dict[str, Any]]:
        """Every Python traceback in the replicas' logs, with the lines that follow it."""
        found: list[dict[str, Any]] = []
        for process in self.supervisor.all_processes:
            lines = process.log().splitlines()
            for number, line in enumerate(lines):
                if "Traceback (most recent call last)" in line:
                    found.append(
                        {
                            "replica": process.name,
                            "pid": process.pid,
                            "log": str(process.log_path),
                            "line": number + 1,
                            "excerpt": "\n".join(lines[max(number - 1, 0) : number + 14]),
                        }
                    )
        return found

    def _overlap_lines(self) -> dict[str, int]:
        """How many occurrences the replicas logged as skipped or replacing a run going
        (``--overlap``; the auditor ends each run as it takes its message, so a skip is
        one the oracle counts as missing)."""
        logs = [process.log() for process in self.supervisor.all_processes]
        return {
            "skipped": sum(log.count("(overlap=skip)") for log in logs),
            "replaced": sum(log.count("(overlap=replace)") for log in logs),
        }

    @staticmethod
    def _static_lifetime(spec: Any, observe_from: float) -> Lifetime:
        """A ``beat_schedule`` entry, seeded by the first leader before ``observe_from``:
        it first runs at its next slot (one period after seeding; a crontab at the next
        minute boundary), so by these times at the latest."""
        if spec.kind == "crontab":
            return Lifetime(observe_from, None, math.ceil(observe_from / 60) * 60)
        return Lifetime(observe_from, None, observe_from + spec.period)

    def _origins(self) -> dict[str, str]:
        origins: dict[str, str] = {}
        for message in self.auditor.sent:
            match = re.match(r"gen(\d+)@", message.origin)
            if match and message.origin not in origins:
                name = self.supervisor.pids.get(int(match.group(1)))
                if name is not None:
                    origins[message.origin] = name
        return origins


def _run_of(message: Message) -> tuple[str, str] | None:
    """(shard prefix, entry) of a message sent under an overlap policy, else None."""
    headers = message.headers
    prefix, entry = headers.get(HEADER_PREFIX), headers.get(HEADER_ENTRY)
    if headers.get(HEADER_MAX_RUNTIME) is None or not isinstance(prefix, str):
        return None
    return (prefix, entry) if isinstance(entry, str) else None


def sharded_scenario(shards: int = 6, **overrides: Any) -> ChaosConfig:
    """The sharded run (tests/chaos/test_shard_chaos.py, ``python -m tests.chaos --shards
    K --each-once``): 3 replicas share ``shards`` shards of ~240 entries every 1-3 s; one
    of each replica fault (SIGSTOP longer than the lease, SIGKILL, SIGTERM, each on a
    replica leading some shards, restarted like a pod) and one shard's lease key deleted."""
    settings: dict[str, Any] = {
        "shards": shards,
        "replicas": 3,
        "statics": 180,
        "dynamics": 60,
        "crons": 0,
        "periods": (1, 3),
        "faults": SHARD_MODE_FAULTS,
        "each_once": True,
        "skew": 0.0,
        "skew_phase": 1.0,
        "gap": (0.3, 1.0),
        "final_quiet": 4.0,
    }
    settings.update(overrides)
    return ChaosConfig(**settings)


def broker_scenario(*faults: str, **overrides: Any) -> ChaosConfig:
    """The broker run (tests/chaos/test_broker_faults.py): 2 replicas, ~50 entries every
    1-5 s and the refused entry, the broker on a server of its own; each of ``faults``
    (default: every broker fault) once. Broker away for 8-10 s (stop) or lease + 0.5-1.5 s
    (pause); one entry's queue refused for 6 s, longer (12 s at most) until the entry has a
    dead letter (3 attempts)."""
    settings: dict[str, Any] = {
        "own_broker": True,
        "replicas": 2,
        "statics": 36,
        "dynamics": 12,
        "crons": 0,
        "periods": (1, 5),
        "faults": faults or BROKER_FAULTS,
        "each_once": True,
        "skew": 0.0,
        "skew_phase": 2.0,
        "gap": (0.3, 1.0),
        "final_quiet": 4.0,
        "broker_down": (8.0, 10.0),
        "refuse_max": 12.0,
        "publish_attempts": 3,
    }
    settings.update(overrides)
    return ChaosConfig(**settings)


def run_chaos(
    config: ChaosConfig, log: Callable[[str], None] = _stderr
) -> tuple[Report, RunData, Path]:
    """Run once; return the report, the raw observations and the (kept) workdir."""
    with Harness(config, log) as harness:
        report, data = harness.run()
        return report, data, harness.workdir
