"""The example project's README commands, run as written (subprocesses from the
repository root, on a fresh sqlite file and the suite's Redis): migrate, createsuperuser,
runserver, two beat replicas and a worker that runs a row added afterwards, and
``safe_redbeat_sync --dry-run``; none prints RedBeat's broker_url fallback warning."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

pytest.importorskip("django_celery_beat")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MANAGE = "examples/django_celery_beat/manage.py"
APP = "examples.django_celery_beat"
CELERY = str(Path(sys.executable).parent / "celery")
FALLBACK = "will stop falling back"


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SRB_"))}
    return {**base, "REDIS_URL": redis_url, "EXAMPLE_DB_PATH": str(tmp_path / "db.sqlite3")}


def run(env: dict[str, str], *argv: str, **extra: str) -> str:
    done = subprocess.run(
        argv, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{output[-3000:]}"
    assert FALLBACK not in output, f"{argv}: RedBeat's fallback warning\n{output[-2000:]}"
    return output


class Started:
    """Long-running commands; each is stopped by its PID (and its process group)."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *argv: str) -> Path:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append((proc, log))
        return log

    def stop(self) -> None:
        for proc, _log in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _log in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.fixture
def started(env: dict[str, str], tmp_path: Path) -> Iterator[Started]:
    procs = Started(env, tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_commands_run_as_written(
    env: dict[str, str], started: Started, redis_client: redis.Redis
) -> None:
    run(env, sys.executable, MANAGE, "migrate")
    run(
        env, sys.executable, MANAGE, "createsuperuser", "--noinput",
        DJANGO_SUPERUSER_USERNAME="admin", DJANGO_SUPERUSER_PASSWORD="pw",
        DJANGO_SUPERUSER_EMAIL="admin@example.com",
    )  # fmt: skip
    port = free_port()
    started.start("web", sys.executable, MANAGE, "runserver", f"127.0.0.1:{port}", "--noreload")

    def login_page() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2) as r:
                return r.status == 200 and b"csrfmiddlewaretoken" in r.read()
        except OSError:
            return False

    beats = [started.start(f"beat{i}", CELERY, "-A", APP, "beat") for i in (1, 2)]
    worker = started.start("worker", CELERY, "-A", APP, "worker", "-l", "info")
    wait_for(login_page, 30, "the admin's login page")
    wait_for(lambda: redis_client.exists("redbeat::lock"), 30, "a beat replica leading")
    run(
        env, sys.executable, MANAGE, "shell", "-c",
        "from django_celery_beat.models import IntervalSchedule, PeriodicTask; "
        "every = IntervalSchedule.objects.create(every=1, period='seconds'); "
        "PeriodicTask.objects.create(name='ping', task='reports.ping', interval=every)",
    )  # fmt: skip
    wait_for(lambda: "reports.ping args=" in worker.read_text(), 40, "the worker running it")
    out = run(env, sys.executable, MANAGE, "safe_redbeat_sync", "--dry-run")
    assert "loader: would create 0" in out and "unchanged 1" in out, out
    logs = [log.read_text() for log in beats]
    assert all(FALLBACK not in text for text in logs), logs
    assert sum("beat: leading" in text or "lease" in text.lower() for text in logs) >= 1, logs
