"""Results, targets (PASS/MISS), tables, docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from . import commands, dispatch, failover, memory, reconcile, startup
from .dispatch import FLOOR, FLOOR_BATCHED, SAFE_MONITORED, Breakdown, DispatchResult
from .env import REDBEAT, SAFE
from .failover import (
    LEASE_SECONDS,
    LOCK_DELETED,
    RETRY_SECONDS,
    SIGKILL,
    SIGTERM,
    STOCK_LOCK_TIMEOUT,
    FailoverResult,
)
from .profiles import Profile
from .reconcile import ReconcileBench

#: the ``safe_redbeat_batch_size`` default the round-trip target is stated against
BATCH_SIZE = 1000
DISPATCH_TARGET_N = 3000
RECONCILE_TARGET_N = 100_000
RECONCILE_TARGET_SECONDS = 3.0


@dataclass
class Results:
    profile: Profile
    command: str
    machine: dict[str, str]
    dispatch: list[DispatchResult] = field(default_factory=list)
    breakdown: Breakdown | None = None
    commands: list[commands.CommandResult] = field(default_factory=list)
    startup: list[startup.StartupResult] = field(default_factory=list)
    memory: list[memory.MemoryResult] = field(default_factory=list)
    reconcile: list[ReconcileBench] = field(default_factory=list)
    failover: list[FailoverResult] = field(default_factory=list)
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


# -- machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def machine_info(server_version: str) -> dict[str, str]:
    return {
        "date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": _git_commit(),
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "Redis server": server_version + " (local, 127.0.0.1, no persistence)",
        "libraries": ", ".join(
            f"{name} {version(name)}" for name in ("celery", "kombu", "redis", "celery-redbeat")
        ),
    }


# -- targets -----------------------------------------------------------------------------


def _pick(results: list[DispatchResult], n: int) -> DispatchResult | None:
    exact = [r for r in results if r.n == n]
    if exact:
        return exact[0]
    return max(results, key=lambda r: r.n) if results else None


def targets(results: Results) -> list[Target]:
    found: list[Target] = []
    at = _pick(results.dispatch, DISPATCH_TARGET_N)
    if at is not None:
        over_floor = at.safe_over_floor()
        found.append(
            Target(
                f"dispatch <= 1.2 x publish floor per entry (N={at.n})",
                over_floor.median <= 1.2,
                f"safe/floor = {over_floor.fmt(2)}"
                + (
                    f"; safe/batched floor = {at.safe_over_batched_floor().fmt(2)}"
                    if FLOOR_BATCHED in at.seconds
                    else ""
                ),
            )
        )
        faster = at.redbeat_over_safe()
        found.append(
            Target(
                f"dispatch >= 2x faster than RedBeat (N={at.n})",
                faster.median >= 2.0,
                f"RedBeat/safe = {faster.fmt(2)}",
            )
        )
        if SAFE_MONITORED in at.seconds:
            monitored = at.monitored_over_safe()
            found.append(
                Target(
                    f"dispatch with metrics and signals <= 1.1 x without (N={at.n})",
                    monitored.median <= 1.1,
                    f"monitored/safe = {monitored.fmt(2)}",
                )
            )
    ours = sorted((c for c in results.commands if c.contender == SAFE.key), key=lambda c: c.n)
    if ours:
        # c: the round trips of one full batch (or of the smallest N, if none fills one)
        base = next((c for c in ours if c.n >= BATCH_SIZE), ours[0])
        per_batch = base.round_trips / math.ceil(base.n / BATCH_SIZE)
        ok = all(c.round_trips <= per_batch * math.ceil(c.n / BATCH_SIZE) for c in ours)
        detail = ", ".join(f"N={c.n}: {c.round_trips}" for c in ours)
        stock = [c for c in results.commands if c.contender == REDBEAT.key]
        if stock:
            worst = max(stock, key=lambda c: c.n)
            detail += f" (RedBeat N={worst.n}: {worst.round_trips})"
        found.append(
            Target(
                f"round trips per tick O(N/batch_size): <= c x ceil(N/{BATCH_SIZE}), "
                f"c = round trips per batch at N={base.n} ({per_batch:g})",
                ok,
                detail,
            )
        )
    if results.startup:
        small, large = results.startup[0], results.startup[-1]
        largest = large.sample(SAFE.key)
        smallest = small.sample(SAFE.key)
        flat = largest.median <= 1.5 * smallest.median + 0.005
        found.append(
            Target(
                f"start -> first dispatch < 1 s with {large.stored} stored, not growing with N",
                largest.median < 1.0 and flat,
                f"{small.stored}: {smallest.fmt(1, 1000)} ms, "
                f"{large.stored}: {largest.fmt(1, 1000)} ms",
            )
        )
    found.append(_reconcile_target(results.reconcile))
    budget = LEASE_SECONDS + RETRY_SECONDS
    for fault, limit, label in (
        (SIGKILL, budget, f"failover after SIGKILL <= lease + retry ({budget:g} s)"),
        (SIGTERM, 2.0, "failover after SIGTERM <= 2 s"),
        (LOCK_DELETED, None, "failover after the lock key is deleted (no target)"),
    ):
        trials = [
            f
            for f in results.failover
            if f.scheduler == failover.SAFE_SCHEDULER and f.fault == fault
        ]
        if not trials:
            found.append(Target(label, None, "not measured in this mode", info=limit is None))
            continue
        sample = trials[0].sample()
        found.append(
            Target(
                label,
                None if limit is None else sample.high <= limit,
                f"worst {sample.high:.2f} s, median {sample.median:.2f} s "
                f"over {len(sample.values)} trials",
                info=limit is None,
            )
        )
    by_key = {m.contender: m for m in results.memory}
    if REDBEAT.key in by_key and SAFE.key in by_key:
        share = by_key[SAFE.key].per_entry / by_key[REDBEAT.key].per_entry
        found.append(
            Target(
                "memory per entry <= 1.2 x RedBeat's",
                share <= 1.2,
                f"{by_key[SAFE.key].per_entry:.0f} B vs {by_key[REDBEAT.key].per_entry:.0f} B "
                f"= {share:.2f} x",
            )
        )
    return found


def _reconcile_target(benches: list[ReconcileBench]) -> Target:
    label = (
        f"reconcile {RECONCILE_TARGET_N} entries, nothing changed, < {RECONCILE_TARGET_SECONDS:g} s"
    )
    at = [b for b in benches if b.n == RECONCILE_TARGET_N]
    if not at:
        largest = max(benches, key=lambda b: b.n, default=None)
        detail = "not measured in this mode"
        if largest is not None:
            sample = largest.sample(reconcile.SAFE, reconcile.UNCHANGED)
            detail += f" (N={largest.n}: {sample.fmt(3)} s)"
        return Target(label, None, detail)
    bench = at[0]
    sample = bench.sample(reconcile.SAFE, reconcile.UNCHANGED)
    stock = bench.sample(reconcile.STOCK, reconcile.UNCHANGED)
    return Target(
        label,
        sample.median < RECONCILE_TARGET_SECONDS,
        f"{sample.fmt(2)} s, {bench.count(reconcile.SAFE, reconcile.UNCHANGED, 'write_commands')} "
        f"writes (RedBeat wipe + save: {stock.fmt(1)} s)",
    )


# -- tables ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def dispatch_table(results: list[DispatchResult]) -> str:
    rows = []
    batched = all(FLOOR_BATCHED in r.seconds for r in results)
    monitored = all(SAFE_MONITORED in r.seconds for r in results)
    for r in results:
        ticks = f"{max(r.ticks[REDBEAT.key])} / {max(r.ticks[SAFE.key])}"
        rows.append(
            [
                str(r.n),
                r.ms_per_entry(FLOOR).fmt(),
                *([r.ms_per_entry(FLOOR_BATCHED).fmt()] if batched else []),
                r.ms_per_entry(REDBEAT.key).fmt(),
                r.ms_per_entry(SAFE.key).fmt(),
                *([r.ms_per_entry(SAFE_MONITORED).fmt()] if monitored else []),
                r.safe_over_floor().fmt(2),
                r.safe_over_redbeat().fmt(2),
                ticks,
            ]
        )
    return table(
        [
            "N due",
            "floor ms/entry",
            *(["batched floor ms/entry"] if batched else []),
            "RedBeat ms/entry",
            "safe_redbeat ms/entry",
            *(["with metrics + signals ms/entry"] if monitored else []),
            "safe/floor",
            "safe/RedBeat",
            "ticks RedBeat / safe",
        ],
        rows,
    )


def breakdown_table(b: Breakdown) -> str:
    rows = [[label, f"{ms:.4f}", f"{share:.0%}"] for label, ms, share in b.rows()]
    rows.append(["whole tick(s)", f"{b.total * 1000 / b.n:.4f}", "100%"])
    return table([f"safe_redbeat phase (N={b.n})", "ms/entry", "share"], rows)


def commands_table(results: list[commands.CommandResult]) -> str:
    by_n: dict[int, dict[str, commands.CommandResult]] = {}
    for c in results:
        by_n.setdefault(c.n, {})[c.contender] = c
    rows = []
    for n, pair in sorted(by_n.items()):
        stock, ours = pair[REDBEAT.key], pair[SAFE.key]
        rows.append(
            [
                str(n),
                f"{stock.round_trips} ({stock.round_trips_per_entry:.2f}/entry)",
                str(stock.commands),
                str(stock.server_commands),
                f"{ours.round_trips} ({ours.round_trips_per_entry:.3f}/entry)",
                str(ours.commands),
                str(ours.server_commands),
                f"{stock.ticks} / {ours.ticks}",
            ]
        )
    return table(
        [
            "N due",
            "RedBeat round trips",
            "RedBeat commands",
            "RedBeat server cmds",
            "safe round trips",
            "safe commands",
            "safe server cmds",
            "ticks",
        ],
        rows,
    )


def startup_table(results: list[startup.StartupResult]) -> str:
    rows = [
        [str(r.stored), r.sample(REDBEAT.key).fmt(1, 1000), r.sample(SAFE.key).fmt(1, 1000)]
        for r in results
    ]
    return table(["entries stored (1 due)", "RedBeat ms", "safe_redbeat ms"], rows)


def memory_table(results: list[memory.MemoryResult]) -> str:
    rows = [
        [
            m.contender,
            str(m.n),
            f"{m.per_entry:.1f}",
            f"{m.hash_per_entry:.1f}",
            f"{m.shared_per_entry:.1f}",
        ]
        for m in results
    ]
    return table(["scheduler", "entries", "bytes/entry", "entry hash", "ZSET+SETs share"], rows)


def reconcile_table(benches: list[ReconcileBench]) -> str:
    rows = []
    for bench in benches:
        for situation in reconcile.SITUATIONS:
            ours = (reconcile.SAFE, situation)
            stock = (reconcile.STOCK, situation)
            phases = " / ".join(
                f"{bench.phase(*ours, name).median:.3f}" for name in ("parse", "snapshot", "run")
            )
            rows.append(
                [
                    str(bench.n),
                    situation,
                    bench.sample(*ours).fmt(3),
                    phases,
                    f"{bench.count(*ours, 'created')} / {bench.count(*ours, 'updated')}",
                    bench.count(*ours, "upsert_calls"),
                    bench.count(*ours, "write_commands"),
                    bench.count(*ours, "round_trips"),
                    bench.sample(*stock).fmt(3),
                    bench.count(*stock, "write_commands"),
                    bench.count(*stock, "round_trips"),
                    bench.stock_over_safe(situation).fmt(1),
                ]
            )
    return table(
        [
            "N rows",
            "situation",
            "safe_redbeat s",
            "parse / snapshot / run s",
            "created / updated",
            "upsert calls",
            "write cmds",
            "round trips",
            "RedBeat wipe + save s",
            "RedBeat write cmds",
            "RedBeat round trips",
            "RedBeat/safe",
        ],
        rows,
    )


def failover_table(results: list[FailoverResult]) -> str:
    rows = []
    for f in results:
        stock = f.scheduler == failover.STOCK_SCHEDULER
        if stock:
            expected = (
                f"= lock timeout ({STOCK_LOCK_TIMEOUT} s) + poll"
                if f.fault == SIGKILL
                else "<= standby poll (beat_max_loop_interval)"
            )
        elif f.fault == SIGKILL:
            expected = f"<= lease + retry ({LEASE_SECONDS + RETRY_SECONDS:g} s)"
        else:
            expected = f"<= retry ({RETRY_SECONDS:g} s) + next due"
        rows.append(
            [
                "RedBeat" if stock else "safe_redbeat",
                f.fault,
                f.settings,
                f.sample().fmt(2),
                str(len(f.seconds)),
                expected,
            ]
        )
    return table(
        ["scheduler", "fault", "settings", "seconds", "trials", "expected"],
        rows,
    )


def targets_table(found: list[Target]) -> str:
    return table(["target", "result", "measured"], [[t.name, t.status, t.detail] for t in found])


# -- stdout and docs ----------------------------------------------------------------------


def text(results: Results) -> str:
    parts = [f"safe_redbeat benchmarks ({results.profile.name} mode, {results.seconds:.0f} s)"]
    if results.dispatch:
        parts += [
            "",
            "Dispatch cost per due entry (median (min-max))",
            dispatch_table(results.dispatch),
        ]
    if results.breakdown is not None:
        parts += ["", breakdown_table(results.breakdown)]
    if results.commands:
        parts += [
            "",
            "Redis commands for the dispatching tick(s)",
            commands_table(results.commands),
        ]
    if results.startup:
        parts += [
            "",
            "Construct + first tick until the first dispatch",
            startup_table(results.startup),
        ]
    if results.memory:
        parts += ["", "Redis memory per entry after one run", memory_table(results.memory)]
    if results.reconcile:
        parts += [
            "",
            "Loader reconcile against RedBeat's wipe-and-save (median (min-max))",
            reconcile_table(results.reconcile),
        ]
    if results.failover:
        parts += [
            "",
            "Failover: fault -> first message from the new leader",
            failover_table(results.failover),
        ]
    parts += ["", "Targets", targets_table(targets(results))]
    return "\n".join(parts)


def _doc(module: object) -> str:
    return (getattr(module, "__doc__", "") or "").strip()


def markdown(results: Results, plot_name: str | None) -> str:
    machine = table(["", ""], [[k, v] for k, v in results.machine.items()])
    out = [
        "# Benchmarks",
        "",
        "Stock `redbeat.RedBeatScheduler` and `safe_redbeat.SafeRedBeatScheduler`, measured in",
        "the same run, alternately (each goes first in turn), against the same local Redis.",
        "Times are median (min-max) over the repetitions. This file is generated; do not edit.",
        "",
        "```",
        results.command,
        "```",
        "",
        f"Mode: {results.profile.name} ({results.profile.repetitions} repetitions of the "
        f"dispatch runs, {results.profile.startup_repetitions} of the start runs, "
        f"{results.profile.reconcile_repetitions} of the reconcile runs); "
        f"the whole run took {results.seconds / 60:.1f} minutes. "
        "`python -m benchmarks --quick` runs the same measurements on smaller sizes in",
        "about a minute (CI); it fails only when a benchmark is broken, never on speed.",
        "",
        machine,
        "",
        "## Targets",
        "",
        targets_table(targets(results)),
        "",
    ]
    if results.dispatch:
        out += [
            "## Dispatch cost per due entry",
            "",
            _doc(dispatch),
            "",
            dispatch_table(results.dispatch),
            "",
        ]
        if plot_name:
            out += [f"![ms per entry against N]({plot_name})", ""]
    if results.breakdown is not None:
        out += [
            "### Where safe_redbeat's time goes",
            "",
            "One extra run with each phase of the tick timed (the wrappers add a little).",
            "Publishing is the task's `apply_async` (Celery's `send_task` path, the call the",
            "floors measure) inside kombu's `Producer.batch()`: the messages of each chunk of",
            "500 go to Redis in one pipeline, and once the broker accepted a chunk, one HDEL",
            "removes its pending records (the ack). The rest is the work a claimed dispatch",
            "adds per entry: reading the entry, deciding its next run, the fenced claim.",
            "",
            breakdown_table(results.breakdown),
            "",
            "Publishing still bounds the dispatch, and it is Python work per message",
            "(building the message, kombu's serialisation), not round trips: batching",
            "removed the round trip per message, which is why safe_redbeat now dispatches",
            "below the one-message-at-a-time floor; the gap to the batched floor is the read,",
            "plan and claim work above. That work is per-entry Python too, not round trips:",
            "a full batch of 1000 due entries costs 6 round trips (TIME, ZRANGEBYSCORE, the",
            "HMGET pipeline, claim.lua and one HDEL per publish chunk of 500), plus 2 to find",
            "that nothing more is due. Stock RedBeat pays two round trips and eight commands",
            "per entry on top of an unbatched publish.",
            "",
            "Because a chunk is flushed as a whole, a message counts as sent when its",
            "chunk's pipeline succeeded; a chunk the broker refused stays pending and is",
            "sent again with the same task ids (see docs/reliability.md).",
            "",
        ]
    if results.commands:
        out += [
            "## Redis commands per tick",
            "",
            _doc(commands),
            "",
            commands_table(results.commands),
            "",
        ]
    if results.startup:
        out += [
            "## Start to first dispatch",
            "",
            _doc(startup),
            "",
            startup_table(results.startup),
            "",
        ]
    if results.memory:
        out += ["## Memory per entry", "", _doc(memory), "", memory_table(results.memory), ""]
    out += ["## Reconcile", "", _doc(reconcile), ""]
    if results.reconcile:
        out += [
            reconcile_table(results.reconcile),
            "",
            'Seconds are median (min-max); counts are per run. "write cmds" are the write',
            "commands Redis executed. An unchanged reconcile writes nothing and costs two",
            "round trips per 2000 entries (versions.lua for the snapshot, diff.lua comparing",
            "content hashes inside Redis) plus two SMEMBERS; a changed row costs one",
            "upsert.lua call (SADD owner, HSET definition and version, ZADD), a new one also",
            "writes its meta. Stock RedBeat's init loader rewrites every entry (HSET, HSETNX",
            "and ZADD in one MULTI/EXEC each, after the DELs), one round trip per entry",
            "whatever changed; meanwhile a running beat sees a partial schedule, and every",
            "entry's last run is reset to the time of the save. safe_redbeat keeps",
            "`last_run_at` across updates.",
            "",
        ]
    else:
        out += ["Not measured in this mode.", ""]
    out += [
        "## Failover",
        "",
        _doc(failover),
        "",
    ]
    if results.failover:
        out += [failover_table(results.failover), ""]
    else:
        out += ["Not measured in this mode.", ""]
    out += [
        "With stock RedBeat's defaults the numbers are not measured, they follow from the",
        "code: after a SIGKILL the lock lives until its timeout, 5 x beat_max_loop_interval",
        "= 1500 s, and the standby polls every beat_max_loop_interval (300 s), so failover",
        "takes up to 1500 s + 300 s. After a SIGTERM RedBeat releases the lock, and the",
        "standby still finds it free only at its next poll, up to 300 s later.",
        "safe_redbeat's standby polls every `safe_redbeat_retry_seconds` (2 s) whatever",
        "beat_max_loop_interval is, and a SIGKILLed leader's lease expires after",
        "`safe_redbeat_lease_seconds` (15 s). When the lease key is deleted, the",
        "leader's next claim is refused inside Redis (claim.lua compares the token) and it",
        "demotes at once instead of waiting for its renewal; both replicas then poll",
        "every `safe_redbeat_retry_seconds`, and the first to find the key free leads",
        "with a higher fence number.",
        "",
    ]
    return "\n".join(out)


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
        (SAFE.key, SAFE.label, "^"),
    ):
        if not all(series in r.seconds for r in results.dispatch):
            continue
        samples = [r.ms_per_entry(series) for r in results.dispatch]
        medians = [s.median for s in samples]
        errors = [
            [m - s.low for m, s in zip(medians, samples, strict=True)],
            [s.high - m for m, s in zip(medians, samples, strict=True)],
        ]
        ax.errorbar(sizes, medians, yerr=errors, marker=marker, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("entries due at once (N)")
    ax.set_ylabel("ms per entry (median, min-max)")
    ax.set_ylim(bottom=0)
    top = max(r.ms_per_entry(REDBEAT.key).high for r in results.dispatch)
    ax.set_ylim(top=math.ceil(top * 12) / 10)
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
    messages = [f"wrote {png}"] if skipped is None else [skipped]
    md = docs_dir / "benchmarks.md"
    md.write_text(markdown(results, None if skipped else png.name), encoding="utf-8")
    messages.append(f"wrote {md}")
    return messages


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks", *argv]) if argv else "python -m benchmarks"


__all__ = [
    "Results",
    "Target",
    "command_line",
    "machine_info",
    "markdown",
    "targets",
    "text",
    "write_docs",
]
