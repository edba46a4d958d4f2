"""A sharded schedule on a real Redis Cluster: shards spread over the primaries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from celery import Celery
from redis.crc import key_slot

from safe_redbeat import ConfigurationError, SafeRedBeatScheduler, Schedule
from safe_redbeat.store.connection import scheduler_client
from safe_redbeat.store.keys import Keys
from safe_redbeat.store.layout import Layout
from safe_redbeat.sync.reshard import reshard
from testbed.beat import QueueAuditor
from testbed.cluster import LocalCluster
from tests.integration.test_cluster import cluster_app
from tests.support.inprocess import FakeClock

pytestmark = pytest.mark.integration

#: no hash tag: with shards, each shard's keys get their own
PREFIX = "sharded-on-cluster:"
BASE = Keys(PREFIX, PREFIX + ":lock")


@pytest.fixture
def app(redis_cluster: LocalCluster, redis_url: str) -> Iterator[Celery]:
    with cluster_app(redis_cluster, PREFIX, redis_url, safe_redbeat_shards=6) as app:
        try:
            yield app
        finally:
            for layout in (Layout(BASE, 6), Layout(BASE, 4)):
                for keys in layout.all_keys():
                    redis_cluster.delete_prefix(keys.prefix)
            redis_cluster.delete_prefix(PREFIX)


def test_shards_spread_over_the_primaries_and_dispatch_and_reshard_work(
    app: Celery, redis_cluster: LocalCluster, redis_client: object
) -> None:
    six = Layout(BASE, 6)
    primaries = {redis_cluster.primary_of(keys.schedule).port for keys in six.all_keys()}
    assert len(primaries) >= 2, "every shard on one primary: the cluster would add nothing"
    for keys in six.all_keys():  # every key of a shard in one slot
        slots = {key_slot(k.encode()) for k in (keys.lease, keys.schedule, keys.entry("x"))}
        assert len(slots) == 1

    auditor = QueueAuditor(redis_client)  # type: ignore[arg-type]
    scheduler = SafeRedBeatScheduler(app=app, monotonic=FakeClock())
    scheduler.tick()
    assert [s.index for s in scheduler.balancer.led()] == list(range(6))
    names = [f"job-{i}" for i in range(40)]
    with Schedule(app) as schedule:
        for name in names:
            schedule.upsert(name, "noop", 3600, run_immediately=True)
        scheduler.tick()
        sent = Counter(m.headers["safe_redbeat_entry"] for m in auditor.drain())
        assert sent == Counter(names)

        def step(_seconds: float) -> None:
            scheduler._monotonic.now += 1.0  # type: ignore[attr-defined]
            scheduler.tick()

        with scheduler_client(app, 2.0) as client:  # the client the CLI uses
            report = reshard(client, BASE, 4, sleep=step, wait_seconds=10)
            assert report.entries == len(names)
            with pytest.raises(ConfigurationError, match="hash tag"):
                reshard(client, BASE, 1)  # one shard needs a hash tag in the prefix
        for _ in range(3):
            step(0)
        assert [s.index for s in scheduler.balancer.led()] == [0, 1, 2, 3]
        assert {info.name for info in schedule.list()} == set(names)
        assert schedule.get("job-3").total_run_count == 1
    scheduler.close()
