"""Placements: validation against the catalogue, and the decision a profile gets (rule order, context, the primary
segment between overlapping rules, the default, the reasons)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import decisions  # at collection: its AWS imports probe sockets once, before they are disabled
from cdp.core.catalogue import Catalogue, build_catalogue, load_catalogue
from cdp.core.placements import PlacementsError, build_placements, decide, load_placements, parse_placement
from cdp.core.profile import Profile, ProfileView

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_750_000_000.0


def catalogue() -> Catalogue:
    return build_catalogue([
        ("s.yaml", {"id": "gold", "name": "Gold", "priority": 90, "condition": {"manual": True}}),
        ("s.yaml", {"id": "silver", "name": "Silver", "priority": 50, "condition": {"manual": True}}),
        ("s.yaml", {"id": "bronze", "name": "Bronze", "priority": 10, "condition": {"manual": True}}),
        ("s.yaml", {"id": "viewers", "name": "Viewers", "condition": {
            "count": {"event": "Product Viewed", "within": "24h", "gte": 3}}}),
    ])


def placement(rules: list[dict[str, Any]], cat: Catalogue | None = None) -> Any:
    return parse_placement({"id": "hero", "name": "Hero", "rules": rules,
                            "default": {"id": "plain", "payload": {"headline": "Hello"}}}, cat or catalogue())


def content(name: str) -> dict[str, Any]:
    return {"id": name, "payload": {"name": name}}


def view(*segments: str, **traits: Any) -> ProfileView:
    profile = Profile("c1")
    profile.memberships = dict.fromkeys(segments, 1)
    profile.traits = dict(traits)
    return ProfileView(profile, NOW, None)


def test_the_first_matching_rule_wins_when_none_names_a_segment_the_customer_is_in() -> None:
    hero = placement([{"id": "plan-pro", "when": {"trait": {"name": "plan", "eq": "pro"}}, "content": content("a")},
                      {"id": "anyone", "content": content("b")}])
    decision = decide(hero, view(plan="pro"), {})
    assert (decision.rule, decision.content.id, decision.matched) == ("plan-pro", "a", ("plan-pro", "anyone"))
    assert "first matching rule in order" in decision.reason and "also matched: anyone" in decision.reason
    assert decide(hero, view(plan="free"), {}).rule == "anyone"


def test_the_default_when_no_rule_matches() -> None:
    hero = placement([{"id": "gold-only", "when": {"segment": {"id": "gold"}}, "content": content("a")}])
    decision = decide(hero, view("silver"), {})
    assert (decision.rule, decision.content.id, decision.reason, decision.matched) == (
        None, "plain", "no rule matched", ())
    assert decision.content.payload == {"headline": "Hello"}


def test_the_rule_naming_the_primary_segment_wins_over_an_earlier_one() -> None:
    hero = placement([{"id": "for-silver", "when": {"segment": {"id": "silver"}}, "content": content("s")},
                      {"id": "for-gold", "when": {"segment": {"id": "gold"}}, "content": content("g")}])
    decision = decide(hero, view("silver", "gold"), {})
    assert (decision.rule, decision.content.id) == ("for-gold", "g")
    assert decision.reason == "rule for-gold names gold, the customer's primary segment; also matched: for-silver"
    assert decision.matched == ("for-silver", "for-gold")


def test_below_the_primary_segment_the_overlap_order_decides() -> None:
    # gold is primary, but no matching rule names it: silver outranks bronze.
    hero = placement([{"id": "for-bronze", "when": {"segment": {"id": "bronze"}}, "content": content("b")},
                      {"id": "for-silver", "when": {"segment": {"id": "silver"}}, "content": content("s")}])
    decision = decide(hero, view("bronze", "silver", "gold"), {})
    assert decision.rule == "for-silver"
    assert "highest-ranked segment any matching rule names" in decision.reason


def test_a_single_match_says_so() -> None:
    hero = placement([{"id": "for-gold", "when": {"segment": {"id": "gold"}}, "content": content("g")}])
    assert decide(hero, view("gold"), {}).reason == "rule for-gold is the only rule that matched"


def test_context_conditions_match_the_request() -> None:
    hero = placement([{"id": "mobile-home", "context": {"page": ["/", "/home"], "device": "mobile"},
                       "content": content("m")},
                      {"id": "shoes", "context": {"page": "/shoes/*"}, "content": content("s")},
                      {"id": "spring", "context": {"utm_campaign": "spring"}, "content": content("c")}])
    assert decide(hero, view(), {"page": "/home", "device": "mobile"}).rule == "mobile-home"
    assert decide(hero, view(), {"page": "/home", "device": "desktop"}).rule is None
    assert decide(hero, view(), {"device": "mobile"}).rule is None  # a context key the request lacks: no match
    assert decide(hero, view(), {"page": "/shoes/red-runner"}).rule == "shoes"
    assert decide(hero, view(), {"page": "/", "utm_campaign": "spring"}).rule == "spring"


def test_when_and_context_must_both_hold() -> None:
    hero = placement([{"id": "gold-cart", "when": {"segment": {"id": "gold"}}, "context": {"page": "/cart"},
                       "content": content("g")}])
    assert decide(hero, view("gold"), {"page": "/cart"}).rule == "gold-cart"
    assert decide(hero, view("gold"), {"page": "/"}).rule is None
    assert decide(hero, view(), {"page": "/cart"}).rule is None


def test_counter_conditions_read_the_counters_the_catalogue_keeps() -> None:
    hero = placement([{"id": "browsing", "when": {"count": {"event": "Product Viewed", "within": "24h", "gte": 1}},
                       "content": content("v")}])
    assert decide(hero, view(), {}).rule is None  # no views counted yet
    with pytest.raises(Exception, match="which no segment counts"):
        placement([{"id": "x", "when": {"count": {"event": "Order Completed", "gte": 1}}, "content": content("x")}])
    with pytest.raises(Exception, match="resolution no segment keeps"):
        placement([{"id": "x", "when": {"count": {"event": "Product Viewed", "within": "10m", "gte": 1}},
                    "content": content("x")}])


@pytest.mark.parametrize(("rules", "expected"), [
    ([{"id": "x", "when": {"segment": {"id": "nobody"}}, "content": {"id": "a"}}],
     "rules[0].when.segment: refers to unknown or disabled segment 'nobody'"),
    ([{"id": "x", "when": {"trait": {"name": "plan", "eq": "pro"}}}], "rules[0].content: is required"),
    ([{"id": "Bad Id", "content": {"id": "a"}}], "rules[0].id: must be a lowercase slug"),
    ([{"id": "x", "content": {"id": "a"}}, {"id": "x", "content": {"id": "b"}}],
     "rules[1].id: 'x' is used by an earlier rule"),
    ([{"id": "x", "context": {"country": "de"}, "content": {"id": "a"}}],
     "rules[0].context.country: is not a context key"),
    ([{"id": "x", "context": {"page": []}, "content": {"id": "a"}}], "rules[0].context.page: must be a non-empty"),
    ([{"id": "x", "content": {"id": "a", "payload": [1]}}], "rules[0].content.payload: must be a mapping"),
    ([{"id": "x", "when": {"count": {"event": "E", "gte": "three"}}, "content": {"id": "a"}}],
     "rules[0].when.count.gte: must be a number"),
    ([{"id": "x", "when": {"manual": True}, "content": {"id": "a"}}], "rules[0].when.manual:"),
    ([{"id": "x", "colour": "red", "content": {"id": "a"}}], "rules[0].colour: is not a known field"),
])
def test_invalid_rules_name_the_file_placement_and_path(rules: list[dict[str, Any]], expected: str) -> None:
    with pytest.raises(PlacementsError) as caught:
        build_placements([("placements/hero.yaml", {"id": "hero", "name": "Hero", "rules": rules,
                                                    "default": {"id": "d"}})], catalogue())
    assert str(caught.value).startswith("placements/hero.yaml: hero: ")
    assert expected in str(caught.value)


def test_every_problem_of_a_folder_is_reported_at_once() -> None:
    with pytest.raises(PlacementsError) as caught:
        build_placements([("a.yaml", {"id": "a", "name": "A"}),
                          ("b.yaml", {"id": "b", "rules": [], "default": {"id": "d"}}),
                          ("c.yaml", {"id": "c", "name": "C", "default": {"id": "d"}}),
                          ("d.yaml", {"id": "c", "name": "C", "default": {"id": "d"}})], catalogue())
    assert [(e.source, e.path) for e in caught.value.errors] == [
        ("a.yaml", "default"), ("b.yaml", "name"), ("d.yaml", "id")]


def test_the_shipped_placements_validate_against_the_shipped_segments() -> None:
    placements = load_placements(ROOT / "placements", load_catalogue(ROOT / "segments"))
    hero = placements["home-hero"]
    assert hero.rules[0].id == "vip-bought-b" and hero.rules[0].segments[0] == "vip"
    assert decide(hero, view(), {}).content.id == "hero-default"
    assert decide(hero, view(), {"utm_campaign": "spring-sale"}).rule == "spring-campaign"


def test_a_missing_folder_is_refused() -> None:
    with pytest.raises(PlacementsError, match="is not a folder of placement definitions"):
        load_placements(ROOT / "no-such-folder", catalogue())


def test_cdp_placements_validate_reports_the_folder_or_each_problem(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from cdp_dev.cli import main

    assert main(["placements", "validate", str(ROOT / "placements"), "--segments", str(ROOT / "segments")]) == 0
    assert "1 placement valid (3 rules)" in capsys.readouterr().out
    (tmp_path / "x.yaml").write_text("id: x\nname: X\nrules:\n  - id: a\n    when: {segment: {id: nope}}\n"
                                     "    content: {id: c}\ndefault: {id: d}\n")
    assert main(["placements", "validate", str(tmp_path), "--segments", str(ROOT / "segments")]) == 2
    assert capsys.readouterr().err == (f"cdp: error: {tmp_path / 'x.yaml'}: x: rules[0].when.segment: refers to "
                                       "unknown or disabled segment 'nope'\n")


def test_the_decisions_bench_times_every_decision_and_serves_each_kind_of_content() -> None:
    figures = decisions.measure(200)
    assert figures["decisions"] == 200 * decisions.REPEATS * len(decisions.CONTEXTS)
    assert sum(figures["served"].values()) == figures["decisions"]
    assert {"promo-capsules", "hero-default", "spring-sale"} <= set(figures["served"])
    assert 0 < figures["decide_us"]["p50"] <= figures["decide_us"]["p99"]
    assert 0 < figures["read_us"]["p50"] <= figures["read_us"]["p99"]
