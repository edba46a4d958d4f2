"""``python -m tests.chaos --duration 600 [--seed N] [--replicas 3] [--write-docs]``.

Runs the chaos harness for ``--duration`` seconds of fault injection (every fault kind,
in seeded random order, again and again), prints the oracle's figures, writes them as
JSON, and with ``--write-docs`` regenerates the results section of docs/reliability.md.
Exit status 1 if the run found a crash, a missing occurrence or a duplicate with a
different task id.

``--sentinel`` puts the schedule behind Redis Sentinel (a primary, a replica, three
sentinels; the broker stays a plain server) and adds the sentinel-failover fault; the
faults that restart or pause "the" Redis are left out.

``--broker`` puts the Celery broker on a Redis server of its own and adds the broker
faults (broker-stop, broker-pause, broker-refuse-one) to the others; the run also fails if
an entry ran more than once for one broker outage, a pending record was lost, a message was
sent more than twice, another entry was late while one entry's messages were refused, or
a dead letter has no refused queue to explain it.

``--overlap skip`` (or ``replace``) gives every entry that overlap policy: each claim then
checks and records the entry's runs, and the auditor, as a worker whose tasks take no
time, ends each run when it takes the message; the oracle's figures must not change.

``--shards K`` runs a sharded schedule (3 replicas share K shards; ``--shards 6
--each-once`` is tests/chaos/test_shard_chaos.py): the faults hit replicas leading some
shards, and one shard's lease key; the run also fails if a shard had no live leader for
longer than lease + retry + slack, or a replica logged a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.chaos.docs import DOC_PATH, write_results
from tests.chaos.harness import ChaosConfig, run_chaos, sharded_scenario
from tests.chaos.model import BROKER_FAULTS, FAULT_KINDS, SENTINEL_MODE_FAULTS, SHARD_MODE_FAULTS
from tests.chaos.oracle import broker_problems, broker_table, markdown_table, shard_problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None, help="default: time-based")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument(
        "--statics", type=int, default=None, help="static interval entries (240; sharded 180)"
    )
    parser.add_argument(
        "--dynamics", type=int, default=None, help="entries written to Redis (80; sharded 60)"
    )
    parser.add_argument(
        "--crons", type=int, default=None, help="every-minute crontab entries (10; sharded 0)"
    )
    parser.add_argument(
        "--shards", type=int, default=1, help="shards of the schedule (faults: "
        f"{','.join(SHARD_MODE_FAULTS)})",
    )  # fmt: skip
    parser.add_argument("--skew", type=float, default=None, help="replica-0 clock offset")
    parser.add_argument(
        "--faults",
        default=None,
        help=f"comma-separated fault kinds (default: all; with --sentinel: "
        f"{','.join(SENTINEL_MODE_FAULTS)})",
    )
    parser.add_argument(
        "--sentinel", action="store_true", help="the schedule behind Sentinel, with failovers"
    )
    parser.add_argument(
        "--broker",
        action="store_true",
        help=f"the broker on a server of its own, with {', '.join(BROKER_FAULTS)}",
    )
    parser.add_argument("--each-once", action="store_true", help="one fault of each kind")
    parser.add_argument(
        "--overlap",
        choices=("skip", "replace"),
        default=None,
        help="every entry with this overlap policy (max_runtime 30 s); the auditor ends "
        "each run as it takes the message",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOC_PATH}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    sharded = args.shards > 1
    if sharded and (args.sentinel or args.write_docs):
        parser.error("--shards does not go with --sentinel or --write-docs")
    known = SHARD_MODE_FAULTS if sharded else SENTINEL_MODE_FAULTS if args.sentinel else FAULT_KINDS
    if args.broker:
        known = (*known, *BROKER_FAULTS)
    faults = tuple(f.strip() for f in (args.faults or ",".join(known)).split(",") if f.strip())
    unknown = set(faults) - set(known)
    if unknown:
        mode = " with --sentinel" if args.sentinel else " with --shards" if sharded else ""
        if unknown & set(BROKER_FAULTS):
            mode += " (broker faults need --broker)"
        parser.error(f"unknown fault kinds{mode}: {', '.join(sorted(unknown))}")
    if args.overlap and args.write_docs:
        parser.error("--write-docs regenerates the default run's results, not --overlap's")
    if args.sentinel and args.write_docs:
        parser.error("--write-docs regenerates the default run's results, not --sentinel's")
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (faults target the leader)")
    skew = args.skew
    if sharded:
        skew = skew or 0.0
    elif skew is None:
        # seeded sign and size: a replica ahead sends early if it trusts its own clock,
        # one behind sends late
        skew = (5 + seed % 6) * (1 if seed % 2 else -1)
    sizes = {
        name: value
        for name, value in (
            ("statics", args.statics),
            ("dynamics", args.dynamics),
            ("crons", args.crons),
        )
        if value is not None
    }
    common = {
        "duration": args.duration,
        "seed": seed,
        "replicas": args.replicas,
        "skew": skew,
        "faults": faults,
        "each_once": args.each_once,
        "keep_workdir": args.keep,
        "own_broker": args.broker,
        "overlap": args.overlap or "",
    }
    if sharded:
        config = sharded_scenario(args.shards, **common, **sizes)
    else:
        config = ChaosConfig(
            **{"statics": 240, "dynamics": 80, "crons": 10, **sizes},
            **common,
            sentinel=args.sentinel,
        )
    started = time.monotonic()
    report, data, workdir = run_chaos(config)
    elapsed = time.monotonic() - started
    print(markdown_table(report))
    if args.broker:
        print(broker_table(report))
    print(report.summary())
    overlap = data.info.get("overlap")
    if overlap:
        print(
            f"overlap={overlap['policy']}: runs ended by the auditor {overlap['runs_ended']} "
            f"(errors {overlap['end_errors']}), occurrences logged skipped "
            f"{overlap['skipped']}, replacing a run {overlap['replaced']}"
        )
    print(f"wall time {elapsed:.0f}s, seed {seed}, workdir {workdir}")
    result = report.to_dict()
    result["info"] = data.info
    result["info"]["wall_seconds"] = round(elapsed, 1)
    json_path = args.json or (Path(workdir) / "report.json" if args.keep else None)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str))
        print(f"report written to {json_path}")
    if args.write_docs:
        write_results(report, data.info, command=_command(args, seed))
        print(f"results written to {DOC_PATH}")
    bad = bool(
        report.crashes or report.missing or report.dup_different_id or report.early_unexplained
    )
    if args.broker:
        for problem in broker_problems(report):
            print(f"broker: {problem}")
        bad = bad or bool(broker_problems(report))
    if sharded:
        problems = shard_problems(report)
        for problem in problems:
            print(f"shard leadership: {problem}")
        bad = bad or bool(report.tracebacks or problems)
    return 1 if bad else 0


def _command(args: argparse.Namespace, seed: int) -> str:
    parts = ["python -m tests.chaos", f"--duration {args.duration:g}", f"--seed {seed}"]
    if args.replicas != 3:
        parts.append(f"--replicas {args.replicas}")
    if args.broker:
        parts.append("--broker")
    parts.append("--write-docs")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
