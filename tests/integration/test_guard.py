"""The opt-in worker-side guard against a second copy of one occurrence."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from safe_redbeat.guard import OncePerOccurrence

pytestmark = pytest.mark.integration


def test_a_second_copy_of_an_occurrence_does_not_run(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = Celery("guard", set_as_current=False)
    app.conf.update(broker_url=redis_url, redbeat_redis_url=redis_url)
    runs: list[int] = []

    def run(n: int) -> int:
        runs.append(n)
        return n

    guarded = app.task(base=OncePerOccurrence, name="guarded")(run)

    def deliver(task_id: str, **headers: object) -> object:
        guarded.push_request(id=task_id, **headers)
        try:
            return guarded(1)
        finally:
            guarded.pop_request()

    assert deliver("occ-1", safe_redbeat_scheduled=100) == 1
    assert deliver("occ-1", safe_redbeat_scheduled=100) is None
    assert deliver("occ-2", safe_redbeat_scheduled=101) == 1
    assert deliver("manual") == 1 and deliver("manual") == 1  # not from beat: always runs
    assert runs == [1, 1, 1, 1]
    assert 0 < redis_client.ttl("redbeat::done:occ-1") <= 24 * 3600
