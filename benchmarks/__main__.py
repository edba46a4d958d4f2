"""``python -m benchmarks [--quick | --tiny] [--no-failover] [--no-scaling] [--only NAME]
[--write-docs]``.

Exit status 1 means a benchmark is broken (it did not dispatch what it should, timed
out, or crashed); a MISSed target is reported, never a failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from . import commands, dispatch, failover, memory, reconcile, scaling, schedules, startup
from .env import Env
from .profiles import FULL, QUICK, TINY, Profile
from .report import Results, command_line, machine_info, text, write_docs

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
BENCHMARKS = (
    "dispatch",
    "commands",
    "startup",
    "schedules",
    "memory",
    "reconcile",
    "failover",
    "scaling",
)
T = TypeVar("T")


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark stock RedBeat against safe_redbeat in one run.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI mode: small sizes")
    mode.add_argument("--tiny", action="store_true", help="smallest run of every benchmark")
    parser.add_argument("--no-failover", action="store_true", help="skip the failover trials")
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip the sharded dispatch (beat replicas)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable; 'dispatch' includes its phase breakdown)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="regenerate benchmarks.md and benchmarks.png"
    )
    parser.add_argument(
        "--docs-dir", type=Path, default=DOCS_DIR, help=f"where --write-docs writes ({DOCS_DIR})"
    )
    args = parser.parse_args(argv)
    if args.only and args.write_docs:
        parser.error("--write-docs needs every benchmark; leave out --only")
    return args


def step(name: str, func: Callable[[], T]) -> T:
    progress(f"{name} ...")
    begun = time.monotonic()
    value = func()
    progress(f"{name}: {time.monotonic() - begun:.1f} s")
    return value


def run(profile: Profile, command: str, only: tuple[str, ...] = BENCHMARKS) -> Results:
    started = time.monotonic()
    p, timeout = profile, profile.run_timeout
    with closing(Env()) as env, tempfile.TemporaryDirectory(prefix="bench-beat-") as logdir:
        r = Results(profile=p, command=command, machine=machine_info(env.server_version()))
        if "dispatch" in only:
            r.dispatch = step(
                "dispatch cost",
                lambda: dispatch.run(env, p.dispatch_sizes, p.repetitions, timeout),
            )
            r.breakdown = step(
                "dispatch phases", lambda: dispatch.breakdown(env, p.breakdown_n, timeout)
            )
        if "commands" in only:
            r.commands = step(
                "commands per tick", lambda: commands.run(env, p.dispatch_sizes, timeout)
            )
        if "startup" in only:
            r.startup = step(
                "start to first dispatch",
                lambda: startup.run(env, p.startup_sizes, p.startup_repetitions, timeout),
            )
        if "schedules" in only:
            r.schedules = step(
                "schedule arithmetic", lambda: schedules.run(p.repetitions, p.schedule_stock_limit)
            )
        if "memory" in only:
            r.memory = step(
                "memory per entry",
                lambda: memory.run(env, p.memory_entries, p.memory_interval, timeout),
            )
        if "reconcile" in only:
            r.reconcile = step(
                "reconcile", lambda: reconcile.run(env, p.reconcile_sizes, p.reconcile_repetitions)
            )
        if p.failover and "failover" in only:
            trials = (p.failover_sigkill, p.failover_sigterm, p.failover_lock_deleted)
            r.failover = step(
                "failover",
                lambda: failover.run(env, Path(logdir), *trials, p.failover_stock),
            )
        if p.scaling_n and "scaling" in only:
            r.scaling = step(
                "sharded dispatch",
                lambda: scaling.run(
                    env,
                    Path(logdir) / "scaling",
                    p.scaling_n,
                    p.scaling_shards,
                    p.scaling_repetitions,
                    cluster=p.scaling_cluster,
                ),
            )
    r.seconds = time.monotonic() - started
    return r


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    profile = QUICK if args.quick else TINY if args.tiny else FULL
    if args.no_failover:
        profile = profile.without_failover()
    if args.no_scaling:
        profile = replace(profile, scaling_n=0)
    # the command as docs/benchmarks.md shows it: without --docs-dir and its value
    shown = [
        a for a, before in zip(argv, ["", *argv], strict=False) if "--docs-dir" not in (a, before)
    ]
    shown = [a for a in shown if not a.startswith("--docs-dir=")]
    try:
        results = run(profile, command_line(shown), tuple(args.only or BENCHMARKS))
    except Exception:
        traceback.print_exc()
        print("BROKEN: a benchmark failed (see above); targets are not evaluated", file=sys.stderr)
        return 1
    print(text(results))
    if args.write_docs:
        for message in write_docs(results, args.docs_dir):
            progress(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
