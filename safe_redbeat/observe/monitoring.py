"""Monitoring switched on by settings when ``celery beat`` starts the scheduler.

``safe_redbeat_http_port`` (default None, off) serves ``/healthz``, ``/readyz`` and, with
the ``metrics`` extra, Prometheus ``/metrics`` from each replica on ``safe_redbeat_http_addr``
(see http.py and health.py; ``safe_redbeat_metrics_port`` and ``_addr`` are deprecated names
of the same); ``safe_redbeat_log_format = "json"`` writes the scheduler's own lines as JSON
objects (see jsonlog.py). They are read with the other settings
(:class:`~safe_redbeat.Settings`), and what reading them found worth saying (deprecated or
unknown settings) is logged here, once, as WARNINGs.

:func:`setup` runs from Celery's ``beat_init`` signal, i.e. once in the process that runs
the scheduler (never for the throw-away instance Celery builds for its banner).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from celery.signals import beat_init
from celery.utils.log import get_logger

from ..config import Settings
from ..errors import ConfigurationError
from . import http
from .health import Probes, Verdict

__all__ = ["Monitoring", "probe_routes", "setup"]

logger = get_logger("safe_redbeat")

PORT = "safe_redbeat_http_port"


@dataclass
class Monitoring:
    """What :func:`setup` started for one scheduler."""

    settings: Settings
    #: the HTTP server (``safe_redbeat.metrics.MetricsServer`` with the metrics extra,
    #: else ``http.HttpServer``); None when ``safe_redbeat_http_port`` is unset
    server: Any = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def probe_routes(scheduler: Any) -> dict[str, http.Route]:
    """``/healthz`` and ``/readyz`` of ``scheduler``: 200 or 503 with one line of text."""
    probes = Probes(scheduler)

    def answer(verdict: Verdict) -> http.Response:
        return http.Response.text(200 if verdict.ok else 503, verdict.text)

    return {
        "/healthz": lambda accept: answer(probes.health()),
        "/readyz": lambda accept: answer(probes.ready()),
    }


def setup(scheduler: Any) -> Monitoring:
    """Start the HTTP server and JSON logs as configured for ``scheduler``'s app."""
    settings: Settings = scheduler.safe_settings
    monitoring = Monitoring(settings)
    if settings.log_format == "json":
        from . import jsonlog

        jsonlog.install(settings.instance_name)
    for notice in settings.notices:
        logger.warning("beat: %s", notice)
    port, addr = settings.serve_port, settings.serve_addr
    if port is None:
        return monitoring
    routes = probe_routes(scheduler)
    try:
        from .. import metrics
    except ImportError:
        monitoring.server = http.serve(addr, port, routes)
        logger.warning(
            "beat: serving /healthz and /readyz on %s; no /metrics: prometheus-client is not "
            "installed (pip install 'safe-redbeat[metrics]')",
            monitoring.server.url(),
        )
        return monitoring
    monitoring.server = metrics.serve(port, addr, scheduler=scheduler, routes=routes)
    logger.info(
        "beat: serving metrics on %s, probes on /healthz and /readyz",
        monitoring.server.url("/metrics"),
    )
    return monitoring


#: what setup() started, per running scheduler
active: weakref.WeakKeyDictionary[Any, Monitoring] = weakref.WeakKeyDictionary()


def _on_beat_init(sender: Any = None, **_: Any) -> None:
    from ..scheduler import SafeRedBeatScheduler

    scheduler = getattr(sender, "scheduler", None)
    if not isinstance(scheduler, SafeRedBeatScheduler):
        return
    try:
        active[scheduler] = setup(scheduler)
    except (ConfigurationError, OSError) as exc:
        # Celery's Signal.send logs and swallows an Exception; a port that cannot be bound
        # must stop beat at start-up like every invalid setting.
        settings = scheduler.safe_settings
        where = f"{settings.serve_addr}:{settings.serve_port}"
        logger.critical("beat: HTTP server not started on %s (%s): %s", where, PORT, exc)
        raise SystemExit(f"safe_redbeat: {PORT}: cannot serve on {where}: {exc}") from exc


beat_init.connect(_on_beat_init, weak=False, dispatch_uid="safe_redbeat.monitoring")
