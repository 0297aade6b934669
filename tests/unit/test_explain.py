"""Explain: the condition tree of a segment with, at each node, the profile's value, the threshold, the result
and when it next changes; and why a stored membership differs from what an evaluation now would leave."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import build_catalogue, load_catalogue
from cdp.core.consent import ConsentPolicy
from cdp.core.engine import Engine
from cdp.core.events import Event, normalise
from cdp.core.explain import UnknownSegment, explain_segment
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
CATALOGUE = load_catalogue(SEGMENTS)
MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
WEB = {"library": {"name": "analytics.js"}}

_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def track(name: str, at: float, context: dict[str, Any] | None = None, **properties: Any) -> Event:
    return normalise({"type": "track", "event": name, "messageId": f"x-{next(_ids)}", "userId": "u1",
                      "timestamp": iso(at), "properties": properties, "context": context or {}})


def folded(*batches: tuple[float, list[Event]], engine: Engine | None = None) -> Profile:
    engine = engine or Engine(CATALOGUE)
    profile = Profile("u1")
    for now, events in batches:
        engine.apply(profile, events, now)
    return profile


def nodes(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node of an explained tree by its path."""
    found = {tree["path"]: tree}
    for child in tree["children"]:
        found.update(nodes(child))
    return found


def buyer(orders: int, revenue_each: float, start: float = B) -> Profile:
    return folded(*((start + n * HOUR, [track("Order Completed", start + n * HOUR, order_id=f"o{n}",
                                              revenue=revenue_each)]) for n in range(orders)))


# ---- the tree ----------------------------------------------------------------------------------------------


def test_each_node_shows_its_value_threshold_result_and_when_it_changes() -> None:
    views = [track("Product Viewed", B + n * MIN, product_id=f"p{n}") for n in range(6)]
    profile = folded((B + 6 * MIN, views))
    now = B + HOUR

    answer = explain_segment(CATALOGUE, "browsers", profile, now, None)

    assert (answer["segment"], answer["name"], answer["holds"], answer["member"]) == (
        "browsers", "Browsers", True, True)
    assert answer["since"] == iso(B + 6 * MIN) and answer["entered_by"] == profile.entered_by["browsers"]
    tree = nodes(answer["condition"])
    assert set(tree) == {"condition.all", "condition.all[0].count", "condition.all[1].not",
                         "condition.all[1].not.recency", "condition.all[2].not", "condition.all[2].not.recency"}
    count = tree["condition.all[0].count"]
    assert (count["operator"], count["value"], count["comparison"], count["threshold"], count["result"]) == (
        "metric", 6, ">=", 5.0, True)
    assert count["description"] == "count(Product Viewed within 30d) >= 5"
    # All six views are in the day bucket of B: a 30-day window of day buckets lets it go 30 days later.
    assert count["changes_at"] == iso(B + 30 * DAY)
    recency = tree["condition.all[1].not.recency"]
    assert (recency["operator"], recency["value"], recency["result"]) == ("recency", None, False)
    assert tree["condition.all[1].not"]["result"] is True and tree["condition.all"]["operator"] == "all"
    assert answer["changes_at"] == tree["condition.all"]["changes_at"] == iso(B + 30 * DAY)
    assert "note" not in answer and "group" not in answer


def test_a_time_condition_shows_how_long_ago_and_when_it_ends() -> None:
    profile = buyer(1, 40.0)
    answer = explain_segment(CATALOGUE, "recent-buyers", profile, B + 2 * DAY, None)
    recency = answer["condition"]
    assert (recency["operator"], recency["value"], recency["threshold"], recency["result"]) == (
        "recency", 2.0, 7.0, True)
    assert recency["changes_at"] == iso(B + 7 * DAY) and recency["detail"] == {"event_at": iso(B)}
    assert answer["group"] == "buyer-lifecycle" and answer["outranked_by"] is None


def test_an_absence_shows_the_trigger_and_when_it_becomes_true() -> None:
    profile = folded((B, [track("Product Added", B, product_id="p1", price=10)]))
    answer = explain_segment(CATALOGUE, "cart-abandoners", profile, B + HOUR, None)
    absence = answer["condition"]
    assert (absence["value"], absence["threshold"], absence["result"], absence["changes_at"]) == (
        round(HOUR / DAY, 4), 2.0, False, iso(B + 2 * DAY))
    assert absence["detail"] == {"triggered_at": iso(B), "missing_last_at": None, "expire_days": 30.0}
    assert (answer["holds"], answer["member"]) == (False, False)


def test_a_ratio_shows_both_counts() -> None:
    emails = [track("Email Opened", B, email_id="e1"), track("Email Opened", B + MIN, email_id="e2"),
              track("Email Link Clicked", B + 2 * MIN, email_id="e2")]
    answer = explain_segment(CATALOGUE, "highly-engaged", folded((B + 2 * MIN, emails)), B + HOUR, None)
    ratio = answer["condition"]
    assert (ratio["value"], ratio["threshold"], ratio["comparison"], ratio["result"]) == (0.5, 0.5, ">", False)
    assert ratio["detail"] == {"numerator": 1, "denominator": 2, "min_denominator": 2}


def test_channels_and_lifetime_figures_show_their_values() -> None:
    profile = folded((B, [track("Page Viewed", B, WEB)]))
    tree = nodes(explain_segment(CATALOGUE, "web-only-visitors", profile, B + DAY, None)["condition"])
    web, mobile = tree["condition.all[0].channel"], tree["condition.all[1].not.channel"]
    assert (web["value"], web["threshold"], web["result"], web["changes_at"]) == (1.0, 30.0, True, iso(B + 30 * DAY))
    assert (mobile["value"], mobile["threshold"], mobile["result"]) == (None, None, False)
    lifecycle = nodes(explain_segment(CATALOGUE, "high-value-recent-buyer", buyer(4, 150.0), B + DAY,
                                      None)["condition"])
    assert [(n["value"], n["threshold"], n["result"]) for n in
            (lifecycle["condition.all[0].rfm"], lifecycle["condition.all[2].rfm"])] == [(4, 3.0, True),
                                                                                        (600.0, 500.0, True)]


def test_a_percentile_shows_the_population_threshold_and_none_without_statistics() -> None:
    profile = buyer(2, 150.0)
    stats = PopulationStats.from_values({"revenue": [0, 10, 20, 50, 80, 100, 120, 200, 250, 400]})
    with_stats = explain_segment(CATALOGUE, "premium-customers", profile, B + DAY, stats)["condition"]
    assert (with_stats["operator"], with_stats["value"], with_stats["threshold"], with_stats["result"]) == (
        "percentile", 300.0, stats.threshold("revenue", 20), True)
    assert with_stats["threshold"] == 200
    without = explain_segment(CATALOGUE, "premium-customers", profile, B + DAY, None)["condition"]
    assert (without["value"], without["threshold"], without["result"]) == (300.0, None, False)


def test_a_static_segment_shows_the_stored_membership() -> None:
    engine = Engine(CATALOGUE)
    profile = Profile("u1")
    engine.set_manual(profile, "vip", True, B)
    answer = explain_segment(CATALOGUE, "vip", profile, B + 1, None)
    assert (answer["condition"]["operator"], answer["condition"]["value"], answer["holds"]) == ("manual", True, True)
    assert (answer["entered_by"], answer["since"]) == ("manual", iso(B))


# ---- exclusive groups and stored memberships ---------------------------------------------------------------


def test_a_segment_outranked_in_its_group_names_the_winner() -> None:
    profile = buyer(4, 150.0)  # high-value-recent-buyer (priority 100) and recent-buyers (80) both hold
    answer = explain_segment(CATALOGUE, "recent-buyers", profile, B + DAY, None)
    assert (answer["holds"], answer["member"], answer["outranked_by"]) == (True, False, "high-value-recent-buyer")
    assert "note" not in answer
    winner = explain_segment(CATALOGUE, "high-value-recent-buyer", profile, B + DAY, None)
    assert (winner["member"], winner["outranked_by"]) == (True, None)


def test_a_deadline_not_yet_swept_is_noted() -> None:
    profile = buyer(1, 40.0)
    answer = explain_segment(CATALOGUE, "recent-buyers", profile, B + 8 * DAY, None)
    assert (answer["holds"], answer["member"]) == (False, True)
    assert answer["note"] == (f"changed at {iso(B + 7 * DAY)} with no new event:"
                              " the timers re-evaluate it within a minute")
    Engine(CATALOGUE).evaluate(profile, B + 8 * DAY, touched=set())
    assert "note" not in explain_segment(CATALOGUE, "recent-buyers", profile, B + 8 * DAY, None)


def test_new_statistics_not_yet_applied_are_noted() -> None:
    profile = buyer(2, 150.0)
    stats = PopulationStats.from_values({"revenue": [0, 10, 20, 50, 80, 100, 120, 200, 250, 400]})
    answer = explain_segment(CATALOGUE, "premium-customers", profile, B + DAY, stats)
    assert (answer["holds"], answer["member"]) == (True, False)
    assert answer["note"].startswith("not re-evaluated since its inputs changed")
    Engine(CATALOGUE, stats).evaluate(profile, B + DAY, touched={"stats"})
    assert "note" not in explain_segment(CATALOGUE, "premium-customers", profile, B + DAY, stats)


def test_a_profile_not_evaluated_against_the_current_catalogue_is_noted() -> None:
    profile = folded((B, [track("Page Viewed", B, WEB)]))
    edited = [(s.source, {**s.definition, "condition": {"channel": {"name": "web"}}}
               if s.id == "web-only-visitors" else s.definition) for s in CATALOGUE.all_segments.values()]
    catalogue = build_catalogue(edited, version=2)
    profile.memberships.pop("web-only-visitors")  # the edit now holds for them: stored as not yet a member
    answer = explain_segment(catalogue, "web-only-visitors", profile, B + DAY, None)
    assert answer["note"].startswith("not yet evaluated against the current catalogue")


def test_without_profiling_consent_nothing_is_evaluated_and_the_note_says_why() -> None:
    profile = buyer(1, 40.0)
    profile.consent.record({"analytics": False}, B + HOUR, "web", "m-consent")
    engine = Engine(CATALOGUE, consent_policy=ConsentPolicy(uses={"profiling": ("analytics",)}))
    refusal = engine.profiling_refusal(profile)
    assert refusal is not None
    engine.evaluate(profile, B + HOUR, None)
    answer = explain_segment(CATALOGUE, "recent-buyers", profile, B + HOUR, None, refusal)
    assert (answer["holds"], answer["member"]) == (True, False)
    assert answer["note"] == f"no segment is evaluated for this customer: {refusal}"


def test_a_merged_profile_points_to_the_customer_it_went_to() -> None:
    profile = buyer(1, 40.0)
    profile.merged_into = "other"
    profile.memberships.clear()
    assert "merged into another customer" in explain_segment(CATALOGUE, "recent-buyers", profile, B + DAY,
                                                             None)["note"]


@pytest.mark.parametrize("segment_id", ["no-such-segment", "disabled-one"])
def test_an_unknown_or_disabled_segment_is_refused_without_echoing_the_id(segment_id: str) -> None:
    catalogue = build_catalogue([("d.yaml", {"id": "disabled-one", "name": "D", "enabled": False,
                                             "condition": {"rfm": {"metric": "orders", "gte": 1}}})])
    with pytest.raises(UnknownSegment) as raised:
        explain_segment(catalogue, segment_id, Profile("u1"), B, None)
    assert segment_id not in str(raised.value)
