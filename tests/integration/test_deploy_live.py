"""The deploy files against a real ``celery beat``: every metric the alert rules and the
dashboard name is in its scrape, and the probes the Deployment uses answer 200."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.beat import BeatCluster
from testbed.redis_server import RedisServer
from tests.support.deploy_files import dashboard_expressions, metric_names, rule_expressions
from tests.support.inprocess import FAST

pytestmark = pytest.mark.integration

SETTINGS = {**FAST, "safe_redbeat_http_port": 0, "safe_redbeat_http_addr": "127.0.0.1"}


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def sample_names(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_metric_of_the_rules_and_the_dashboard_is_scraped_from_a_real_beat(
    beat_procs: BeatCluster,
) -> None:
    wanted = metric_names(rule_expressions() + dashboard_expressions())
    assert len(wanted) >= 15
    [beat] = beat_procs.start(1, settings=SETTINGS, schedule={"tick": {"task": "noop", "every": 1}})
    match = beat.wait_for_log(r"serving metrics on (http://\S+)/metrics", timeout=20)
    base = match.group(1)
    deadline = time.monotonic() + 15
    while True:  # a leader that has reconciled and sent reports every series
        missing = wanted - sample_names(fetch(base + "/metrics")[1])
        if not missing:
            break
        assert time.monotonic() < deadline, f"not in the scrape: {sorted(missing)}"
        time.sleep(0.2)
    assert fetch(base + "/healthz")[0] == 200
    status, body = fetch(base + "/readyz")
    assert (status, body) == (200, body) and body.startswith("ready: leader;")


def test_healthz_of_a_real_beat_fails_while_its_broker_hangs_and_recovers(
    beat_procs: BeatCluster, tmp_path: Path
) -> None:
    """A broker that stops answering (SIGSTOP) holds the leader's tick inside a publish:
    /healthz answers 503 within the liveness bound, and 200 again once the broker is back."""
    broker = RedisServer(workdir=tmp_path / "broker").start()
    try:
        [beat] = beat_procs.start(
            1,
            settings=SETTINGS,
            broker_url=broker.url_for(0),
            schedule={"tick": {"task": "noop", "every": 1}},
        )
        base = beat.wait_for_log(r"serving metrics on (http://\S+)/metrics", timeout=20).group(1)
        beat.wait_for_log(r"Sending due task tick", timeout=20)
        assert status_of(base + "/healthz") == 200
        broker.send_signal(signal.SIGSTOP)
        try:
            stuck_at = wait_status(base + "/healthz", 503, timeout=15)
        finally:
            broker.send_signal(signal.SIGCONT)
        wait_status(base + "/healthz", 200, timeout=15)
        assert beat.alive()
        # the bound: max(3 x retry, renew) = 2 s with FAST settings, plus the wait for the
        # next due entry (up to 1 s) and the probe's own polling
        assert stuck_at < 5.0
    finally:
        broker.stop()


def status_of(url: str) -> int:
    try:
        return fetch(url)[0]
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_status(url: str, status: int, timeout: float) -> float:
    """Poll ``url`` until it answers ``status``; the seconds that took."""
    started = time.monotonic()
    while status_of(url) != status:
        assert time.monotonic() - started < timeout, f"{url} never answered {status}"
        time.sleep(0.1)
    return time.monotonic() - started
