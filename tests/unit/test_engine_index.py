"""Evaluation proportional to what changed: the catalogue indexes its units by the inputs they read, and an
event evaluates only the units reading an input it touched, the units referring to a segment that flipped,
and the units whose deadline has passed (found from the profile's own deadlines)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cdp.core.catalogue import Catalogue, build_catalogue
from cdp.core.engine import ENTERED, EXITED, Engine
from cdp.core.language import Condition, Context, Result
from cdp.core.profile import Profile
from tests.unit.test_engine import DAY, HOUR, MIN, T, identify, kinds, segment, track, view

PAGES = segment("page-readers", {"count": {"event": "Page Viewed", "within": "24h", "gte": 1}})
PRODUCTS = segment("product-viewers", {"recency": {"event": "Product Viewed", "within": "1h"}})
SHOES = segment("shoe-viewers", {"count": {"event": "Product Viewed", "where": {"category": "shoes"},
                                           "within": "7d", "gte": 1}})
GOLD = segment("gold", {"trait": {"name": "plan", "eq": "gold"}})
BUYERS = segment("buyers", {"rfm": {"metric": "orders", "gte": 1}})
GOLD_READERS = segment("gold-readers", {"all": [{"segment": {"id": "gold"}}, {"segment": {"id": "page-readers"}}]})


def page(at: float) -> Any:
    return track("Page Viewed", at)


class Spy:
    """Counts the evaluations of each segment's condition, passing them through unchanged."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def wrap(self, segment_id: str, condition: Condition) -> None:
        evaluate = condition.evaluate

        def counted(ctx: Context) -> Result:
            self.calls[segment_id] = self.calls.get(segment_id, 0) + 1
            return evaluate(ctx)

        condition.evaluate = counted  # type: ignore[method-assign]

    def evaluated(self) -> set[str]:
        return set(self.calls)


@contextmanager
def spied(catalogue: Catalogue) -> Iterator[Spy]:
    spy = Spy()
    originals = {segment.id: segment.condition.evaluate for segment in catalogue.segments.values()}
    for segment_id, found in catalogue.segments.items():
        spy.wrap(segment_id, found.condition)
    try:
        yield spy
    finally:
        for segment_id, found in catalogue.segments.items():
            found.condition.evaluate = originals[segment_id]  # type: ignore[method-assign]


def evaluated_profile(engine: Engine, *events: Any, now: float) -> Profile:
    """A profile after its first batch, which evaluates every segment once."""
    profile = Profile("u1")
    engine.apply(profile, list(events), now)
    return profile


def test_the_catalogue_indexes_units_by_the_inputs_they_read() -> None:
    catalogue = build_catalogue([PAGES, PRODUCTS, SHOES, GOLD, BUYERS, GOLD_READERS])
    names = {key: {catalogue.units[i].name for i in indexes} for key, indexes in catalogue.readers.items()}
    assert names["e:Page Viewed"] == {"page-readers"}
    assert names["e:Product Viewed"] == {"product-viewers"}
    assert names["e:Product Viewed|category=='shoes'"] == {"shoe-viewers"}
    assert names["t:plan"] == {"gold"} and names["rfm"] == {"buyers"}
    assert names["s:gold"] == names["s:page-readers"] == {"gold-readers"}
    assert catalogue.dependants["gold"] == catalogue.readers["s:gold"] and catalogue.dependants["buyers"] == ()
    assert {catalogue.units[i].name for i in catalogue.units_reading({"e:Page Viewed", "t:plan", "e:Nope"})} == {
        "page-readers", "gold"}


def test_an_event_evaluates_only_the_units_reading_what_it_touched() -> None:
    engine = Engine(build_catalogue([PAGES, PRODUCTS, SHOES, GOLD, BUYERS]))
    profile = evaluated_profile(engine, view(T - 30 * MIN), now=T - 30 * MIN)
    with spied(engine.catalogue) as spy:
        outcome = engine.apply(profile, [page(T)], now=T)
    # a page view is on the server channel here (no client context): only the page count reads its inputs
    assert spy.evaluated() == {"page-readers"}
    assert kinds(outcome) == {("page-readers", ENTERED)}


def test_a_filtered_count_is_evaluated_only_when_an_event_passes_its_filter() -> None:
    engine = Engine(build_catalogue([PRODUCTS, SHOES]))
    profile = evaluated_profile(engine, page(T - DAY), now=T - DAY)
    with spied(engine.catalogue) as spy:
        engine.apply(profile, [track("Product Viewed", T, category="bags")], now=T)
    assert spy.evaluated() == {"product-viewers"}
    with spied(engine.catalogue) as spy:
        outcome = engine.apply(profile, [track("Product Viewed", T + MIN, category="shoes")], now=T + MIN)
    assert spy.evaluated() == {"product-viewers", "shoe-viewers"}
    assert kinds(outcome) == {("shoe-viewers", ENTERED)}


def test_a_flip_re_evaluates_the_units_that_refer_to_the_flipped_segment() -> None:
    engine = Engine(build_catalogue([PAGES, GOLD, GOLD_READERS, BUYERS]))
    profile = evaluated_profile(engine, page(T - HOUR), now=T - HOUR)
    with spied(engine.catalogue) as spy:
        outcome = engine.apply(profile, [identify(T, plan="gold")], now=T)
    # gold flipped, so gold-readers (which reads s:gold) follows it; page-readers and buyers are left alone
    assert spy.evaluated() == {"gold", "gold-readers"}
    assert kinds(outcome) == {("gold", ENTERED), ("gold-readers", ENTERED)}
    with spied(engine.catalogue) as spy:
        outcome = engine.apply(profile, [identify(T + MIN, plan="gold", city="Oslo")], now=T + MIN)
    assert spy.evaluated() == {"gold"} and outcome.transitions == []  # no flip: nothing follows


def test_due_units_are_found_from_the_profiles_deadlines() -> None:
    engine = Engine(build_catalogue([PAGES, PRODUCTS, GOLD, BUYERS]))
    profile = evaluated_profile(engine, view(T), now=T)
    assert profile.deadlines == {"product-viewers": T + HOUR}
    with spied(engine.catalogue) as spy:
        assert engine.evaluate(profile, T + HOUR - 1, touched=set()) == []
    assert spy.evaluated() == set()  # nothing due yet
    with spied(engine.catalogue) as spy:
        transitions = engine.evaluate(profile, T + HOUR, touched=set())
    assert spy.evaluated() == {"product-viewers"}
    assert [(t.segment_id, t.kind) for t in transitions] == [("product-viewers", EXITED)]
    assert profile.deadlines == {}


def test_a_deadline_of_a_segment_no_longer_in_the_catalogue_is_not_due_but_dropped() -> None:
    engine = Engine(build_catalogue([PAGES, PRODUCTS]))
    profile = evaluated_profile(engine, view(T), now=T)
    profile.deadlines["gone"] = T
    with spied(engine.catalogue) as spy:
        engine.evaluate(profile, T + MIN, touched=set())
    assert spy.evaluated() == set()
    smaller = Engine(build_catalogue([PAGES]))
    outcome = smaller.apply(profile, [], now=T + 2 * MIN)
    assert "gone" not in profile.deadlines and "product-viewers" not in profile.deadlines
    assert outcome.changed and kinds(outcome) == {("product-viewers", EXITED)}


def test_a_new_profile_and_a_changed_catalogue_get_a_full_evaluation() -> None:
    absent = segment("never-bought", {"not": {"recency": {"event": "Order Completed", "within": "30d"}}})
    engine = Engine(build_catalogue([PAGES, absent]))
    profile = Profile("u1")
    with spied(engine.catalogue) as spy:
        outcome = engine.apply(profile, [page(T)], now=T)
    assert spy.evaluated() == {"page-readers", "never-bought"}  # true with none of its inputs touched
    assert kinds(outcome) == {("page-readers", ENTERED), ("never-bought", ENTERED)}
    wider = Engine(build_catalogue([PAGES, absent, BUYERS]))
    with spied(wider.catalogue) as spy:
        wider.apply(profile, [page(T + MIN)], now=T + MIN)
    assert spy.evaluated() == {"page-readers", "never-bought", "buyers"}


def test_an_unchanged_evaluation_reports_no_change() -> None:
    engine = Engine(build_catalogue([PAGES, PRODUCTS]))
    profile = evaluated_profile(engine, view(T), now=T)
    again = engine.apply(profile, [view(T, message_id="dupe")], now=T)
    assert again.changed  # a new event was applied
    duplicate = engine.apply(profile, [view(T, message_id="dupe")], now=T + 1)
    assert (duplicate.applied, duplicate.duplicates, duplicate.changed) == (0, 1, False)
    moved = engine.apply(profile, [view(T + MIN)], now=T + MIN)
    assert moved.changed and profile.deadlines == {"product-viewers": T + MIN + HOUR}
