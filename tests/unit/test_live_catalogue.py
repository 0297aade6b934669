"""The live catalogue: one head read per check interval, a rebuild only when the head moved, the YAML folder
until the store holds a catalogue, and the catalogue in hand kept whenever the store cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import Catalogue, fingerprint_version, load_catalogue
from cdp.core.engine import Engine
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile
from cdp.pipeline.definitions import save_segments
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.ports import SegmentChange, TransientError
from cdp_dev.memory_definitions import InMemoryDefinitionStore

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def folder() -> Catalogue:
    return load_catalogue(SEGMENTS)


def rich(revenue: int = 300) -> dict[str, Any]:
    return {"id": "rich", "name": "Rich", "condition": {"rfm": {"metric": "revenue", "gt": revenue}}}


def live_over(store: InMemoryDefinitionStore | None, folder: Catalogue, clock: Monotonic) -> LiveCatalogue:
    return LiveCatalogue(store, lambda: folder, check_seconds=30, monotonic=clock)


def test_until_the_store_holds_a_catalogue_the_folder_is_the_catalogue(folder: Catalogue) -> None:
    live = live_over(InMemoryDefinitionStore(), folder, Monotonic())
    assert live.catalogue is folder and live.catalogue.version == 0


def test_without_a_store_the_folder_is_the_catalogue_and_nothing_is_read(folder: Catalogue) -> None:
    clock = Monotonic()
    live = live_over(None, folder, clock)
    assert live.catalogue is folder
    clock.now += 3600
    assert not live.refresh()
    assert live.reads == 0


def test_the_head_is_read_once_per_check_interval_however_often_it_is_asked(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    live = live_over(store, folder, clock)
    live.catalogue  # noqa: B018  # the cold start's read
    for _ in range(500):
        clock.now += 0.05  # 500 invocations within 25 s
        live.refresh()
    assert store.calls["head"] == 1
    clock.now += 5.1
    live.refresh()
    assert store.calls["head"] == 2


def test_a_new_version_is_built_at_the_first_check_after_it(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    live = live_over(store, folder, clock)
    live.catalogue  # noqa: B018
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    store.calls.clear()  # the writer's reads
    clock.now += 29
    assert not live.refresh() and "rich" not in live.catalogue.segments
    clock.now += 1
    assert live.refresh()
    assert sorted(live.catalogue.segments) == ["rich"] and live.catalogue.version == 1
    assert store.calls["current"] == 1
    clock.now += 30
    assert not live.refresh()  # the head did not move: nothing is read but the head
    assert store.calls["current"] == 1 and store.calls["head"] == 2


def test_new_population_statistics_are_picked_up_without_rebuilding_the_catalogue(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    live = live_over(store, folder, clock)
    catalogue = live.catalogue
    assert live.stats is None
    store.calls.clear()
    stats = PopulationStats.from_values({"revenue": range(100)}, computed_at=5)
    store.put_population(stats)
    clock.now += 30
    assert live.refresh()
    assert live.stats == stats and live.catalogue is catalogue
    assert store.calls["population"] == 1 and store.calls["current"] == 0


def test_statistics_before_any_catalogue_is_stored_come_with_the_folder(folder: Catalogue) -> None:
    store = InMemoryDefinitionStore()
    store.put_population(PopulationStats.from_values({"revenue": [1, 2, 3]}))
    live = live_over(store, folder, Monotonic())
    assert live.catalogue is folder and live.stats is not None and live.stats.population == 3


def test_a_store_that_cannot_be_read_keeps_the_catalogue_in_hand_and_is_asked_again(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    live = live_over(store, folder, clock)
    held = live.catalogue
    save_segments(store, [SegmentChange("rich", rich(500))], "ana", 2.0)
    store.failing = 1
    clock.now += 30
    assert not live.refresh() and live.catalogue is held
    clock.now += 30
    assert live.refresh() and live.catalogue.version == 2


def test_a_cold_start_that_cannot_read_the_store_fails_rather_than_evaluate_with_the_folder(
        folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    store.failing = 1
    live = live_over(store, folder, clock)
    with pytest.raises(TransientError, match="could not be read at cold start"):
        live.catalogue  # noqa: B018
    assert live.catalogue.version == 1  # the retried invocation reads it


def test_a_forced_refresh_reads_the_head_at_once(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    live = live_over(store, folder, clock)
    live.catalogue  # noqa: B018
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    assert live.refresh(force=True) and live.catalogue.version == 1


def test_update_gives_the_engine_the_catalogue_and_statistics(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    live = live_over(store, folder, clock)
    engine = Engine(live.catalogue)
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    store.put_population(PopulationStats.from_values({"revenue": [5]}))
    clock.now += 30
    assert live.update(engine)
    assert engine.catalogue is live.catalogue and engine.catalogue.version == 1 and engine.stats is live.stats


def test_a_profile_evaluated_by_a_newer_catalogue_is_recognised(folder: Catalogue) -> None:
    store, clock = InMemoryDefinitionStore(), Monotonic()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    live = live_over(store, folder, clock)
    older = live.catalogue
    save_segments(store, [SegmentChange("rich", rich(500))], "ana", 2.0)
    newer = live_over(store, folder, Monotonic()).catalogue
    profile = Profile("c1")
    Engine(newer).evaluate(profile, 10.0, None)
    assert fingerprint_version(profile.catalogue) == 2
    assert live.newer_than_held(fingerprint_version(profile.catalogue)) and live.catalogue is older
    # the engine holding the older catalogue evaluates nothing and leaves the next evaluation a full one
    assert Engine(older).evaluate(profile, 11.0, None) == [] and profile.catalogue == "2.stale"
