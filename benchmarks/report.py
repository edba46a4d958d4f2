"""Results, targets (PASS/MISS), tables, and docs/benchmarks.md from the report.md template.

Every number in the generated document comes from a measurement or from the code it
describes (a default, a chunk size), through a ``$placeholder`` of ``report.md``.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from string import Template
from typing import Any

from celery.beat import DEFAULT_MAX_INTERVAL
from redbeat.schedulers import RedBeatScheduler

from safe_redbeat.dispatch.enqueue import CALL_BYTES, CALL_OPERATIONS
from safe_redbeat.leader.balance import LIVE_AGE
from safe_redbeat.model.slots import SLOT_SEARCH_SECONDS

from . import reconcile
from .commands import CommandResult
from .dispatch import (
    FLOOR,
    FLOOR_BATCHED,
    PHASES,
    PUBLISH_CHUNK,
    REST,
    SAFE_MONITORED,
    SAMPLE_EVERY,
    Breakdown,
    DispatchResult,
)
from .env import (
    KEYS,
    REDBEAT,
    SAFE,
    SAFE_FIRST,
    SAFE_PUBLISH,
    SAFE_STEADY,
    STEADY_AFTER,
    Contender,
    Traffic,
)
from .failover import (
    DEFAULTS,
    LOCK_DELETED,
    POLL,
    SAFE_SCHEDULER,
    SCHEDULE,
    SIGKILL,
    SIGTERM,
    STOCK_LOCK_TIMEOUT,
    STOCK_SCHEDULER,
    STOCK_SETTINGS,
    FailoverResult,
)
from .memory import MemoryResult
from .profiles import Profile
from .reconcile import ReconcileBench
from .scaling import CLUSTER_PREFIX, LEAD, LOOP_INTERVAL, STOCK, ScalingResult, series_of
from .scaling import STOCK_SETTINGS as SCALING_STOCK_SETTINGS
from .schedules import AGE, ScheduleResult
from .startup import StartupResult

TEMPLATE = Path(__file__).with_name("report.md")
DISPATCH_TARGET_N = 3000
#: the atomic steady state against the batched floor is a target at each of these N
STEADY_TARGET_NS = (3000, 10_000)
#: the schedulers of the commands benchmark, in table order, and their names there
ORDER = (REDBEAT.key, SAFE_PUBLISH.key, SAFE_STEADY.key)
NAMES = {
    REDBEAT.key: "RedBeat",
    SAFE_PUBLISH.key: "safe_redbeat publish mode",
    SAFE_STEADY.key: "safe_redbeat atomic (steady)",
}
#: short names of the series, for ratios
SHORT = {
    FLOOR: "floor",
    FLOOR_BATCHED: "batched floor",
    REDBEAT.key: "RedBeat",
    SAFE_PUBLISH.key: "publish",
    SAFE_FIRST.key: "first",
    SAFE_STEADY.key: "steady",
    SAFE_MONITORED: "monitored",
}
RECONCILE_TARGET_N = 100_000
RECONCILE_TARGET_SECONDS = 2.0
#: sharded dispatch: K=SCALING_TARGET_K replicas at least this much faster than one
SCALING_TARGET_K = 2
SCALING_TARGET_SPEEDUP = 1.4
NOT_MEASURED = "Not measured in this mode."
STOCK_LOCK_TIMEOUT_SCALING = SCALING_STOCK_SETTINGS["redbeat_lock_timeout"]


@dataclass
class Results:
    profile: Profile
    command: str
    machine: dict[str, str]
    dispatch: list[DispatchResult] = field(default_factory=list)
    #: one sampled run per mode (dispatch.BREAKDOWNS)
    breakdown: list[Breakdown] = field(default_factory=list)
    commands: list[CommandResult] = field(default_factory=list)
    startup: list[StartupResult] = field(default_factory=list)
    schedules: list[ScheduleResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    reconcile: list[ReconcileBench] = field(default_factory=list)
    failover: list[FailoverResult] = field(default_factory=list)
    scaling: list[ScalingResult] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Target:
    name: str
    #: None: not measured in this mode, or no target (``info``)
    ok: bool | None
    detail: str
    #: a measured value shown next to the targets, without a target of its own
    info: bool = False

    @property
    def status(self) -> str:
        if self.info:
            return "info"
        return "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")


def machine_info(server_version: str) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(
            line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=TEMPLATE.parents[1],
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    libraries = ("celery", "kombu", "redis", "celery-redbeat")
    return {
        "date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "Redis server": server_version + " (local, 127.0.0.1, no persistence)",
        "libraries": ", ".join(f"{name} {version(name)}" for name in libraries),
    }


# -- targets -----------------------------------------------------------------------------


def _at(results: list[Any], n: int | None = None) -> Any:
    """The result for ``n``, else the one with the largest N (None if there is none)."""
    return next((r for r in results if r.n == n), max(results, key=lambda r: r.n, default=None))


def _of(commands: list[CommandResult], contender: Contender) -> list[CommandResult]:
    return sorted((c for c in commands if c.contender == contender.key), key=lambda c: c.n)


def _batch_base(commands: list[CommandResult], contender: Contender) -> CommandResult | None:
    """``contender``'s smallest N that fills a batch (or its largest N)."""
    ours = _of(commands, contender)
    return next((c for c in ours if c.n >= DEFAULTS.batch_size), ours[-1] if ours else None)


def _dispatch_targets(dispatch: list[DispatchResult]) -> list[Target]:
    found: list[Target] = []
    at = _at(dispatch, DISPATCH_TARGET_N)
    if at is None:
        return found
    publish, first, steady = SAFE_PUBLISH.key, SAFE_FIRST.key, SAFE_STEADY.key
    over_floor = at.over(publish, FLOOR)
    name = f"dispatch, publish mode <= 1.2 x publish floor per entry (N={at.n})"
    found.append(Target(name, over_floor.median <= 1.2, f"publish/floor = {over_floor.fmt(2)}"))
    for n in STEADY_TARGET_NS:
        name = f"dispatch, atomic steady state <= 1.0 x batched floor per entry (N={n})"
        result = next((r for r in dispatch if r.n == n), None)
        if result is None or FLOOR_BATCHED not in result.seconds:
            found.append(Target(name, None, "not measured in this mode"))
            continue
        over = result.over(steady, FLOOR_BATCHED)
        detail = f"steady/batched floor = {over.fmt(2)}; "
        detail += f"{result.ms_per_entry(steady).median:.3f} vs "
        detail += f"{result.ms_per_entry(FLOOR_BATCHED).median:.3f} ms/entry"
        found.append(Target(name, over.median <= 1.0, detail))
    name = f"dispatch, atomic first dispatch against publish mode (N={at.n})"
    detail = f"first/publish = {at.over(first, publish).fmt(2)}"
    if FLOOR_BATCHED in at.seconds:
        detail += f"; first/batched floor = {at.over(first, FLOOR_BATCHED).fmt(2)}"
    found.append(Target(name, None, detail, info=True))
    ours = [key for key in (publish, first, steady) if key in at.seconds]
    slowest = max(ours, key=lambda key: at.ms_per_entry(key).median)
    faster = at.over(REDBEAT.key, slowest)
    name = f"dispatch >= 2x faster than RedBeat, slowest safe_redbeat series (N={at.n})"
    detail = f"RedBeat/{SHORT[slowest]} = {faster.fmt(2)}"
    detail += f"; RedBeat/steady = {at.over(REDBEAT.key, steady).fmt(2)}"
    found.append(Target(name, faster.median >= 2.0, detail))
    if SAFE_MONITORED in at.seconds:
        watched = at.over(SAFE_MONITORED, steady)
        name = f"atomic steady state with metrics and signals <= 1.1 x without (N={at.n})"
        detail = f"monitored/steady = {watched.fmt(2)}"
        found.append(Target(name, watched.median <= 1.1, detail))
    return found


def _batch_trips(c: CommandResult) -> int:
    """Round trips of ``c``'s tick that its batches cost: all but the upkeep (lease
    renewals, heartbeats, the balancer's polls), which is due by the clock during a long
    tick, not by the number of entries."""
    return c.round_trips - len(c.upkeep_trips)


def _round_trip_targets(commands: list[CommandResult]) -> list[Target]:
    found: list[Target] = []
    batch = DEFAULTS.batch_size
    stock = _at(_of(commands, REDBEAT))
    for contender in (SAFE_PUBLISH, SAFE_STEADY):
        base, ours = _batch_base(commands, contender), _of(commands, contender)
        if base is None:
            continue
        per_batch = _batch_trips(base) / math.ceil(base.n / batch)
        detail = ", ".join(
            f"N={c.n}: {_batch_trips(c)}"
            + (f" (+{len(c.upkeep_trips)} upkeep)" if c.upkeep_trips else "")
            for c in ours
        )
        detail += f" (RedBeat N={stock.n}: {stock.round_trips})" if stock else ""
        name = f"round trips per tick beyond upkeep O(N/batch_size), {NAMES[contender.key]}: "
        name += f"<= c x ceil(N/{batch}), c = round trips per batch at N={base.n} ({per_batch:g})"
        ok = all(_batch_trips(c) <= per_batch * math.ceil(c.n / batch) for c in ours)
        found.append(Target(name, ok, detail))
    atomic = _of(commands, SAFE_STEADY)
    if atomic:
        limit = _call_limit(atomic[0])
        name = f"atomic: one round trip per {limit} occurrences beyond the due reads "
        name += "(claim.lua), no other but upkeep"
        ok = all(
            c.claim_calls == len(_call_sizes(c.n, limit)) and not c.other_trips for c in atomic
        )
        detail = ", ".join(
            f"N={c.n}: {c.claim_calls} claim + {c.read_trips} read"
            + (f" + {len(c.upkeep_trips)} upkeep" if c.upkeep_trips else "")
            + (f" + {len(c.other_trips)} other" if c.other_trips else "")
            for c in atomic
        )
        found.append(Target(name, ok, detail))
    for contender in (SAFE_STEADY, SAFE_PUBLISH):
        at = _at(_of(commands, contender), DISPATCH_TARGET_N)
        if at is None or not at.claim_micros:
            continue
        name = f"Redis time per claim.lua call (INFO commandstats), {SHORT[contender.key]} "
        name += f"(N={at.n})"
        found.append(Target(name, None, claim_time(at), info=True))
    return found


def claim_time(c: CommandResult) -> str:
    """The claim script's Redis time in words: per call, per occurrence, per full call."""
    micros, limit = c.claim_micros, _call_limit(c)
    sizes = _call_sizes(c.n, limit)
    text = f"{len(micros)} calls, median {c.claim_median():.0f} µs, max {max(micros)} µs"
    text += f", {sum(micros) / c.n:.1f} µs/occurrence"
    if len(sizes) == len(micros):
        full = [us for us, ops in zip(micros, sizes, strict=True) if ops == limit]
        if full:
            text += f"; per call of {limit}: {statistics.median(full) / 1000:.2f} ms"
    return text


def _call_limit(c: CommandResult) -> int:
    """Most occurrences one claim call of ``c``'s scheduler carries."""
    if c.contender == SAFE_PUBLISH.key:
        return DEFAULTS.batch_size
    return min(CALL_OPERATIONS, DEFAULTS.batch_size)


def _call_sizes(n: int, limit: int) -> list[int]:
    """Occurrences per claim call, as a tick splits ``n`` due entries: read batches of
    ``batch_size``, each claimed in calls of at most ``limit``."""
    sizes = []
    for start in range(0, n, DEFAULTS.batch_size):
        in_batch = min(DEFAULTS.batch_size, n - start)
        sizes += [min(limit, in_batch - call) for call in range(0, in_batch, limit)]
    return sizes


def targets(results: Results) -> list[Target]:
    found = _dispatch_targets(results.dispatch) + _round_trip_targets(results.commands)
    if results.startup:
        small, large = results.startup[0], results.startup[-1]
        few, many = small.sample(SAFE.key), large.sample(SAFE.key)
        name = f"start -> first dispatch < 1 s with {large.stored} stored, not growing with N"
        ok = many.median < 1.0 and many.median <= 1.5 * few.median + 0.005
        detail = f"{small.stored}: {few.fmt(1, 1000)} ms, {large.stored}: {many.fmt(1, 1000)} ms"
        found.append(Target(name, ok, detail))
    if results.schedules:
        worst = max(results.schedules, key=lambda r: r.safe_sample().median)
        name = "decide() on crontabs and on rrules a year old < 1 ms each"
        detail = f"slowest: {worst.name}, {worst.safe_sample().median * 1000:.3f} ms"
        found.append(Target(name, worst.safe_sample().median < 0.001, detail))
    found.append(_reconcile_target(results.reconcile))
    budget = DEFAULTS.lease_seconds + DEFAULTS.retry_seconds
    for fault, limit, name in (
        (SIGKILL, budget, f"failover after SIGKILL <= lease + retry ({budget:g} s)"),
        (SIGTERM, 2.0, "failover after SIGTERM <= 2 s"),
        (LOCK_DELETED, None, "failover after the lock key is deleted (no target)"),
    ):
        trials = [f for f in results.failover if f.scheduler == SAFE_SCHEDULER and f.fault == fault]
        if not trials:
            found.append(Target(name, None, "not measured in this mode", info=limit is None))
            continue
        s = trials[0].sample()
        detail = f"worst {s.high:.2f} s, median {s.median:.2f} s over {len(s.values)} trials"
        passed = None if limit is None else s.high <= limit
        found.append(Target(name, passed, detail, info=limit is None))
    found += _scaling_targets(results.scaling)
    memory = {m.contender: m.per_entry for m in results.memory}
    if len(memory) == 2:
        share = memory[SAFE.key] / memory[REDBEAT.key]
        detail = f"{memory[SAFE.key]:.0f} B vs {memory[REDBEAT.key]:.0f} B = {share:.2f} x"
        found.append(Target("memory per entry <= 1.2 x RedBeat's", share <= 1.2, detail))
    return found


def _scaling_targets(results: list[ScalingResult]) -> list[Target]:
    k, goal = SCALING_TARGET_K, SCALING_TARGET_SPEEDUP
    found = []
    for result in results:
        one, more = series_of(1), series_of(k)
        name = f"sharded dispatch: K={k} on {k} replicas >= {goal:g}x faster than K=1 "
        name += f"(N={result.n}, {result.store.split(' (')[0]})"
        if one not in result.runs or more not in result.runs:
            found.append(Target(name, None, "not measured in this mode"))
            continue
        speedup = result.speedup(more)
        detail = f"K=1 {result.sample(one).fmt(2)} s, K={k} {result.sample(more).fmt(2)} s: "
        detail += f"{speedup.fmt(2)} x"
        found.append(Target(name, speedup.median >= goal, detail))
    return found


def _reconcile_target(benches: list[ReconcileBench]) -> Target:
    name = f"reconcile {RECONCILE_TARGET_N} entries, nothing changed, "
    name += f"< {RECONCILE_TARGET_SECONDS:g} s, 0 writes"
    bench = _at(benches, RECONCILE_TARGET_N)
    if bench is None:
        return Target(name, None, "not measured in this mode")
    sample = bench.sample(reconcile.SAFE, reconcile.UNCHANGED)
    if bench.n != RECONCILE_TARGET_N:
        return Target(name, None, f"not measured in this mode (N={bench.n}: {sample.fmt(3)} s)")
    writes = bench.count(reconcile.SAFE, reconcile.UNCHANGED, "write_commands")
    stock = bench.sample(reconcile.STOCK, reconcile.UNCHANGED)
    detail = f"{sample.fmt(2)} s, {writes} writes (RedBeat wipe + save: {stock.fmt(1)} s)"
    return Target(name, sample.median < RECONCILE_TARGET_SECONDS and writes == "0", detail)


# -- tables ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


#: the dispatch table's series, in column order
DISPATCH_COLUMNS = (
    (FLOOR, "floor"),
    (FLOOR_BATCHED, "batched floor"),
    (REDBEAT.key, "RedBeat"),
    (SAFE_PUBLISH.key, "publish mode"),
    (SAFE_FIRST.key, "atomic, first dispatch"),
    (SAFE_STEADY.key, "atomic, steady state"),
    (SAFE_MONITORED, "steady, metrics + signals"),
)
#: the dispatch table's ratios (numerator, denominator), where both were measured
DISPATCH_RATIOS = (
    (SAFE_STEADY.key, FLOOR_BATCHED),
    (SAFE_FIRST.key, SAFE_PUBLISH.key),
    (SAFE_PUBLISH.key, FLOOR),
    (REDBEAT.key, SAFE_STEADY.key),
)


def dispatch_table(results: list[DispatchResult]) -> str:
    def measured(key: str) -> bool:
        return all(key in r.seconds for r in results)

    columns = [(key, name) for key, name in DISPATCH_COLUMNS if measured(key)]
    ratios = [(a, b) for a, b in DISPATCH_RATIOS if measured(a) and measured(b)]
    ours = [key for key in r_keys(results) if key != REDBEAT.key]
    rows = [
        [
            str(r.n),
            *(r.ms_per_entry(key).fmt() for key, _name in columns),
            *(r.over(a, b).fmt(2) for a, b in ratios),
            f"{max(r.ticks[REDBEAT.key])} / {max(max(r.ticks[key]) for key in ours)}",
        ]
        for r in results
    ]
    header = ["N due", *(f"{name} ms/entry" for _key, name in columns)]
    header += [f"{SHORT[a]}/{SHORT[b]}" for a, b in ratios]
    return table([*header, "ticks RedBeat / safe (most)"], rows)


def r_keys(results: list[DispatchResult]) -> list[str]:
    """The series that ticked a scheduler in every result."""
    keys = [key for key, _name in DISPATCH_COLUMNS if key not in (FLOOR, FLOOR_BATCHED)]
    return [key for key in keys if all(key in r.ticks for r in results)]


def breakdown_table(breakdowns: list[Breakdown]) -> str:
    """One row per phase, ms/entry and share per sampled run; "-" where a phase was never
    on the stack."""
    by_label = [{label: (ms, share) for label, ms, share in b.rows()} for b in breakdowns]
    labels = [label for label, _path in PHASES] + [REST]
    rows = []
    for label in labels:
        row = [label]
        for b, found in zip(breakdowns, by_label, strict=True):
            ms, share = found[label]
            shown = label == REST or b.hits.get(label, 0) > 0
            row += [f"{ms:.4f}", f"{share:.0%}"] if shown else ["-", "-"]
        rows.append(row)
    rows.append(["whole tick(s)", *(cell for b in breakdowns for cell in _whole(b))])
    header = [f"phase (N={breakdowns[0].n})"]
    for b in breakdowns:
        header += [f"{SHORT[b.series]} ms/entry", "share"]
    return table(header, rows)


def _whole(b: Breakdown) -> list[str]:
    return [f"{b.total * 1000 / b.n:.4f}", "100%"]


def commands_table(results: list[CommandResult]) -> str:
    rows = []
    for c in sorted(results, key=lambda c: (c.n, ORDER.index(c.contender))):
        claim = "-"
        if c.claim_micros:
            claim = f"{c.claim_calls}: {c.claim_median():.0f} ({max(c.claim_micros)})"
        per_entry = 2 if c.contender == REDBEAT.key else 3
        rows.append(
            [
                str(c.n),
                NAMES[c.contender],
                f"{c.round_trips} ({c.round_trips_per_entry:.{per_entry}f}/entry)",
                str(c.commands),
                str(c.server_commands),
                claim,
                str(c.ticks),
            ]
        )
    header = ["N due", "scheduler", "round trips", "commands sent", "server commands"]
    header += ["claim.lua calls: median (max) µs in Redis", "ticks"]
    return table(header, rows)


def startup_table(results: list[StartupResult]) -> str:
    rows = [
        [str(r.stored), r.sample(REDBEAT.key).fmt(1, 1000), r.sample(SAFE.key).fmt(1, 1000)]
        for r in results
    ]
    return table(["entries stored (1 due)", "RedBeat ms", "safe_redbeat ms"], rows)


def schedules_table(results: list[ScheduleResult]) -> str:
    rows = []
    for r in results:
        stock = f"> {r.limit * 1000:g} (stopped)" if r.stock is None else f"{r.stock * 1000:.3f}"
        ratio = "-" if r.stock is None else f"{r.stock / r.safe_sample().median:.0f}"
        rows.append([r.name, stock, r.safe_sample().fmt(4, 1000), ratio])
    return table(
        ["schedule (due now)", "RedBeat ms/call", "safe_redbeat ms/call", "RedBeat/safe"], rows
    )


def memory_table(results: list[MemoryResult]) -> str:
    rows = [
        [m.contender, str(m.n), f"{m.per_entry:.1f}"]
        + [f"{part / m.n:.1f}" for part in (m.entry_bytes, m.shared_bytes)]
        for m in results
    ]
    return table(["scheduler", "entries", "bytes/entry", "entry hash", "ZSET+SETs share"], rows)


def reconcile_table(benches: list[ReconcileBench]) -> str:
    rows = []
    for bench in benches:
        for situation in reconcile.SITUATIONS:
            ours, stock = (reconcile.SAFE, situation), (reconcile.STOCK, situation)
            phases = ("parse", "snapshot", "run")
            rows.append(
                [
                    str(bench.n),
                    situation,
                    bench.sample(*ours).fmt(3),
                    " / ".join(f"{bench.sample(*ours, phase).median:.3f}" for phase in phases),
                    f"{bench.count(*ours, 'created')} / {bench.count(*ours, 'updated')}",
                    *(bench.count(*ours, what) for what in ("upsert_calls", "write_commands")),
                    bench.count(*ours, "round_trips"),
                    bench.sample(*stock).fmt(3),
                    *(bench.count(*stock, what) for what in ("write_commands", "round_trips")),
                    bench.stock_over_safe(situation).fmt(1),
                ]
            )
    header = ["N rows", "situation", "safe_redbeat s", "parse / snapshot / run s"]
    header += ["created / updated", "upsert calls", "write cmds", "round trips"]
    header += ["RedBeat wipe + save s", "RedBeat write cmds", "RedBeat round trips"]
    return table([*header, "RedBeat/safe"], rows)


def failover_table(results: list[FailoverResult]) -> str:
    rows = []
    for f in results:
        stock = f.scheduler == STOCK_SCHEDULER
        if stock and f.fault == SIGKILL:
            expected = f"= lock timeout ({STOCK_LOCK_TIMEOUT} s) + poll"
        elif stock:
            expected = "<= standby poll (beat_max_loop_interval)"
        elif f.fault == SIGKILL:
            expected = f"<= lease + retry ({DEFAULTS.lease_seconds + DEFAULTS.retry_seconds:g} s)"
        else:
            expected = f"<= retry ({DEFAULTS.retry_seconds:g} s) + next due"
        name = "RedBeat" if stock else "safe_redbeat"
        rows.append([name, f.fault, f.settings, f.sample().fmt(2), str(len(f.seconds)), expected])
    return table(["scheduler", "fault", "settings", "seconds", "trials", "expected"], rows)


def scaling_table(result: ScalingResult) -> str:
    rows = []
    for series in result.series():
        sample = result.sample(series)
        spread = result.runs[series][-1].spread
        rows.append(
            [
                "RedBeat" if series == STOCK else f"safe_redbeat {series}",
                str(result.replicas[series]),
                sample.fmt(2),
                result.rate(series).fmt(0),
                "" if series == STOCK else result.speedup(series).fmt(2),
                result.first_after(series).fmt(2),
                " / ".join(str(count) for count in spread),
                " / ".join(
                    f"{result.cpu(series, part).median:.1f}"
                    for part in ("replicas", "redis", "others")
                ),
                f"{result.balanced_in[series]:.1f}",
                result.placement[series],
                result.enqueue.get(series, "?"),
            ]
        )
    header = ["scheduler", "replicas", "wall s", "entries/s", "speed-up vs K=1"]
    header += ["first message s", "messages per replica", "CPU s replicas / Redis / others"]
    return table([*header, "leading after s", "shards on", "enqueue"], rows)


def scaling_tables(results: list[ScalingResult]) -> str:
    if not results:
        return NOT_MEASURED
    parts = [f"{r.store}, N={r.n}:\n\n{scaling_table(r)}" for r in results]
    return "\n\n".join(parts)


def targets_table(found: list[Target]) -> str:
    return table(["target", "result", "measured"], [[t.name, t.status, t.detail] for t in found])


# -- stdout and docs ----------------------------------------------------------------------


def text(results: Results) -> str:
    r, b = results, results.breakdown
    sections: list[tuple[str, list[Any], Callable[[Any], str]]] = [
        ("Dispatch cost per due entry (median (min-max))", r.dispatch, dispatch_table),
        ("Redis commands for the dispatching tick(s)", r.commands, commands_table),
        ("Construct + first tick until the first dispatch", r.startup, startup_table),
        ("Deciding one due entry (no Redis)", r.schedules, schedules_table),
        ("Redis memory per entry after one run", r.memory, memory_table),
        (
            "Loader reconcile against RedBeat's wipe-and-save (median (min-max))",
            r.reconcile,
            reconcile_table,
        ),
        ("Failover: fault -> first message from the new leader", r.failover, failover_table),
        (
            "Sharded dispatch: N due at once, K shards on K beat replicas (median (min-max))",
            r.scaling,
            scaling_tables,
        ),
    ]
    parts = [f"safe_redbeat benchmarks ({r.profile.name} mode, {r.seconds:.0f} s)"]
    for title, measured, render in sections:
        if measured:
            parts += ["", title, render(measured)]
        if measured is r.dispatch and b:
            parts += ["", breakdown_table(b)]
    parts += ["", "Targets", targets_table(targets(r))]
    return "\n".join(parts)


def placeholders(results: Results, plot_name: str | None) -> dict[str, object]:
    """The values of report.md's ``$placeholders``."""
    profile, breakdowns = results.profile, results.breakdown
    at = _at(results.dispatch, DISPATCH_TARGET_N)
    base = _batch_base(results.commands, SAFE_PUBLISH)
    atomic = _batch_base(results.commands, SAFE_STEADY)
    stock = _at(_of(results.commands, REDBEAT))
    bench = _at(results.reconcile)
    if (
        at is None
        or not breakdowns
        or base is None
        or atomic is None
        or stock is None
        or bench is None
    ):
        raise ValueError("docs/benchmarks.md needs the dispatch, command and reconcile runs")
    unchanged = bench.runs[(reconcile.SAFE, reconcile.UNCHANGED)][-1]
    changed = bench.runs[(reconcile.SAFE, reconcile.CHANGED)][-1]
    stock_reload = bench.runs[(reconcile.STOCK, reconcile.UNCHANGED)][-1]
    batched = FLOOR_BATCHED in at.seconds
    no_batch = "(not measured: kombu without Producer.batch)"
    claims = {
        contender.key: _at(_of(results.commands, contender), DISPATCH_TARGET_N)
        for contender in (SAFE_PUBLISH, SAFE_STEADY)
    }
    return {
        "command": results.command,
        "mode": profile.name,
        "repetitions": profile.repetitions,
        "startup_repetitions": profile.startup_repetitions,
        "reconcile_repetitions": profile.reconcile_repetitions,
        "minutes": f"{results.seconds / 60:.1f}",
        "machine": table(["", ""], [[k, v] for k, v in results.machine.items()]),
        "targets": targets_table(targets(results)),
        "publish_chunk": PUBLISH_CHUNK,
        "call_operations": CALL_OPERATIONS,
        "call_mib": f"{CALL_BYTES / 2**20:g}",
        "steady_after": STEADY_AFTER,
        "dispatch_table": dispatch_table(results.dispatch),
        "plot": f"\n![ms per entry against N]({plot_name})\n" if plot_name else "",
        "breakdown_n": breakdowns[0].n,
        "sample_ms": f"{SAMPLE_EVERY * 1000:g}",
        "samples": ", ".join(f"{SHORT[b.series]} {b.samples}" for b in breakdowns),
        "breakdown_table": breakdown_table(breakdowns),
        "dispatch_n": at.n,
        "steady_over_batched": at.over(SAFE_STEADY.key, FLOOR_BATCHED).fmt(2)
        if batched
        else no_batch,
        "first_over_publish": at.over(SAFE_FIRST.key, SAFE_PUBLISH.key).fmt(2),
        "publish_over_floor": at.over(SAFE_PUBLISH.key, FLOOR).fmt(2),
        "publish_over_batched": at.over(SAFE_PUBLISH.key, FLOOR_BATCHED).fmt(2)
        if batched
        else no_batch,
        "trips_n": base.n,
        "batch_size": DEFAULTS.batch_size,
        "publish_trips_count": base.round_trips,
        "publish_trips_list": Traffic(trips=base.trips).describe(),
        "atomic_trips_count": atomic.round_trips if atomic.n == base.n else "(not measured)",
        "atomic_trips_list": Traffic(trips=atomic.trips).describe()
        if atomic.n == base.n
        else "(not measured)",
        "claim_n": DISPATCH_TARGET_N,
        "claim_atomic": _claim_words(claims[SAFE_STEADY.key]),
        "claim_publish": _claim_words(claims[SAFE_PUBLISH.key]),
        "stock_trips_per_entry": f"{stock.round_trips_per_entry:.2f}",
        "stock_commands_per_entry": f"{stock.commands / stock.n:.2f}",
        "stock_n": stock.n,
        "commands_table": commands_table(results.commands),
        "startup_table": startup_table(results.startup),
        "schedules_table": schedules_table(results.schedules)
        if results.schedules
        else NOT_MEASURED,
        "schedule_age": AGE.days,
        "stock_limit": f"{results.profile.schedule_stock_limit:g}",
        "slot_budget": f"{SLOT_SEARCH_SECONDS:g}",
        "memory_interval": f"{profile.memory_interval:g}",
        "memory_table": memory_table(results.memory),
        "change_every": reconcile.CHANGE_EVERY,
        "cron": reconcile.CRON,
        "interval": reconcile.INTERVAL,
        "reconcile_table": reconcile_table(results.reconcile),
        "reconcile_n": bench.n,
        "unchanged_writes": unchanged.write_commands,
        "unchanged_trips_list": unchanged.trips,
        "changed_rows": changed.updated,
        "changed_upserts": changed.upsert_calls,
        "changed_writes": changed.write_commands,
        "stock_reconcile_trips_per_entry": f"{stock_reload.round_trips / bench.n:.2f}",
        "poll_ms": f"{POLL * 1000:g}",
        "every": f"{SCHEDULE['every-second']['every']:g}",
        "lease_key": KEYS.lease,
        "stock_settings": ", ".join(f"`{k}={v}`" for k, v in STOCK_SETTINGS.items()),
        "failover_table": failover_table(results.failover) if results.failover else NOT_MEASURED,
        "stock_lock_factor": f"{RedBeatScheduler.lock_timeout / DEFAULT_MAX_INTERVAL:g}",
        "stock_lock_timeout": f"{RedBeatScheduler.lock_timeout:g}",
        "max_interval": DEFAULT_MAX_INTERVAL,
        "stock_worst": f"{RedBeatScheduler.lock_timeout + DEFAULT_MAX_INTERVAL:g}",
        "retry": f"{DEFAULTS.retry_seconds:g}",
        "lease": f"{DEFAULTS.lease_seconds:g}",
        **scaling_placeholders(results),
    }


def _claim_words(c: CommandResult | None) -> str:
    if c is None or c.n != DISPATCH_TARGET_N or not c.claim_micros:
        return "not measured in this mode"
    return claim_time(c)


def scaling_placeholders(results: Results) -> dict[str, object]:
    p, found = results.profile, results.scaling
    one = next((r for r in found if series_of(1) in r.runs), None)
    per_entry = "(not measured)"
    if one is not None:
        per_entry = f"{one.sample(series_of(1)).median * 1000 / one.n:.2f}"
    return {
        "scaling_n": p.scaling_n,
        "scaling_shards": ", ".join(str(k) for k in p.scaling_shards),
        "scaling_repetitions": p.scaling_repetitions,
        "scaling_tables": scaling_tables(found),
        "scaling_k": SCALING_TARGET_K,
        "scaling_goal": f"{SCALING_TARGET_SPEEDUP:g}",
        "scaling_ms_per_entry": per_entry,
        "scaling_loop": LOOP_INTERVAL,
        "scaling_lead": f"{LEAD:g}",
        "scaling_stock_lock": STOCK_LOCK_TIMEOUT_SCALING,
        "scaling_cluster_prefix": CLUSTER_PREFIX,
        "cores": os.cpu_count(),
        "retry_live": f"{DEFAULTS.retry_seconds * LIVE_AGE:g}",
    }


def markdown(results: Results, plot_name: str | None) -> str:
    template = Template(TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(placeholders(results, plot_name))


def plot(results: Results, path: Path) -> str | None:
    """Write the ms/entry-against-N plot; return None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'safe-redbeat[bench]'); no plot"
    if not results.dispatch:
        return "no dispatch results; no plot"
    sizes = [r.n for r in results.dispatch]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for series, label, marker in (
        (FLOOR, "publish floor (send_task)", "s"),
        (FLOOR_BATCHED, "send_task in kombu Producer.batch()", "x"),
        (REDBEAT.key, REDBEAT.label, "o"),
        (SAFE_PUBLISH.key, SAFE_PUBLISH.label, "v"),
        (SAFE_FIRST.key, SAFE_FIRST.label, "<"),
        (SAFE_STEADY.key, SAFE_STEADY.label, "^"),
    ):
        if not all(series in r.seconds for r in results.dispatch):
            continue
        samples = [r.ms_per_entry(series) for r in results.dispatch]
        medians = [s.median for s in samples]
        errors = [[m - s.low for m, s in zip(medians, samples, strict=True)]]
        errors.append([s.high - m for m, s in zip(medians, samples, strict=True)])
        ax.errorbar(sizes, medians, yerr=errors, marker=marker, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("entries due at once (N)")
    ax.set_ylabel("ms per entry (median, min-max)")
    top = max(r.ms_per_entry(REDBEAT.key).high for r in results.dispatch)
    ax.set_ylim(bottom=0, top=math.ceil(top * 12) / 10)
    ax.set_title("Dispatch cost per due entry")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def write_docs(results: Results, docs_dir: Path) -> list[str]:
    """Write benchmarks.md and benchmarks.png into ``docs_dir``; return messages."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    png = docs_dir / "benchmarks.png"
    skipped = plot(results, png)
    md = docs_dir / "benchmarks.md"
    md.write_text(markdown(results, None if skipped else png.name), encoding="utf-8")
    return [skipped or f"wrote {png}", f"wrote {md}"]


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks", *argv])


__all__ = ["Results", "Target", "command_line", "machine_info", "markdown", "targets", "text"]
