"""Redis key names: RedBeat's, plus the few safe_redbeat adds beside them.

All keys start with RedBeat's ``redbeat_key_prefix``. On Redis Cluster, put a hash tag in
the prefix (``{redbeat}:``) so lease, schedule and entries share one slot and the fenced
scripts can touch them together. A sharded schedule (layout.py) has one :class:`Keys` per
shard, each with its own hash tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["Keys", "check_prefix", "isolates"]

_GLOB = re.compile(r"([*?\[\]\\])")
#: the end of a shard's hash tag (layout.py): ``#<n>/<K>``
_SHARD_TAG = re.compile(r"#\d+/\d+$")


def isolates(prefix: str) -> bool:
    """Whether apps with ``prefix`` are kept apart from every other such app on one Redis:
    it ends with ``:`` and holds no ``::`` (docs/storage-format.md)."""
    return prefix.endswith(":") and "::" not in prefix


def check_prefix(prefix: str) -> str:
    """``prefix`` unless its hash tag has the form of a shard's (layout.py): such a prefix
    could share keys with a shard of another app's schedule."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start != -1 else -1
    if end != -1 and _SHARD_TAG.search(prefix[start + 1 : end]):
        raise ConfigurationError(
            f"redbeat_key_prefix {prefix!r} has a hash tag of the form safe_redbeat gives "
            "the shards of a schedule ('{...#<n>/<K>}'); its keys could be another app's "
            "shard keys. Choose another prefix.",
            "redbeat_key_prefix",
        )
    return prefix


@dataclass(frozen=True)
class Keys:
    prefix: str
    #: RedBeat's lock key, which is also our lease key (so stock RedBeat and we exclude
    #: each other).
    lease: str
    #: the prefix task ids are derived from, if not ``prefix``: a shard's keys carry the
    #: unsharded prefix here, so an occurrence has one task id whatever the layout
    id_prefix: str = ""

    @classmethod
    def from_app(cls, app: Any) -> Keys:
        """Keys as RedBeat names them for ``app`` (RedBeat's config must be loaded)."""
        conf = app.redbeat_conf
        lock_key = conf.lock_key or conf.key_prefix + ":lock"
        return cls(prefix=check_prefix(conf.key_prefix), lease=lock_key)

    @property
    def schedule(self) -> str:
        """ZSET: member = entry key, score = next due UTC timestamp (-1 = never)."""
        return self.prefix + ":schedule"

    @property
    def statics(self) -> str:
        """SET of entry names that came from ``beat_schedule``."""
        return self.prefix + ":statics"

    @property
    def fence(self) -> str:
        """STRING: the last fence number handed out; only grows."""
        return self.prefix + ":fence"

    @property
    def pending(self) -> str:
        """HASH: task id -> JSON record of a claimed occurrence not yet published."""
        return self.prefix + ":pending"

    @property
    def dead(self) -> str:
        """HASH: task id -> record of an occurrence whose publish kept failing."""
        return self.prefix + ":dead"

    @property
    def loader(self) -> str:
        """SET of entry names the loader owns (only these can be removed by it)."""
        return self.prefix + ":loader"

    @property
    def seeded(self) -> str:
        """STRING written after the leader seeded the schedule; gone = Redis lost data."""
        return self.prefix + ":seeded"

    @property
    def layout(self) -> str:
        """STRING: JSON of the shard layout (see layout.py); absent: one shard."""
        return self.prefix + ":layout"

    @property
    def reconcile(self) -> str:
        """STRING: JSON summary of the leader's last loader reconcile."""
        return self.prefix + ":reconcile"

    def replica(self, token: str) -> str:
        """STRING with a TTL: the heartbeat of the replica process ``token`` (heartbeat.py)."""
        return f"{self.prefix}:replica:{token}"

    @property
    def replica_index(self) -> str:
        """SET of the tokens of replicas that wrote a heartbeat (see heartbeat.py)."""
        return self.prefix + ":replicas"

    def running(self, name: str) -> str:
        """HASH, with an expiry: the runs of the entry ``name`` that count as going
        (overlap policy ``skip`` or ``replace``), task id -> ``"<until ms> <since ms>
        <state>"`` in Redis time (``store/running.py``)."""
        return f"{self.prefix}:running:{name}"

    @property
    def running_index(self) -> str:
        """ZSET: entry key -> the latest ``until`` (Redis ms) of its runs, so readers find
        the running entries without a SCAN."""
        return self.prefix + ":running"

    def match(self, pattern: str) -> str:
        """A SCAN ``MATCH`` pattern: ``pattern`` below the prefix, taken literally."""
        return _GLOB.sub(r"\\\1", self.prefix) + pattern

    def entry(self, name: str) -> str:
        """HASH of one entry (fields ``definition``, ``meta``, ``version``)."""
        return self.prefix + name

    def task_key(self, name: str) -> str:
        """What the task ids of the entry called ``name`` are derived from: its key in the
        unsharded layout (see dispatch.task_id_for)."""
        return (self.id_prefix or self.prefix) + name

    def name_of(self, key: str) -> str:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key
