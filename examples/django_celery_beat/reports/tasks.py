"""Tasks to schedule from the admin (``Task (registered)``: ``reports.ping``)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.utils.log import get_logger

logger = get_logger(__name__)


def _ping(*args: Any, **kwargs: Any) -> str:
    logger.info("reports.ping args=%r kwargs=%r", args, kwargs)
    return "pong"


# the explicit call keeps mypy --strict happy (celery is untyped)
ping = shared_task(name="reports.ping")(_ping)
