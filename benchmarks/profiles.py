"""How much each mode measures: sizes, repetitions, failover trials."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    #: entries due at once, for dispatch cost and commands per tick
    dispatch_sizes: tuple[int, ...]
    repetitions: int
    #: entries stored (one of them due) for start -> first dispatch
    startup_sizes: tuple[int, ...]
    startup_repetitions: int
    #: entries installed and run once before measuring memory, and their interval
    memory_entries: int
    memory_interval: float
    #: loader rows reconciled (and saved by the stock "init loader")
    reconcile_sizes: tuple[int, ...]
    #: timed runs per situation (nothing changed, 1% changed) and size
    reconcile_repetitions: int
    #: failover trials per fault for safe_redbeat: SIGKILL, SIGTERM, lease key deleted
    failover_sigkill: int
    failover_sigterm: int
    failover_lock_deleted: int
    #: also run stock RedBeat replicas (short lock timeout) for failover
    failover_stock: bool
    #: give up on one dispatch run after this long (a broken benchmark, not a slow one)
    run_timeout: float = 300.0
    #: entries due at once in the run whose tick is sampled phase by phase
    breakdown_n: int = 3000
    #: sharded dispatch: entries due at once; K shards on K beat replicas for each K
    scaling_n: int = 30000
    scaling_shards: tuple[int, ...] = (1, 2, 3)
    scaling_repetitions: int = 3
    #: also with the schedule on a local Redis Cluster (after one Redis)
    scaling_cluster: bool = True
    #: schedule arithmetic: a stock RedBeat call that takes longer is stopped
    schedule_stock_limit: float = 5.0

    @property
    def failover(self) -> bool:
        trials = self.failover_sigkill + self.failover_sigterm + self.failover_lock_deleted
        return bool(trials or self.failover_stock)

    def without_failover(self) -> Profile:
        return replace(
            self,
            failover_sigkill=0,
            failover_sigterm=0,
            failover_lock_deleted=0,
            failover_stock=False,
        )


#: default: the numbers in docs/benchmarks.md (several minutes).
FULL = Profile(
    name="full",
    dispatch_sizes=(1000, 3000, 10000, 30000),
    repetitions=5,
    startup_sizes=(1000, 10000, 100000),
    startup_repetitions=5,
    memory_entries=3000,
    memory_interval=10.0,
    reconcile_sizes=(10000, 100000),
    reconcile_repetitions=3,
    failover_sigkill=3,
    failover_sigterm=3,
    failover_lock_deleted=3,
    failover_stock=True,
)

#: ``--quick``: CI; every benchmark runs, on small sizes.
QUICK = replace(
    FULL,
    name="quick",
    dispatch_sizes=(1000, 3000),
    repetitions=3,
    startup_sizes=(1000, 10000),
    startup_repetitions=3,
    memory_entries=1000,
    reconcile_sizes=(10000,),
    reconcile_repetitions=2,
    failover_sigkill=0,
    failover_sigterm=1,
    failover_lock_deleted=0,
    failover_stock=False,
    scaling_n=6000,
    scaling_repetitions=1,
    scaling_cluster=False,
)

#: ``--tiny``: proves the benchmark code works (the test suite runs it), no failover.
TINY = replace(
    QUICK.without_failover(),
    name="tiny",
    dispatch_sizes=(50,),
    repetitions=1,
    startup_sizes=(50,),
    startup_repetitions=1,
    memory_entries=50,
    memory_interval=2.0,
    reconcile_sizes=(200,),
    reconcile_repetitions=1,
    run_timeout=30.0,
    breakdown_n=50,
    scaling_n=60,
    scaling_shards=(1, 2),
    schedule_stock_limit=0.5,
)
