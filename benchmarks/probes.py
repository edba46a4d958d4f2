"""``python -m benchmarks.probes [--requests N]``: CPU a probe costs the beat process.

Starts a Redis server and one real ``celery beat`` replica (default settings, an entry
every second, ``safe_redbeat_http_port``), then sends N requests to ``/healthz``,
``/readyz`` and ``/metrics`` one after the other and reads the process' CPU time
(utime + stime from ``/proc/<pid>/stat``) before and after each run. The beat loop's own
CPU over the same wall time, measured while idle, is subtracted. Prints milliseconds of
CPU per request (the figure docs/monitoring.md quotes); Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from testbed.beat import BeatProcess
from testbed.redis_server import RedisServer

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(pid: int, url: str, requests: int, idle_rate: float) -> tuple[float, float]:
    """(ms of CPU per request, beyond the loop's own; ms of wall time per request)."""
    before, started = cpu_seconds(pid), time.monotonic()
    for _ in range(requests):
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    wall = time.monotonic() - started
    used = cpu_seconds(pid) - before - idle_rate * wall
    return used / requests * 1000, wall / requests * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-probes-"))
    server = RedisServer(workdir=workdir / "redis").start()
    beat = BeatProcess(
        server.url_for(1),
        logdir=workdir / "logs",
        name="probes",
        loglevel="INFO",
        settings={"safe_redbeat_http_port": 0, "safe_redbeat_http_addr": "127.0.0.1"},
        schedule={"tick": {"task": "noop", "every": 1}},
    )
    try:
        beat.start()
        match = beat.wait_for_log(r"serving metrics on (http://\S+)/metrics", timeout=30)
        base = match.group(1)
        time.sleep(2)  # past the first ticks and the seeding
        before = cpu_seconds(beat.pid)
        time.sleep(args.idle)
        idle_rate = (cpu_seconds(beat.pid) - before) / args.idle
        print(f"beat idle: {idle_rate * 1000:.1f} ms CPU per second (ticks, one entry per second)")
        for path, n in (
            ("/healthz", args.requests),
            ("/readyz", args.requests),
            ("/metrics", max(args.requests // 10, 10)),
        ):
            cpu, wall = measure(beat.pid, base + path, n, idle_rate)
            print(f"{path:9} {n:5d} requests: {cpu:.3f} ms CPU each, {wall:.3f} ms wall each")
        sent = len(re.findall(r"Sending due task", beat.log()))
        print(f"meanwhile the replica sent {sent} occurrences")
    finally:
        beat.terminate()
        if beat.wait(10) is None:
            beat.kill()
        server.stop()


if __name__ == "__main__":
    main()
