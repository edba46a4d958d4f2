"""The deploy files against a real ``celery beat``: every metric the alert rules and the
dashboard name is in its scrape, and the probes the Deployment uses answer 200."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.beat import BeatCluster
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
