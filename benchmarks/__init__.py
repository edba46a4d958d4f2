"""Benchmarks: stock RedBeat against safe_redbeat, measured in the same run.

Run ``python -m benchmarks --quick`` (CI: checks that every benchmark works, never fails
on speed) or ``python -m benchmarks`` (full mode, ``--write-docs`` regenerates
``docs/benchmarks.md`` and ``docs/benchmarks.png``). Each module measures one thing:

* :mod:`benchmarks.dispatch` - cost per due entry against the ``send_task`` floor
* :mod:`benchmarks.commands` - Redis commands and round trips per tick
* :mod:`benchmarks.startup` - construct + first tick until the first dispatch
* :mod:`benchmarks.memory` - Redis memory per entry
* :mod:`benchmarks.reconcile` - a loader reconcile against RedBeat's wipe-and-save
* :mod:`benchmarks.failover` - real ``celery beat`` replicas, leader killed, lock deleted
"""

from __future__ import annotations

__all__ = ["FULL", "QUICK", "TINY", "Profile"]

from .profiles import FULL, QUICK, TINY, Profile
