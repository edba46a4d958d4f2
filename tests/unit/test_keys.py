"""Key names sit beside RedBeat's: ``<prefix>:<name>``, whatever the prefix (even empty)."""

from __future__ import annotations

import pytest
from celery import Celery
from redbeat.schedulers import RedBeatConfig

from safe_redbeat.store.keys import Keys
from tests.support import KEYS


def keys_for(**conf: str) -> tuple[Keys, RedBeatConfig]:
    app = Celery("keys", set_as_current=False)
    app.conf.update(redbeat_redis_url="redis://127.0.0.1:1/0", **conf)
    app.redbeat_conf = RedBeatConfig(app)
    return Keys.from_app(app), app.redbeat_conf


def test_the_tests_keys_are_redbeats_defaults() -> None:
    assert keys_for()[0] == KEYS


@pytest.mark.parametrize("prefix", ["redbeat:", "{app}:", ""])
def test_keys_follow_redbeats_layout(prefix: str) -> None:
    keys, conf = keys_for(redbeat_key_prefix=prefix)
    assert keys.schedule == conf.schedule_key == prefix + ":schedule"
    assert keys.statics == conf.statics_key
    assert keys.lease == conf.lock_key == prefix + ":lock"
    added = [keys.fence, keys.pending, keys.loader, keys.seeded, keys.reconcile]
    assert added == [
        prefix + suffix for suffix in (":fence", ":pending", ":loader", ":seeded", ":reconcile")
    ]
    assert keys.entry("nightly") == prefix + "nightly"
    assert keys.name_of(keys.entry("nightly")) == "nightly"
