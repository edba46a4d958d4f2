"""Plain records shared by the harness and the oracle (no I/O here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Fault kinds, in the order the results table lists them.
FAULT_KINDS = (
    "sigstop-leader",
    "sigkill-leader",
    "sigterm-leader",
    "delete-lock",
    "wipe-keys",
    "redis-restart-lossy",
    "redis-restart-aof",
    "client-kill",
    "redis-pause",
    "poison",
)

#: The schedule Redis behind Sentinel: its primary dies, the replica is promoted
#: (``python -m tests.chaos --sentinel``, tests/chaos/test_sentinel_failover.py).
SENTINEL_FAILOVER = "sentinel-failover"

#: Fault kinds that make sense with the schedule behind Sentinel (the broker is another
#: server). Restarting or pausing "the" Redis would target the broker or trigger a
#: failover of its own.
SENTINEL_MODE_FAULTS = (
    "sigstop-leader",
    "sigkill-leader",
    "sigterm-leader",
    "delete-lock",
    "wipe-keys",
    "client-kill",
    SENTINEL_FAILOVER,
)

#: Fault kinds of a sharded run (``ChaosConfig(shards=K)``, ``python -m tests.chaos
#: --shards K``): each signal hits a replica that leads some shards, ``delete-lock``
#: deletes one shard's lease key.
SHARD_MODE_FAULTS = (
    "sigstop-leader",
    "sigkill-leader",
    "sigterm-leader",
    "delete-lock",
)

#: Faults of the Celery broker, which then runs on a Redis server of its own
#: (``ChaosConfig(own_broker=True)``, ``python -m tests.chaos --broker``): stopped and
#: started again with its data, frozen longer than the lease, refusing one entry's message.
BROKER_STOP = "broker-stop"
BROKER_PAUSE = "broker-pause"
BROKER_REFUSE_ONE = "broker-refuse-one"
BROKER_FAULTS = (BROKER_STOP, BROKER_PAUSE, BROKER_REFUSE_ONE)

#: Broker faults during which the broker answers nothing: an outage, after which each
#: entry may run at most once for what it missed (``oracle.outage_runs``).
BROKER_OUTAGES = frozenset({BROKER_STOP, BROKER_PAUSE})

#: Faults that lose schedule data: an entry may legitimately run again early after them
#: (its last run time is gone, so it is due at once).
DATA_LOSS_FAULTS = frozenset({"wipe-keys", "redis-restart-lossy"})


@dataclass(frozen=True)
class WorkloadEntry:
    """One schedule entry the harness defined, and how often it is expected to run."""

    name: str
    kind: str  # "interval" | "crontab"
    period: float  # seconds between occurrences (60 for a crontab every minute)
    source: str  # "static" (beat_schedule) | "dynamic" (written to Redis by the harness)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    #: lifetime fields (the overlap policy of ``--overlap``)
    lifetime: dict[str, Any] = field(default_factory=dict)

    def beat_spec(self) -> dict[str, Any]:
        """The SRB_SCHEDULE form read by testbed/beatapp.py."""
        spec: dict[str, Any] = {"task": "noop"}
        if self.kind == "interval":
            spec["every"] = self.period
        else:
            spec["cron"] = "* * * * *"
        if self.args:
            spec["args"] = list(self.args)
        if self.kwargs:
            spec["kwargs"] = dict(self.kwargs)
        if self.options:
            spec["options"] = dict(self.options)
        spec.update(self.lifetime)
        return spec


@dataclass(frozen=True)
class Sent:
    """One task message as the auditor took it from the broker. ``arrived``: when it took
    it, or, for a message the broker already held when a broker outage began, the outage's
    start (read from the broker itself; ``tests/chaos/oracle.py`` explains how)."""

    task_id: str
    entry: str | None
    scheduled: int | None
    fence: int | None
    origin: str
    arrived: float
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    custom_header: str | None = None


@dataclass(frozen=True)
class Outboxed:
    """A pending record or dead letter of the schedule, as the harness read it (entry and
    scheduled time are None when the record is not the JSON safe_redbeat writes)."""

    task_id: str
    entry: str | None
    scheduled: int | None
    attempts: int = 0
    error: str = ""


@dataclass
class FaultRecord:
    """One injected fault. ``recovered`` is when the fault itself was over (Redis up
    again, pause over); the failover window runs from ``started`` to ``recovered`` plus
    the failover allowance. A fault whose ``details`` name ``entries`` opens that window
    for those entries only (the others must run on time meanwhile)."""

    kind: str
    started: float
    recovered: float
    target: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    #: broker faults: the pending records just before the broker came back (or the
    #: refused queue was restored); each must reach the broker or the dead letters
    pending: list[Outboxed] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplicaExit:
    """A replica process that exited; ``expected`` if we had signalled it to."""

    replica: str
    generation: int
    pid: int
    #: None: it did not exit (still running after the SIGTERM grace period)
    returncode: int | None
    at: float
    expected: bool
    cause: str = ""


@dataclass
class Lifetime:
    """When an entry existed in Redis (dynamic entries die with a wipe or data loss)."""

    created: float
    deleted: float | None = None
    #: when its first occurrence is due (at the latest); None = at once. RedBeat's
    #: ``entry.save()`` records "last run = now", and a new entry without run history
    #: runs at its next slot, so the first run is one period later.
    first_due: float | None = None


@dataclass
class RunData:
    """Everything a run observed; the oracle's only input."""

    specs: dict[str, WorkloadEntry]
    lifetimes: dict[str, list[Lifetime]]
    messages: list[Sent]
    faults: list[FaultRecord]
    exits: list[ReplicaExit]
    observe_from: float
    observe_until: float
    lease_seconds: float
    retry_seconds: float
    #: replica name -> clock offset in seconds (only skewed replicas)
    skews: dict[str, float] = field(default_factory=dict)
    #: sender ("origin" header, gen<pid>@host) -> replica name
    origins: dict[str, str] = field(default_factory=dict)
    #: replicas' final shutdown return codes (SIGTERM at the end of the run)
    final_returncodes: dict[str, int | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: shards of the schedule's layout; an entry belongs to ``shard_of(name, shards)``
    shards: int = 1
    #: polls of every shard's lease key (sharded runs): (time, lease values by shard)
    lease_samples: list[LeaseSample] = field(default_factory=list)
    #: tracebacks found in the replicas' logs
    tracebacks: list[dict[str, Any]] = field(default_factory=list)
    #: the dead letters (every shard) after the replicas stopped
    dead_letters: list[Outboxed] = field(default_factory=list)
    #: the pending records (every shard) after the replicas stopped
    pending_at_end: list[Outboxed] = field(default_factory=list)


@dataclass(frozen=True)
class LeaseSample:
    """The value of each shard's lease key at one moment (None: the key was absent)."""

    at: float
    values: tuple[str | None, ...]
