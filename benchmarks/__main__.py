"""``python -m benchmarks [--quick] [--write-docs]``: run, print the tables, exit 0.

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
from pathlib import Path
from typing import TypeVar

from . import commands, dispatch, failover, memory, reconcile, startup
from .env import Env
from .profiles import FULL, QUICK, TINY, Profile
from .report import Results, command_line, machine_info, text, write_docs

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"

T = TypeVar("T")


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark stock RedBeat against safe_redbeat in one run.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI mode: small sizes, < 3 minutes")
    mode.add_argument(
        "--tiny", action="store_true", help="smallest run that exercises every benchmark"
    )
    parser.add_argument("--no-failover", action="store_true", help="skip the beat processes")
    parser.add_argument(
        "--write-docs", action="store_true", help="regenerate benchmarks.md and benchmarks.png"
    )
    parser.add_argument(
        "--docs-dir", type=Path, default=DOCS_DIR, help=f"where --write-docs writes ({DOCS_DIR})"
    )
    return parser.parse_args(argv)


def choose(args: argparse.Namespace) -> Profile:
    profile = QUICK if args.quick else TINY if args.tiny else FULL
    return profile.without_failover() if args.no_failover else profile


def run(profile: Profile, command: str) -> Results:
    started = time.monotonic()
    timeout = profile.run_timeout
    with Env() as env:
        results = Results(
            profile=profile, command=command, machine=machine_info(env.server_version())
        )

        def step(name: str, func: Callable[[], T]) -> T:
            progress(f"{name} ...")
            begun = time.monotonic()
            value = func()
            progress(f"{name}: {time.monotonic() - begun:.1f} s")
            return value

        results.dispatch = step(
            "dispatch cost",
            lambda: dispatch.run(env, profile.dispatch_sizes, profile.repetitions, timeout),
        )
        results.breakdown = step(
            "dispatch phases",
            lambda: dispatch.breakdown(
                env, min(max(profile.dispatch_sizes), dispatch_breakdown_n()), timeout
            ),
        )
        results.commands = step(
            "commands per tick", lambda: commands.run(env, profile.dispatch_sizes, timeout)
        )
        results.startup = step(
            "start to first dispatch",
            lambda: startup.run(env, profile.startup_sizes, profile.startup_repetitions, timeout),
        )
        results.memory = step(
            "memory per entry",
            lambda: memory.run(env, profile.memory_entries, profile.memory_interval, timeout),
        )
        results.reconcile = step(
            "reconcile",
            lambda: reconcile.run(env, profile.reconcile_sizes, profile.reconcile_repetitions),
        )
        if profile.failover:
            with tempfile.TemporaryDirectory(prefix="bench-beat-") as logdir:
                results.failover = step(
                    "failover",
                    lambda: failover.run(
                        env,
                        Path(logdir),
                        profile.failover_sigkill,
                        profile.failover_sigterm,
                        profile.failover_lock_deleted,
                        profile.failover_stock,
                    ),
                )
    results.seconds = time.monotonic() - started
    return results


def dispatch_breakdown_n() -> int:
    return 3000


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    profile = choose(args)
    shown = [a for a in argv if not a.startswith("--docs-dir")]
    try:
        results = run(profile, command_line(shown))
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
