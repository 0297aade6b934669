"""Catalogue validation: every error names the file, the segment id and the path inside the definition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp.core.catalogue import (
    CatalogueError,
    build_catalogue,
    load_catalogue,
    membership_score,
    primary_segment,
    ranked_members,
)
from cdp.core.language import AbsenceCondition, DefinitionError

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
COUNT = {"count": {"event": "Product Viewed", "within": "24h", "gt": 5}}
GOLD_TRAIT = {"trait": {"name": "plan", "eq": "gold"}}


def definition(segment_id: str = "s", condition: Any = None, **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": segment_id, "name": segment_id.title(), "condition": condition or COUNT}
    raw.update(fields)
    return raw


def errors_of(*definitions: tuple[str, object]) -> list[DefinitionError]:
    with pytest.raises(CatalogueError) as caught:
        build_catalogue(list(definitions))
    assert caught.value.errors, "a CatalogueError must list its errors"
    return caught.value.errors


def one_error(raw: object, source: str = "segments/test.yaml") -> DefinitionError:
    errors = errors_of((source, raw))
    assert len(errors) == 1, [e.render() for e in errors]
    return errors[0]


def assert_names(error: DefinitionError, source: str, segment_id: str, path: str, fragment: str) -> None:
    assert (error.source, error.segment_id, error.path) == (source, segment_id, path)
    assert fragment in error.message
    assert str(error) == f"{source}: {segment_id}: {path}: {error.message}"


ABSENCE = {"trigger": {"event": "Product Added"}, "missing": {"event": "Order Completed"}, "within": "48h"}

CONDITION_ERRORS = [
    ("unknown operator", {"counts": {"event": "Product Viewed", "gt": 1}}, "condition", "unknown operator 'counts'"),
    ("unknown nested operator", {"all": [GOLD_TRAIT, {"bogus": {}}]}, "condition.all[1]", "unknown operator 'bogus'"),
    ("two operators in one node", {**GOLD_TRAIT, "rfm": {"metric": "orders", "gt": 1}}, "condition",
     "exactly one operator"),
    ("condition not a mapping", "yes", "condition", "must be a mapping"),
    ("empty all", {"all": []}, "condition.all", "non-empty list"),
    ("unknown field", {"count": {"event": "Product Viewed", "gt": 1, "wher": {"a": 1}}}, "condition.count.wher",
     "is not a known field"),
    ("unknown field deep", {"not": {"any": [GOLD_TRAIT, {"recency": {"event": "X", "within": "1d", "off": "last"}}]}},
     "condition.not.any[1].recency.off", "is not a known field"),
    ("missing event", {"count": {"within": "1h", "gt": 1}}, "condition.count.event", "is required"),
    ("bad duration", {"count": {"event": "Product Viewed", "within": "48x", "gt": 1}}, "condition.count.within",
     "'48x' is not a duration"),
    ("duration in words", {"absence": {**ABSENCE, "within": "2 days"}}, "condition.absence.within",
     "is not a duration"),
    ("zero window", {"count": {"event": "Product Viewed", "within": "0m", "gt": 1}}, "condition.count.within",
     "longer than zero"),
    ("window not whole hours", {"count": {"event": "Product Viewed", "within": "90m", "gt": 1}},
     "condition.count.within", "whole number"),
    ("window not whole days", {"count": {"event": "Product Viewed", "within": "49h", "gt": 1}},
     "condition.count.within", "whole number"),
    ("window not whole weeks", {"sum": {"event": "Order Completed", "property": "revenue", "within": "36d", "gt": 1}},
     "condition.sum.within", "whole number"),
    ("window too long", {"count": {"event": "Product Viewed", "within": "54w", "gt": 1}}, "condition.count.within",
     "longer than the longest window"),
    ("ratio window too long", {"ratio": {"numerator": {"event": "A"}, "denominator": {"event": "B"},
                                         "within": "400d", "gt": 1}}, "condition.ratio.within", "longest window"),
    ("missing comparison", {"count": {"event": "Product Viewed", "within": "1h"}}, "condition.count",
     "needs exactly one comparison"),
    ("two comparisons", {"count": {"event": "Product Viewed", "gt": 1, "lt": 5}}, "condition.count",
     "found gt, lt"),
    ("trait without comparison", {"trait": {"name": "plan"}}, "condition.trait", "needs exactly one comparison"),
    ("where with two comparisons", {"count": {"event": "X", "where": {"price": {"gt": 1, "lt": 5}}, "gt": 1}},
     "condition.count.where.price", "exactly one comparison"),
    ("where in not a list", {"count": {"event": "X", "where": {"brand": {"in": "acme"}}, "gt": 1}},
     "condition.count.where.brand.in", "must be a list"),
    ("comparison not a number", {"count": {"event": "X", "gt": "5"}}, "condition.count.gt", "must be a number"),
    ("expire not after within", {"absence": {**ABSENCE, "expire": "48h"}}, "condition.absence.expire",
     "longer than `within`"),
    ("absence inside when", {"absence": {**ABSENCE, "when": {"absence": ABSENCE}}},
     "condition.absence.when.absence", "cannot be used inside `when`"),
    ("segment inside when", {"absence": {**ABSENCE, "when": {"all": [{"segment": {"id": "x"}}]}}},
     "condition.absence.when.all[0].segment", "cannot be used inside `when`"),
    ("unknown channel", {"channel": {"name": "fax"}}, "condition.channel.name", "'fax' is not one of"),
    ("unknown rfm metric", {"rfm": {"metric": "visits", "gt": 1}}, "condition.rfm.metric", "'visits' is not one of"),
    ("percentile out of range", {"percentile": {"metric": "revenue", "top": 100}}, "condition.percentile.top",
     "between 0 and 100"),
    ("recency of", {"recency": {"event": "X", "within": "1d", "of": "middle"}}, "condition.recency.of",
     "last or first"),
    ("min_denominator zero", {"ratio": {"numerator": {"event": "A"}, "denominator": {"event": "B"},
                                       "within": "30d", "gt": 1, "min_denominator": 0}},
     "condition.ratio.min_denominator", "whole number >= 1"),
    ("sum conflict in one segment", {"all": [{"sum": {"event": "X", "property": "price", "gt": 1}},
                                             {"sum": {"event": "X", "property": "quantity", "gt": 1}}]},
     "condition.all[1].sum", "already summed over 'price'"),
]


@pytest.mark.parametrize(("condition", "path", "fragment"), [c[1:] for c in CONDITION_ERRORS],
                         ids=[c[0] for c in CONDITION_ERRORS])
def test_condition_errors_name_file_segment_and_path(condition: Any, path: str, fragment: str) -> None:
    error = one_error(definition("my-segment", condition), "segments/my-segment.yaml")
    assert_names(error, "segments/my-segment.yaml", "my-segment", path, fragment)


FIELD_ERRORS = [
    ("unknown top-level field", {"priorty": 3}, "priorty", "is not a known field"),
    ("name missing", {"name": ""}, "name", "is required"),
    ("priority not whole", {"priority": 2.5}, "priority", "whole number"),
    ("priority boolean", {"priority": True}, "priority", "whole number"),
    ("enabled not boolean", {"enabled": "yes"}, "enabled", "true or false"),
    ("group not a slug", {"group": "Cart Recovery"}, "group", "lowercase slug"),
    ("negative weight", {"weight": -1}, "weight", ">= 0"),
    ("description not text", {"description": 5}, "description", "must be a string"),
]


@pytest.mark.parametrize(("fields", "path", "fragment"), [c[1:] for c in FIELD_ERRORS],
                         ids=[c[0] for c in FIELD_ERRORS])
def test_field_errors_name_file_segment_and_path(fields: dict[str, Any], path: str, fragment: str) -> None:
    error = one_error(definition("my-segment", **fields), "a.yaml")
    assert_names(error, "a.yaml", "my-segment", path, fragment)


def test_missing_condition() -> None:
    raw = definition("my-segment")
    del raw["condition"]
    assert_names(one_error(raw, "a.yaml"), "a.yaml", "my-segment", "condition", "is required")


@pytest.mark.parametrize("bad", ["Cart_Abandoners", "cart abandoners", "-cart", "x" * 65, ""])
def test_bad_slug_id(bad: str) -> None:
    error = one_error(definition(bad), "a.yaml")
    assert (error.source, error.path) == ("a.yaml", "id")
    assert "lowercase slug" in error.message
    assert "a.yaml" in str(error)


def test_id_not_text() -> None:
    error = one_error(definition(segment_id="s") | {"id": 42}, "a.yaml")
    assert (error.source, error.segment_id, error.path) == ("a.yaml", "", "id")


def test_definition_not_a_mapping() -> None:
    error = one_error(["not", "a", "definition"], "a.yaml")
    assert error.source == "a.yaml"
    assert "must be a mapping" in error.message


def test_valid_slug_ids_are_accepted() -> None:
    catalogue = build_catalogue([("a.yaml", definition("a")), ("b.yaml", definition("vip-2024")),
                                 ("c.yaml", definition("x" * 64))])
    assert set(catalogue.segments) == {"a", "vip-2024", "x" * 64}


def test_duplicate_id_names_the_second_file() -> None:
    errors = errors_of(("first.yaml", definition("dup")), ("second.yaml", definition("dup")))
    assert len(errors) == 1
    assert_names(errors[0], "second.yaml", "dup", "id", "defined twice")


# ---- references -------------------------------------------------------------------------------

def refers(segment_id: str, target: str, **fields: Any) -> dict[str, Any]:
    return definition(segment_id, {"all": [GOLD_TRAIT, {"segment": {"id": target}}]}, **fields)


def test_reference_to_unknown_segment() -> None:
    errors = errors_of(("a.yaml", refers("a", "nope")))
    assert len(errors) == 1
    assert (errors[0].source, errors[0].segment_id) == ("a.yaml", "a")
    assert errors[0].path.startswith("condition")
    assert "unknown segment 'nope'" in errors[0].message


def test_reference_to_disabled_segment() -> None:
    errors = errors_of(("a.yaml", refers("a", "b")), ("b.yaml", definition("b", enabled=False)))
    assert len(errors) == 1
    assert (errors[0].source, errors[0].segment_id) == ("a.yaml", "a")
    assert errors[0].path.startswith("condition")
    assert "disabled segment 'b'" in errors[0].message


def test_reference_inside_own_exclusive_group() -> None:
    errors = errors_of(("a.yaml", refers("a", "b", group="g")), ("b.yaml", definition("b", group="g")))
    assert len(errors) == 1
    assert (errors[0].source, errors[0].segment_id) == ("a.yaml", "a")
    assert errors[0].path.startswith("condition")
    assert "own exclusive group 'g'" in errors[0].message


def test_reference_to_a_segment_in_another_group_is_fine() -> None:
    catalogue = build_catalogue([("a.yaml", refers("a", "b", group="g")), ("b.yaml", definition("b", group="h"))])
    assert catalogue.segments["a"].references == {"b"}


def test_disabled_segment_may_be_referenced_by_nobody_and_is_kept_aside() -> None:
    catalogue = build_catalogue([("a.yaml", definition("a")), ("b.yaml", definition("b", enabled=False))])
    assert set(catalogue.segments) == {"a"}
    assert set(catalogue.all_segments) == {"a", "b"}


@pytest.mark.parametrize("ids", [("a", "b"), ("a", "b", "c"), ("a",)], ids=["two", "three", "self"])
def test_reference_cycle_names_file_segment_and_path(ids: tuple[str, ...]) -> None:
    definitions = [(f"{sid}.yaml", refers(sid, ids[(i + 1) % len(ids)])) for i, sid in enumerate(ids)]
    errors = errors_of(*definitions)
    assert len(errors) == 1
    error = errors[0]
    assert "cycle" in error.message
    for sid in ids:
        assert sid in error.message
    assert error.segment_id in ids
    assert error.source == f"{error.segment_id}.yaml"
    assert error.path.startswith("condition")


def test_reference_chain_without_cycle_orders_units() -> None:
    catalogue = build_catalogue([("a.yaml", refers("a", "b")), ("b.yaml", refers("b", "c")),
                                 ("c.yaml", definition("c"))])
    order = [unit.segments[0].id for unit in catalogue.units]
    assert order.index("c") < order.index("b") < order.index("a")


# ---- sums -------------------------------------------------------------------------------------

def summing(segment_id: str, prop: str, **fields: Any) -> dict[str, Any]:
    return definition(segment_id, {"sum": {"event": "Product Viewed", "property": prop, "gt": 1}}, **fields)


def test_conflicting_sum_properties_across_segments() -> None:
    errors = errors_of(("a.yaml", summing("a", "price")), ("b.yaml", summing("b", "quantity")))
    assert len(errors) == 1
    assert (errors[0].source, errors[0].segment_id) == ("b.yaml", "b")
    assert errors[0].path.startswith("condition")
    assert "'price'" in errors[0].message and "'quantity'" in errors[0].message


def test_same_sum_property_or_different_filters_do_not_conflict() -> None:
    filtered = definition("c", {"sum": {"event": "Product Viewed", "where": {"category": "shoes"},
                                        "property": "quantity", "gt": 1}})
    catalogue = build_catalogue([("a.yaml", summing("a", "price")), ("b.yaml", summing("b", "price")),
                                 ("c.yaml", filtered)])
    assert catalogue.metrics["Product Viewed"].sum_property == "price"
    assert catalogue.metrics["Product Viewed|category=='shoes'"].sum_property == "quantity"


def test_disabled_segment_does_not_conflict() -> None:
    catalogue = build_catalogue([("a.yaml", summing("a", "price")),
                                 ("b.yaml", summing("b", "quantity", enabled=False))])
    assert catalogue.metrics["Product Viewed"].sum_property == "price"


# ---- several errors, YAML files ---------------------------------------------------------------

def test_catalogue_error_collects_every_problem() -> None:
    errors = errors_of(
        ("a.yaml", definition("a", {"counts": {}})),
        ("b.yaml", definition("b", {"count": {"event": "X", "within": "48x", "gt": 1}})),
        ("c.yaml", definition("ok")),
        ("d.yaml", definition("ok")),
        ("e.yaml", refers("e", "missing")),
    )
    assert [(e.source, e.segment_id) for e in errors] == [("a.yaml", "a"), ("b.yaml", "b"), ("d.yaml", "ok"),
                                                           ("e.yaml", "e")]
    with pytest.raises(CatalogueError) as caught:
        build_catalogue([("a.yaml", definition("a", {"counts": {}})),
                         ("b.yaml", definition("b", {"count": {"event": "X", "within": "48x", "gt": 1}}))])
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("a.yaml: a: condition: ")
    assert lines[1].startswith("b.yaml: b: condition.count.within: ")


def test_load_catalogue_reports_error_as_in_the_reference(tmp_path: Path) -> None:
    raw = {"id": "cart-abandoners", "name": "Cart abandoners",
           "condition": {"absence": {**ABSENCE, "within": "48x"}}}
    path = tmp_path / "cart-abandoners.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(tmp_path)
    assert str(caught.value) == (f"{path}: cart-abandoners: condition.absence.within: '48x' is not a duration"
                                 " (write e.g. 10m, 24h, 7d, 26w)")


def test_load_catalogue_invalid_yaml(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(definition("good")), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [unclosed\nname: Broken\n", encoding="utf-8")
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(tmp_path)
    assert len(caught.value.errors) == 1
    error = caught.value.errors[0]
    assert error.source == str(bad)
    assert "not valid YAML" in error.message
    assert str(bad) in str(caught.value)


def test_load_catalogue_reads_lists_and_yml(tmp_path: Path) -> None:
    (tmp_path / "many.yaml").write_text(yaml.safe_dump([definition("a"), definition("b")]), encoding="utf-8")
    (tmp_path / "one.yml").write_text(yaml.safe_dump(definition("c")), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a definition", encoding="utf-8")
    catalogue = load_catalogue(tmp_path)
    assert set(catalogue.segments) == {"a", "b", "c"}
    assert catalogue.segments["c"].source == str(tmp_path / "one.yml")


def test_load_catalogue_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "many.yaml").write_text(yaml.safe_dump([definition("a"), definition("b", {"rfm": {}})]),
                                        encoding="utf-8")
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(tmp_path)
    [error] = caught.value.errors
    assert (error.source, error.segment_id, error.path) == (str(tmp_path / "many.yaml"), "b", "condition.rfm.metric")


def test_load_catalogue_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError):
        load_catalogue(tmp_path / "missing")


# ---- ordering inside groups -------------------------------------------------------------------

def test_group_members_rank_by_priority_then_weight_then_id() -> None:
    catalogue = build_catalogue([
        ("1.yaml", definition("zeta", group="g", priority=5, weight=1)),
        ("2.yaml", definition("alpha", group="g", priority=5, weight=1)),
        ("3.yaml", definition("heavy", group="g", priority=5, weight=3)),
        ("4.yaml", definition("top", group="g", priority=9, weight=0)),
        ("5.yaml", definition("solo", priority=100)),
    ])
    [group] = [unit for unit in catalogue.units if unit.name == "g"]
    assert [s.id for s in group.segments] == ["top", "heavy", "alpha", "zeta"]
    assert len(catalogue.units) == 2



# ---- overlap: the primary segment and the score -----------------------------------------------

def test_primary_segment_and_score_count_only_enabled_member_segments() -> None:
    catalogue = build_catalogue([
        ("1.yaml", definition("zeta", priority=5, weight=1)),
        ("2.yaml", definition("alpha", priority=5, weight=1)),
        ("3.yaml", definition("heavy", priority=5, weight=2.5)),
        ("4.yaml", definition("top", priority=9, weight=0)),
        ("5.yaml", definition("off", priority=100, weight=7, enabled=False)),
    ])
    memberships = {"zeta": 1, "off": 2, "gone": 3, "alpha": 4, "heavy": 5, "top": 6}
    assert [s.id for s in ranked_members(catalogue, memberships)] == ["top", "heavy", "alpha", "zeta"]
    primary = primary_segment(catalogue, memberships)
    assert primary is not None and primary.id == "top"  # priority first, whatever the weight
    assert membership_score(catalogue, memberships) == 4.5  # the disabled and the removed segment add nothing
    assert primary_segment(catalogue, {"gone": 1, "off": 2}) is None
    assert membership_score(catalogue, {}) == 0


def test_defaults() -> None:
    segment = build_catalogue([("a.yaml", definition("a"))]).segments["a"]
    assert (segment.enabled, segment.priority, segment.group, segment.weight, segment.description) == (
        True, 0, None, 1.0, "")


# ---- the default catalogue --------------------------------------------------------------------

DEFAULT_IDS = {
    "browsers", "cart-abandoners", "email-responders", "engaged-browsers", "high-engagement-new",
    "high-frequency", "high-intent-abandoners", "high-value-recent-buyer", "highly-engaged", "loyal-customers",
    "potential-abandoners", "premium-customers", "recent-buyers", "repeat-buyers", "web-only-visitors", "vip",
    "champions", "at-risk-high-value", "top-spend-cluster",
}


def test_default_catalogue_loads_with_its_nineteen_segments() -> None:
    catalogue = load_catalogue(SEGMENTS)
    in_files = set()
    for path in SEGMENTS.glob("*.yaml"):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for raw in document if isinstance(document, list) else [document]:
            in_files.add(raw["id"])
    assert in_files == DEFAULT_IDS
    assert set(catalogue.segments) == DEFAULT_IDS
    for segment in catalogue.segments.values():
        assert segment.source.endswith(f"{segment.id}.yaml")
        assert segment.name and segment.description


def test_default_catalogue_buyer_lifecycle_priorities() -> None:
    segments = load_catalogue(SEGMENTS).segments
    top, recent, loyal = segments["high-value-recent-buyer"], segments["recent-buyers"], segments["loyal-customers"]
    assert top.priority > recent.priority > loyal.priority
    assert top.group == recent.group == loyal.group == "buyer-lifecycle"


def test_default_catalogue_cart_recovery_group() -> None:
    catalogue = load_catalogue(SEGMENTS)
    [unit] = [unit for unit in catalogue.units if unit.name == "cart-recovery"]
    assert [s.id for s in unit.segments] == ["high-intent-abandoners", "cart-abandoners", "potential-abandoners"]


def test_default_catalogue_merges_the_windows_each_event_needs() -> None:
    catalogue = load_catalogue(SEGMENTS)
    # 10m (when of high-intent), 24h (engaged browsers), 7d and 30d (new customers, browsers)
    assert catalogue.metrics["Product Viewed"].tiers == {"m", "h", "d"}
    # 30d (high frequency) and 26w (repeat buyers); recency needs no buckets
    assert catalogue.metrics["Order Completed"].tiers == {"d", "w"}
    assert catalogue.metrics["Email Opened"].tiers == {"d"}
    [latched] = catalogue.latches["Product Added"]
    assert isinstance(latched, AbsenceCondition)
    assert latched.latch_key == "high-intent-abandoners:condition.absence"
