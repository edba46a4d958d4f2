"""On Redis Cluster every key of the schedule must hash to one slot: the hash-tag check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery
from redbeat.schedulers import ensure_conf
from redis.crc import key_slot

from safe_redbeat import ConfigurationError
from safe_redbeat.store.connection import check_cluster_keys, hash_tag, is_cluster
from safe_redbeat.store.keys import Keys


def make_app(**conf: Any) -> Celery:
    app = Celery("cluster-keys", set_as_current=False)
    app.conf.update(broker_url="redis://127.0.0.1:1/0", redbeat_redis_url="redis://127.0.0.1:1/0")
    app.conf.update(conf)
    ensure_conf(app)
    return app


@pytest.fixture
def cluster_app() -> Iterator[Celery]:
    app = make_app(redbeat_redis_options={"cluster": True}, redbeat_key_prefix="{rb}:")
    try:
        yield app
    finally:
        app.close()


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{redbeat}:", "redbeat"),
        ("pre{tag}fix:", "tag"),
        ("{a}{b}", "a"),
        ("redbeat:", None),
        ("{}:", None),  # empty: Redis hashes the whole key
        ("x{", None),
        ("x}{y", None),
        ("}{y}", "y"),
    ],
)
def test_hash_tag_reads_keys_as_redis_cluster_does(key: str, tag: str | None) -> None:
    assert hash_tag(key) == tag
    if tag is not None:
        assert key_slot(key.encode()) == key_slot(tag.encode())


@pytest.mark.parametrize("prefix", ["{redbeat}:", "app{sched}:", "{t1}"])
def test_every_key_of_a_tagged_prefix_shares_one_slot(prefix: str) -> None:
    app = make_app(redbeat_redis_options={"cluster": True}, redbeat_key_prefix=prefix)
    keys = Keys.from_app(app)
    names = [
        keys.lease, keys.schedule, keys.statics, keys.fence, keys.pending, keys.loader,
        keys.seeded, keys.reconcile, keys.replica("pod-1"), keys.entry("report{daily}"),
        keys.entry("x}"),
    ]  # fmt: skip
    assert len({key_slot(n.encode()) for n in names}) == 1
    check_cluster_keys(app, keys)  # no error


def test_a_prefix_without_tag_names_the_setting_and_what_to_write() -> None:
    app = make_app(redbeat_redis_options={"cluster": True}, redbeat_key_prefix="myapp:")
    with pytest.raises(ConfigurationError) as error:
        check_cluster_keys(app, Keys.from_app(app))
    assert error.value.settings == ("redbeat_key_prefix",)
    assert "redbeat_key_prefix = '{myapp}:'" in str(error.value)


def test_redbeats_default_prefix_is_refused_on_a_cluster_url() -> None:
    app = make_app(redbeat_redis_url="redis-cluster://127.0.0.1:1/0")
    assert is_cluster(app)
    with pytest.raises(ConfigurationError, match=r"redbeat_key_prefix = '\{redbeat\}:'"):
        check_cluster_keys(app, Keys.from_app(app))


def test_a_lock_key_on_another_slot_is_refused(cluster_app: Celery) -> None:
    keys = replace(Keys.from_app(cluster_app), lease="{other}:lock")
    with pytest.raises(ConfigurationError) as error:
        check_cluster_keys(cluster_app, keys)
    assert error.value.settings == ("redbeat_lock_key",)
    # RedBeat puts the prefix in front of a lock key that lacks it: same slot
    app = make_app(
        redbeat_redis_options={"cluster": True},
        redbeat_key_prefix="{rb}:",
        redbeat_lock_key="{other}:lock",
    )
    check_cluster_keys(app, Keys.from_app(app))


def test_without_a_cluster_nothing_is_required() -> None:
    app = make_app(redbeat_key_prefix="redbeat:")
    assert not is_cluster(app)
    check_cluster_keys(app, Keys.from_app(app))
    # a client handed in decides, not the settings
    cluster = make_app(redbeat_redis_options={"cluster": True}, redbeat_key_prefix="redbeat:")
    check_cluster_keys(cluster, Keys.from_app(cluster), client=object())
