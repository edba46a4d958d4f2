"""The oracle's definitions on hand-made observations (no processes, no Redis)."""

from __future__ import annotations

from safe_redbeat.store.layout import shard_of
from tests.chaos.cluster import split_held
from tests.chaos.model import (
    BROKER_PAUSE,
    BROKER_REFUSE_ONE,
    BROKER_STOP,
    FaultRecord,
    LeaseSample,
    Lifetime,
    Outboxed,
    ReplicaExit,
    RunData,
    Sent,
    WorkloadEntry,
)
from tests.chaos.oracle import (
    STEADY,
    analyze,
    broker_findings,
    broker_problems,
    merge,
    shard_problems,
    uncovered,
)

T0 = 1_000_000.0


def sends(
    entry: str, times: list[float], *, fence: int = 1, ids: list[str] | None = None
) -> list[Sent]:
    return [
        Sent(
            task_id=(ids[i] if ids else f"{entry}-{int(t)}"),
            entry=entry,
            scheduled=int(t),
            fence=fence,
            origin="gen1@host",
            arrived=t + 0.3,
        )
        for i, t in enumerate(times)
    ]


def run(
    messages: list[Sent],
    *,
    specs: dict[str, WorkloadEntry] | None = None,
    faults: list[FaultRecord] | None = None,
    exits: list[ReplicaExit] | None = None,
    lifetimes: dict[str, list[Lifetime]] | None = None,
    until: float = T0 + 60,
) -> RunData:
    return RunData(
        specs=specs or {"e": WorkloadEntry("e", "interval", 5.0, "static")},
        lifetimes=lifetimes or {},
        messages=messages,
        faults=faults or [],
        exits=exits or [],
        observe_from=T0,
        observe_until=until,
        lease_seconds=3.0,
        retry_seconds=0.5,
    )


def every(period: float, start: float, end: float) -> list[float]:
    times, t = [], start
    while t < end:
        times.append(t)
        t += period
    return times


def test_interval_helpers() -> None:
    assert merge([(5, 6), (1, 3), (2, 4)]) == [(1, 4), (5, 6)]
    assert uncovered(0, 10, [(2, 4), (6, 7)]) == 7
    assert uncovered(3, 3.5, [(0, 10)]) == 0


def test_a_regular_entry_has_nothing_missing_or_duplicated() -> None:
    report = analyze(run(sends("e", every(5, T0, T0 + 60))))
    assert (report.missing, report.dup_same_id, report.dup_different_id) == (0, 0, 0)
    assert report.occurrences == 12
    assert report.rows[STEADY].occurrences == 12


def test_a_gap_outside_failover_windows_counts_missing_occurrences() -> None:
    times = [t for t in every(5, T0, T0 + 60) if not T0 + 20 <= t < T0 + 35]
    report = analyze(run(sends("e", times)))
    # sends at +15 then +35: expected by +22 (p + tolerance); [+22, +33] uncovered
    assert report.missing == 3
    assert report.missing_gaps[0]["entry"] == "e"


def test_the_same_gap_inside_a_failover_window_is_not_missing() -> None:
    times = [t for t in every(5, T0, T0 + 60) if not T0 + 20 <= t < T0 + 25]
    fault = FaultRecord("sigkill-leader", T0 + 19, T0 + 19)  # window to +19+6.5
    report = analyze(run(sends("e", times), faults=[fault]))
    assert report.missing == 0
    # a window closing long before the entry came back leaves the rest missing:
    # [+25.5, +38.3] is uncovered, 12.8 s of a 5 s period
    late = [t for t in every(5, T0, T0 + 60) if not T0 + 20 <= t < T0 + 40]
    assert analyze(run(sends("e", late), faults=[fault])).missing == 3


def test_the_tail_after_the_last_send_is_checked() -> None:
    report = analyze(run(sends("e", every(5, T0, T0 + 30)), until=T0 + 60))
    assert report.missing == 6


def test_duplicates_are_split_by_task_id() -> None:
    messages = sends("e", every(5, T0, T0 + 60))
    same = sends("e", [T0 + 10])  # same occurrence, same id
    other = sends("e", [T0 + 20], ids=["another-id"])
    report = analyze(run(messages + same + other))
    assert report.dup_same_id == 1
    assert report.dup_same_id_outside_windows == 1
    assert report.dup_different_id == 1
    assert report.occurrences == 12


def test_an_early_rerun_is_explained_only_by_data_loss() -> None:
    messages = sends("e", [*every(5, T0, T0 + 30), T0 + 27, *every(5, T0 + 32, T0 + 60)])
    report = analyze(run(messages))
    assert report.early_unexplained == 1
    wipe = FaultRecord("wipe-keys", T0 + 26, T0 + 26)
    report = analyze(run(messages, faults=[wipe]))
    assert (report.early_unexplained, report.early_after_data_loss) == (0, 1)


def test_crontab_runs_off_the_minute_boundary_are_early() -> None:
    spec = WorkloadEntry("c", "crontab", 60.0, "static")
    start = 60 * 20_000.0
    messages = sends("c", [start + 17, start + 60, start + 120, start + 150, start + 180])
    data = run(messages, specs={"c": spec}, until=start + 200)
    data.observe_from = start + 16
    report = analyze(data)
    assert report.early_unexplained == 1  # +150; the first run (+17) is due at once
    assert report.missing == 0


def test_a_deleted_entry_is_not_expected_until_it_is_created_again() -> None:
    spec = WorkloadEntry("d", "interval", 2.0, "dynamic")
    lives = [Lifetime(T0, T0 + 20), Lifetime(T0 + 40, None, T0 + 42)]
    times = every(2, T0 + 2, T0 + 20) + every(2, T0 + 42, T0 + 60)
    report = analyze(run(sends("d", times), specs={"d": spec}, lifetimes={"d": lives}))
    assert report.missing == 0
    # and an entry that never comes back after re-creation is missing
    report = analyze(
        run(sends("d", every(2, T0 + 2, T0 + 20)), specs={"d": spec}, lifetimes={"d": lives})
    )
    assert report.missing > 0


def test_failover_time_is_the_first_message_with_a_new_fence() -> None:
    old = sends("e", every(5, T0, T0 + 20), fence=1)
    new = sends("e", every(5, T0 + 24, T0 + 60), fence=2)
    fault = FaultRecord("sigkill-leader", T0 + 20.5, T0 + 20.5)
    client_kill = FaultRecord("client-kill", T0 + 40, T0 + 40)
    report = analyze(run(old + new, faults=[fault, client_kill]))
    assert report.rows["sigkill-leader"].failovers == [T0 + 24.3 - (T0 + 20.5)]
    assert report.rows["client-kill"].lease_kept == 1


def test_stale_fence_sends_and_unexpected_exits_are_counted() -> None:
    messages = sends("e", every(5, T0, T0 + 20), fence=2) + sends("e", [T0 + 21], fence=1)
    exits = [
        ReplicaExit("r0", 1, 10, -9, T0 + 5, expected=True, cause="SIGKILL (injected)"),
        ReplicaExit("r1", 1, 11, 1, T0 + 6, expected=False),
    ]
    data = run(messages, exits=exits, until=T0 + 25)
    data.final_returncodes = {"r0": 0, "r1": 0, "r2": 1}
    report = analyze(data)
    assert report.stale_fence_sends == 1
    assert report.crashes == 2


def _shard_names() -> tuple[str, str]:
    """An entry name in shard 0 and one in shard 1 of 2."""
    names = [f"e{i}" for i in range(20)]
    return (
        next(n for n in names if shard_of(n, 2) == 0),
        next(n for n in names if shard_of(n, 2) == 1),
    )


def _token(name: str, pid: int, fence: int) -> str:
    return f'{fence} {{"host":"h","pid":{pid},"name":"{name}","nonce":"{fence}"}}'


def _sharded_run(retaken_at: float) -> tuple[RunData, str, str]:
    """Shard 0 led all along; shard 1's leader (pid 11) is SIGKILLed at T0+20, its key
    expires at T0+23 and pid 12 takes it at ``retaken_at``. From T0+20 the entry in shard 0
    is silent for 10 s, the one in shard 1 until ``retaken_at + 0.5``."""
    in0, in1 = _shard_names()
    samples = []
    for step in range(600):
        at = T0 + step * 0.1
        one = None if T0 + 23 <= at < retaken_at else _token("r1", 11, 1)
        if at >= retaken_at:
            one = _token("r2", 12, 2)
        samples.append(LeaseSample(at, (_token("r0", 10, 1), one)))
    silent = {in0: T0 + 30, in1: retaken_at + 0.5}
    messages = [
        m
        for name in (in0, in1)
        for m in sends(name, every(1.0, T0, T0 + 60))
        if not T0 + 20 <= m.arrived <= silent[name]
    ]
    data = run(
        messages,
        specs={n: WorkloadEntry(n, "interval", 1.0, "static") for n in (in0, in1)},
        faults=[FaultRecord("sigkill-leader", T0 + 20, T0 + 20, "r1", {"pid": 11, "shards": [1]})],
    )
    data.shards = 2
    data.lease_samples = samples
    return data, in0, in1


def test_a_shard_may_miss_occurrences_only_while_it_had_no_live_leader() -> None:
    data, in0, _in1 = _sharded_run(retaken_at=T0 + 23.5)
    report = analyze(data)
    # shard 1 had no live leader from the kill to T0+23.5: its entry's silence is excused;
    # shard 0 was led all along: its entry's silence is missing, and says which shard
    assert {(g["entry"], g["shard"]) for g in report.missing_gaps} == {(in0, 0)}
    assert report.longest_leader_gap == {0: 0.0, 1: 3.6}
    assert report.faults[0]["led_again_seconds"] == {1: 3.5}
    assert shard_problems(report) == []


def test_a_broker_fault_asks_no_shard_to_be_led_again() -> None:
    data, _in0, _in1 = _sharded_run(retaken_at=T0 + 23.5)
    data.faults.append(outage(T0 + 40, T0 + 45))
    report = analyze(data)
    assert "led_again_seconds" not in report.faults[-1]
    assert shard_problems(report) == []


def test_a_shard_leaderless_longer_than_the_allowance_is_a_problem_named_by_shard() -> None:
    data, _in0, in1 = _sharded_run(retaken_at=T0 + 30)
    report = analyze(data)
    # lease + retry + slack = 6.5 s: the rest of the 10 s silence is missing
    assert {(g["entry"], g["shard"]) for g in report.missing_gaps} >= {(in1, 1)}
    problems = shard_problems(report)
    assert len(problems) == 2, problems
    assert problems[0].startswith("shard 1 had no live leader for 10.10s (allowed 6.50s")
    assert "after r1 (pid 11, fence 1), then r2 (pid 12, fence 2)" in problems[0]
    assert problems[1].startswith("shard 1 was led again only after 10.00s after sigkill-leader")


# -- the broker -----------------------------------------------------------------------------


def sent(entry: str, scheduled: float, arrived: float, task_id: str = "") -> Sent:
    return Sent(
        task_id=task_id or f"{entry}-{int(scheduled)}",
        entry=entry,
        scheduled=int(scheduled),
        fence=1,
        origin="gen1@host",
        arrived=arrived,
    )


def outage(started: float, recovered: float, **details: object) -> FaultRecord:
    return FaultRecord(BROKER_STOP, started, recovered, "broker", dict(details))


def test_a_burst_after_a_broker_outage_is_one_run_per_missed_period() -> None:
    """The broker is away from +20 to +30; the entry runs every 2 s. Before the fix: every
    occurrence of the outage is claimed and they all go out together at +31."""
    before = [sent("e", t, t + 0.3) for t in every(2, T0, T0 + 20)]
    burst = [sent("e", t, T0 + 31) for t in every(2, T0 + 20, T0 + 30)]
    after = [sent("e", t, t + 0.3) for t in every(2, T0 + 33, T0 + 60)]
    spec = {"e": WorkloadEntry("e", "interval", 2.0, "static")}
    report = analyze(run(before + burst + after, specs=spec, faults=[outage(T0 + 20, T0 + 30)]))
    assert (report.outage_pairs, report.outage_runs_max) == (1, 5)
    assert report.dup_different_id == 0 and report.missing == 0
    (line,) = broker_findings(report)["bursts"]
    assert line.startswith("e (every 2s) ran 5 times for one broker-stop (broker away t+20.0s")
    assert "scheduled t+20.0s sent t+31.0s (task e-100002" in line


def test_the_pending_occurrence_released_after_the_outage_is_its_one_run() -> None:
    """After the fix: the occurrence claimed at +19 (pending when the broker went away) is
    sent at +31 and the slots of the outage are skipped; a message the broker had accepted
    before it went away (seen at the stop, +20) is no run of the outage."""
    spec = {n: WorkloadEntry(n, "interval", 2.0, "static") for n in ("e", "f")}

    def regular(entry: str, start: float, end: float) -> list[Sent]:
        return [sent(entry, t, t + 0.3) for t in every(2, start, end)]

    # e: +19 claimed, pending through the outage, sent at +31
    e = [
        *regular("e", T0 + 1, T0 + 19),
        sent("e", T0 + 19, T0 + 31),
        *regular("e", T0 + 33, T0 + 60),
    ]
    # f: +18 accepted just before the stop (seen then), one catch-up run (+24) at +31
    f = [*regular("f", T0, T0 + 18), sent("f", T0 + 18, T0 + 20), sent("f", T0 + 24, T0 + 31)]
    f += regular("f", T0 + 33, T0 + 60)
    report = analyze(run(e + f, specs=spec, faults=[outage(T0 + 20, T0 + 30)]))
    assert (report.outage_pairs, report.outage_runs_max) == (2, 1)
    assert report.faults[0]["runs_per_entry"] == {"0": 0, "1": 2, "2+": 0, "max": 1}
    assert broker_problems(report) == []


def test_a_message_taken_before_the_stop_and_republished_after_it_is_the_outages_run() -> None:
    """The broker took +18 just before it went away (seen at the stop, +20), but the ack
    failed: the record is republished at +31 under the same task id, and that is e's run
    for the outage (its slots of the outage coalesced away). A catch-up run as well would
    make two."""
    spec = {"e": WorkloadEntry("e", "interval", 2.0, "static")}
    before = [*(sent("e", t, t + 0.3) for t in every(2, T0, T0 + 18)), sent("e", T0 + 18, T0 + 20)]
    after = [sent("e", t, t + 0.3) for t in every(2, T0 + 33, T0 + 60)]
    again = sent("e", T0 + 18, T0 + 31)
    report = analyze(run([*before, again, *after], specs=spec, faults=[outage(T0 + 20, T0 + 30)]))
    assert (report.outage_runs_max, report.outage_skipped, report.dup_same_id) == (1, [], 1)
    catch_up = sent("e", T0 + 22, T0 + 31.1)
    report = analyze(
        run([*before, again, catch_up, *after], specs=spec, faults=[outage(T0 + 20, T0 + 30)])
    )
    assert report.outage_runs_max == 2


def _frozen(held_dated: float, *extra: Sent) -> RunData:
    """The broker frozen from +20.5 to +24.7; e runs every 1 s. Its +20 went out just
    before the freeze (the auditor takes it only after it, at +24.75), its +21 was claimed
    and its publish hung until the broker went on (+24.8); the slots that passed meanwhile
    are skipped, the next run is +25. ``held_dated``: the time +20 is recorded with."""
    spec = {"e": WorkloadEntry("e", "interval", 1.0, "static")}
    messages = [
        *(sent("e", t, t + 0.3) for t in every(1, T0, T0 + 20)),
        sent("e", T0 + 20, held_dated),
        sent("e", T0 + 21, T0 + 24.8),
        *(sent("e", t, t + 0.3) for t in every(1, T0 + 25, T0 + 40)),
        *extra,
    ]
    fault = FaultRecord(BROKER_PAUSE, T0 + 20.5, T0 + 24.7, "broker")
    return run(messages, specs=spec, faults=[fault], until=T0 + 40)


def test_a_message_the_frozen_broker_held_is_no_run_of_the_pause() -> None:
    """Dated from the broker (what it held when its writes were paused arrived at the
    pause, ``started``), +20 is before the pause and the hung +21 is e's one run for it."""
    report = analyze(_frozen(held_dated=T0 + 20.5))
    assert (report.outage_pairs, report.outage_runs_max) == (1, 1)
    assert broker_problems(report) == []
    assert (report.missing, report.dup_different_id, report.early_unexplained) == (0, 0, 0)


def test_a_held_message_dated_by_the_auditors_clock_makes_a_false_burst() -> None:
    """The same run with +20 dated when the auditor took it, after the SIGCONT: it looks
    released by the pause, and e seems to run twice for it (what the oracle reported before
    the broker's writes were paused to read what it held)."""
    report = analyze(_frozen(held_dated=T0 + 24.75))
    (line,) = broker_findings(report)["bursts"]
    assert line.startswith("e (every 1s) ran 2 times for one broker-pause (broker away t+20.5s")
    assert "scheduled t+20.0s sent t+24.8s" in line and "scheduled t+21.0s sent t+24.8s" in line


def test_a_slot_sent_moments_after_a_hung_publish_is_a_burst_of_the_pause() -> None:
    """Exact dating hides no real burst: +24 claimed and sent right after the hung +21
    (under its own task id) is a second run for the pause."""
    data = _frozen(T0 + 20.5, sent("e", T0 + 24, T0 + 24.9))
    data.origins = {"gen1@host": "replica-1"}
    report = analyze(data)
    (burst,) = report.outage_bursts
    assert [r["scheduled"] for r in burst["runs"]] == [T0 + 21, T0 + 24]
    # the sentence names the replica that sent each run
    (line,) = broker_findings(report)["bursts"]
    assert "scheduled t+24.0s sent t+24.9s (task e-100002 by replica-1)" in line


def test_what_the_broker_held_is_the_oldest_end_of_each_list() -> None:
    """A drain after the pause: each list as LRANGE returns it (newest first); the held
    messages (oldest first) are its right end, in the same order."""
    held = {"celery": ["a", "b"]}
    taken = [("celery", ["d", "c", "b", "a"]), ("celery\x06\x163", ["x"])]
    assert split_held(taken, held) == (
        [("celery", ["b", "a"]), ("celery\x06\x163", [])],
        [("celery", ["d", "c"]), ("celery\x06\x163", ["x"])],
        True,
    )
    # nothing held: all of it is later
    assert split_held(taken, {}) == ([("celery", []), ("celery\x06\x163", [])], taken, True)


def test_held_messages_not_found_date_every_message_by_the_auditors_clock() -> None:
    """Held messages that are not the right end of their list (another order, fewer, a list
    that is gone): none is taken for held, so none can hide a run of the outage."""
    held = {"celery": ["a", "b"]}
    for taken in (
        [("celery", ["c", "a", "b"])],  # another order
        [("celery", ["b"])],  # fewer than held
        [("celery", ["c", "b", "x"])],  # another message at the end
        [("other", ["b", "a"])],  # the held list not drained at all
    ):
        assert split_held(taken, held) == ([], taken, False), taken


def test_an_entry_due_during_an_outage_that_never_runs_for_it_has_no_catch_up() -> None:
    spec = {"e": WorkloadEntry("e", "interval", 2.0, "static")}
    messages = [sent("e", t, t + 0.3) for t in every(2, T0, T0 + 20)]
    messages += [sent("e", t, t + 0.3) for t in every(2, T0 + 34, T0 + 60)]
    report = analyze(run(messages, specs=spec, faults=[outage(T0 + 20, T0 + 30)]))
    assert [m["entry"] for m in report.outage_skipped] == ["e"]


def test_piled_up_pending_and_lost_records_name_the_occurrences() -> None:
    pending = [Outboxed(f"id-{t}", "e", int(T0 + t)) for t in (21, 23, 25)]
    fault = outage(T0 + 20, T0 + 30)
    fault.pending = [*pending, Outboxed("id-x", "x", int(T0 + 22))]
    messages = [sent("e", T0 + t, T0 + 31, f"id-{t}") for t in (21, 23)]
    data = run(messages, faults=[fault], until=T0 + 40)
    data.dead_letters = [Outboxed("id-x", "x", int(T0 + 22), 3, "WRONGTYPE")]
    data.pending_at_end = [Outboxed("id-25", "e", int(T0 + 25))]
    report = analyze(data)
    assert [(p["entry"], p["pending"]) for p in report.piled_pending] == [("e", 3)]
    assert report.lost == 1
    (line,) = broker_findings(report)["lost"]
    assert line == (
        "e scheduled t+25.0s (task id-25) was pending during broker-stop at t+20.0s and never "
        "reached the broker nor the dead letters (still pending at the end)"
    )
    # x's dead letter is not explained by any refused queue
    assert [d["entry"] for d in report.unexpected_dead] == ["x"]


def test_a_refused_entry_opens_a_window_for_itself_only() -> None:
    """The broker refuses r's messages from +20 to +30: r may be silent then; e may not,
    and e's sends scheduled meanwhile must be on time."""
    spec = {n: WorkloadEntry(n, "interval", 2.0, "static") for n in ("e", "r")}
    refused = FaultRecord(BROKER_REFUSE_ONE, T0 + 20, T0 + 30, "r", {"entries": ["r"]})
    r = [
        m for m in sends("r", every(2, T0, T0 + 60)) if not T0 + 20 <= (m.scheduled or 0) <= T0 + 30
    ]
    e = sends("e", every(2, T0, T0 + 60))
    report = analyze(run(r + e, specs=spec, faults=[refused]))
    assert (report.missing, report.late_while_refused) == (0, 0)
    # e silent from +20 to +30: missing, although r's window covers that time
    quiet = [m for m in e if not T0 + 20 <= (m.scheduled or 0) <= T0 + 30]
    report = analyze(run(r + quiet, specs=spec, faults=[refused]))
    assert {g["entry"] for g in report.missing_gaps} == {"e"}
    # e's occurrence of +22 sent at +26: late while r was refused
    late = [m for m in e if m.scheduled != T0 + 22] + [sent("e", T0 + 22, T0 + 26)]
    report = analyze(run(r + late, specs=spec, faults=[refused]))
    assert broker_findings(report)["late"] == [
        "while the broker refused r, e scheduled t+22.0s was sent 4.0s late"
    ]


def test_more_than_two_copies_of_an_occurrence_are_re_sent_over_and_over() -> None:
    messages = sends("e", every(5, T0, T0 + 60))
    twice = [sent("e", T0 + 10, T0 + 12)]
    thrice = [sent("e", T0 + 20, T0 + 22), sent("e", T0 + 20, T0 + 24)]
    report = analyze(run(messages + twice + thrice))
    assert (report.resent, report.max_copies) == (1, 3)
    assert report.resent_details[0]["scheduled"] == T0 + 20
