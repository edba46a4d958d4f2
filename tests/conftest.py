from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis

from testbed.beat import BeatCluster
from testbed.cluster import LocalCluster, unique_prefix
from testbed.redis_server import RedisServer

# Logical databases handed out to tests; db 0 stays untouched.
_DB_NUMBERS = itertools.cycle(range(1, 16))
_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    return report


def _failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORT_KEY, {})
    return any(r.failed for r in reports.values())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster (3 primaries, 1 replica each) for the session; started on first use."""
    with LocalCluster(workdir=tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_prefix(redis_cluster: LocalCluster) -> Iterator[str]:
    """A fresh hash-tagged ``redbeat_key_prefix`` (cluster mode has only db 0); its keys are
    deleted afterwards."""
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        redis_cluster.delete_prefix(prefix)


@pytest.fixture
def redis_db(redis_server: RedisServer) -> int:
    db = next(_DB_NUMBERS)
    client = redis_server.client(db)
    try:
        client.flushdb()
    finally:
        client.close()
    return db


@pytest.fixture
def redis_url(redis_server: RedisServer, redis_db: int) -> str:
    return redis_server.url_for(redis_db)


@pytest.fixture
def raw(redis_server: RedisServer, redis_db: int) -> Iterator[redis.Redis]:
    """A client of this test's database that reads and writes bytes, as a program in
    another language would."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=redis_db)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_server: RedisServer, redis_db: int) -> Iterator[redis.Redis]:
    client = redis_server.client(redis_db)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def beat_procs(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> Iterator[BeatCluster]:
    """``beat_procs.start(n, schedule=..., settings=...)``; ``redis_url`` defaults to this
    test's database. Every process is killed at teardown; logs are printed on failure."""
    cluster = BeatCluster(tmp_path / "beat-logs", redis_url=redis_url)
    try:
        yield cluster
    finally:
        cluster.cleanup()
        if cluster.processes and _failed(request.node):
            print(cluster.report())
