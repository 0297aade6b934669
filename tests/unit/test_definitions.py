"""Segment definitions at runtime, over the in-memory store: validation (the errors `cdp segments validate`
gives), versioned commits and their conflicts, seeding only an empty store, and plans of a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import CatalogueError, build_catalogue, load_catalogue
from cdp.pipeline.definitions import (
    DefinitionRejected,
    candidate_catalogue,
    current_definitions,
    folder_definitions,
    plan,
    plan_changes,
    save_segments,
    seed,
)
from cdp.ports import CatalogueHead, ConflictError, SegmentChange
from cdp_dev.memory_definitions import InMemoryDefinitionStore

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"


def rich(segment_id: str = "rich", revenue: int = 300, **extra: Any) -> dict[str, Any]:
    return {"id": segment_id, "name": "Rich", "condition": {"rfm": {"metric": "revenue", "gt": revenue}}, **extra}


def member_of(segment_id: str, target: str) -> dict[str, Any]:
    return {"id": segment_id, "name": segment_id.title(), "condition": {"segment": {"id": target}}}


def rendered(error: DefinitionRejected) -> list[str]:
    return [e.render() for e in error.errors]


# ---- validation ----------------------------------------------------------------------------------------------

def test_the_candidate_holds_the_stored_and_the_changed_segments_at_the_next_version() -> None:
    catalogue = candidate_catalogue({"rich": rich()}, [SegmentChange("fan", member_of("fan", "rich"))], 4)
    assert sorted(catalogue.segments) == ["fan", "rich"]
    assert catalogue.version == 4
    assert catalogue.fingerprint.startswith("4.")


def test_an_invalid_definition_gets_the_errors_the_folder_validation_gives() -> None:
    bad = {"id": "rich", "name": "Rich", "condition": {"rfm": {"metric": "wealth", "gt": 1}}}
    with pytest.raises(DefinitionRejected) as rejected:
        candidate_catalogue({}, [SegmentChange("rich", bad)], 1)
    with pytest.raises(CatalogueError) as validated:
        build_catalogue([("", bad)])
    assert [(e.path, e.message, e.segment_id) for e in rejected.value.errors] == \
        [(e.path, e.message, e.segment_id) for e in validated.value.errors]
    assert rejected.value.errors[0].path == "condition.rfm.metric"
    assert "'wealth' is not one of" in rejected.value.errors[0].message


def test_a_reference_cycle_is_refused_naming_the_cycle() -> None:
    current = {"a": member_of("a", "b")}
    with pytest.raises(DefinitionRejected) as rejected:
        candidate_catalogue({**current, "b": rich("b")}, [SegmentChange("b", member_of("b", "a"))], 2)
    (error,) = rejected.value.errors
    assert "cycle" in error.message and "a" in error.message and "b" in error.message


def test_a_reference_to_an_unknown_or_disabled_segment_is_refused() -> None:
    with pytest.raises(DefinitionRejected) as unknown:
        candidate_catalogue({}, [SegmentChange("fan", member_of("fan", "ghost"))], 1)
    assert rendered(unknown.value) == ["fan: condition: refers to unknown segment 'ghost'"]
    with pytest.raises(DefinitionRejected) as disabled:
        candidate_catalogue({"rich": rich(), "fan": member_of("fan", "rich")},
                            [SegmentChange("rich", rich(enabled=False))], 2)
    assert rendered(disabled.value) == ["fan: condition: refers to disabled segment 'rich'"]


def test_deleting_a_segment_another_refers_to_is_refused_naming_both() -> None:
    with pytest.raises(DefinitionRejected) as rejected:
        candidate_catalogue({"rich": rich(), "fan": member_of("fan", "rich")}, [SegmentChange("rich", None)], 2)
    messages = rendered(rejected.value)
    assert "rich: cannot be deleted: segment 'fan' refers to it" in messages


def test_deleting_both_the_segment_and_its_referrer_is_allowed() -> None:
    catalogue = candidate_catalogue({"rich": rich(), "fan": member_of("fan", "rich")},
                                    [SegmentChange("rich", None), SegmentChange("fan", None)], 2)
    assert catalogue.segments == {}


def test_a_definition_whose_id_is_not_its_segments_is_refused() -> None:
    with pytest.raises(DefinitionRejected) as rejected:
        candidate_catalogue({}, [SegmentChange("rich", rich("poor"))], 1)
    assert rendered(rejected.value)[0] == "rich: id: must be the segment's id 'rich', not 'poor'"


def test_deleting_a_segment_that_does_not_exist_is_refused() -> None:
    with pytest.raises(DefinitionRejected) as rejected:
        candidate_catalogue({}, [SegmentChange("ghost", None)], 1)
    assert rendered(rejected.value) == ["ghost: is not a segment"]


# ---- saving ---------------------------------------------------------------------------------------------------

def test_saving_commits_a_new_catalogue_version_with_each_segment_versioned() -> None:
    store = InMemoryDefinitionStore()
    first = save_segments(store, [SegmentChange("rich", rich())], "ana", 100.0)
    assert (first.head.version, first.versions, first.catalogue.version) == (1, {"rich": 1}, 1)
    second = save_segments(store, [SegmentChange("rich", rich(revenue=500)),
                                   SegmentChange("fan", member_of("fan", "rich"))], "bo", 200.0)
    assert second.head.version == 2
    assert second.versions == {"rich": 2, "fan": 1}
    head, current = current_definitions(store)
    assert head.segments == {"rich": 2, "fan": 1}
    assert current["rich"].definition == rich(revenue=500)
    assert [(v.version, v.author, v.at, v.catalogue_version) for v in store.history("rich")] == \
        [(1, "ana", 100.0, 1), (2, "bo", 200.0, 2)]


def test_deleting_keeps_every_version_and_a_new_segment_of_that_id_continues_the_numbering() -> None:
    store = InMemoryDefinitionStore()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    deleted = save_segments(store, [SegmentChange("rich", None)], "ana", 2.0)
    assert deleted.versions == {"rich": 2} and deleted.head.segments == {}
    again = save_segments(store, [SegmentChange("rich", rich(revenue=9))], "ana", 3.0)
    assert again.versions == {"rich": 3}
    assert [v.definition is None for v in store.history("rich")] == [False, True, False]


def test_an_unchanged_definition_writes_nothing() -> None:
    store = InMemoryDefinitionStore()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    saved = save_segments(store, [SegmentChange("rich", rich())], "ana", 2.0)
    assert saved.head.version == 1 and saved.unchanged == ["rich"] and saved.versions == {"rich": 1}
    assert store.calls["commit"] == 1


def test_a_rejected_change_writes_nothing() -> None:
    store = InMemoryDefinitionStore()
    with pytest.raises(DefinitionRejected):
        save_segments(store, [SegmentChange("fan", member_of("fan", "ghost"))], "ana", 1.0)
    assert store.head().version == 0 and store.calls["commit"] == 0


class RacedStore(InMemoryDefinitionStore):
    """Another writer commits just before each of this writer's first ``races`` commits."""

    def __init__(self, races: int, rival: SegmentChange) -> None:
        super().__init__()
        self.races, self.rival = races, rival

    def commit(self, changes: Any, author: str, at: float, expected: int) -> CatalogueHead:
        if self.races:
            self.races -= 1
            super().commit([self.rival], "rival", at, expected)
        return super().commit(changes, author, at, expected)


def test_a_lost_race_validates_again_against_the_winners_catalogue() -> None:
    store = RacedStore(1, SegmentChange("rich", rich()))
    saved = save_segments(store, [SegmentChange("fan", rich("fan"))], "ana", 1.0, sleep=lambda _: None)
    assert saved.head.version == 2 and sorted(saved.catalogue.segments) == ["fan", "rich"]
    assert store.calls["commit"] == 3  # the rival's, the lost one, the one that won


def test_a_race_that_makes_the_change_invalid_rejects_it() -> None:
    store = RacedStore(0, SegmentChange("rich", None))
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    store.races = 1  # the rival deletes the segment this writer's new one refers to
    with pytest.raises(DefinitionRejected) as rejected:
        save_segments(store, [SegmentChange("fan", member_of("fan", "rich"))], "ana", 2.0, sleep=lambda _: None)
    assert rendered(rejected.value) == ["fan: condition: refers to unknown segment 'rich'"]
    assert store.head().segments == {}


def test_a_writer_that_keeps_losing_gives_up_with_a_conflict() -> None:
    store = RacedStore(10, SegmentChange("other", rich("other")))
    with pytest.raises(ConflictError):
        save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0, sleep=lambda _: None)


# ---- seeding ---------------------------------------------------------------------------------------------------

def test_seeding_stores_the_folder_as_catalogue_version_1() -> None:
    store = InMemoryDefinitionStore()
    assert seed(store, folder_definitions(SEGMENTS), "deploy", 10.0)
    head, current = current_definitions(store)
    folder = load_catalogue(SEGMENTS)
    assert head.version == 1 and sorted(current) == sorted(folder.all_segments)
    assert all(current[s].definition == folder.all_segments[s].definition for s in current)


def test_seeding_a_store_that_holds_a_catalogue_changes_nothing() -> None:
    store = InMemoryDefinitionStore()
    save_segments(store, [SegmentChange("rich", rich())], "ana", 1.0)
    assert not seed(store, folder_definitions(SEGMENTS), "deploy", 10.0)
    assert store.head().segments == {"rich": 1}


def test_seeding_invalid_definitions_is_refused() -> None:
    with pytest.raises(DefinitionRejected):
        seed(InMemoryDefinitionStore(), [("a.yaml", member_of("fan", "ghost"))], "deploy", 1.0)


def test_seeding_more_than_one_commit_holds_goes_referenced_segments_first() -> None:
    store = InMemoryDefinitionStore()
    chain = [("x.yaml", member_of(f"s{n:03d}", f"s{n - 1:03d}") if n else rich("s000")) for n in range(150)]
    assert seed(store, list(reversed(chain)), "deploy", 1.0)
    assert store.head().version == 2 and len(store.head().segments) == 150
    versions = store.current(store.head())
    first = {v.segment_id: v.definition for v in versions if v.catalogue_version == 1 and v.definition}
    assert len(first) == 99
    # the first commit's catalogue is valid by itself: everything it refers to came with it
    assert sorted(candidate_catalogue(first, [], 1).segments) == sorted(first)


# ---- plans ---------------------------------------------------------------------------------------------------

def test_a_plan_lists_added_changed_removed_and_unchanged_with_diffs() -> None:
    current = {"rich": rich(), "same": rich("same"), "gone": rich("gone")}
    desired = {"rich": rich(revenue=500), "same": rich("same"), "new": rich("new")}
    planned = plan(current, desired, prune=True)
    assert (planned.added, planned.changed, planned.removed, planned.unchanged) == \
        (["new"], ["rich"], ["gone"], ["same"])
    assert "-    gt: 300\n" in planned.diffs["rich"] and "+    gt: 500\n" in planned.diffs["rich"]
    assert planned.diffs["new"][0].startswith("--- /dev/null")
    assert planned.diffs["gone"][1].startswith("+++ /dev/null")
    assert set(planned.diffs) == {"rich", "new", "gone"}
    changes = plan_changes(planned, desired)
    assert changes == [SegmentChange("new", desired["new"]), SegmentChange("rich", desired["rich"]),
                       SegmentChange("gone", None)]


def test_without_pruning_segments_only_in_the_store_stay() -> None:
    planned = plan({"gone": rich("gone")}, {}, prune=False)
    assert (planned.removed, planned.unchanged, planned.diffs) == ([], ["gone"], {})
    assert planned.empty and plan_changes(planned, {}) == []


def test_applying_a_plan_then_planning_again_finds_nothing_to_do() -> None:
    store = InMemoryDefinitionStore()
    desired = {str(raw["id"]): raw for _, raw in folder_definitions(SEGMENTS) if isinstance(raw, dict)}
    save_segments(store, plan_changes(plan({}, desired, prune=True), desired), "cli", 1.0)
    _, current = current_definitions(store)
    stored = {s: v.definition for s, v in current.items() if v.definition is not None}
    assert plan(stored, desired, prune=True).empty


def test_statistics_of_a_job_that_scanned_earlier_never_replace_newer_ones() -> None:
    from cdp.core.population import PopulationStats

    store = InMemoryDefinitionStore()
    newer = PopulationStats.from_values({"revenue": [10.0, 20.0]}, computed_at=7_200)
    older = PopulationStats.from_values({"revenue": [1.0]}, computed_at=3_600)
    assert store.put_population(newer).stats_version == 1
    assert store.put_population(older).stats_version == 1 and store.population() == newer


def test_apply_saves_a_segment_before_those_referring_to_it_and_deletes_the_referrers_first() -> None:
    base = {"id": "zbase", "name": "Base", "condition": {"rfm": {"metric": "orders", "gt": 0}}}
    derived = {"id": "aderived", "name": "Derived", "condition": {"segment": {"id": "zbase"}}}
    store = InMemoryDefinitionStore()
    desired = {"zbase": base, "aderived": derived}
    changes = plan_changes(plan({}, desired, prune=False), desired)
    assert [c.segment_id for c in changes] == ["zbase", "aderived"]  # alphabetical order would be refused
    for change in changes:  # one by one, as `cdp segments apply` saves them through the API
        save_segments(store, [change], "cli", 1.0)

    current = {s: v.definition for s, v in current_definitions(store)[1].items() if v.definition}
    removing = plan_changes(plan(current, {}, prune=True), {}, current)
    assert [(c.segment_id, c.definition) for c in removing] == [("aderived", None), ("zbase", None)]
    for change in removing:
        save_segments(store, [change], "cli", 2.0)
    assert store.head().segments == {}
