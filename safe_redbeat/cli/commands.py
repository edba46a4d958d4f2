"""The commands of the ``safe-redbeat`` group (:mod:`.group`): their arguments, dispatch,
and turning every expected failure into one line and an exit code.

Imported by the group when a command is asked for; each ``@safe_redbeat.command``
registers one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any, NoReturn

import click
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
from ..model.codec import SOLAR_EVENTS
from ..model.lifecycle import FLAG, lifetime_fields
from .backup import cmd_export, cmd_import
from .context import (
    EXIT_APP,
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_RESHARD,
    Args,
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
from .group import PROG, Options, safe_redbeat
from .params import DURATION, JsonOf, lifetime_options
from .reshard import cmd_reshard
from .status import cmd_health, cmd_status

__all__ = ["execute"]

Command = Callable[[Context, Args], int]

#: what ``update`` can change: the definition's options and every lifetime field but the
#: first-run flag (``add --now``)
UPDATE_FIELDS = (
    "task",
    "every",
    "cron",
    "solar",
    "args",
    "kwargs",
    "options",
    "queue",
    "enabled",
    *(f.name for f in lifetime_fields() if f.metadata["kind"] != FLAG),
)
#: the options of which ``add`` takes exactly one and ``update`` at most one
SCHEDULE_OPTIONS = (("every", "--every"), ("cron", "--cron"), ("solar", "--solar"), ("at", "--at"))


# -- the options every command takes -----------------------------------------------------


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-A/--app``, ``--json`` and ``--timeout`` after the command name too (given there,
    they win over the same option before it)."""
    for option in reversed(
        (
            click.option("-A", "--app", metavar="APP", default=None, help="the Celery app"),
            click.option(
                "--json", "as_json", is_flag=True, default=None, help="print one JSON object"
            ),
            click.option(
                "--timeout", type=DURATION, default=None, help="Redis socket timeout (duration)"
            ),
        )
    ):
        command = option(command)
    return command


def _celery_app(ctx: click.Context) -> Any:
    """The app Celery's own ``-A`` loaded when we run as ``celery -A proj safe-redbeat``."""
    root = ctx.find_root()
    if root.command is safe_redbeat or root.params.get("app") is None:
        return None
    from celery.bin.base import CLIContext

    return root.obj.app if isinstance(root.obj, CLIContext) else None


def _run(func: Command, **params: Any) -> NoReturn:
    """Run ``func`` with the command's options merged with the group's; exit with its code."""
    ctx = click.get_current_context()
    top = ctx.find_object(Options) or Options(None, False, None)
    app = params.pop("app", None) or top.app or _celery_app(ctx) or os.environ.get("CELERY_APP")
    timeout = params.pop("timeout", None) or top.timeout
    as_json = bool(params.pop("as_json", None) or top.as_json)
    args = Args(command=ctx.info_name, json=as_json, timeout=timeout, **params)
    if not app:
        raise click.UsageError("no Celery app: pass -A/--app or set $CELERY_APP", ctx)
    _check(ctx, args)
    ctx.exit(execute(app, func, args))


def execute(app: Any, func: Command, args: Args) -> int:
    """Load ``app`` (a name, or a Celery app), run one command; its exit code. An expected
    failure is one line on stderr (a JSON object with ``--json``)."""
    context: Context | None = None
    try:
        context = open_context(app, args.timeout)
        return func(context, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        error = _as_cli_error(exc, context.url if context is not None else "?")
        if error is None:
            raise  # a bug: keep the traceback
        return _fail(args.json, error)
    finally:
        if context is not None:
            with contextlib.suppress(RedisError):
                context.close()


def _check(ctx: click.Context, args: Args) -> None:
    """Argument rules the options cannot say themselves (exit 2 with the usage line)."""
    if args.command in ("add", "update"):
        given = [flag for name, flag in SCHEDULE_OPTIONS if getattr(args, name) is not None]
        if len(given) > 1:
            raise click.UsageError(
                f"argument {given[1]}: not allowed with argument {given[0]}", ctx
            )
        if args.command == "add" and not given:
            flags = " ".join(flag for _name, flag in SCHEDULE_OPTIONS)
            raise click.UsageError(f"one of the arguments {flags} is required", ctx)
    if args.command == "update" and all(getattr(args, f) is None for f in UPDATE_FIELDS):
        raise click.UsageError(
            "update: nothing to change (give --task, --every, --cron, --solar, ...)", ctx
        )
    if args.command == "health" and args.cluster and (args.instance or args.role != "any"):
        raise click.UsageError(
            "health: --cluster checks the lease holder; drop --instance and --role", ctx
        )


def _fail(as_json: bool, error: CLIError) -> int:
    if as_json:
        payload = {"error": error.kind, "message": error.message, "exit_code": error.code}
        line = json.dumps({**payload, **error.extra}, sort_keys=True)
    else:
        line = f"{PROG}: error: {error.message}"
    click.echo(line, err=True)
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


# -- entry names for shell completion ------------------------------------------------------


def _complete_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Entry names starting with ``incomplete`` (at most 200, within about a second);
    nothing if the app or Redis cannot be reached."""
    found_app: Any = None
    level: click.Context | None = ctx
    while level is not None and not found_app:  # -A after the command name, or before it
        found_app, level = level.params.get("app"), level.parent
    app = found_app or os.environ.get("CELERY_APP")
    if not app:
        return []
    try:
        context = open_context(app, 1.0)
    except Exception:
        return []
    try:
        found: list[str] = []
        for shard in context.schedule().shards(context.layout()):
            keys = shard.keys
            match = keys.match(incomplete.replace("\\", "\\\\") + "*")
            for key, _score in context.client.zscan_iter(keys.schedule, match=match, count=500):
                found.append(keys.name_of(key))
                if len(found) >= 200:
                    return sorted(found)
        return sorted(found)
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            context.close()


# -- the commands --------------------------------------------------------------------------


def _name(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("name", metavar="NAME", shell_complete=_complete_names)(command)


def _expected_version(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--expected-version",
        type=click.IntRange(min=0),
        metavar="N",
        help="change it only if Redis still holds version N (else exit 6)",
    )(command)


def _entry_options(*, add: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options of ``add`` (``add=True``) and ``update``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        options: list[Callable[[Any], Any]] = [
            click.option(
                "--task", required=add, metavar="TASK", help="task name, e.g. proj.tasks.report"
            ),
            click.option("--every", type=DURATION, help="interval: 90s, 5m, 1h30m, 1d or seconds"),
            click.option("--cron", metavar="EXPR", help='cron expression, e.g. "0 3 * * *"'),
            click.option(
                "--solar",
                type=(
                    click.Choice(SOLAR_EVENTS),
                    click.FloatRange(-90, 90),
                    click.FloatRange(-180, 180),
                ),
                default=None,
                metavar="EVENT LAT LON",
                help="a solar event at a place, e.g. sunset 52.37 4.89 (needs ephem)",
            ),
            click.option("--args", type=JsonOf(list, "array"), metavar="JSON", help="a JSON array"),
            click.option(
                "--kwargs", type=JsonOf(dict, "object"), metavar="JSON", help="a JSON object"
            ),
            click.option(
                "--options",
                type=JsonOf(dict, "object"),
                metavar="JSON",
                help="apply_async options (a JSON object)",
            ),
            click.option("--queue", metavar="Q", help="set options.queue"),
            *lifetime_options(add=add),
        ]
        if add:
            options.append(
                click.option("--disabled", is_flag=True, default=False, help="create it disabled")
            )
        else:
            options.append(
                click.option(
                    "--enabled/--disabled", default=None, help="enable or disable it as well"
                )
            )
            options.append(_expected_version)
        for option in reversed(options):
            command = option(command)
        return _name(command)

    return decorate


@safe_redbeat.command("status")
@_common
def status_command(**params: Any) -> None:
    """Leader, lease, replicas, entries, next due, pending, Redis persistence."""
    _run(cmd_status, **params)


@safe_redbeat.command("health")
@_common
@click.option(
    "--role",
    type=click.Choice(("any", "leader")),
    default="any",
    help="leader: the replica must also hold the lease (default: any)",
)
@click.option(
    "--instance",
    metavar="NAME",
    help="the replica to check (default: safe_redbeat_instance_name, else this host's)",
)
@click.option(
    "--cluster",
    is_flag=True,
    help="check instead that some replica holds the lease and ticks (monitoring)",
)
@click.option(
    "--max-age",
    type=DURATION,
    help="oldest acceptable last tick (default: max(3 x retry_seconds, renew_seconds))",
)
@click.option(
    "--redis-down-ok",
    is_flag=True,
    help="exit 0 if Redis cannot be reached (for liveness: a restart cannot fix Redis)",
)
def health_command(**params: Any) -> None:
    """Exit 0 if healthy, 1 if not (for probes)."""
    _run(cmd_health, **params)


@safe_redbeat.command("list")
@_common
@click.option("--pattern", default="*", metavar="GLOB", help="entry name glob")
def list_command(**params: Any) -> None:
    """Entries: name, state, task, schedule, version, next and last run."""
    _run(cmd_list, **params)


@safe_redbeat.command("show")
@_common
@_name
def show_command(**params: Any) -> None:
    """One entry."""
    _run(cmd_show, **params)


@safe_redbeat.command("add")
@_common
@_entry_options(add=True)
def add_command(**params: Any) -> None:
    """Create an entry (fails if it exists): --every, --cron, --solar or --at, and --task."""
    _run(cmd_add, **params)


@safe_redbeat.command("update")
@_common
@_entry_options(add=False)
def update_command(**params: Any) -> None:
    """Change the given fields of an entry."""
    _run(cmd_update, **params)


def _by_name(name: str, func: Command, text: str) -> None:
    """A command on one entry: NAME and --expected-version."""

    @safe_redbeat.command(name, help=text)
    @_common
    @_name
    @_expected_version
    def command(**params: Any) -> None:
        _run(func, **params)


_by_name("rm", cmd_rm, "Delete an entry.")
_by_name("enable", cmd_set_enabled, "Enable an entry.")
_by_name("disable", cmd_set_enabled, "Disable an entry: beat skips it until enabled.")
_by_name("run-now", cmd_run_now, "Have the leader send an entry once, at its next tick.")


@safe_redbeat.command("sync")
@_common
@click.option("--dry-run", is_flag=True, help="report what would change")
@click.option(
    "--allow-removals",
    is_flag=True,
    help="apply removals beyond safe_redbeat_loader_max_removals (after you checked them)",
)
def sync_command(**params: Any) -> None:
    """Reconcile the loader's entries with Redis once."""
    _run(cmd_sync, **params)


@safe_redbeat.command("reshard")
@_common
@click.option("--to", type=int, required=True, metavar="K", help="shards (1-256)")
@click.option(
    "--wait",
    type=DURATION,
    help="how long to wait for each shard's lease (default: lease + retry seconds)",
)
def reshard_command(**params: Any) -> None:
    """Move the schedule to a layout of K shards."""
    _run(cmd_reshard, **params)


@safe_redbeat.command("dead")
@_common
@click.argument("action", type=click.Choice(("list", "retry", "drop")))
@click.argument("task_ids", nargs=-1, metavar="[TASK_ID]...")
@click.option("--all", "all_", is_flag=True, help="every dead letter")
def dead_command(all_: bool, **params: Any) -> None:
    """Occurrences whose publish kept failing: list, retry, drop."""
    _run(cmd_dead, all=all_, **params)


@safe_redbeat.command("export")
@_common
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    default="-",
    help="write to FILE (replaced only once complete) instead of stdout",
)
def export_command(**params: Any) -> None:
    """Write every entry (definition, lifetime fields, run history, owner) as JSON."""
    _run(cmd_export, **params)


@safe_redbeat.command("import")
@_common
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--dry-run", is_flag=True, help="report what would change, write nothing")
@click.option(
    "--replace",
    is_flag=True,
    help="also overwrite entries that exist and differ (their run history is kept)",
)
def import_command(**params: Any) -> None:
    """Restore entries from an export (FILE, or - for stdin), next to running replicas."""
    _run(cmd_import, **params)
