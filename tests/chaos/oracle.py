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

A fault whose details name ``entries`` (broker-refuse-one: the broker refuses one entry's
messages) opens its failover window for those entries only: every other entry must run on
time meanwhile, and is checked for missing occurrences as if there were no fault.

The broker faults (``BROKER_FAULTS``; the broker on a server of its own) add:

* *Runs per entry per outage*. A broker outage (broker-stop, broker-pause) runs from the
  fault's ``started`` (the broker stopped or frozen) to ``recovered`` (answering again).
  For each entry and outage, the runs are the distinct occurrences of the entry (one
  scheduled time, whatever its task ids or copies) that were sent and

  (a) are scheduled inside the outage, ``started <= scheduled <= recovered``, or
  (b) were released by it: scheduled before ``started``, with a copy that reached the
      broker after ``started`` and no later than the end of the fault's failover window.
      That is an occurrence held back by the outage (a publish that hung on the frozen
      broker), or one the broker had taken just before it went away whose acknowledgement
      failed, republished afterwards under its task id.

  The rule is **at most one run per entry per outage**: the occurrence that was pending
  when the broker went away, republished with its task id, or else the entry's one
  catch-up run of what it missed, never one run per missed period. An entry whose period
  is longer than the outage may have none; an entry with a slot inside the outage (a
  whole period plus a second before ``recovered``) must have one (*no catch-up*
  otherwise).
* *When a copy reached the broker* (``Sent.arrived``) is when the auditor took it from the
  queue (it drains every 50 ms), except for a message the broker already held when an
  outage began: the auditor cannot take it before the broker is back, so it is dated
  ``started``, from the broker itself. Arriving at ``started``, not after it, it is no
  run of the outage by (b):

  - broker-stop starts the stopped broker's data on a port no replica knows and drains it
    there;
  - broker-pause pauses the broker's writes (``CLIENT PAUSE WRITE``) right before the
    SIGSTOP, reads its queues (LRANGE is no write) and takes the pause as ``started``;
    after the SIGCONT it resumes them (``CLIENT UNPAUSE``) and drains. A publish is an
    LPUSH and only the auditor takes messages, so what the broker held is the oldest end
    of each list, in the same order; it is checked message by message, and where it does
    not match, every message is dated by the auditor's clock (the fault's
    ``held_messages_found`` is then false).

  Why pause the writes rather than push a marker onto each queue: a marker pushed just
  before the SIGSTOP leaves a few milliseconds in which a publish lands behind the marker,
  and is even acknowledged, before the broker freezes; it would count as reaching the
  broker during the outage, a run of it, and make a false burst. A marker pushed after the
  SIGCONT races the publishes the broker held back, and could date one of them before the
  outage, hiding a real burst. ``CLIENT PAUSE WRITE`` is one point in the broker's own
  command order: every write before it is in what was read, every write after it is
  carried out after ``CLIENT UNPAUSE``. For the clients, the write pause is the frozen
  broker one or two milliseconds early (a write gets no reply either way). Where the
  dating is in doubt it errs towards counting a run: a false burst can be checked against
  the replicas' logs, a hidden one cannot.
* *Piled-up pending*: an entry with more than one pending record just before the broker
  came back: the leader went on claiming while the broker refused.
* *Lost*: a pending record read during a broker fault (just before the broker came back,
  or the refused queue was restored) whose task id never reached the broker and is no
  dead letter at the end of the run.
* *Re-sent over and over*: an occurrence that reached the broker more than
  ``max_copies`` times (two: a same-id re-send after a fault is one more copy).
* *Late while refused*: a send of another entry, scheduled while one entry's messages
  were refused, that arrived more than ``tolerance`` after its scheduled time.
* *Unexpected dead letter*: a dead letter at the end of the run of an entry whose messages
  no fault refused (a broker outage must never count against a message).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from safe_redbeat.leader.lease import parse_token
from safe_redbeat.store.layout import shard_of
from tests.chaos.model import (
    BROKER_FAULTS,
    BROKER_OUTAGES,
    BROKER_REFUSE_ONE,
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
    #: more copies than this of one occurrence: re-sent over and over
    max_copies: int = 2


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
    #: when observation began (times in problem sentences are relative to it)
    observed_from: float = 0.0
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
    #: broker faults (see the module's docstring): (entry, outage) pairs checked, the
    #: most runs of one entry in one outage, and each entry that ran more than once
    outage_pairs: int = 0
    outage_runs_max: int = 0
    outage_bursts: list[dict[str, Any]] = field(default_factory=list)
    #: entries that did not run for an outage they were due in (at least one whole
    #: period plus a second fits inside it; catch_up "run_once" runs them once)
    outage_skipped: list[dict[str, Any]] = field(default_factory=list)
    #: entries with several pending records when the broker came back
    piled_pending: list[dict[str, Any]] = field(default_factory=list)
    #: pending records seen during a broker fault that were never sent nor dead-lettered
    lost: int = 0
    lost_details: list[dict[str, Any]] = field(default_factory=list)
    #: occurrences sent more than ``max_copies`` times; the most copies of one
    resent: int = 0
    resent_details: list[dict[str, Any]] = field(default_factory=list)
    max_copies: int = 0
    #: the most copies of one occurrence, by the fault kind its second copy is attributed to
    copies_by_kind: dict[str, int] = field(default_factory=dict)
    #: sends of other entries later than ``tolerance`` while one entry was refused
    late_while_refused: int = 0
    late_details: list[dict[str, Any]] = field(default_factory=list)
    #: dead letters at the end of the run, by entry; those no fault explains
    dead_letters: dict[str, int] = field(default_factory=dict)
    unexpected_dead: list[dict[str, Any]] = field(default_factory=list)

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
        if any(f["kind"] in BROKER_FAULTS for f in self.faults):
            text += (
                f"; broker: {self.outage_pairs} entry x outage pairs, most runs of one entry "
                f"in one outage {self.outage_runs_max} ({len(self.outage_bursts)} over 1, "
                f"{len(self.outage_skipped)} without a catch-up), entries with piled-up pending "
                f"{len(self.piled_pending)}, lost {self.lost}, re-sent over and over "
                f"{self.resent} (most copies {self.max_copies}), late while refused "
                f"{self.late_while_refused}, dead letters "
                f"{sum(self.dead_letters.values())} ({len(self.unexpected_dead)} unexpected)"
            )
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
    # a fault naming entries opens its window for them only
    scoped: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for fault in data.faults:
        for name in fault.details.get("entries") or ():
            scoped[name].append(attribution.window(fault))
    general = [f for f in data.faults if not f.details.get("entries")]
    windows = merge(attribution.window(f) for f in general)
    shard_count = max(data.shards, 1)

    def shard(name: str | None) -> int:
        return shard_of(name or "", shard_count)

    outages = holder_outages(data)
    gaps = leader_gaps(data.lease_samples, shard_count, outages)
    shard_windows = _shard_windows(data, general, gaps, attribution, settings.slack, allowance)
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
        observed_from=data.observe_from,
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
        entry_windows = merge([*shard_windows[shard(name)], *scoped.get(name, ())])
        _check_missing(report, rows, attribution, spec, occurrences, lifetimes,
                       entry_windows, data, settings, shard(name))  # fmt: skip

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
        if data.lease_samples and fault.kind not in BROKER_FAULTS:
            # a broker fault hits no leader: nothing has to be led again after it
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

    def outside(message: Sent) -> bool:
        return not _inside(message.arrived, windows) and not _inside(
            message.arrived, scoped.get(message.entry or "", ())
        )

    report.lateness = _lateness([m for m in messages if outside(m)])
    for replica, offset in data.skews.items():
        sent = [m for m in messages if data.origins.get(m.origin) == replica]
        steady = [m for m in sent if outside(m)]
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
    _check_broker(report, data, settings, attribution, by_occurrence)
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
    faults: Sequence[FaultRecord],
    gaps: Sequence[LeaderGap],
    attribution: _Attribution,
    slack: float,
    allowance: float,
) -> list[list[tuple[float, float]]]:
    """The failover windows of ``faults`` for each shard (the same for every shard when
    not sharded)."""
    shards = max(data.shards, 1)
    if shards == 1 or not data.lease_samples:
        every = merge(attribution.window(f) for f in faults)
        return [every] * shards
    common = [attribution.window(f) for f in faults if "shards" not in f.details]
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


# -- the broker ---------------------------------------------------------------------------

#: One occurrence as the broker checks see it: scheduled time, first arrival, every copy.
_Occ = tuple[int, float, list[Sent]]


def _senders(data: RunData, copies: Sequence[Sent]) -> list[str]:
    """The replicas that sent ``copies`` (their ``origin`` where unknown), first first."""
    return list(dict.fromkeys(data.origins.get(c.origin, c.origin) for c in copies))


def _check_broker(
    report: Report,
    data: RunData,
    settings: OracleSettings,
    attribution: _Attribution,
    by_occurrence: dict[tuple[str, int], list[Sent]],
) -> None:
    """Runs per entry per outage, piled-up pending, lost, re-sent over and over, late while
    refused, unexpected dead letters (the module's docstring defines each)."""
    records = {(r["kind"], r["started"]): r for r in report.faults}
    per_entry: dict[str, list[_Occ]] = defaultdict(list)
    for (name, scheduled), copies in by_occurrence.items():
        per_entry[name].append((scheduled, copies[0].arrived, copies))
    by_scheduled = {name: sorted(o, key=lambda x: x[0]) for name, o in per_entry.items()}
    # every copy of every occurrence, by arrival: (arrival, the occurrence)
    copies_of: dict[str, list[tuple[float, _Occ]]] = {
        name: sorted(((c.arrived, occ) for occ in o for c in occ[2]), key=lambda x: x[0])
        for name, o in per_entry.items()
    }
    scheduled_keys = {name: [x[0] for x in o] for name, o in by_scheduled.items()}
    arrival_keys = {name: [x[0] for x in o] for name, o in copies_of.items()}
    faults = sorted(data.faults, key=lambda f: f.started)

    for fault in faults:
        record = records[(fault.kind, fault.started)]
        record.pop("pending", None)
        record["pending_records"] = len(fault.pending)
        if fault.kind not in BROKER_OUTAGES:
            continue
        lo, hi = fault.started, fault.recovered
        window_end = attribution.window(fault)[1]
        histogram: Counter[str] = Counter()
        most = 0
        for name, spec in data.specs.items():
            runs: dict[int, _Occ] = {}
            keys = scheduled_keys.get(name, [])
            occurrences = by_scheduled.get(name, [])
            for occ in occurrences[bisect.bisect_left(keys, lo) : bisect.bisect_right(keys, hi)]:
                runs[occ[0]] = occ  # (a) scheduled inside the outage
            arrivals = arrival_keys.get(name, [])
            for arrived, occ in copies_of.get(name, [])[bisect.bisect_right(arrivals, lo) :]:
                if arrived > window_end:
                    break
                if occ[0] < lo:
                    runs[occ[0]] = occ  # (b) released by it
            report.outage_pairs += 1
            most = max(most, len(runs))
            report.outage_runs_max = max(report.outage_runs_max, len(runs))
            histogram["2+" if len(runs) > 1 else str(len(runs))] += 1
            if not runs and _due_inside(data, name, spec.period, lo, hi):
                report.outage_skipped.append(
                    {
                        "fault": fault.kind,
                        "outage": [round(lo, 3), round(hi, 3)],
                        "entry": name,
                        "period": spec.period,
                    }
                )
            if len(runs) > 1:
                report.outage_bursts.append(
                    {
                        "fault": fault.kind,
                        "outage": [round(lo, 3), round(hi, 3)],
                        "entry": name,
                        "period": spec.period,
                        "runs": [
                            {
                                "scheduled": occ[0],
                                "first_sent": round(occ[1], 3),
                                "copies": len(occ[2]),
                                "task_ids": sorted({c.task_id for c in occ[2]}),
                                "senders": _senders(data, occ[2]),
                            }
                            for occ in sorted(runs.values(), key=lambda x: x[0])
                        ],
                    }
                )
        record["runs_per_entry"] = {
            "0": histogram["0"],
            "1": histogram["1"],
            "2+": histogram["2+"],
            "max": most,
        }
        pending_of: dict[str, list[int | None]] = defaultdict(list)
        for pending in fault.pending:
            pending_of[pending.entry or "?"].append(pending.scheduled)
        for name, scheduled_times in sorted(pending_of.items()):
            if len(scheduled_times) > 1:
                report.piled_pending.append(
                    {
                        "fault": fault.kind,
                        "outage": [round(lo, 3), round(hi, 3)],
                        "entry": name,
                        "pending": len(scheduled_times),
                        "scheduled": sorted(t for t in scheduled_times if t is not None),
                    }
                )

    # every pending record seen during a broker fault reached the broker or the dead letters
    sent_ids = {m.task_id for m in data.messages}
    dead_ids = {d.task_id for d in data.dead_letters}
    still_pending = {p.task_id for p in data.pending_at_end}
    seen: set[str] = set()
    for fault in faults:
        for pending in fault.pending:
            if pending.task_id in seen:
                continue
            seen.add(pending.task_id)
            if pending.task_id in sent_ids or pending.task_id in dead_ids:
                continue
            report.lost += 1
            if len(report.lost_details) < 200:
                report.lost_details.append(
                    {
                        "fault": fault.kind,
                        "started": round(fault.started, 3),
                        "entry": pending.entry,
                        "scheduled": pending.scheduled,
                        "task_id": pending.task_id,
                        "still_pending_at_end": pending.task_id in still_pending,
                    }
                )

    # re-sent over and over
    for (name, scheduled), copies in by_occurrence.items():
        report.max_copies = max(report.max_copies, len(copies))
        if len(copies) > 1:
            kind = attribution.kind_at(copies[1].arrived)
            report.copies_by_kind[kind] = max(report.copies_by_kind.get(kind, 0), len(copies))
        if len(copies) <= settings.max_copies:
            continue
        report.resent += 1
        if len(report.resent_details) < 200:
            report.resent_details.append(
                {
                    "entry": name,
                    "scheduled": scheduled,
                    "copies": len(copies),
                    "task_ids": sorted({c.task_id for c in copies}),
                    "arrived": [round(c.arrived, 3) for c in copies],
                    "attributed_to": attribution.kind_at(copies[settings.max_copies].arrived),
                }
            )

    # one entry refused: the others on time, the refused one's occurrences accounted for
    refused_entries: set[str] = set()
    for fault in faults:
        refused = set(fault.details.get("entries") or ())
        if not refused:
            continue
        refused_entries |= refused
        record = records[(fault.kind, fault.started)]
        lo, hi = fault.started, fault.recovered
        late = 0
        own_sent = 0
        for (name, scheduled), copies in by_occurrence.items():
            if not lo <= scheduled <= hi:
                continue
            if name in refused:
                own_sent += 1
                continue
            lateness = copies[0].arrived - scheduled
            if lateness > settings.tolerance:
                late += 1
                report.late_while_refused += 1
                if len(report.late_details) < 200:
                    report.late_details.append(
                        {
                            "fault": fault.kind,
                            "refused": sorted(refused),
                            "entry": name,
                            "scheduled": scheduled,
                            "first_sent": round(copies[0].arrived, 3),
                            "late_seconds": round(lateness, 3),
                        }
                    )
        own_dead = [
            d for d in data.dead_letters
            if d.entry in refused and d.scheduled is not None and lo - 1 <= d.scheduled <= hi
        ]  # fmt: skip
        record["late_sends_of_others"] = late
        record["refused_occurrences"] = {"sent": own_sent, "dead": len(own_dead)}

    for dead in data.dead_letters:
        name = dead.entry or "?"
        report.dead_letters[name] = report.dead_letters.get(name, 0) + 1
        if name not in refused_entries:
            report.unexpected_dead.append(asdict(dead))


#: The kinds of :func:`broker_findings`, in the order :func:`broker_problems` lists them.
BROKER_FINDINGS = (
    "bursts",  # an entry ran more than once for one outage
    "no catch-up",  # an entry due during an outage did not run for it
    "piled-up pending",  # the leader went on claiming while the broker refused
    "lost",  # a pending record never reached the broker nor the dead letters
    "re-sent",  # an occurrence reached the broker more than max_copies times
    "late",  # another entry was late while one entry's messages were refused
    "unexpected dead",  # a dead letter of an entry no fault refused
    "no dead letter",  # the refused entry's failures never made a dead letter
)


def broker_findings(report: Report, limit: int = 10) -> dict[str, list[str]]:
    """What the broker faults got wrong, by kind (``BROKER_FINDINGS``): one sentence per
    offending occurrence or entry, at most ``limit`` each (then a count of the rest).
    Times are seconds after observation began (``t+``), as in the harness' log."""

    def t(value: float | None) -> str:
        return "-" if value is None else f"t+{value - report.observed_from:.1f}s"

    def ids(task_ids: Iterable[str]) -> str:
        return " ".join(i[:8] for i in task_ids)

    def capped(lines: list[str], total: int) -> list[str]:
        return lines[:limit] + ([f"... and {total - limit} more"] if total > limit else [])

    def run(r: dict[str, Any]) -> str:
        copies = f", {r['copies']} copies" if r["copies"] > 1 else ""
        senders = ", ".join(x for x in r.get("senders", ()) if x)
        by = f" by {senders}" if senders else ""
        return (
            f"scheduled {t(r['scheduled'])} sent {t(r['first_sent'])} "
            f"(task {ids(r['task_ids'])}{copies}{by})"
        )

    found: dict[str, list[str]] = {}
    found["bursts"] = capped(
        [
            f"{b['entry']} (every {b['period']:g}s) ran {len(b['runs'])} times for one "
            f"{b['fault']} (broker away {t(b['outage'][0])}..{t(b['outage'][1])}), at most 1 "
            "allowed: " + ", ".join(run(r) for r in b["runs"])
            for b in report.outage_bursts[:limit]
        ],
        len(report.outage_bursts),
    )
    found["no catch-up"] = capped(
        [
            f"{m['entry']} (every {m['period']:g}s) did not run for the {m['fault']} "
            f"{t(m['outage'][0])}..{t(m['outage'][1])}, though it was due then (catch-up: "
            "run once)"
            for m in report.outage_skipped[:limit]
        ],
        len(report.outage_skipped),
    )
    found["piled-up pending"] = capped(
        [
            f"{p['entry']} had {p['pending']} pending records when the broker came back after "
            f"{p['fault']} ({t(p['outage'][0])}..{t(p['outage'][1])}), scheduled "
            + ", ".join(t(x) for x in p["scheduled"])
            + ": the leader went on claiming while the broker refused"
            for p in report.piled_pending[:limit]
        ],
        len(report.piled_pending),
    )
    found["lost"] = capped(
        [
            f"{x['entry']} scheduled {t(x['scheduled'])} (task {x['task_id']}) was pending "
            f"during {x['fault']} at {t(x['started'])} and never reached the broker nor the "
            "dead letters" + (" (still pending at the end)" if x["still_pending_at_end"] else "")
            for x in report.lost_details[:limit]
        ],
        report.lost,
    )
    found["re-sent"] = capped(
        [
            f"{r['entry']} scheduled {t(r['scheduled'])} reached the broker {r['copies']} times "
            f"(task {ids(r['task_ids'])}), arriving "
            + ", ".join(t(a) for a in r["arrived"][:8])
            + f": re-sent over and over ({r['attributed_to']})"
            for r in report.resent_details[:limit]
        ],
        report.resent,
    )
    found["late"] = capped(
        [
            f"while the broker refused {', '.join(x['refused'])}, {x['entry']} scheduled "
            f"{t(x['scheduled'])} was sent {x['late_seconds']:.1f}s late"
            for x in report.late_details[:limit]
        ],
        report.late_while_refused,
    )
    found["unexpected dead"] = capped(
        [
            f"{d['entry']} scheduled {t(d['scheduled'])} (task {d['task_id']}) is a dead letter "
            f"after {d['attempts']} attempts ({d['error'] or 'no error'}), though no fault "
            "refused its messages"
            for d in report.unexpected_dead[:limit]
        ],
        len(report.unexpected_dead),
    )
    found["no dead letter"] = [
        f"the broker refused {f['target']}'s messages for {f['details'].get('refused_seconds')}s "
        f"from {t(f['started'])} and none became a dead letter (its "
        f"{f['details'].get('pending_of_entry_at_restore')} pending records had at most "
        f"{f['details'].get('most_attempts_at_restore')} attempts): each failure was taken for "
        "a broker outage"
        for f in report.faults
        if f["kind"] == BROKER_REFUSE_ONE and f["details"].get("dead_letter_after") is None
    ]
    return found


def _due_inside(data: RunData, name: str, period: float, lo: float, hi: float) -> bool:
    """Whether entry ``name`` existed from ``lo`` to ``hi`` and surely had a slot inside,
    a second (the score's rounding) before ``hi`` at the latest."""
    for life in data.lifetimes.get(name) or [Lifetime(data.observe_from)]:
        if life.created <= lo and (life.deleted is None or life.deleted >= hi):
            first = lo + period if life.first_due is None else max(lo + period, life.first_due)
            return first + 1 <= hi
    return False


def broker_problems(report: Report, limit: int = 10) -> list[str]:
    """Every :func:`broker_findings` sentence, kind by kind."""
    findings = broker_findings(report, limit)
    return [line for kind in BROKER_FINDINGS for line in findings[kind]]


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


def broker_table(report: Report) -> str:
    """The broker faults' table of docs/reliability.md (empty without broker faults)."""
    records = [f for f in report.faults if f["kind"] in BROKER_FAULTS]
    if not records:
        return ""
    header = (
        "| fault | injected | broker away (s) | runs per entry per outage: 0 / 1 / 2+ (most) "
        "| pending at recovery (most of one entry) | dup same id | dup different id "
        "| most copies | messages lost | dead letters | other entries late | missing "
        "| crashes |\n"
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lost_by_kind = Counter(x["fault"] for x in report.lost_details)
    lines = []
    for kind in BROKER_FAULTS:
        mine = [f for f in records if f["kind"] == kind]
        if not mine:
            continue
        row = report.rows[kind]
        away = [f["recovered"] - f["started"] for f in mine]
        span = f"{min(away):.1f}" if len(mine) == 1 else f"{min(away):.1f}-{max(away):.1f}"
        runs = [f.get("runs_per_entry") for f in mine]
        if kind in BROKER_OUTAGES:
            hist = [sum(r[k] for r in runs if r) for k in ("0", "1", "2+")]
            most = max((r["max"] for r in runs if r), default=0)
            runs_text = f"{hist[0]} / {hist[1]} / {hist[2]} ({most})"
            pending = max(f["details"].get("pending_at_recovery", 0) for f in mine)
            one = max(f["details"].get("most_pending_of_one_entry", 0) for f in mine)
            pending_text = f"{pending} ({one})"
            dead_text = late_text = "-"
        else:
            runs_text = pending_text = "-"
            dead_text = str(sum(f["details"].get("dead_letters_at_restore", 0) for f in mine))
            late_text = str(sum(f.get("late_sends_of_others", 0) for f in mine))
        lines.append(
            f"| {kind} | {len(mine)} | {span} | {runs_text} | {pending_text} "
            f"| {row.dup_same_id} | {row.dup_different_id} "
            f"| {max(report.copies_by_kind.get(kind, 1), 1)} | {lost_by_kind.get(kind, 0)} "
            f"| {dead_text} | {late_text} | {row.missing} | {row.crashes} |"
        )
    return header + "\n".join(lines) + "\n"
