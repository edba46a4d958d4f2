"""Arguments, dispatch, and turning every expected failure into one line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ..errors import (
    ConfigurationError,
    EntryNotFound,
    InvalidEntry,
    Resharding,
    SafeRedBeatError,
    VersionConflict,
)
from ..model.lifecycle import COUNT, FLAG, TIME, ZONE, lifetime_fields
from .context import (
    EXIT_APP,
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_MEANINGS,
    EXIT_NOT_FOUND,
    EXIT_RESHARD,
    CLIError,
    Context,
    open_context,
    redis_error,
)
from .dead import cmd_dead
from .entries import (
    cmd_add,
    cmd_list,
    cmd_rm,
    cmd_run_now,
    cmd_set_enabled,
    cmd_show,
    cmd_sync,
    cmd_update,
)
from .reshard import cmd_reshard
from .status import cmd_health, cmd_status

__all__ = ["build_parser", "main"]

Command = Callable[[Context, argparse.Namespace], int]

EXIT_CODES = "exit codes: " + ", ".join(f"{code} {text}" for code, text in EXIT_MEANINGS.items())
#: what ``update`` can change: the definition's options and every lifetime field but the
#: first-run flag (``add --now``)
UPDATE_FIELDS = (
    "task",
    "every",
    "cron",
    "args",
    "kwargs",
    "options",
    "queue",
    "enabled",
    *(f.name for f in lifetime_fields() if f.metadata["kind"] != FLAG),
)


def _json_of(kind: type, label: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {label}, got {text!r}")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _when(text: str) -> datetime:
    """ISO 8601 (``2026-12-24T18:30``, ``...+01:00``, ``...Z``); naive = the app's timezone."""
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date and time (e.g. 2026-12-24T18:30): {text!r}"
        ) from None


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
        return value

    return parse


_count = _int_at_least(1)
_version = _int_at_least(0)


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-A/--app, --json and --timeout, accepted before and after the command name."""
    # after the command, an option left out must not reset what was given before it
    unset: Any = argparse.SUPPRESS
    parser.add_argument(
        "-A",
        "--app",
        default=os.environ.get("CELERY_APP") if top else unset,
        help="the Celery app as for `celery -A`: proj, proj.celery, proj.celery:app "
        "(default: $CELERY_APP)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else unset,
        help="print one JSON object (schemas: docs/cli.md)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        default=None if top else unset,
        help="Redis socket timeout (default: safe_redbeat_socket_timeout)",
    )


def _expected_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expected-version",
        type=_version,
        metavar="N",
        help="change it only if Redis still holds version N (else exit 6)",
    )


#: how the CLI reads a lifetime field of each kind: parser and metavar
_LIFETIME_INPUT: dict[str, tuple[Callable[[str], Any], str]] = {
    TIME: (_when, "WHEN"),
    COUNT: (_count, "N"),
    ZONE: (str, "ZONE"),
}


def _entry_fields(parser: argparse.ArgumentParser, *, add: bool) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--task", required=add, help="task name, e.g. proj.tasks.report")
    schedule = parser.add_mutually_exclusive_group(required=add)  # --every, --cron, --at
    schedule.add_argument("--every", type=_positive, metavar="SECONDS", help="interval")
    schedule.add_argument("--cron", metavar="EXPR", help='cron expression, e.g. "0 3 * * *"')
    parser.add_argument("--args", type=_json_of(list, "array"), metavar="JSON")
    parser.add_argument("--kwargs", type=_json_of(dict, "object"), metavar="JSON")
    parser.add_argument(
        "--options", type=_json_of(dict, "object"), metavar="JSON", help="apply_async options"
    )
    parser.add_argument("--queue", metavar="Q", help="set options.queue")
    for spec in lifetime_fields():  # one option per lifetime field
        kind, name = spec.metadata["kind"], spec.name
        flag = spec.metadata["flag"] or "--" + name.replace("_", "-")
        where = schedule if name == "at" else parser  # a one-off replaces the schedule
        if kind == FLAG:
            if add:
                where.add_argument(flag, dest=name, action="store_true", help=spec.metadata["help"])
            continue
        parse, metavar = _LIFETIME_INPUT[kind]
        where.add_argument(flag, dest=name, type=parse, metavar=metavar, help=spec.metadata["help"])
    if add:
        parser.add_argument("--disabled", action="store_true", help="create it disabled")
        return
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--enabled", dest="enabled", action="store_true", default=None)
    state.add_argument("--disabled", dest="enabled", action="store_false")
    _expected_version(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safe-redbeat",
        description="Status, health checks and schedule management for safe_redbeat.",
        epilog=EXIT_CODES,
    )
    _common(parser, top=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Command, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text, epilog=EXIT_CODES)
        _common(sub, top=False)
        sub.set_defaults(func=func)
        return sub

    command("status", cmd_status, "leader, lease, replicas, entries, next due, pending")
    health = command("health", cmd_health, "exit 0 if healthy, 1 if not (for probes)")
    health.add_argument(
        "--role",
        choices=("any", "leader"),
        default="any",
        help="leader: the replica must also hold the lease (default: any)",
    )
    health.add_argument(
        "--instance",
        metavar="NAME",
        help="the replica to check (default: safe_redbeat_instance_name, i.e. $HOSTNAME)",
    )
    health.add_argument(
        "--cluster",
        action="store_true",
        help="check instead that some replica holds the lease and ticks (monitoring)",
    )
    health.add_argument(
        "--max-age",
        type=_positive,
        metavar="SECONDS",
        help="oldest acceptable last tick (default: max(3 x retry_seconds, renew_seconds))",
    )
    health.add_argument(
        "--redis-down-ok",
        action="store_true",
        help="exit 0 if Redis cannot be reached (for liveness: a restart cannot fix Redis)",
    )
    listing = command("list", cmd_list, "entries: name, task, schedule, version, next run")
    listing.add_argument("--pattern", default="*", metavar="GLOB", help="entry name glob")
    command("show", cmd_show, "one entry").add_argument("name", metavar="NAME")
    _entry_fields(command("add", cmd_add, "create an entry (fails if it exists)"), add=True)
    _entry_fields(command("update", cmd_update, "change the given fields of an entry"), add=False)
    for name, func, text in (
        ("rm", cmd_rm, "delete an entry"),
        ("enable", cmd_set_enabled, "enable an entry"),
        ("disable", cmd_set_enabled, "disable an entry: beat skips it until enabled"),
        ("run-now", cmd_run_now, "have the leader send an entry once, at its next tick"),
    ):
        sub = command(name, func, text)
        sub.add_argument("name", metavar="NAME")
        _expected_version(sub)
    sync = command("sync", cmd_sync, "reconcile the loader's entries with Redis once")
    sync.add_argument("--dry-run", action="store_true", help="report what would change")
    sync.add_argument(
        "--allow-removals",
        action="store_true",
        help="apply removals beyond safe_redbeat_loader_max_removals (after you checked them)",
    )
    moving = command("reshard", cmd_reshard, "move the schedule to a layout of K shards")
    moving.add_argument("--to", type=int, required=True, metavar="K", help="shards (1-256)")
    moving.add_argument(
        "--wait",
        type=_positive,
        metavar="SECONDS",
        help="how long to wait for each shard's lease (default: lease + retry seconds)",
    )
    dead = command("dead", cmd_dead, "occurrences whose publish kept failing: list, retry, drop")
    dead.add_argument("action", choices=("list", "retry", "drop"))
    dead.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    dead.add_argument("--all", action="store_true", help="every dead letter")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument rules argparse cannot express; exit 2 with the usage line."""
    if not args.app:
        parser.error("no Celery app: pass -A/--app or set $CELERY_APP")
    if args.command == "update" and all(getattr(args, f) is None for f in UPDATE_FIELDS):
        parser.error("update: nothing to change (give --task, --every, --cron, ...)")
    if args.command == "health" and args.cluster and (args.instance or args.role != "any"):
        parser.error("health: --cluster checks the lease holder; drop --instance and --role")


def _fail(as_json: bool, error: CLIError) -> int:
    if as_json:
        payload = {"error": error.kind, "message": error.message, "exit_code": error.code}
        line = json.dumps({**payload, **error.extra}, sort_keys=True)
    else:
        line = f"safe-redbeat: error: {error.message}"
    print(line, file=sys.stderr)
    return error.code


def _as_cli_error(exc: Exception, url: str) -> CLIError | None:
    if isinstance(exc, CLIError):
        return exc
    if isinstance(exc, RedisError):
        return redis_error(exc, url)
    if isinstance(exc, RedisClusterException):  # no node of the cluster answered
        return redis_error(RedisConnectionError(str(exc)), url)
    if isinstance(exc, EntryNotFound):
        return CLIError(EXIT_NOT_FOUND, "entry_not_found", str(exc), name=exc.name)
    if isinstance(exc, VersionConflict):
        return CLIError(
            EXIT_CONFLICT,
            "version_conflict",
            str(exc),
            name=exc.name,
            current_version=exc.current_version,
        )
    if isinstance(exc, Resharding):  # a write while `reshard` moves the schedule
        return CLIError(EXIT_RESHARD, "resharding", str(exc))
    if isinstance(exc, InvalidEntry):
        return CLIError(EXIT_INVALID, "invalid_entry", str(exc), name=exc.key, field=exc.field)
    if isinstance(exc, ConfigurationError):
        return CLIError(EXIT_APP, "configuration", str(exc))
    if isinstance(exc, SafeRedBeatError):  # a move under way or refused, a bad layout
        return CLIError(EXIT_RESHARD, "reshard", str(exc))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="safe-redbeat: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    ctx: Context | None = None
    try:
        ctx = open_context(args.app, args.timeout)
        func: Command = args.func
        return func(ctx, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        error = _as_cli_error(exc, ctx.url if ctx is not None else "?")
        if error is None:
            raise  # a bug: keep the traceback
        return _fail(args.json, error)
    finally:
        if ctx is not None:
            with contextlib.suppress(RedisError):
                ctx.close()
