"""Benchmarks: stock RedBeat against safe_redbeat, measured in the same run.

``python -m benchmarks --quick`` (CI: every benchmark works; never fails on speed) or
``python -m benchmarks`` (full mode; ``--write-docs`` fills ``report.md`` into
``docs/benchmarks.md`` and plots ``docs/benchmarks.png``). One module per measurement:
dispatch (cost per due entry, phases), commands (round trips per tick), startup,
memory, reconcile, failover (real ``celery beat`` replicas).
"""

from __future__ import annotations

__all__ = ["FULL", "QUICK", "TINY", "Profile"]

from .profiles import FULL, QUICK, TINY, Profile
