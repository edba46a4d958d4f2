"""A heartbeat names the process that writes it, also in a child forked after import."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

import fakeredis

from safe_redbeat.heartbeat import Heartbeat, write_heartbeat
from tests.support import KEYS


def _write_from_child() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    write_heartbeat(client, KEYS, Heartbeat("child", "standby", None, 0.0, 10.0, token="t1"))
    written = json.loads(client.get(KEYS.replica("t1")) or "{}")
    sys.exit(0 if written.get("pid") == os.getpid() else 1)


def test_a_forked_replica_writes_its_own_pid() -> None:
    child = multiprocessing.get_context("fork").Process(target=_write_from_child)
    child.start()
    child.join(30)
    assert child.exitcode == 0, "the heartbeat carried the pid of the process that imported it"
