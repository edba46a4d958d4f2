"""``python -m tests.chaos --overlap``'s parts, without processes or Redis: every entry of
the workload carries the policy, and the auditor knows which messages are runs to end."""

from __future__ import annotations

import random

from safe_redbeat.model.lifecycle import Lifecycle
from safe_redbeat.model.occurrence import HEADER_ENTRY, HEADER_MAX_RUNTIME, HEADER_PREFIX
from testbed.beat import Message
from tests.chaos.harness import _run_of
from tests.chaos.workload import build_specs

POLICY = {"overlap": "skip", "max_runtime": 30.0}


def test_every_entry_of_the_workload_carries_the_policy() -> None:
    specs = build_specs(
        random.Random(7), statics=3, dynamics=2, crons=1, refused=True, lifetime=POLICY
    )
    assert {spec.source for spec in specs.values()} >= {"static", "dynamic"}
    for spec in specs.values():
        assert spec.lifetime == POLICY
        beat = spec.beat_spec()
        assert (beat["overlap"], beat["max_runtime"]) == ("skip", 30.0)
        # what write_dynamic stores in the hash field ``lifecycle`` is valid
        assert Lifecycle.build(spec.name, **spec.lifetime).has_overlap_policy
    plain = build_specs(random.Random(7), statics=3, dynamics=2, crons=1, refused=True)
    assert all(not spec.lifetime and "overlap" not in spec.beat_spec() for spec in plain.values())
    assert sorted(plain) == sorted(specs)  # the same workload, only the policy added


def message(headers: dict[str, object]) -> Message:
    return Message(task_id="t-1", task="noop", headers={"id": "t-1", **headers}, received_at=0)


def test_the_auditor_ends_only_runs_sent_under_a_policy() -> None:
    tracked = {HEADER_ENTRY: "s-1", HEADER_PREFIX: "redbeat:", HEADER_MAX_RUNTIME: 30.0}
    assert _run_of(message(tracked)) == ("redbeat:", "s-1")
    assert _run_of(message({HEADER_ENTRY: "s-1"})) is None  # no policy: no run recorded
    assert _run_of(message({**tracked, HEADER_PREFIX: None})) is None
    assert _run_of(message({**tracked, HEADER_ENTRY: 3})) is None
