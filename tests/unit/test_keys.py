"""Key names sit beside RedBeat's: ``<prefix>:<name>``, whatever the prefix (even empty)."""

from __future__ import annotations

import pytest
from celery import Celery
from redbeat.schedulers import RedBeatConfig

from safe_redbeat.keys import Keys


@pytest.mark.parametrize("prefix", ["redbeat:", "{app}:", ""])
def test_keys_follow_redbeats_layout(prefix: str) -> None:
    app = Celery("keys", set_as_current=False)
    app.conf.update(redbeat_redis_url="redis://127.0.0.1:1/0", redbeat_key_prefix=prefix)
    app.redbeat_conf = RedBeatConfig(app)
    keys = Keys.from_app(app)
    assert keys.schedule == app.redbeat_conf.schedule_key == prefix + ":schedule"
    assert keys.statics == app.redbeat_conf.statics_key
    assert keys.lease == app.redbeat_conf.lock_key == prefix + ":lock"
    added = [keys.fence, keys.pending, keys.loaded, keys.seeded, keys.reconcile]
    assert added == [
        prefix + suffix for suffix in (":fence", ":pending", ":loader", ":seeded", ":reconcile")
    ]
    assert keys.entry("nightly") == prefix + "nightly"
    assert keys.name_of(keys.entry("nightly")) == "nightly"
