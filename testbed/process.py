"""A server process of the testbed on 127.0.0.1: its argv, log file and PID.

:class:`ServerProcess` is what a Redis server, a cluster node and a sentinel share: spawn
it with its output appended to its log file (killed with the spawning thread if the test
process dies first, :func:`die_with_parent`), wait until it answers, stop it (SIGTERM,
then SIGKILL) or kill it, by PID.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1

_Process = TypeVar("_Process", bound="ServerProcess")


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, SIGKILL the child if the spawning thread dies.

    A safety net for when pytest itself is killed before fixture teardown runs.
    Spawn from the main thread: the signal fires when the *thread* that forked exits.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM by PID and wait; SIGKILL if it is still running after STOP_TIMEOUT.
    No-op if it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_process(proc)


def kill_process(proc: subprocess.Popen[bytes] | None, timeout: float | None = None) -> None:
    """SIGKILL by PID and reap it (waiting at most ``timeout``). No-op if not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.kill()
    proc.wait(timeout)


class ServerProcess:
    """A server answering PING on ``HOST:port``, started from :meth:`argv`.

    Subclasses give :meth:`argv`, and :meth:`env` and :meth:`ready` where they need more.
    Restartable: :meth:`start` again after :meth:`stop` or :meth:`kill`.
    """

    #: what the error messages call it
    kind = "server"

    def __init__(self, *, binary: str, port: int, workdir: Path, log_path: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        """The environment of the process; None: this process' own."""
        return None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.kind} {self.port} not started")
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def spawn(self) -> None:
        """Start the process; :meth:`wait_ready` waits until it answers."""
        if self.running():
            raise RuntimeError(f"{self.kind} {self.port} already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def ready(self, probe: redis.Redis) -> bool:
        """Whether the process is ready, asked through ``probe`` (a client of it)."""
        return bool(probe.ping())

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until :meth:`ready`; SIGKILL and raise if it exits or is not ready in time."""
        probe = redis.Redis(
            host=HOST,
            port=self.port,
            decode_responses=True,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self.running():
                    raise RuntimeError(
                        f"{self.kind} {self.port} exited during startup:\n{self.log()[-2000:]}"
                    )
                try:
                    if self.ready(probe):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"{self.kind} {self.port} not ready after {timeout}s:\n{self.log()[-2000:]}"
                    )
                time.sleep(0.02)
        finally:
            probe.close()

    def start(self: _Process) -> _Process:
        self.spawn()
        self.wait_ready()
        return self

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` by PID (SIGSTOP, SIGCONT, ...); no-op if it is not running."""
        if self.running():
            os.kill(self.pid, sig)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. No-op if not running."""
        stop_process(self._proc)

    def kill(self) -> None:
        """SIGKILL (a stopped process too) and reap. No-op if not running."""
        kill_process(self._proc, STOP_TIMEOUT)
