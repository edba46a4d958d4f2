"""The occurrence-level oracle: what was sent, judged against what was expected.

Definitions (docs/reliability.md explains them with examples):

* An *occurrence* is one entry at one scheduled time: the pair (``safe_redbeat_entry``,
  ``safe_redbeat_scheduled``) from the message headers.
* A *duplicate* is an occurrence that reached the broker more than once. It is a
  *same task id* duplicate when every copy carries one task id (a worker-side guard can
  drop the extra copies), a *different task id* duplicate otherwise.
* An *early re-run* is a second occurrence of an entry scheduled less than its period
  (minus the 1 s of score rounding) after the previous one; a crontab occurrence off the
  minute boundary. It is expected only as the first run of an entry whose last run time
  was lost (after ``wipe-keys``, ``redis-restart-lossy``, or when the entry is created);
  anything else would be the same run dispatched twice under two scheduled times.
* The *failover window* of a fault runs from its start to ``recovered + lease + retry +
  slack``; ``recovered`` is when the fault itself is over (Redis answering again, the
  pause over; the fault's start for signals and deletions).
* *Missing*: for an entry with period ``p``, after a send at ``a`` the next one is
  expected by ``a + p + tolerance``. If the next send only came at ``b``, every part of
  ``[a + p + tolerance, b - tolerance]`` not covered by a failover window counts, and
  ``ceil(uncovered / p)`` occurrences are missing there. The same holds from the start of
  observation (or the entry's creation) to its first send, and from its last send to the
  end of observation (or its deletion).
* *Failover time* of a fault: from its start to the first message carrying a fence
  higher than every fence seen before the fault. None if no new fence appeared before the
  next fault (the leader kept its lease).
* A *stale-fence send* is a message whose fence is below one already seen: an old leader
  finishing the publish it was in when it lost the lease.

With ``K`` shards (``RunData.shards``) each shard has its own lease and fence, so:

* fences (stale-fence sends, failover times) are compared within one shard; an entry's
  shard is ``shard_of(name, K)``;
* a shard is *leaderless* while its lease key is absent or names a process that is dead
  or stopped (``RunData.lease_samples``, polled every ~100 ms, and the faults' and exits'
  times). A *leader gap* runs from the last poll that saw a live holder to the first that
  saw one again;
* the failover window of shard ``s`` is each of its leader gaps, from its start to its
  end plus ``slack``, but never longer than ``lease + retry + slack``: an occurrence of
  an entry in shard ``s`` may be missed only while ``s`` had no leader. Faults that hit
  Redis itself (no ``shards`` in their details) open a window for every shard;
* *led again*: for each shard a fault hit, the time from the fault to the first poll that
  saw a live holder with another lease value than the one before the fault.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from safe_redbeat.layout import shard_of
from safe_redbeat.lease import parse_token
from tests.chaos.model import (
    DATA_LOSS_FAULTS,
    FAULT_KINDS,
    FaultRecord,
    LeaseSample,
    Lifetime,
    RunData,
    Sent,
    WorkloadEntry,
)

STEADY = "steady state (outside failover windows)"


@dataclass(frozen=True)
class OracleSettings:
    #: how late a send may be, outside any failover window, before it counts as missing
    tolerance: float = 2.0
    #: added to lease + retry: backoff after a Redis error, the catch-up burst
    slack: float = 3.0


@dataclass
class KindRow:
    """Results attributed to one fault kind (or to the steady state)."""

    kind: str
    faults: int = 0
    occurrences: int = 0
    dup_same_id: int = 0
    dup_different_id: int = 0
    early_after_data_loss: int = 0
    early_unexplained: int = 0
    missing: int = 0
    crashes: int = 0
    stale_fence_sends: int = 0
    failovers: list[float] = field(default_factory=list)
    lease_kept: int = 0

    def failover_median(self) -> float | None:
        return statistics.median(self.failovers) if self.failovers else None

    def failover_max(self) -> float | None:
        return max(self.failovers) if self.failovers else None


@dataclass
class Report:
    rows: dict[str, KindRow]
    messages: int
    occurrences: int
    missing: int
    dup_same_id: int
    dup_same_id_outside_windows: int
    dup_different_id: int
    early_after_data_loss: int
    early_unexplained: int
    crashes: int
    stale_fence_sends: int
    unknown_messages: int
    payload_mismatches: int
    observed_seconds: float
    #: replica exits the harness caused (SIGKILL, SIGTERM), by return code
    expected_exits: dict[str, int] = field(default_factory=dict)
    missing_gaps: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    early: list[dict[str, Any]] = field(default_factory=list)
    crash_details: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    skew: dict[str, dict[str, Any]] = field(default_factory=dict)
    lateness: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)
    shards: int = 1
    #: every shard's leader gaps (sharded runs), longest first
    leader_gaps: list[dict[str, Any]] = field(default_factory=list)
    #: shard -> its longest leader gap in seconds (sharded runs)
    longest_leader_gap: dict[int, float] = field(default_factory=dict)
    #: tracebacks in the replicas' logs
    tracebacks: int = 0
    traceback_details: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, row in self.rows.items():
            data["rows"][name]["failover_median"] = row.failover_median()
            data["rows"][name]["failover_max"] = row.failover_max()
        return data

    def summary(self) -> str:
        """One paragraph of figures, for logs and assertion messages."""
        parts = [
            f"{self.messages} messages, {self.occurrences} occurrences checked over "
            f"{self.observed_seconds:.0f}s",
            f"duplicates same id {self.dup_same_id} "
            f"({self.dup_same_id_outside_windows} outside failover windows), "
            f"different id {self.dup_different_id}",
            f"early re-runs {self.early_after_data_loss} after data loss, "
            f"{self.early_unexplained} unexplained",
            f"missing {self.missing}",
            f"crashes {self.crashes}",
            "expected exits "
            + (", ".join(f"{n} x rc {c}" for c, n in sorted(self.expected_exits.items())) or "0"),
            f"stale-fence sends {self.stale_fence_sends}",
            f"tracebacks in logs {self.tracebacks}",
            f"unknown messages {self.unknown_messages}",
            f"payload mismatches {self.payload_mismatches}",
        ]
        faults = ", ".join(
            f"{row.kind} x{row.faults} (failover median {_fmt(row.failover_median())}s, "
            f"max {_fmt(row.failover_max())}s, lease kept {row.lease_kept})"
            for row in self.rows.values()
            if row.faults
        )
        text = "; ".join(parts) + (f"; faults: {faults}" if faults else "")
        if self.shards > 1:
            gaps = ", ".join(f"{s}: {v:.2f}s" for s, v in sorted(self.longest_leader_gap.items()))
            text += f"; {self.shards} shards, longest leader gap by shard {{{gaps}}}"
        for replica, skew in self.skew.items():
            text += (
                f"; skewed replica {replica} ({skew['offset']:+.1f}s) sent {skew['sends']}"
                f" messages, lateness min {_fmt(skew['lateness_min'])}s"
                f" max {_fmt(skew['lateness_max'])}s"
            )
        return text


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- intervals --------------------------------------------------------------------------


def merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of closed intervals, sorted and non-overlapping."""
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if hi < lo:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def uncovered(lo: float, hi: float, covered: Sequence[tuple[float, float]]) -> float:
    """Length of ``[lo, hi]`` outside the (merged) ``covered`` intervals."""
    if hi <= lo:
        return 0.0
    total = hi - lo
    for c_lo, c_hi in covered:
        overlap = min(hi, c_hi) - max(lo, c_lo)
        if overlap > 0:
            total -= overlap
    return max(total, 0.0)


# -- the oracle -------------------------------------------------------------------------


class _Attribution:
    """Maps a time to the fault whose failover window contains it (latest start wins)."""

    def __init__(self, faults: Sequence[FaultRecord], allowance: float) -> None:
        self.faults = sorted(faults, key=lambda f: f.started)
        self.allowance = allowance

    def window(self, fault: FaultRecord) -> tuple[float, float]:
        return fault.started, max(fault.recovered, fault.started) + self.allowance

    def fault_at(self, t: float) -> FaultRecord | None:
        found = None
        for fault in self.faults:
            lo, hi = self.window(fault)
            if lo <= t <= hi:
                found = fault
        return found

    def kind_at(self, t: float) -> str:
        fault = self.fault_at(t)
        return STEADY if fault is None else fault.kind


def analyze(data: RunData, settings: OracleSettings | None = None) -> Report:
    """Judge one run; pure function of ``data``."""
    settings = settings or OracleSettings()
    allowance = data.lease_seconds + data.retry_seconds + settings.slack
    attribution = _Attribution(data.faults, allowance)
    windows = merge(attribution.window(f) for f in data.faults)
    shard_count = max(data.shards, 1)

    def shard(name: str | None) -> int:
        return shard_of(name or "", shard_count)

    outages = holder_outages(data)
    gaps = leader_gaps(data.lease_samples, shard_count, outages)
    shard_windows = _shard_windows(data, gaps, attribution, settings.slack, allowance)
    loss_windows = merge(attribution.window(f) for f in data.faults if f.kind in DATA_LOSS_FAULTS)
    kinds = [*FAULT_KINDS, *sorted({f.kind for f in data.faults} - set(FAULT_KINDS))]
    rows = {kind: KindRow(kind) for kind in [*kinds, STEADY]}
    for fault in data.faults:
        rows[fault.kind].faults += 1

    messages = sorted(data.messages, key=lambda m: m.arrived)
    by_occurrence: dict[tuple[str, int], list[Sent]] = defaultdict(list)
    unknown = 0
    mismatches = 0
    for message in messages:
        spec = data.specs.get(message.entry or "")
        if spec is None or message.scheduled is None:
            unknown += 1
            continue
        by_occurrence[(spec.name, message.scheduled)].append(message)
        if not _payload_ok(spec, message):
            mismatches += 1

    report = Report(
        rows=rows,
        messages=len(messages),
        occurrences=len(by_occurrence),
        missing=0,
        dup_same_id=0,
        dup_same_id_outside_windows=0,
        dup_different_id=0,
        early_after_data_loss=0,
        early_unexplained=0,
        crashes=0,
        stale_fence_sends=0,
        unknown_messages=unknown,
        payload_mismatches=mismatches,
        observed_seconds=data.observe_until - data.observe_from,
        settings={
            "tolerance": settings.tolerance,
            "slack": settings.slack,
            "failover_allowance": allowance,
            "lease_seconds": data.lease_seconds,
            "retry_seconds": data.retry_seconds,
        },
        shards=shard_count,
        leader_gaps=[g.to_dict() for g in sorted(gaps, key=lambda g: -g.seconds)],
        longest_leader_gap={
            s: round(max((g.seconds for g in gaps if g.shard == s), default=0.0), 3)
            for s in range(shard_count)
        }
        if data.lease_samples
        else {},
        tracebacks=len(data.tracebacks),
        traceback_details=list(data.tracebacks),
    )

    # occurrences and duplicates
    for (name, scheduled), copies in by_occurrence.items():
        first = copies[0]
        rows[attribution.kind_at(first.arrived)].occurrences += 1
        if len(copies) == 1:
            continue
        ids = {c.task_id for c in copies}
        row = rows[attribution.kind_at(copies[1].arrived)]
        detail = {
            "entry": name,
            "shard": shard(name),
            "scheduled": scheduled,
            "copies": len(copies),
            "task_ids": sorted(ids),
            "origins": [c.origin for c in copies],
            "fences": [c.fence for c in copies],
            "arrived": [round(c.arrived, 3) for c in copies],
            "attributed_to": row.kind,
        }
        if len(ids) == 1:
            report.dup_same_id += 1
            row.dup_same_id += 1
            if row.kind == STEADY:
                report.dup_same_id_outside_windows += 1
        else:
            report.dup_different_id += 1
            row.dup_different_id += 1
        if len(report.duplicates) < 200:
            report.duplicates.append(detail)

    # early re-runs and missing occurrences, entry by entry
    per_entry: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (name, scheduled), copies in by_occurrence.items():
        per_entry[name].append((scheduled, copies[0].arrived))
    for name, spec in data.specs.items():
        occurrences = sorted(per_entry.get(name, []))
        lifetimes = data.lifetimes.get(name) or [Lifetime(data.observe_from)]
        _check_early(report, rows, attribution, spec, occurrences, lifetimes, loss_windows)
        _check_missing(report, rows, attribution, spec, occurrences, lifetimes,
                       shard_windows[shard(name)], data, settings, shard(name))  # fmt: skip

    # stale fences and failover times
    # (each shard has its own fence)
    by_shard: dict[int, list[Sent]] = defaultdict(list)
    for message in messages:
        by_shard[shard(message.entry)].append(message)
    running_max: dict[int, int] = {}
    for message in messages:
        if message.fence is None:
            continue
        index = shard(message.entry)
        top = running_max.get(index)
        if top is not None and message.fence < top:
            report.stale_fence_sends += 1
            rows[attribution.kind_at(message.arrived)].stale_fence_sends += 1
        running_max[index] = message.fence if top is None else max(top, message.fence)
    faults = sorted(data.faults, key=lambda f: f.started)
    for index, fault in enumerate(faults):
        horizon = faults[index + 1].started if index + 1 < len(faults) else data.observe_until
        hit = fault_shards(fault, shard_count)
        times = [_failover(by_shard[s], fault.started, horizon) for s in hit]
        known = [t for t in times if t is not None]
        failover = max(known) if known else None
        if failover is None:
            rows[fault.kind].lease_kept += 1
        else:
            rows[fault.kind].failovers.append(failover)
        record = fault.to_dict()
        record["failover_seconds"] = None if failover is None else round(failover, 3)
        record["window_end"] = round(attribution.window(fault)[1], 3)
        if data.lease_samples:
            record["led_again_seconds"] = {
                s: _led_again(data.lease_samples, s, fault.started, outages) for s in hit
            }
        report.faults.append(record)

    # crashes
    for exit_ in data.exits:
        if exit_.expected:
            rc = str(exit_.returncode)
            report.expected_exits[rc] = report.expected_exits.get(rc, 0) + 1
            continue
        report.crashes += 1
        rows[attribution.kind_at(exit_.at)].crashes += 1
        report.crash_details.append(asdict(exit_))
    for replica, code in data.final_returncodes.items():
        if code != 0:
            report.crashes += 1
            rows[STEADY].crashes += 1
            report.crash_details.append(
                {"replica": replica, "returncode": code, "cause": "final SIGTERM shutdown"}
            )

    report.lateness = _lateness([m for m in messages if not _inside(m.arrived, windows)])
    for replica, offset in data.skews.items():
        sent = [m for m in messages if data.origins.get(m.origin) == replica]
        steady = [m for m in sent if not _inside(m.arrived, windows)]
        lateness = _lateness(steady)
        report.skew[replica] = {
            "offset": offset,
            "sends": len(sent),
            "sends_outside_windows": len(steady),
            "lateness_min": lateness["min"],
            "lateness_median": lateness["median"],
            "lateness_max": lateness["max"],
            "early_sends": sum(1 for m in sent if m.scheduled and m.arrived < m.scheduled - 0.5),
        }
    return report


def _inside(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(lo <= t <= hi for lo, hi in windows)


def _lateness(messages: Sequence[Sent]) -> dict[str, float | None]:
    values = sorted(m.arrived - m.scheduled for m in messages if m.scheduled is not None)
    if not values:
        return {"min": None, "median": None, "p99": None, "max": None}
    return {
        "min": round(values[0], 3),
        "median": round(statistics.median(values), 3),
        "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))], 3),
        "max": round(values[-1], 3),
    }


def _payload_ok(spec: WorkloadEntry, message: Sent) -> bool:
    if tuple(message.args) != tuple(spec.args) or dict(message.kwargs) != dict(spec.kwargs):
        return False
    wanted = (spec.options.get("headers") or {}).get("x-chaos")
    return wanted is None or message.custom_header == wanted


def _lifetime_of(t: float, lifetimes: Sequence[Lifetime], grace: float) -> int | None:
    for index, life in enumerate(lifetimes):
        end = math.inf if life.deleted is None else life.deleted + grace
        if life.created - grace <= t <= end:
            return index
    return None


def _check_early(
    report: Report,
    rows: dict[str, KindRow],
    attribution: _Attribution,
    spec: WorkloadEntry,
    occurrences: Sequence[tuple[int, float]],
    lifetimes: Sequence[Lifetime],
    loss_windows: Sequence[tuple[float, float]],
) -> None:
    previous: tuple[int, float] | None = None
    previous_life: int | None = None
    for scheduled, arrived in occurrences:
        life = _lifetime_of(arrived, lifetimes, grace=2.0)
        first_of_life = previous is None or life != previous_life
        # the very first run of an entry is due at once, whatever its schedule
        if previous is None:
            early = False
        elif spec.kind == "crontab":
            early = scheduled % 60 != 0
        else:
            early = scheduled - previous[0] < spec.period - 1
        if early:
            explained = first_of_life or _inside(arrived, loss_windows)
            row = rows[attribution.kind_at(arrived)]
            if explained:
                report.early_after_data_loss += 1
                row.early_after_data_loss += 1
            else:
                report.early_unexplained += 1
                row.early_unexplained += 1
                report.early.append(
                    {
                        "entry": spec.name,
                        "previous_scheduled": previous[0] if previous else None,
                        "scheduled": scheduled,
                        "arrived": round(arrived, 3),
                    }
                )
        previous, previous_life = (scheduled, arrived), life


def _check_missing(
    report: Report,
    rows: dict[str, KindRow],
    attribution: _Attribution,
    spec: WorkloadEntry,
    occurrences: Sequence[tuple[int, float]],
    lifetimes: Sequence[Lifetime],
    windows: Sequence[tuple[float, float]],
    data: RunData,
    settings: OracleSettings,
    shard: int = 0,
) -> None:
    p, tol = spec.period, settings.tolerance
    arrivals = sorted(arrived for _scheduled, arrived in occurrences)
    for life in lifetimes:
        start = max(life.created, data.observe_from)
        end = data.observe_until if life.deleted is None else min(life.deleted, data.observe_until)
        if end <= start:
            continue
        before = [t for t in arrivals if start - p <= t < start]
        inside = [t for t in arrivals if start <= t <= end]
        # an entry (re)created at `start` is due at once; one already running is due p
        # after its last send
        if life.first_due is not None:
            # written with "last run = now": its first run is due then, whatever ran before
            previous = max(life.first_due, start) - p
        else:
            previous = before[-1] if before else start - p
        gaps = []
        for t in inside:
            gaps.append((previous, t, t - tol))
            previous = t
        gaps.append((previous, end, end))
        for a, b, check_until in gaps:
            lost = uncovered(a + p + tol, check_until, windows)
            if lost <= 0:
                continue
            count = math.ceil(lost / p)
            report.missing += count
            kind = attribution.kind_at(a + p + tol)
            rows[kind].missing += count
            report.missing_gaps.append(
                {
                    "entry": spec.name,
                    "shard": shard,
                    "period": p,
                    "last_send": round(a, 3),
                    "next_send": round(b, 3),
                    "uncovered_seconds": round(lost, 3),
                    "missing": count,
                }
            )


def _failover(messages: Sequence[Sent], started: float, horizon: float) -> float | None:
    before = [m.fence for m in messages if m.arrived < started and m.fence is not None]
    fence_before = max(before) if before else -1
    for message in messages:
        if message.arrived < started or message.fence is None:
            continue
        if message.arrived > horizon:
            return None
        if message.fence > fence_before:
            return message.arrived - started
    return None


# -- shards --------------------------------------------------------------------------------


def fault_shards(fault: FaultRecord, shards: int) -> list[int]:
    """The shards a fault hit: those named in its details, else every shard."""
    named = fault.details.get("shards")
    return sorted(named) if isinstance(named, list) else list(range(shards))


def holder_outages(data: RunData) -> dict[int, list[tuple[float, float]]]:
    """pid -> when that process could not lead: once it died, while it was stopped."""
    outages: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for exit_ in data.exits:
        outages[exit_.pid].append((exit_.at, math.inf))
    for fault in data.faults:
        pid = fault.details.get("pid")
        if not isinstance(pid, int):
            continue
        if fault.kind == "sigkill-leader":
            outages[pid].append((fault.started, math.inf))
        elif fault.kind == "sigstop-leader":
            stopped = float(fault.details.get("stopped_seconds", 0.0))
            outages[pid].append((fault.started, fault.started + stopped))
    return dict(outages)


@dataclass(frozen=True)
class LeaderGap:
    """A time shard ``shard`` had no live leader (see the module's docstring)."""

    shard: int
    start: float
    end: float
    #: the holders before and after, described
    before: str
    after: str
    #: still leaderless at the last poll
    open: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        ending = "still leaderless at the end" if self.open else f"then {self.after}"
        return (
            f"shard {self.shard} had no live leader for {self.seconds:.2f}s "
            f"(from {self.start:.3f}, after {self.before}; {ending})"
        )


def _describe_value(value: str | None) -> str:
    if value is None:
        return "nobody"
    holder = parse_token(value)
    return f"{holder.name} (pid {holder.pid}, fence {holder.fence})"


def _live_holder(
    value: str | None, at: float, outages: dict[int, list[tuple[float, float]]]
) -> bool:
    if value is None:
        return False
    pid = parse_token(value).pid
    return pid is None or not any(lo <= at <= hi for lo, hi in outages.get(pid, ()))


def leader_gaps(
    samples: Sequence[LeaseSample], shards: int, outages: dict[int, list[tuple[float, float]]]
) -> list[LeaderGap]:
    """Every time a shard had no live leader, from the polls of its lease key."""
    gaps: list[LeaderGap] = []
    for index in range(shards):
        last_live: LeaseSample | None = None
        start: float | None = None
        before = "nobody"
        for sample in samples:
            value = sample.values[index]
            if _live_holder(value, sample.at, outages):
                if start is not None:
                    gaps.append(LeaderGap(index, start, sample.at, before, _describe_value(value)))
                    start = None
                last_live = sample
            elif start is None:
                start = sample.at if last_live is None else last_live.at
                before = "nobody" if last_live is None else _describe_value(last_live.values[index])
        if start is not None:
            gaps.append(LeaderGap(index, start, samples[-1].at, before, "nobody", open=True))
    return gaps


def _led_again(
    samples: Sequence[LeaseSample],
    shard: int,
    started: float,
    outages: dict[int, list[tuple[float, float]]],
) -> float | None:
    """Seconds from ``started`` until a live holder with a new lease value led ``shard``."""
    before: str | None = None
    for sample in samples:
        value = sample.values[shard]
        if sample.at < started:
            before = value
        elif value != before and _live_holder(value, sample.at, outages):
            return round(sample.at - started, 3)
    return None


def _shard_windows(
    data: RunData,
    gaps: Sequence[LeaderGap],
    attribution: _Attribution,
    slack: float,
    allowance: float,
) -> list[list[tuple[float, float]]]:
    """The failover windows of each shard (the same for every shard when not sharded)."""
    shards = max(data.shards, 1)
    if shards == 1 or not data.lease_samples:
        every = merge(attribution.window(f) for f in data.faults)
        return [every] * shards
    common = [attribution.window(f) for f in data.faults if "shards" not in f.details]
    return [
        merge(
            common
            + [(g.start, min(g.end + slack, g.start + allowance)) for g in gaps if g.shard == index]
        )
        for index in range(shards)
    ]


def shard_problems(report: Report) -> list[str]:
    """What a sharded run got wrong about leadership, one sentence each: a shard without a
    live leader for longer than ``lease + retry + slack``, a shard a fault hit that was not
    led again within that time."""
    allowance = report.settings["failover_allowance"]
    problems = [
        f"shard {g['shard']} had no live leader for {g['seconds']:.2f}s "
        f"(allowed {allowance:.2f}s: lease + retry + slack), from {g['start']:.3f} after "
        f"{g['before']}, " + ("still leaderless at the end" if g["open"] else f"then {g['after']}")
        for g in report.leader_gaps
        if g["seconds"] > allowance
    ]
    for fault in report.faults:
        for index, seconds in (fault.get("led_again_seconds") or {}).items():
            if seconds is None or seconds > allowance:
                took = "never" if seconds is None else f"only after {seconds:.2f}s"
                problems.append(
                    f"shard {index} was led again {took} after {fault['kind']} of "
                    f"{fault['target']} at {fault['started']:.3f} (allowed {allowance:.2f}s)"
                )
    return problems


# -- rendering ----------------------------------------------------------------------------


def markdown_table(report: Report) -> str:
    """The fault x result table of docs/reliability.md."""
    header = (
        "| fault | injected | occurrences | dup same id | dup different id "
        "| early re-runs (data loss / other) | missing | crashes | stale-fence sends "
        "| failover median (s) | failover max (s) | lease kept |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in report.rows.values():
        if not row.faults and row.kind != STEADY and not row.occurrences:
            continue
        lines.append(
            f"| {row.kind} | {row.faults if row.kind != STEADY else '-'} | {row.occurrences} "
            f"| {row.dup_same_id} | {row.dup_different_id} "
            f"| {row.early_after_data_loss} / {row.early_unexplained} | {row.missing} "
            f"| {row.crashes} | {row.stale_fence_sends} | {_fmt(row.failover_median())} "
            f"| {_fmt(row.failover_max())} | {row.lease_kept if row.kind != STEADY else '-'} |"
        )
    lines.append(
        f"| **total** | {sum(r.faults for r in report.rows.values())} | {report.occurrences} "
        f"| {report.dup_same_id} | {report.dup_different_id} "
        f"| {report.early_after_data_loss} / {report.early_unexplained} | {report.missing} "
        f"| {report.crashes} | {report.stale_fence_sends} | | | |"
    )
    return header + "\n".join(lines) + "\n"
