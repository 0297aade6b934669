"""Recent products in the profile (``rp``) and the conditions that read them: ``purchased``, ``viewed``, and
property filters that reach into arrays (``products[].product_id``)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import CatalogueError, build_catalogue
from cdp.core.engine import Engine
from cdp.core.events import Event, normalise
from cdp.core.explain import explain_segment
from cdp.core.language import DefinitionError, Parser, ProductCondition, PropertyFilter
from cdp.core.merge import merge_profiles
from cdp.core.profile import (
    MAX_PRODUCT_CHARS,
    MAX_PRODUCTS,
    Profile,
    ProfileView,
    item_size,
    pack_products,
    unpack_products,
)

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def track(name: str, at: float, message_id: str | None = None, **properties: Any) -> Event:
    return normalise({"type": "track", "messageId": message_id or f"m-{next(_ids)}", "userId": "ada",
                      "timestamp": iso(at), "event": name, "properties": properties})


def viewed(at: float, product_id: str, category: str = "") -> Event:
    return track("Product Viewed", at, product_id=product_id, **({"category": category} if category else {}))


def order(at: float, *products: Any, order_id: str | None = None, message_id: str | None = None) -> Event:
    return track("Order Completed", at, message_id, order_id=order_id or f"o-{next(_ids)}", revenue=10.0,
                 products=list(products))


def engine_for(condition: dict[str, Any] | None = None) -> Engine:
    definitions: list[tuple[str, object]] = []
    if condition is not None:
        definitions.append(("s.yaml", {"id": "s", "name": "S", "condition": condition}))
    return Engine(build_catalogue(definitions))


def fed(*events: Event, engine: Engine | None = None) -> Profile:
    engine = engine or engine_for()
    profile = Profile("ada")
    for event in events:
        outcome = engine.apply(profile, [event], event.timestamp)
        assert outcome.applied == 1, outcome.rejected
    return profile


# ---- the fold ---------------------------------------------------------------------------------------------


def test_the_fold_keeps_the_products_of_real_orders_and_views() -> None:
    lines = [json.loads(line) for line in (ROOT / "events/sample.jsonl").read_text().splitlines() if line.strip()]
    alice = [normalise(m) for m in lines if m.get("userId") == "alice" and m.get("event") == "Product Viewed"]
    shopper = [normalise(m) for m in lines if m.get("userId") == "shopper-04" and m.get("event") == "Order Completed"]
    assert alice and shopper
    engine = engine_for()
    profile = Profile("alice")
    engine.apply(profile, alice, max(e.timestamp for e in alice))
    views = {e.properties["product_id"]: (e.properties.get("category", ""), int(e.timestamp)) for e in alice}
    assert {p[0]: (p[1], p[3]) for p in profile.products if p[2] == "v"} == views
    buyer = Profile("shopper-04")
    engine.apply(buyer, shopper, max(e.timestamp for e in shopper))
    bought = {item["product_id"] for e in shopper for item in e.properties["products"]}
    assert {p[0] for p in buyer.products} == bought and {p[2] for p in buyer.products} == {"p"}


def test_an_ecommerce_v2_order_records_each_product_with_its_category() -> None:
    # Segment's Order Completed example: products[] with product_id, sku, category.
    profile = fed(order(B, {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "category": "Games"},
                        {"sku": "46493-32", "category": "Games"}, {"name": "no id"}, {"product_id": {"x": 1}},
                        "not an object"))
    assert profile.products == [["507f1f77bcf86cd799439011", "Games", "p", B], ["46493-32", "Games", "p", B]]


def test_a_top_level_product_id_on_an_order_counts_as_purchased() -> None:
    profile = fed(track("Order Completed", B, order_id="o-1", revenue=5.0, product_id=42, category="books"))
    assert profile.products == [["42", "books", "p", B]]


def test_each_kind_keeps_its_newest_products_up_to_the_cap() -> None:
    events = [viewed(B + n, f"v-{n}") for n in range(MAX_PRODUCTS + 5)]
    events += [order(B + n, {"product_id": f"p-{n}"}) for n in range(3)]
    profile = fed(*sorted(events, key=lambda e: e.timestamp))
    kept = [p[0] for p in profile.products if p[2] == "v"]
    assert kept == [f"v-{n}" for n in range(5, MAX_PRODUCTS + 5)]
    assert [p[0] for p in profile.products if p[2] == "p"] == ["p-0", "p-1", "p-2"]  # views push out no purchase
    assert [p[3] for p in profile.products] == sorted(p[3] for p in profile.products)  # oldest first


def test_a_product_seen_again_moves_to_the_newest_and_a_late_event_moves_no_time_back() -> None:
    profile = fed(viewed(B, "a"), viewed(B + 10, "b"), viewed(B + 20, "a", "shoes"))
    assert profile.products == [["b", "", "v", B + 10], ["a", "shoes", "v", B + 20]]
    engine = engine_for()
    late = viewed(B + 5, "b", "hats")  # late: keeps its time, fills the category it lacked
    engine.apply(profile, [late], B + 30)
    assert profile.products == [["b", "hats", "v", B + 10], ["a", "shoes", "v", B + 20]]
    engine.apply(profile, [viewed(B + 1, "a", "coats")], B + 30)  # a category is not overwritten by a late one
    assert profile.products[-1] == ["a", "shoes", "v", B + 20]


def test_a_late_product_older_than_a_full_kind_is_not_kept() -> None:
    profile = fed(*[viewed(B + 100 + n, f"v-{n}") for n in range(MAX_PRODUCTS)])
    before = [list(p) for p in profile.products]
    outcome = engine_for().apply(profile, [viewed(B, "old")], B + 200)
    assert outcome.applied == 1 and profile.products == before


def test_ids_and_categories_are_cut_to_their_limit() -> None:
    profile = fed(viewed(B, "x" * 100, "c" * 100))
    assert profile.products == [["x" * MAX_PRODUCT_CHARS, "c" * MAX_PRODUCT_CHARS, "v", B]]


def test_a_redelivered_or_resent_order_changes_nothing() -> None:
    first = order(B, {"product_id": "a"}, order_id="o-1", message_id="m-order")
    profile = fed(first)
    engine = engine_for()
    again = order(B + DAY, {"product_id": "b"}, order_id="o-1", message_id="m-order")  # the same message
    assert engine.apply(profile, [again], B + DAY).duplicates == 1
    resent = order(B + DAY, {"product_id": "a"}, order_id="o-1")  # the same order, a new message id
    assert engine.apply(profile, [resent], B + DAY).rejected
    assert profile.products == [["a", "", "p", B]]


def test_a_refund_leaves_the_purchase_remembered() -> None:
    profile = fed(order(B, {"product_id": "a"}, order_id="o-1"),
                  track("Order Refunded", B + 1, order_id="o-1", revenue=10.0))
    assert profile.products == [["a", "", "p", B]]


# ---- stored, merged, measured -----------------------------------------------------------------------------


def test_the_products_are_stored_read_lazily_and_written_back_as_stored() -> None:
    profile = fed(viewed(B, "a", "shoes"), order(B + 1, {"product_id": "b", "category": "hats"}))
    item = encode_profile(profile)
    assert unpack_products(item["rp"]["B"]) == [["a", "shoes", "v", B], ["b", "hats", "p", B + 1]]
    read = decode_profile(item)
    assert "rp" in read.unread()
    assert encode_profile(read)["rp"] is item["rp"]  # never read: the stored value as it was
    assert read.products == profile.products == Profile.from_item(profile.to_item()).products


def test_merging_keeps_the_union_at_the_later_time_within_the_caps() -> None:
    known = fed(viewed(B, "a"), viewed(B + 30, "b", "hats"), order(B + 5, {"product_id": "a"}))
    anonymous = Profile("anon")
    engine_for().apply(anonymous, [viewed(B + 10, "b"), viewed(B + 20, "a", "shoes")], B + 20)
    snapshot = ([list(p) for p in known.products], [list(p) for p in anonymous.products])
    merged = merge_profiles(known, anonymous, B + 40, catalogue=build_catalogue([]))
    assert merged.products == [["a", "", "p", B + 5], ["a", "shoes", "v", B + 20], ["b", "hats", "v", B + 30]]
    assert ([list(p) for p in known.products], [list(p) for p in anonymous.products]) == snapshot
    many = Profile("many")
    engine_for().apply(many, [viewed(B + 100 + n, f"v-{n}") for n in range(MAX_PRODUCTS)], B + 200)
    capped = merge_profiles(known, many, B + 200, catalogue=build_catalogue([]))
    assert [p[0] for p in capped.products if p[2] == "v"] == [f"v-{n}" for n in range(MAX_PRODUCTS)]
    assert [p[0] for p in capped.products if p[2] == "p"] == ["a"]


def test_the_products_at_their_caps_have_a_measured_bound() -> None:
    profile = Profile("c")
    long = "x" * MAX_PRODUCT_CHARS
    profile.products = [[f"{n:02d}{long}"[:MAX_PRODUCT_CHARS], long, kind, 2**32 - 1]
                        for kind in "pv" for n in range(MAX_PRODUCTS)]
    packed = pack_products(profile.products)
    assert unpack_products(packed) == profile.products
    assert item_size({"rp": packed}) < 4 * 1024  # what bench/profile_size.py reports as products_bytes_at_caps


# ---- the conditions ---------------------------------------------------------------------------------------


def condition(body: dict[str, Any]) -> Any:
    return Parser().parse(body)


def at(node: Any, profile: Profile, now: float) -> tuple[bool, float | None]:
    result: tuple[bool, float | None] = node.evaluate(ProfileView(profile, now, None))
    return result


def test_purchased_within_holds_until_the_purchase_ages_out() -> None:
    profile = fed(order(B, {"product_id": "B", "category": "shoes"}), order(B + DAY, {"product_id": "C"}))
    node = condition({"purchased": {"product_id": "B", "within": "30d"}})
    assert isinstance(node, ProductCondition) and node.time_driven and node.inputs == {"p:purchased"}
    assert at(node, profile, B + DAY) == (True, B + 30 * DAY)
    assert at(node, profile, B + 30 * DAY) == (False, None)
    assert at(condition({"purchased": {"product_id": "B"}}), profile, B + 400 * DAY) == (True, None)
    assert at(condition({"purchased": {"category": "shoes", "within": "2d"}}), profile, B) == (True, B + 2 * DAY)
    assert at(condition({"purchased": {"product_id": "Z"}}), profile, B) == (False, None)
    assert at(condition({"viewed": {"product_id": "B"}}), profile, B) == (False, None)  # bought, never viewed


def test_viewed_reads_the_latest_view_of_any_product_in_the_category() -> None:
    profile = fed(viewed(B, "a", "shoes"), viewed(B + DAY, "b", "shoes"), viewed(B + 2 * DAY, "c", "hats"))
    node = condition({"viewed": {"category": "shoes", "within": "7d"}})
    assert at(node, profile, B + 3 * DAY) == (True, B + 8 * DAY)
    assert node.inputs == {"p:viewed"} and not condition({"viewed": {"category": "shoes"}}).time_driven


def test_the_conditions_read_well() -> None:
    assert condition({"purchased": {"product_id": "B", "within": "30d"}}).describe() == "purchased product B within 30d"
    assert condition({"viewed": {"category": "shoes"}}).describe() == "viewed a product in category shoes"
    assert condition({"purchased": {"product_id": "1234"}}).describe() == "purchased product 1234"


@pytest.mark.parametrize("value", [83, 1000, 31, 12.0])  # what YAML makes of 00123, 1_000, 0x1F, 12.0
def test_an_unquoted_numeric_id_is_refused_because_yaml_has_changed_it(value: object) -> None:
    with pytest.raises(CatalogueError) as error:
        build_catalogue([("s.yaml", {"id": "s", "name": "S", "condition": {"purchased": {"product_id": value}}})])
    assert "condition.purchased.product_id" in str(error.value) and "quote it" in str(error.value)


@pytest.mark.parametrize(("body", "path", "rule"), [
    ({"product_id": "B", "category": "C"}, "condition.purchased", "one of product_id, category (found product_id, cat"),
    ({"within": "30d"}, "condition.purchased", "exactly one of product_id, category (found none)"),
    ({"product_id": ""}, "condition.purchased.product_id", "non-empty string"),
    ({"product_id": "x" * 65}, "condition.purchased.product_id", "longer than 64"),
    ({"product_id": "B", "within": "soon"}, "condition.purchased.within", ""),
    ({"product_id": "B", "days": 3}, "condition.purchased.days", "not a known field"),
    ("B", "condition.purchased", "must be a mapping"),
])
def test_a_bad_product_condition_names_its_path_and_rule(body: Any, path: str, rule: str) -> None:
    with pytest.raises(DefinitionError) as error:
        condition({"purchased": body})
    assert error.value.path == path and rule in error.value.message


def test_a_segment_on_a_purchase_enters_with_the_order_and_exits_when_it_ages_out() -> None:
    engine = engine_for({"all": [{"purchased": {"product_id": "B", "within": "30d"}},
                                 {"viewed": {"category": "shoes"}}]})
    profile = fed(viewed(B, "a", "shoes"), engine=engine)
    assert "s" not in profile.memberships
    engine.apply(profile, [order(B + DAY, {"product_id": "B"})], B + DAY)
    assert "s" in profile.memberships and profile.deadlines["s"] == B + 31 * DAY
    engine.evaluate(profile, B + 31 * DAY)
    assert "s" not in profile.memberships


def test_explain_shows_when_the_product_was_last_purchased() -> None:
    engine = engine_for({"purchased": {"product_id": "B", "within": "30d"}})
    profile = fed(order(B, {"product_id": "B"}), engine=engine)
    node = explain_segment(engine.catalogue, "s", profile, B + 3 * DAY, None)["condition"]
    assert (node["operator"], node["value"], node["threshold"], node["result"]) == ("purchased", 3.0, 30.0, True)
    assert node["detail"] == {"last_at": iso(B)} and node["description"] == "purchased product B within 30d"


# ---- where over arrays ------------------------------------------------------------------------------------


def test_a_count_where_reaches_into_the_products_of_an_order() -> None:
    engine = engine_for({"count": {"event": "Order Completed", "within": "30d", "gte": 2,
                                   "where": {"products[].product_id": {"eq": "B"}}}})
    profile = fed(order(B, {"product_id": "A"}, {"product_id": "B"}), order(B + 1, {"product_id": "C"}),
                  order(B + 2, {"product_id": "B"}), engine=engine)
    assert "s" in profile.memberships  # two of the three orders hold a B


@pytest.mark.parametrize(("op", "value", "products", "expected"), [
    ("eq", "B", [{"product_id": "A"}, {"product_id": "B"}], True),
    ("eq", "B", [{"product_id": "A"}], False),
    ("eq", "B", [], False),  # no element: no element passes
    ("ne", "B", [{"product_id": "B"}], False),
    ("ne", "B", [{"product_id": "B"}, {"sku": "x"}], True),  # an element without it is not equal
    ("gt", 10, [{"price": 5}, {"price": 20}], True),
    ("exists", True, [{"sku": "x"}], False),
])
def test_an_array_filter_holds_when_any_element_passes(op: str, value: Any, products: list[Any],
                                                       expected: bool) -> None:
    key = "price" if op == "gt" else "product_id"
    assert PropertyFilter(("products[]", key), op, value).matches({"products": products}) is expected


def test_an_array_filter_on_a_property_that_is_no_array_does_not_hold() -> None:
    test = PropertyFilter(("products[]", "product_id"), "eq", "B")
    assert not test.matches({"products": {"product_id": "B"}}) and not test.matches({})
    nested = PropertyFilter(("orders[]", "items[]", "tags[]"), "eq", "gift")
    assert nested.matches({"orders": [{"items": [{"tags": ["x"]}, {"tags": ["gift"]}]}]})


@pytest.mark.parametrize("name", ["[]", "[].product_id", "a.[].b"])
def test_an_array_part_without_its_name_is_refused(name: str) -> None:
    with pytest.raises(CatalogueError) as error:
        build_catalogue([("s.yaml", {"id": "s", "name": "S", "condition": {
            "count": {"event": "Order Completed", "gte": 1, "where": {name: "B"}}}})])
    assert "condition.count.where" in str(error.value)


@pytest.mark.parametrize("name", ["utm[source]", "products[0].id"])
def test_other_brackets_are_part_of_a_property_name_as_before(name: str) -> None:
    catalogue = build_catalogue([("s.yaml", {"id": "s", "name": "S", "condition": {
        "count": {"event": "Order Completed", "gte": 1, "where": {name: "B"}}}})])
    (spec,) = [shape.metric for shapes in catalogue.counted.values() for shape in shapes.counters]
    (test,) = spec.source.where
    assert test.path == tuple(name.split(".")) and test.matches({name.split(".")[0]: {"id": "B"}} if "." in name
                                                                 else {name: "B"})
