"""Explain agrees with the engine, for random customers of the shipped catalogue (segments/).

Random histories are replayed in event time through the engine (timers included), with random population
statistics, then every segment is evaluated in full at a random later moment. For every segment:

* explain's ``holds`` is the condition's result, and the stored membership is ``holds`` (in an exclusive
  group: ``holds`` and not outranked), with no note;
* its ``changes_at`` is the deadline the engine keeps for the segment;
* every node's result is the node's own, and the value and threshold it shows give that result by the
  node's comparison (so the value shown is the one the node compares);
* every membership keeps the clause it was entered by: a node of its condition.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.core.catalogue import Segment, load_catalogue
from cdp.core.engine import Engine
from cdp.core.events import Event, normalise
from cdp.core.explain import explain_segment
from cdp.core.language import COMPARATORS, Condition, compare_values
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile, ProfileView
from cdp_dev.replay import Replay

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
CATALOGUE = load_catalogue(SEGMENTS)
MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
CONTEXTS = {"web": {"library": {"name": "analytics.js"}}, "mobile": {"library": {"name": "analytics-ios"}},
            "server": {}}
TRACKS = ("Product Viewed", "Product Added", "Order Completed", "Email Opened", "Email Link Clicked",
          "Signed Up", "Newsletter Subscribed", "Page Viewed")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Up to 30 events over 40 days, mostly within minutes of each other (so short windows fill)."""
    events = []
    at = B
    for number in range(draw(st.integers(0, 30))):
        at += draw(st.sampled_from([0, 30, MIN, 5 * MIN, HOUR, DAY, 3 * DAY, 9 * DAY]))
        name = draw(st.sampled_from(TRACKS))
        properties: dict[str, Any] = {}
        if name == "Order Completed":
            properties = {"order_id": f"o{number}", "revenue": draw(st.sampled_from([0, 15, 90, 260, 700]))}
        elif name in ("Product Added", "Product Viewed"):
            properties = {"product_id": f"p{draw(st.integers(0, 2))}", "price": 20}
        elif name.startswith("Email"):
            properties = {"email_id": f"e{draw(st.integers(0, 2))}"}
        events.append(normalise({"type": "track", "event": name, "messageId": f"h-{number}", "userId": "u1",
                                 "timestamp": iso(at), "properties": properties,
                                 "context": CONTEXTS[draw(st.sampled_from(sorted(CONTEXTS)))]}))
    return events


population = st.none() | st.lists(st.sampled_from([0, 15, 90, 260, 700, 1400]), min_size=1, max_size=20).map(
    lambda revenues: PopulationStats.from_values({"revenue": revenues, "orders": [r // 100 for r in revenues],
                                                  "average_order_value": revenues}))


def node_paths(node: Condition) -> dict[str, Condition]:
    return {item.path: item for item in node.walk()}


def explained_nodes(tree: dict[str, Any]) -> list[dict[str, Any]]:
    return [tree, *(node for child in tree["children"] for node in explained_nodes(child))]


def shown_result(node: dict[str, Any]) -> bool | None:
    """The result the node's value and threshold give by its comparison (None: not a comparing leaf)."""
    operator, value, threshold = node["operator"], node["value"], node["threshold"]
    if operator == "trait":
        return compare_values(node_op(node), value, threshold)
    if operator in ("rfm", "metric"):
        return value is not None and COMPARATORS[node_op(node)](value, threshold)
    if operator == "ratio":
        detail = node["detail"]
        return (detail["denominator"] >= detail["min_denominator"]
                and COMPARATORS[node_op(node)](value, threshold))
    if operator == "percentile":
        return threshold is not None and value > 0 and value > threshold
    return None


SYMBOL_OPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "==": "eq", "!=": "ne"}


def node_op(node: dict[str, Any]) -> str:
    return str(SYMBOL_OPS.get(node["comparison"], node["comparison"]))


def check_segment(segment: Segment, profile: Profile, view: ProfileView, answer: dict[str, Any]) -> None:
    holds, deadline = segment.condition.evaluate(view)
    assert answer["holds"] is holds
    expected = holds and (segment.group is None or answer["outranked_by"] is None)
    assert answer["member"] is expected is (segment.id in profile.memberships), segment.id
    assert "note" not in answer, answer.get("note")
    stored = profile.deadlines.get(segment.id)
    assert answer["changes_at"] == (iso(stored) if stored is not None else None)
    assert stored == (math.ceil(deadline) if deadline is not None else None)
    conditions = node_paths(segment.condition)
    explained = explained_nodes(answer["condition"])
    assert [node["path"] for node in explained] == list(conditions)
    for node in explained:
        assert node["result"] is conditions[node["path"]].evaluate(view)[0], node["path"]
        shown = shown_result(node)
        assert shown is None or shown is node["result"], node
    if answer["member"]:
        assert answer["entered_by"] in set(conditions) | {"manual"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), population, st.sampled_from([0, MIN, HOUR, DAY, 6 * DAY, 29 * DAY, 200 * DAY]),
       st.booleans())
def test_explain_agrees_with_the_engine(events: list[Event], stats: PopulationStats | None, later: int,
                                        vip: bool) -> None:
    engine = Engine(CATALOGUE, stats)
    replay = Replay(engine)
    for event in events:
        replay.apply([event])
    profile = replay.profile("u1")
    if vip:
        engine.set_manual(profile, "vip", True, replay.now)
    now = max(replay.now, B) + later
    replay.advance_to(now)
    engine.evaluate(profile, now, None)
    view = ProfileView(profile, now, stats)
    for segment in CATALOGUE.segments.values():
        check_segment(segment, profile, view, explain_segment(CATALOGUE, segment.id, profile, now, stats))
    assert set(profile.entered_by) == set(profile.memberships)
