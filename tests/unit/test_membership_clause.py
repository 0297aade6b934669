"""Each current membership keeps the clause it was entered by (``Profile.entered_by``, stored as ``mc``), and
transition records may carry a backfill's delivery mode as a 6th element."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp.aws.dynamo import deserialise_item, serialise_item
from cdp.aws.profile_item import decode_profile, decode_stream_image, encode_profile
from cdp.core.catalogue import build_catalogue, load_catalogue
from cdp.core.consent import ConsentPolicy
from cdp.core.engine import ENTERED, EXITED, Engine
from cdp.core.events import Event, normalise
from cdp.core.merge import freeze_merged, merge_profiles
from cdp.core.profile import Profile

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
CATALOGUE = load_catalogue(SEGMENTS)
MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z

_ids = itertools.count()


def track(customer: str, name: str, at: float, **properties: Any) -> Event:
    return normalise({"type": "track", "event": name, "messageId": f"mc-{next(_ids)}", "userId": customer,
                      "timestamp": datetime.fromtimestamp(at, UTC).isoformat(), "properties": properties})


def shopper(customer: str = "u1", engine: Engine | None = None) -> Profile:
    """A customer who added to cart at B and bought at B + 1h: a recent buyer, no longer a potential abandoner."""
    engine = engine or Engine(CATALOGUE)
    profile = Profile(customer)
    engine.apply(profile, [track(customer, "Product Added", B, product_id="p1", price=20)], B)
    engine.apply(profile, [track(customer, "Order Completed", B + HOUR, order_id="o1", revenue=20)], B + HOUR)
    return profile


# ---- the engine keeps it -----------------------------------------------------------------------------------


def test_an_entry_keeps_the_clause_of_its_transition_and_an_exit_drops_it() -> None:
    engine = Engine(CATALOGUE)
    profile = Profile("u1")
    entered = engine.apply(profile, [track("u1", "Product Added", B, product_id="p1", price=20)], B).transitions
    assert [(t.segment_id, t.kind, t.clause) for t in entered] == [
        ("potential-abandoners", ENTERED, "condition.absence")]
    assert profile.entered_by == {"potential-abandoners": "condition.absence"}

    moved = engine.evaluate(profile, B + 2 * DAY, touched=set())  # the timers: on to cart-abandoners
    assert {(t.segment_id, t.kind) for t in moved} == {("potential-abandoners", EXITED),
                                                       ("cart-abandoners", ENTERED)}
    assert profile.entered_by == {"cart-abandoners": "condition.absence"}
    assert profile.memberships == {"cart-abandoners": B + 2 * DAY}


def test_the_clause_of_an_entry_into_a_compound_segment_is_the_leaf_that_decided_it() -> None:
    engine = Engine(CATALOGUE)
    profile = Profile("u1")
    web = normalise({"type": "track", "event": "Page Viewed", "messageId": "mc-web", "userId": "u1",
                     "timestamp": datetime.fromtimestamp(B, UTC).isoformat(),
                     "context": {"library": {"name": "analytics.js"}}})
    entered = engine.apply(profile, [web], B).transitions
    [entry] = [t for t in entered if t.segment_id == "web-only-visitors"]
    assert profile.entered_by["web-only-visitors"] == entry.clause == "condition.all[0].channel"
    mobile = normalise({"type": "track", "event": "Page Viewed", "messageId": "mc-mobile", "userId": "u1",
                        "timestamp": datetime.fromtimestamp(B + MIN, UTC).isoformat(),
                        "context": {"library": {"name": "analytics-ios"}}})
    engine.apply(profile, [mobile], B + MIN)
    assert "web-only-visitors" not in profile.memberships and "web-only-visitors" not in profile.entered_by


def test_a_static_segment_is_entered_by_hand_and_left_by_hand() -> None:
    engine = Engine(CATALOGUE)
    profile = Profile("u1")
    engine.set_manual(profile, "vip", True, B)
    assert profile.entered_by == {"vip": "manual"}
    engine.set_manual(profile, "vip", False, B + 1)
    assert profile.entered_by == {}


def test_a_profiling_refusal_leaves_every_clause_with_its_membership() -> None:
    profile = shopper()
    profile.consent.record({"analytics": False}, B + 2 * HOUR, "web", "m-consent")
    engine = Engine(CATALOGUE, consent_policy=ConsentPolicy(uses={"profiling": ("analytics",)}))
    exits = engine.evaluate(profile, B + 2 * HOUR, None)
    assert {t.segment_id for t in exits} == {"recent-buyers"}
    assert (profile.memberships, profile.entered_by) == ({}, {})


def test_a_segment_removed_from_the_catalogue_takes_its_clause_with_it() -> None:
    profile = shopper()
    rest = [(segment.source, segment.definition) for segment in CATALOGUE.all_segments.values()
            if segment.id != "recent-buyers"]
    exits = Engine(build_catalogue(rest)).evaluate(profile, B + 2 * HOUR, set())
    assert [(t.segment_id, t.clause, t.reason) for t in exits] == [("recent-buyers", "segment", "segment disabled")]
    assert profile.entered_by == {}


def test_a_merge_keeps_the_known_sides_clauses_and_a_frozen_profile_has_none() -> None:
    known, anonymous = shopper("known"), shopper("anon")
    known.entered_by["recent-buyers"] = "condition.recency"
    merged = merge_profiles(known, anonymous, B + 2 * HOUR, catalogue=CATALOGUE)
    assert merged.entered_by == known.entered_by and merged.entered_by is not known.entered_by
    freeze_merged(anonymous, "known", B + 2 * HOUR)
    assert (anonymous.memberships, anonymous.entered_by) == ({}, {})


def test_a_merge_drops_a_clause_without_its_membership() -> None:
    known = shopper("known")
    known.entered_by["gone"] = "condition.trait"
    merged = merge_profiles(known, Profile("anon"), B + 2 * HOUR, catalogue=CATALOGUE)
    assert merged.entered_by == {"recent-buyers": "condition.recency"}


# ---- both encoders store it --------------------------------------------------------------------------------


def test_the_clauses_are_stored_as_mc_and_read_back_by_both_encoders() -> None:
    profile = shopper()
    item = profile.to_item()
    assert item["mc"] == {"recent-buyers": "condition.recency"}
    assert list(item).index("mc") == list(item).index("m") + 1  # in the order of the attribute table
    assert encode_profile(profile)["mc"] == {"M": {"recent-buyers": {"S": "condition.recency"}}}
    assert encode_profile(profile) == serialise_item(item)
    assert Profile.from_item(item).entered_by == profile.entered_by
    assert decode_profile(encode_profile(profile)).entered_by == profile.entered_by


def test_only_the_clauses_of_current_memberships_are_stored() -> None:
    profile = shopper()
    profile.entered_by["left-long-ago"] = "condition.trait"
    assert profile.to_item()["mc"] == {"recent-buyers": "condition.recency"}
    assert encode_profile(profile)["mc"] == {"M": {"recent-buyers": {"S": "condition.recency"}}}
    profile.memberships.clear()
    assert "mc" not in profile.to_item() and "mc" not in encode_profile(profile)


def test_the_clauses_are_in_the_stream_image() -> None:
    image = decode_stream_image(encode_profile(shopper()))
    assert image["mc"] == {"recent-buyers": "condition.recency"}


# ---- transitions of 5 or 6 elements ------------------------------------------------------------------------


def test_transitions_with_a_delivery_mode_round_trip_through_both_encoders() -> None:
    profile = shopper()
    profile.transitions = [["recent-buyers", "entered", B, "condition.recency", "backfill", "none"],
                           ["vip", "exited", B, "manual", "removed by hand"],
                           ["repeat-buyers", "entered", B, "condition.count", "backfill", "audiences"]]
    item = profile.to_item()
    assert Profile.from_item(item).transitions == profile.transitions
    assert Profile.from_item(deserialise_item(serialise_item(item))).transitions == profile.transitions
    assert decode_profile(encode_profile(profile)).transitions == profile.transitions
    assert decode_stream_image(encode_profile(profile))["tx"] == profile.transitions
