"""The one profile write (read, change, conditional put, retry on conflict) and the static-segment edit rules."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine
from cdp.core.profile import Profile
from cdp.core.static_segments import MAX_CUSTOMERS_PER_EDIT, InvalidEdit, UnknownSegment, static_edit
from cdp.pipeline.write import MAX_WRITE_ATTEMPTS, edit_static_segment, write_profile
from cdp.ports import ConflictError, TransientError

CATALOGUE = load_catalogue(Path(__file__).resolve().parents[2] / "segments")
T = 1792497600.0


class ScriptedStore:
    """Stored profiles in memory; ``save`` and ``load`` raise the scripted errors first, one per call."""

    def __init__(self, saves: Sequence[Exception] = (), loads: Sequence[Exception] = ()) -> None:
        self.profiles: dict[str, Profile] = {}
        self.save_errors, self.load_errors = list(saves), list(loads)
        self.calls: list[str] = []

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        self.calls.append("load")
        if self.load_errors:
            raise self.load_errors.pop(0)
        return {c: self._copy(self.profiles[c]) for c in customer_ids if c in self.profiles}

    def save(self, profile: Profile, expected_version: int) -> None:
        self.calls.append("save")
        if self.save_errors:
            raise self.save_errors.pop(0)
        stored = self.profiles.get(profile.customer_id)
        if (stored.version if stored else 0) != expected_version:
            raise ConflictError("ConditionalCheckFailedException")
        self.profiles[profile.customer_id] = self._copy(profile)

    @staticmethod
    def _copy(profile: Profile) -> Profile:
        return Profile.from_item(profile.to_item())


def touch(profile: Profile) -> bool:
    profile.traits["touched"] = profile.traits.get("touched", 0) + 1
    return True


def test_a_change_is_written_once_with_the_next_version() -> None:
    store = ScriptedStore()
    outcome = write_profile(store, "ada", None, touch)
    assert (outcome.written, outcome.failed, outcome.conflicts) == (True, False, 0)
    assert store.calls == ["save"] and store.profiles["ada"].version == 1


def test_nothing_to_write_is_no_request() -> None:
    store = ScriptedStore()
    outcome = write_profile(store, "ada", None, lambda profile: False)
    assert (outcome.written, outcome.failed) == (False, False) and store.calls == []


def test_a_conflict_reloads_and_changes_again_on_top() -> None:
    store = ScriptedStore(saves=[ConflictError("x")])
    seen: list[int] = []

    def change(profile: Profile) -> bool:
        seen.append(profile.version)
        return touch(profile)

    outcome = write_profile(store, "ada", None, change)
    assert outcome.written and outcome.conflicts == 1
    assert store.calls == ["save", "load", "save"] and seen == [0, 0]


def test_conflicts_that_do_not_let_up_are_given_up_after_the_last_put() -> None:
    store = ScriptedStore(saves=[ConflictError("x")] * MAX_WRITE_ATTEMPTS)
    outcome = write_profile(store, "ada", None, touch)
    assert isinstance(outcome.error, ConflictError) and outcome.conflicts == MAX_WRITE_ATTEMPTS
    assert outcome.reason == f"profile changed concurrently {MAX_WRITE_ATTEMPTS} times"
    assert store.calls == ["save", "load"] * (MAX_WRITE_ATTEMPTS - 1) + ["save"]


@pytest.mark.parametrize(("store", "reason"), [
    (ScriptedStore(saves=[TransientError("throttled")]), "profile could not be written: throttled"),
    (ScriptedStore(saves=[ConflictError("x")], loads=[TransientError("throttled")]),
     "profile could not be reloaded: throttled"),
])
def test_transient_errors_are_outcomes_that_say_why(store: ScriptedStore, reason: str) -> None:
    outcome = write_profile(store, "ada", None, touch)
    assert isinstance(outcome.error, TransientError) and not outcome.written
    assert outcome.reason == reason and "ada" not in outcome.reason


def test_an_edit_of_a_static_segment_keeps_its_rules() -> None:
    edit = static_edit(CATALOGUE, "vip", ["ada", "bob"], ["cy"])
    assert (edit.segment_id, edit.members) == ("vip", {"ada": True, "bob": True, "cy": False})
    with pytest.raises(UnknownSegment):
        static_edit(CATALOGUE, "no-such-list", ["ada"], [])
    cases = [("recent-buyers", ["ada"], [], "segmentId"),
             ("vip", [f"c{i}" for i in range(MAX_CUSTOMERS_PER_EDIT)], ["r"], "add"),
             ("vip", ["ada"], ["ada"], "remove"),
             ("vip", [""], [], "add"),
             ("vip", [], ["x" * 257], "remove")]
    for segment_id, add, remove, field in cases:
        with pytest.raises(InvalidEdit) as raised:
            static_edit(CATALOGUE, segment_id, add, remove)
        assert raised.value.field == field, (segment_id, add, remove)


def test_a_static_edit_writes_only_the_customers_it_changes() -> None:
    store, engine = ScriptedStore(), Engine(CATALOGUE)
    first = edit_static_segment(store, engine, static_edit(CATALOGUE, "vip", ["ada", "bob"], []), lambda: T)
    assert (first.added, first.removed, first.unchanged) == (["ada", "bob"], [], [])
    again = edit_static_segment(store, engine, static_edit(CATALOGUE, "vip", ["ada"], ["bob", "cy"]), lambda: T)
    assert (again.added, again.removed, again.unchanged) == ([], ["bob"], ["ada", "cy"])
    assert "vip" in store.profiles["ada"].memberships and "vip" not in store.profiles["bob"].memberships


def test_a_static_edit_that_cannot_be_written_raises_its_error() -> None:
    store = ScriptedStore(saves=[TransientError("throttled")])
    with pytest.raises(TransientError, match="throttled"):
        edit_static_segment(store, Engine(CATALOGUE), static_edit(CATALOGUE, "vip", ["ada"], []), lambda: T)


def test_a_profile_merged_into_another_customer_is_never_changed_again() -> None:
    frozen = Profile("anon-1")
    frozen.version, frozen.merged_into = 3, "user-1"
    calls: list[Profile] = []

    class Refusing:
        def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
            raise AssertionError("nothing to reload")

        def save(self, profile: Profile, expected_version: int) -> None:
            raise AssertionError("a frozen profile is never written")

    def change(profile: Profile) -> bool:
        calls.append(profile)
        return True

    outcome = write_profile(Refusing(), "anon-1", frozen, change)
    assert not outcome.written and not outcome.failed and calls == []
    assert outcome.profile.merged_into == "user-1" and outcome.profile.version == 3
