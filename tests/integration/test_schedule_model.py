"""Random sequences of Schedule operations against the real Redis, checked against a model.

The model is a dict name -> (version, definition); each operation uses the right, a wrong
or no expected version. After every step Redis must agree with the model: versions grow
by exactly one per definition change, a conflict or a missing entry writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from safe_redbeat import EntryNotFound, Schedule, VersionConflict

pytestmark = pytest.mark.integration

NAMES = st.sampled_from(["a", "b", "c"])
#: how the caller picks expected_version: right, wrong (above / below), or not at all
EXPECTATIONS = st.sampled_from(["right", "above", "below", "none"])
VARIANTS = st.integers(min_value=0, max_value=2)


@dataclass(frozen=True)
class Model:
    version: int
    variant: int
    enabled: bool


def expected_for(choice: str, current: int) -> int | None:
    if choice == "right":
        return current
    if choice == "above":
        return current + 1
    if choice == "below":
        return current - 1 if current > 0 else current + 2
    return None


@pytest.fixture
def sched(redis_url: str) -> Iterator[Schedule]:
    app = Celery("model", set_as_current=False)
    app.conf.update(redbeat_redis_url=redis_url, broker_url=redis_url, timezone="UTC")
    with Schedule(app) as schedule:
        yield schedule
    app.close()


def test_random_operation_sequences_match_an_in_memory_model(
    sched: Schedule, redis_client: redis.Redis
) -> None:
    class ScheduleMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            redis_client.flushdb()
            self.model: dict[str, Model] = {}

        def current(self, name: str) -> int:
            entry = self.model.get(name)
            return entry.version if entry is not None else 0

        def expect_conflict(self, name: str, expected: int | None, call: Any) -> bool:
            """True (and checked) if the call must fail with a version conflict."""
            if expected is None or expected == self.current(name):
                return False
            with pytest.raises(VersionConflict) as caught:
                call()
            assert caught.value.current_version == self.current(name)
            return True

        @rule(name=NAMES, variant=VARIANTS, enabled=st.booleans(), choice=EXPECTATIONS)
        def upsert(self, name: str, variant: int, enabled: bool, choice: str) -> None:
            expected = expected_for(choice, self.current(name))

            def call() -> int:
                return sched.upsert(
                    name,
                    "noop",
                    60 + variant,
                    kwargs={"variant": variant},
                    enabled=enabled,
                    expected_version=expected,
                ).version

            if self.expect_conflict(name, expected, call):
                return
            before = self.model.get(name)
            if before is None:
                want = 1
            elif (before.variant, before.enabled) == (variant, enabled):
                want = before.version  # unchanged definition: nothing written
            else:
                want = before.version + 1
            assert call() == want
            self.model[name] = Model(want, variant, enabled)

        @rule(name=NAMES, enabled=st.booleans(), choice=EXPECTATIONS)
        def set_enabled(self, name: str, enabled: bool, choice: str) -> None:
            before = self.model.get(name)
            expected = expected_for(choice, self.current(name))
            change = sched.enable if enabled else sched.disable
            if before is None:
                with pytest.raises(EntryNotFound):
                    change(name, expected_version=expected)
                return
            if self.expect_conflict(
                name, expected, lambda: change(name, expected_version=expected)
            ):
                return
            want = before.version if before.enabled is enabled else before.version + 1
            info = change(name, expected_version=expected)
            assert (info.version, info.enabled) == (want, enabled)
            self.model[name] = Model(want, before.variant, enabled)

        @rule(name=NAMES, choice=EXPECTATIONS)
        def delete(self, name: str, choice: str) -> None:
            before = self.model.get(name)
            expected = expected_for(choice, self.current(name))
            if before is None:
                with pytest.raises(EntryNotFound):
                    sched.delete(name, expected_version=expected)
                return
            if self.expect_conflict(
                name, expected, lambda: sched.delete(name, expected_version=expected)
            ):
                return
            assert sched.delete(name, expected_version=expected) == before.version
            del self.model[name]

        @rule(name=NAMES)
        def run_now(self, name: str) -> None:
            if name not in self.model:
                with pytest.raises(EntryNotFound):
                    sched.run_now(name)
                return
            sched.run_now(name)  # not a definition change: the version stays

        @invariant()
        def redis_agrees_with_the_model(self) -> None:
            listed = {info.name: info for info in sched.list(page_size=2)}
            assert set(listed) == set(self.model)
            for name, want in self.model.items():
                info = listed[name]
                assert (info.version, info.enabled) == (want.version, want.enabled)
                assert info.kwargs == {"variant": want.variant}
                assert info.next_run_at is not None

    run_state_machine_as_test(
        ScheduleMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
