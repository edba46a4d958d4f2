"""Real ``celery beat`` subprocesses and a broker-side view of what they sent."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from testbed.process import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_MODULE = "testbed.beatapp"
DEFAULT_SCHEDULER = "safe_redbeat.SafeRedBeatScheduler"
KILL_TIMEOUT = 10.0


class BeatProcess:
    """One ``celery beat`` process for ``testbed.beatapp`` (or ``app``), configured via
    env vars."""

    def __init__(
        self,
        redis_url: str,
        *,
        logdir: Path,
        name: str = "beat",
        broker_url: str | None = None,
        settings: dict[str, Any] | None = None,
        schedule: dict[str, dict[str, Any]] | None = None,
        instance: str | None = None,
        key_prefix: str | None = None,
        loglevel: str = "DEBUG",
        scheduler: str = DEFAULT_SCHEDULER,
        extra_env: dict[str, str] | None = None,
        app: str = APP_MODULE,
    ) -> None:
        self.name = name
        self.app = app
        self.redis_url = redis_url
        self.broker_url = broker_url or redis_url
        self.settings = dict(settings or {})
        self.schedule = dict(schedule or {})
        self.instance = instance
        self.key_prefix = key_prefix
        self.loglevel = loglevel
        self.scheduler = scheduler
        self.extra_env = dict(extra_env or {})
        logdir.mkdir(parents=True, exist_ok=True)
        self.log_path = logdir / f"{name}.log"
        self.schedule_path = logdir / f"{name}-schedule"
        self._proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app, "beat",
            "-S", self.scheduler, "--loglevel", self.loglevel,
            "--pidfile=", "-s", str(self.schedule_path),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SRB_")}
        pythonpath = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else "")
        env["PYTHONUNBUFFERED"] = "1"
        env["SRB_REDIS_URL"] = self.redis_url
        env["SRB_BROKER_URL"] = self.broker_url
        env["SRB_SETTINGS"] = json.dumps(self.settings)
        env["SRB_SCHEDULE"] = json.dumps(self.schedule)
        if self.instance is not None:
            env["SRB_INSTANCE"] = self.instance
        if self.key_prefix is not None:
            env["SRB_KEY_PREFIX"] = self.key_prefix
        env.update(self.extra_env)
        return env

    def start(self) -> BeatProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started (pid {self._proc.pid})")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv(),
                cwd=REPO_ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop_signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def sigstop(self) -> None:
        self.stop_signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        self.stop_signal(signal.SIGCONT)

    def terminate(self) -> None:
        self.stop_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (works on stopped processes too) and reap."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(KILL_TIMEOUT)

    def wait(self, timeout: float) -> int | None:
        """Wait for exit; return the exit code, or None if still running at the deadline."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(
        self, pattern: str, timeout: float, *, interval: float = 0.05
    ) -> re.Match[str]:
        """Poll the log until ``pattern`` (a regex, MULTILINE) matches."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match is not None:
                return match
            if time.monotonic() >= deadline:
                state = "running" if self.alive() else f"exited rc={self.returncode}"
                raise AssertionError(
                    f"{self.name} (pid {self.pid}, {state}): no match for {pattern!r} "
                    f"within {timeout}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"<BeatProcess {self.name} pid={pid}>"


class BeatCluster:
    """Starts BeatProcesses and guarantees they are all killed at ``cleanup()``."""

    def __init__(self, logdir: Path, **defaults: Any) -> None:
        self.logdir = logdir
        self.defaults = defaults
        self.processes: list[BeatProcess] = []

    def start(self, n: int = 1, *, name_prefix: str = "beat", **kwargs: Any) -> list[BeatProcess]:
        """Start ``n`` processes named ``<prefix>-<k>``; ``instance`` defaults to that name."""
        started: list[BeatProcess] = []
        for _ in range(n):
            name = f"{name_prefix}-{len(self.processes)}"
            options = {**self.defaults, "instance": name, **kwargs}
            proc = BeatProcess(logdir=self.logdir, name=name, **options)
            self.processes.append(proc)
            started.append(proc.start())
        return started

    def add(self, proc: BeatProcess) -> BeatProcess:
        """Start another process (a worker, say) that ``cleanup()`` kills too."""
        self.processes.append(proc)
        return proc.start()

    def alive(self) -> list[BeatProcess]:
        return [p for p in self.processes if p.alive()]

    def cleanup(self) -> None:
        for proc in self.alive():
            proc.sigcont()
            proc.kill()

    def report(self, lines: int = 60) -> str:
        parts = []
        for proc in self.processes:
            rc = proc.returncode if proc._proc is not None else "not started"
            parts.append(f"==== {proc.name} rc={rc} log={proc.log_path}\n{proc.log_tail(lines)}")
        return "\n".join(parts)


@dataclass
class Message:
    task_id: str
    task: str
    headers: dict[str, Any]
    received_at: float
    properties: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "celery"

    @classmethod
    def parse(cls, raw: str | bytes, received_at: float, queue: str) -> Message:
        envelope = json.loads(raw)
        headers: dict[str, Any] = envelope.get("headers") or {}
        properties: dict[str, Any] = envelope.get("properties") or {}
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        body = envelope.get("body")
        if isinstance(body, str) and envelope.get("content-type") == "application/json":
            if properties.get("body_encoding") == "base64":
                body = base64.b64decode(body).decode()
            decoded = json.loads(body)
            if isinstance(decoded, list) and len(decoded) >= 2:
                args, kwargs = list(decoded[0]), dict(decoded[1])
        return cls(
            task_id=headers["id"],
            task=headers["task"],
            headers=headers,
            received_at=received_at,
            properties=properties,
            args=args,
            kwargs=kwargs,
            queue=queue,
        )


# kombu's Redis transport stores priority > 0 messages in "<queue>\x06\x16<step>" lists.
PRIORITY_SEP = "\x06\x16"


class QueueAuditor:
    """Consumes task messages straight from the broker's Redis lists (no worker)."""

    def __init__(self, client: redis.Redis, queue: str = "celery") -> None:
        self.client = client
        self.queue = queue
        self.messages: list[Message] = []

    def _lists(self) -> list[str]:
        return [self.queue] + [f"{self.queue}{PRIORITY_SEP}{step}" for step in range(1, 10)]

    def drain(self) -> list[Message]:
        """Atomically take everything queued now; return it (oldest first) and record it."""
        names = self._lists()
        pipe = self.client.pipeline(transaction=True)
        for name in names:
            pipe.lrange(name, 0, -1)
        pipe.delete(*names)
        results = pipe.execute()
        now = time.time()
        new: list[Message] = []
        for name, items in zip(names, results[:-1], strict=True):
            # LPUSH on publish, BRPOP on consume: the oldest item is at the right end.
            new.extend(Message.parse(raw, now, name) for raw in reversed(items))
        self.messages.extend(new)
        return new

    def wait_for(
        self,
        predicate: Callable[[list[Message]], bool],
        timeout: float,
        *,
        interval: float = 0.05,
    ) -> list[Message]:
        """Drain until ``predicate(self.messages)`` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if predicate(self.messages):
                return self.messages
            if time.monotonic() >= deadline:
                summary = [(m.task, m.task_id, m.headers.get("eta")) for m in self.messages]
                raise AssertionError(
                    f"condition not met within {timeout}s; {len(self.messages)} messages seen: "
                    f"{summary}"
                )
            time.sleep(interval)

    def by_task(self, name: str) -> list[Message]:
        return [m for m in self.messages if m.task == name]
