"""Opt-in worker-side guard: run each beat occurrence at most once.

The broker publish cannot be fenced, so after a leader was paused between publishing and
acknowledging, the next leader may send the same occurrence again — with the same task
id. A task whose base is :class:`OncePerOccurrence` records the id in Redis (``SET NX``
with a TTL) before it runs and drops a second copy.

Trade-off: the id is recorded when execution *starts*, so a worker that dies mid-task does
not run that occurrence again (at most once). Leave the guard off for tasks that must
rather run twice than not at all.

Celery retries (``self.retry()``, ``autoretry_for``) resend the message with the same task
id and ``request.retries`` above 0: those always run. So the guard drops a second copy of
an occurrence's *first* attempt only; the retries of an attempt that started run as
Celery schedules them.

    from safe_redbeat.guard import OncePerOccurrence

    @app.task(base=OncePerOccurrence)
    def nightly_report(): ...
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.app.task import Context
from celery.utils.log import get_logger
from redbeat.schedulers import get_redis

from .model.occurrence import HEADER_SCHEDULED
from .store.connection import redbeat_conf

__all__ = ["OncePerOccurrence", "first_execution"]

logger = get_logger("safe_redbeat.guard")

#: How long an executed task id is remembered (one day).
DEFAULT_TTL_SECONDS = 24 * 3600


def first_execution(client: Any, key_prefix: str, task_id: str, ttl_seconds: int) -> bool:
    """Record ``task_id`` as executed; False if it already was (within ``ttl_seconds``)."""
    return bool(client.set(f"{key_prefix}:done:{task_id}", "1", nx=True, ex=ttl_seconds))


class OncePerOccurrence(Task):  # type: ignore[misc]
    """Task base class that drops a second copy of a message sent by SafeRedBeatScheduler.

    Messages not sent by beat (no ``safe_redbeat_scheduled`` header) always run.
    """

    #: Seconds an executed occurrence is remembered; longer than any redelivery delay.
    guard_ttl_seconds: int = DEFAULT_TTL_SECONDS

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        task_id = getattr(request, "id", None)
        retry = (getattr(request, "retries", 0) or 0) > 0
        if task_id and not retry and getattr(request, HEADER_SCHEDULED, None) is not None:
            conf = redbeat_conf(self.app)
            client = get_redis(self.app)
            if not first_execution(client, conf.key_prefix, task_id, self.guard_ttl_seconds):
                logger.warning(
                    "%s[%s]: this beat occurrence already ran; dropping the copy",
                    self.name,
                    task_id,
                )
                return None
        return super().__call__(*args, **kwargs)

    def push_request(self, *args: Any, **kwargs: Any) -> None:
        # Celery's Task.__call__ pushes a request for the call. Before Celery 5.4 that
        # request did not inherit the worker's one, so a task with a custom __call__ (this
        # one) ran with request.retries == 0 and called_directly set, and self.retry()
        # re-raised instead of retrying. Inherit it, as newer Celery does.
        self.request_stack.push(Context(*args, **{**self.request.__dict__, **kwargs}))
