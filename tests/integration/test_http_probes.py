"""The replica's HTTP server: /healthz, /readyz, /metrics, 404 elsewhere, nothing that writes.

The scheduler ticks in this process on the suite's Redis; the server is the one
``celery beat`` starts (``monitoring.setup`` on ``beat_init``), on a free port.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from safe_redbeat import SafeRedBeatScheduler
from safe_redbeat.observe import monitoring
from testbed.process import free_port
from tests.support.inprocess import FakeClock, add_due, celery_app

pytestmark = pytest.mark.integration

HTTP = {"safe_redbeat_http_port": 0, "safe_redbeat_http_addr": "127.0.0.1"}


def get(url: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


class Served:
    """A scheduler and the HTTP server monitoring started for it."""

    def __init__(self, scheduler: SafeRedBeatScheduler) -> None:
        self.scheduler = scheduler
        self.monitoring = monitoring.setup(scheduler)
        self.server = self.monitoring.server

    def get(self, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
        return get(self.server.url(path), method)

    def close(self) -> None:
        self.monitoring.close()
        self.scheduler.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with celery_app("http-probes", redis_url, **HTTP) as app:
        yield app


@pytest.fixture
def served(app: Celery) -> Iterator[Served]:
    clock = FakeClock()
    found = Served(SafeRedBeatScheduler(app=app, monotonic=clock))
    try:
        yield found
    finally:
        found.close()


def test_probes_follow_the_loop_and_only_known_paths_answer(served: Served) -> None:
    clock = served.scheduler.loop.monotonic
    assert isinstance(clock, FakeClock)
    status, body, _ = served.get("/healthz")
    assert (status, body) == (200, "ok: no tick finished yet\n")
    status, body, _ = served.get("/readyz")
    assert (status, body) == (503, "not ready: no heartbeat written yet\n")

    delay = served.scheduler.tick()
    status, body, headers = served.get("/readyz")
    assert (status, body) == (200, "ready: leader; heartbeat written 0.0s ago\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert served.get("/healthz")[:2] == (200, "ok: last tick 0.0s ago\n")

    # the loop sleeps as planned, then is late by the limit (2 s with FAST settings) and more
    limit = served.scheduler.safe_settings.liveness_limit
    clock.now += delay + limit
    assert served.get("/healthz")[0] == 200
    clock.now += 0.5
    status, body, _ = served.get("/healthz")
    behind = f"{limit + 0.5:.1f}s behind its plan (limit {limit:g}s)"
    assert status == 503 and body.startswith(f"stuck: the beat loop is {behind}; last tick")
    status, body, _ = served.get("/readyz")
    assert status == 503 and body.startswith("not ready: stuck:")
    served.scheduler.tick()
    assert served.get("/healthz")[0] == 200 and served.get("/readyz")[0] == 200

    assert served.get("/metrics")[0] == 200
    for path in ("/", "/health", "/metrics/x", "/healthz/"):
        status, body, _ = served.get(path)
        assert status == 404, path
        assert body == f"not found: {path} (this server has /healthz, /metrics, /readyz)\n"
    status, body, headers = served.get("/healthz", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, body, headers = served.get("/readyz", method="HEAD")
    assert (status, body) == (200, "") and int(headers["Content-Length"]) > 0


def test_healthz_fails_while_a_tick_is_stuck_in_a_publish(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real time: a publish that hangs (a broker that never answers) holds the tick; the
    loop is behind its plan and /healthz says so, while /readyz follows."""
    stuck = {"safe_redbeat_liveness_seconds": 0.3, "safe_redbeat_enqueue": "publish"}
    with celery_app("http-stuck", redis_url, **HTTP, **stuck) as app:
        served = Served(SafeRedBeatScheduler(app=app))
        try:
            served.scheduler.tick()
            assert served.get("/healthz")[0] == 200
            release = threading.Event()
            entered = threading.Event()
            shard = served.scheduler.shards[0]
            publish = shard.outbox.publisher.send

            def hang(*args: Any, **kwargs: Any) -> Any:
                entered.set()
                release.wait(10)
                return publish(*args, **kwargs)

            monkeypatch.setattr(shard.outbox.publisher, "send", hang)
            add_due(app, ["stuck-one"])
            ticking = threading.Thread(target=served.scheduler.tick)
            ticking.start()
            try:
                assert entered.wait(5)
                deadline = served.scheduler.loop.monotonic() + 5
                while served.get("/healthz")[0] == 200:
                    assert served.scheduler.loop.monotonic() < deadline, "never failed"
                    threading.Event().wait(0.05)
                status, body, _ = served.get("/healthz")
                assert status == 503 and body.startswith("stuck: the beat loop is ")
                assert served.get("/readyz")[0] == 503
            finally:
                release.set()
                ticking.join(10)
            assert not ticking.is_alive()
            assert served.get("/healthz")[0] == 200
            assert redis_client.hlen("redbeat::pending") == 0  # the publish went through
        finally:
            served.close()


def test_a_redis_outage_is_not_a_stuck_loop(redis_url: str) -> None:
    """The loop backs off as planned: live, not ready."""
    port = free_port()  # nothing listens there
    with celery_app("http-outage", redis_url, **HTTP) as app:
        app.conf.redbeat_redis_url = f"redis://127.0.0.1:{port}/0"
        clock = FakeClock()
        served = Served(SafeRedBeatScheduler(app=app, monotonic=clock))
        try:
            delay = served.scheduler.tick()
            assert delay > 0
            status, body, _ = served.get("/readyz")
            assert (status, body) == (503, "not ready: Redis is failing (1 attempts in a row)\n")
            clock.now += delay  # asleep as planned, however long the backoff
            assert served.get("/healthz")[0] == 200
        finally:
            served.close()


def test_a_port_in_use_stops_beat_at_start_up_naming_the_setting(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    class Beat:  # what Celery's beat_init sends: the Service, holding the scheduler
        def __init__(self, scheduler: SafeRedBeatScheduler) -> None:
            self.scheduler = scheduler

    first = Served(SafeRedBeatScheduler(app=app, monotonic=FakeClock()))
    try:
        app.conf.safe_redbeat_http_port = first.server.port
        second = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
        with pytest.raises(SystemExit, match="safe_redbeat_http_port: cannot serve on 127"):
            monitoring._on_beat_init(Beat(second))
        assert "HTTP server not started" in caplog.text
    finally:
        first.close()


def test_deprecated_and_unknown_settings_are_one_warning_each_at_start_up(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = {"safe_redbeat_metrics_port": 0, "safe_redbeat_metrics_addr": "127.0.0.1"}
    with celery_app("http-old", redis_url, **old, safe_redbeat_lease_second=20) as app:
        served = Served(SafeRedBeatScheduler(app=app, monotonic=FakeClock()))
        try:
            assert served.get("/healthz")[0] == 200  # the old names still serve
        finally:
            served.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "beat: deprecated settings: safe_redbeat_metrics_port (use safe_redbeat_http_port), "
        "safe_redbeat_metrics_addr (use safe_redbeat_http_addr)",
        "beat: settings nobody reads (misspelled?): safe_redbeat_lease_second "
        "(did you mean safe_redbeat_lease_seconds?)",
    ]
