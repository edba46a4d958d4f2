"""Bugs the model test (test_model.py) found, each replayed step by step as a plain test.

Same world as the model test: two in-process replicas, the schedule's Redis with a clock
the test sets, a broker Redis of its own. A test marked ``xfail(strict=True)`` documents a
bug not fixed yet: it starts failing the suite (XPASS) once the bug is fixed, and the
marker goes. The model test leaves such a bug out (``KNOWN`` tags) so it can find others.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.model_oracle import Plan, Spec
from tests.support.model_world import BASE, ModelServers, World

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServers]:
    with ModelServers(Path(tmp_path_factory.mktemp("model-regressions"))) as servers:
        yield servers


@pytest.fixture
def world(servers: ModelServers) -> Iterator[World]:
    world = World(servers)
    try:
        yield world
    finally:
        world.close()


def score_of(world: World, name: str) -> float | None:
    keys = world.layout().keys_for(name)
    found = world.client.zscore(keys.schedule, keys.entry(name))
    return None if found is None else float(found)


@pytest.mark.xfail(
    strict=True,
    reason="an interval's start_time is not its first run: the first slot is created + every",
)
def test_an_interval_entry_runs_first_at_its_start_time(world: World) -> None:
    world.tick_all()
    now = int(world.now)
    world.upsert("a", Spec(Plan("interval", every=3600), start_time=now + 60))
    assert score_of(world, "a") == now + 60  # Redis: now + 3600
    world.advance(61)
    world.tick_all()
    sent = [s for s in world.oracle.seen.values() if s.entry == "a" and s.sends]
    assert [s.scheduled for s in sent] == [now + 60]


def test_the_world_starts_clean(world: World) -> None:
    """The fixture itself: statics seeded, nothing sent, nothing broken."""
    world.tick_all()
    assert world.client.exists(BASE.entry("s-int"))
    assert world.oracle.problems == []
