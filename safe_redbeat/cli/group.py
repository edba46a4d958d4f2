"""The ``safe-redbeat`` click group: its own options, help and usage, and the console
script. Cheap to import: ``celery`` loads it (the ``celery.commands`` entry point) for
every command it runs, so the commands (:mod:`.commands`) and everything they need are
imported only when one of them is asked for.

One group serves both ways in: the ``safe-redbeat`` console script (:func:`main`) and
``celery -A proj safe-redbeat ...``, where the app comes from Celery's ``-A``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from .params import DURATION

__all__ = ["PROG", "Options", "SafeCommand", "SafeGroup", "main", "safe_redbeat"]

#: the command's name, standalone and as a ``celery`` subcommand
PROG = "safe-redbeat"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- help and usage --------------------------------------------------------------------


class _Help:
    """Usage lines in lower case (``usage: ...``, as before); the exit codes after the help."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        pieces = " ".join(self.collect_usage_pieces(ctx))  # type: ignore[attr-defined]
        formatter.write_usage(ctx.command_path, pieces, prefix="usage: ")

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .context import EXIT_MEANINGS

        super().format_epilog(ctx, formatter)  # type: ignore[misc]
        with formatter.section("Exit codes"):
            formatter.write_dl([(str(code), text) for code, text in EXIT_MEANINGS.items()])


class SafeCommand(_Help, click.Command):
    """A command of ``safe-redbeat``."""


class SafeGroup(_Help, click.Group):
    """The ``safe-redbeat`` group: its commands (:mod:`.commands`, imported when one is
    asked for) in the order they were added."""

    command_class = SafeCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        _load_commands()
        return list(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        _load_commands()
        return super().get_command(ctx, cmd_name)


def _load_commands() -> None:
    """Register the commands on the group (the first call imports them)."""
    importlib.import_module(".commands", __package__)


class Options:
    """The group's options, for its commands (``click.Context.obj`` below the group)."""

    def __init__(self, app: Any, as_json: bool, timeout: float | None) -> None:
        self.app = app
        self.as_json = as_json
        self.timeout = timeout


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    from .. import __version__

    found = of("safe-redbeat")
    click.echo(
        f"{PROG} {__version__ if found == '?' else found} (celery {of('celery')}, "
        f"celery-redbeat {of('celery-redbeat')}, redis-py {of('redis')}, "
        f"Python {sys.version.split()[0]})"
    )
    ctx.exit()


@click.group(
    PROG,
    cls=SafeGroup,
    context_settings=CONTEXT,
    help="Status, health checks, backups and schedule management for safe_redbeat.",
    epilog="Durations: 90s, 5m, 1h30m, 1d, 250ms or seconds. "
    'Shell completion: eval "$(_SAFE_REDBEAT_COMPLETE=bash_source safe-redbeat)" '
    "(zsh_source, fish_source). Reference: docs/cli.md.",
)
@click.option(
    "-A",
    "--app",
    metavar="APP",
    default=None,
    help="the Celery app as for `celery -A`: proj, proj.celery, proj.celery:app "
    "(default: $CELERY_APP; under `celery -A proj safe-redbeat`: that app)",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    default=False,
    help="print one JSON object (schemas: docs/cli.md)",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=None,
    help="Redis socket timeout, a duration (default: safe_redbeat_socket_timeout)",
)
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level on stderr")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="print the versions of safe-redbeat, Celery, RedBeat, redis-py and Python",
)
@click.pass_context
def safe_redbeat(
    ctx: click.Context, app: str | None, as_json: bool, timeout: float | None, verbose: bool
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="safe-redbeat: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = Options(app, as_json, timeout)


# -- the console script ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    try:
        code = safe_redbeat.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name=PROG,
            standalone_mode=False,
        )
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return 130
    return code if isinstance(code, int) else 0
