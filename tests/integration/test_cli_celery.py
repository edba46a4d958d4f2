"""The command as Celery's subcommand (``celery -A app safe-redbeat ...``, through the
``celery.commands`` entry point), its durations, ``--version`` and shell completion, against
the suite's Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest

from testbed.beat import APP_MODULE, REPO_ROOT
from tests.integration.test_cli import STATUS_KEYS, cli, cli_json, env_for, one_line_error

pytestmark = pytest.mark.integration


def celery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP_MODULE, "safe-redbeat", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_celery_runs_the_commands_with_its_own_app(redis_url: str, tmp_path: Path) -> None:
    assert "safe-redbeat" in {ep.name for ep in entry_points(group="celery.commands")}, (
        "the celery.commands entry point is not installed: pip install -e ."
    )
    env = env_for(redis_url, tmp_path)

    added = celery(env, "add", "report", "--task", "noop", "--every", "1h30m", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["schedule"]["every"] == 5400.0
    status = celery(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert set(json.loads(status.stdout)) >= STATUS_KEYS
    assert json.loads(status.stdout)["entries"] == 1
    # the exit codes and one-line errors are the same as the standalone command's
    missing = celery(env, "show", "ghost")
    assert "entry 'ghost' not found" in one_line_error(missing, 5)


def test_durations_version_and_completion(redis_url: str, tmp_path: Path) -> None:
    env = env_for(redis_url, tmp_path)
    cli_json(env, "add", "nightly", "--task", "noop", "--every", "1d")
    cli_json(env, "add", "night-owl", "--task", "noop", "--every", "90s")
    updated = cli_json(env, "update", "nightly", "--every", "2h", "--timeout", "2s")
    assert updated["schedule"]["every"] == 7200.0 and updated["version"] == 2

    shown = cli(env, "--version")
    assert shown.returncode == 0
    assert shown.stdout.startswith(f"safe-redbeat {version('safe-redbeat')} (celery ")

    complete = cli(
        env
        | {"_SAFE_REDBEAT_COMPLETE": "bash_complete", "COMP_CWORD": "4"}
        | {"COMP_WORDS": f"safe-redbeat -A {APP_MODULE} show nig"}
    )
    assert complete.returncode == 0, complete.stderr
    assert complete.stdout.split() == ["plain,night-owl", "plain,nightly"]
