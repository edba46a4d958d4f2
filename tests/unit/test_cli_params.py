"""The command line's readers (durations, JSON, times) and its argument rules, in process:
nothing here reaches an app or Redis (a usage error stops before either)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from safe_redbeat.cli import EXIT_USAGE, safe_redbeat
from safe_redbeat.cli.context import EXIT_MEANINGS
from safe_redbeat.cli.params import parse_duration
from safe_redbeat.model.lifecycle import lifetime_fields


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("2m30s", 150.0),
        ("250ms", 0.25),
        ("1d2h3m4s", 93784.0),
        (" 5M ", 300.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m", "30m1h", "1h1h", "1h 30m", "inf", "nan", "5m-"])
def test_what_is_not_a_duration_says_what_is(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        safe_redbeat, ["-A", "no.such.app", *args], prog_name="safe-redbeat"
    )
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["add", "x", "--task", "t", "--every", "5x"], "not a duration: '5x'"),
        (["add", "x", "--task", "t", "--every", "0"], "must be a positive duration"),
        (
            ["add", "x", "--task", "t"],
            "one of the arguments --every --cron --solar --at is required",
        ),
        (["add", "x", "--task", "t", "--every", "5", "--cron", "* * * * *"], "not allowed with"),
        (["add", "x", "--task", "t", "--every", "5", "--kwargs", "[]"], "must be a JSON object"),
        (["add", "x", "--task", "t", "--every", "5", "--start", "soon"], "not an ISO 8601"),
        (["add", "x", "--task", "t", "--every", "5", "--max-runs", "0"], "--max-runs"),
        (["update", "x"], "nothing to change"),
        (["health", "--cluster", "--role", "leader"], "drop --instance and --role"),
        (["health", "--max-age", "1h1h"], "each unit once"),
        (["dead", "bury"], "'bury' is not one of"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], problem: str) -> None:
    code, output = run(*args)
    assert code == EXIT_USAGE, output
    assert output.startswith(f"usage: safe-redbeat {args[0]}")
    assert problem in output


def test_every_lifetime_field_is_an_option_of_add_and_update() -> None:
    ctx = click.Context(safe_redbeat)
    add, update = safe_redbeat.get_command(ctx, "add"), safe_redbeat.get_command(ctx, "update")
    assert add is not None and update is not None
    for spec in lifetime_fields():
        flag = spec.metadata["flag"] or "--" + spec.name.replace("_", "-")
        assert flag in {o for p in add.params for o in p.opts}, flag
        if spec.metadata["kind"] != "flag":
            assert flag in {o for p in update.params for o in p.opts}, flag


def test_help_lists_every_exit_code() -> None:
    for args in ([], ["status"]):
        code, output = run(*args, "--help")
        assert code == 0
        section = " ".join(output[output.index("Exit codes:") :].split())
        for exit_code, meaning in EXIT_MEANINGS.items():
            assert f"{exit_code} {meaning}" in section


def test_the_group_celery_loads_for_every_command_imports_little() -> None:
    """``celery`` imports the entry point's group whatever command it runs (a worker's
    start, ``celery inspect ping`` probes): the commands and Redis come only when used."""
    heavy = ("redbeat", "redis", "kombu", "safe_redbeat.schedule", "safe_redbeat.cli.commands")
    code = (
        "import sys, safe_redbeat.cli.group; print(*[m for m in sys.argv[1:] if m in sys.modules])"
    )
    found = subprocess.run(
        [sys.executable, "-c", code, *heavy], capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == []
