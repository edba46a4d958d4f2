"""Real ``celery beat`` replicas: /metrics through a failover, Sentry Crons check-ins."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from safe_redbeat import Schedule
from testbed.beat import BeatCluster, BeatProcess, QueueAuditor
from tests.support.inprocess import FAST, celery_app

pytestmark = pytest.mark.integration

SETTINGS = {
    **FAST,
    "safe_redbeat_metrics_port": 0,  # any free port; the replica logs which
    "safe_redbeat_metrics_addr": "127.0.0.1",
}
EVERY_SECOND = {"tick": {"task": "noop", "every": 1}}
#: time for a replica that stopped sending to finish its last publish
QUIET = 1.5


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("monitoring-processes", redis_url) as app:
        yield app


def metrics_url(proc: BeatProcess) -> str:
    match = proc.wait_for_log(r"serving metrics on (http://\S+/metrics)", timeout=20)
    return match.group(1)


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape, keyed ``name{label="value",...}`` (labels sorted)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_scrape(url: str, condition: Any, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if condition(samples):
            return samples
        if time.monotonic() >= deadline:
            raise AssertionError(f"{url}: condition not met within {timeout}s: {samples}")
        time.sleep(0.1)


def first_leader(procs: list[BeatProcess], urls: dict[str, str], timeout: float) -> BeatProcess:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if scrape(urls[proc.name])["safe_redbeat_is_leader"] == 1:
                return proc
        if time.monotonic() >= deadline:
            raise AssertionError(f"no replica reports safe_redbeat_is_leader 1 in {timeout}s")
        time.sleep(0.1)


def sent(samples: dict[str, float]) -> float:
    return samples["safe_redbeat_occurrences_sent_total"] + samples.get(
        "safe_redbeat_occurrences_republished_total", 0.0
    )


def quiesce(schedule: Schedule, auditor: QueueAuditor) -> None:
    """Stop the entry and let the last send land."""
    schedule.disable("tick")
    time.sleep(QUIET)
    auditor.drain()


def test_metrics_flip_on_failover_and_count_what_the_broker_got(
    beat_procs: BeatCluster, redis_client: redis.Redis, app: Celery
) -> None:
    auditor = QueueAuditor(redis_client)
    procs = beat_procs.start(2, settings=SETTINGS, schedule=EVERY_SECOND)
    urls = {proc.name: metrics_url(proc) for proc in procs}

    leader = first_leader(procs, urls, timeout=10)
    standby = next(p for p in procs if p is not leader)
    auditor.wait_for(lambda m: len(m) >= 2, timeout=10)

    schedule = Schedule(app)
    quiesce(schedule, auditor)
    first = scrape(urls[leader.name])
    other = scrape(urls[standby.name])
    fence = first["safe_redbeat_fence"]
    assert first["safe_redbeat_is_leader"] == 1 and other["safe_redbeat_is_leader"] == 0
    assert other["safe_redbeat_fence"] == 0 and sent(other) == 0
    assert first["safe_redbeat_lease_seconds_left"] > 0
    by_fence = [m for m in auditor.messages if m.headers["safe_redbeat_fence"] == fence]
    said = leader.log()
    for message in by_fence:  # "did it fire?" has an answer in the leader's log
        assert f"Scheduler: Sending due task tick (noop), task id {message.task_id}" in said
    assert len(by_fence) == len(auditor.messages) >= 2
    assert sent(first) == len(by_fence)
    assert (
        first["safe_redbeat_dispatch_lag_seconds_count"]
        == first["safe_redbeat_occurrences_sent_total"]
    )
    assert first["safe_redbeat_pending"] == 0 and first["safe_redbeat_dead"] == 0
    states = [first[f'safe_redbeat_entries{{state="{s}"}}'] for s in ("active", "disabled")]
    assert sum(states) == 1  # counted at most once a minute

    seen = len(auditor.messages)
    leader.terminate()
    assert leader.wait(10) == 0
    after = wait_scrape(urls[standby.name], lambda s: s["safe_redbeat_is_leader"] == 1, timeout=10)
    assert after['safe_redbeat_leadership_changes_total{cause="none",change="acquired"}'] == 1
    assert after["safe_redbeat_fence"] > fence
    schedule.enable("tick")
    auditor.wait_for(lambda m: len(m) >= seen + 2, timeout=10)
    quiesce(schedule, auditor)
    final = scrape(urls[standby.name])
    new_fence = final["safe_redbeat_fence"]
    mine = [m for m in auditor.messages if m.headers["safe_redbeat_fence"] == new_fence]
    assert len(mine) == len(auditor.messages) - seen >= 2
    assert sent(final) == len(mine)


class SentryBeat(BeatProcess):
    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("testbed.beatapp")] = "tests.apps.sentryapp"
        return argv


def read_items(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sentry_crons_reports_check_ins_for_a_safe_redbeat_entry(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, app: Celery
) -> None:
    envelopes = tmp_path / "sentry.jsonl"
    auditor = QueueAuditor(redis_client)
    beat = SentryBeat(
        redis_url,
        logdir=tmp_path / "logs",
        name="sentry-beat",
        settings=FAST,
        schedule={"hourly-report": {"task": "noop", "every": 3600}},
        instance="sentry-beat",
        extra_env={"SRB_SENTRY_FILE": str(envelopes)},
    )
    beat.start()
    try:
        schedule = Schedule(app)
        deadline = time.monotonic() + 20
        while True:
            try:
                schedule.get("hourly-report")
                break
            except KeyError:
                if time.monotonic() >= deadline or not beat.alive():
                    raise AssertionError(beat.log_tail()) from None
                time.sleep(0.1)
        schedule.run_now("hourly-report")
        messages = auditor.wait_for(lambda m: len(m) >= 1, timeout=10)
    finally:
        beat.terminate()
        beat.wait(10)
        beat.kill()
    assert len(messages) == 1
    headers = messages[0].headers
    assert headers["sentry-monitor-slug"] == "hourly-report"
    assert headers["periodic_task_name"] == "hourly-report"
    check_in_id = headers["sentry-monitor-check-in-id"]
    # what the worker-side receivers read to report the end of the run
    assert headers["headers"]["sentry-monitor-check-in-id"] == check_in_id
    assert "sentry-monitor-start-timestamp-s" in headers["headers"]
    check_ins = [i["payload"] for i in read_items(envelopes) if i["type"] == "check_in"]
    assert [(c["monitor_slug"], c["status"], c["check_in_id"]) for c in check_ins] == [
        ("hourly-report", "in_progress", check_in_id)
    ]
    assert check_ins[0]["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 1,
        "unit": "hour",
    }


def test_json_logs_of_a_beat_process_are_one_object_per_line(beat_procs: BeatCluster) -> None:
    [beat] = beat_procs.start(
        1, settings={**FAST, "safe_redbeat_log_format": "json"}, schedule=EVERY_SECOND
    )
    beat.wait_for_log(r'^\{.*"event":"reconciled"', timeout=20)
    beat.wait_for_log(r'^\{.*"event":"occurrence_sent"', timeout=20)
    beat.terminate()
    assert beat.wait(10) == 0
    lines = [json.loads(line) for line in beat.log().splitlines() if line.startswith("{")]
    events = [(line["event"], line.get("change")) for line in lines if "event" in line]
    assert events[0] == ("leadership_changed", "acquired")
    sent = [line for line in lines if line.get("event") == "occurrence_sent"]
    assert sent and all(line["entry"] == "tick" and line["task"] == "noop" for line in sent)
    assert sent[0]["message"].startswith("Scheduler: Sending due task tick (noop), task id ")
    assert ("leadership_changed", "released") in events
    assert all(line["instance"] == beat.instance for line in lines)
    assert "WARNING/MainProcess] {" not in beat.log(), "a JSON line was logged again by Celery"
