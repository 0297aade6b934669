"""Consent in the profile: recorded by the fold, kept by both encoders, merged, obeyed by the engine's
profiling use, and announced by the changes function (consent changes, deleted profiles)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.aws.dynamo import deserialise_item, serialise_item
from cdp.aws.profile_item import STREAM_ATTRIBUTES, decode_profile, decode_stream_image, encode_profile
from cdp.config import ConfigError, IngestConfig, TimersConfig
from cdp.core.catalogue import build_catalogue
from cdp.core.consent import MAX_CONSENT_HISTORY, ConsentPolicy, ConsentState
from cdp.core.engine import CONSENT, ENTERED, EXITED, Engine
from cdp.core.events import Event, normalise
from cdp.core.merge import absorb, freeze_merged, merge_profiles
from cdp.core.profile import Profile, item_size
from cdp.pipeline.changes import (
    DETAIL_TYPES,
    InvalidImage,
    MembershipChange,
    TableChange,
    bus_entry,
    check_image,
    diff,
    publish_changes,
)
from cdp_dev.memory import MemoryMembersIndex

MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def message(at: float, *, kind: str = "track", event: str = "Product Viewed", consent: Any = None,
            channel: str | None = None, message_id: str | None = None, user: str = "u1") -> Event:
    raw: dict[str, Any] = {"type": kind, "messageId": message_id or f"msg-{next(_ids)}", "userId": user,
                           "timestamp": iso(at)}
    if kind == "track":
        raw["event"] = event
    if channel:
        raw["channel"] = channel
    if consent is not None:
        raw["context"] = {"consent": {"categoryPreferences": consent}}
    return normalise(raw)


VIEWERS = ("viewers.yaml", {"id": "viewers", "name": "Viewers",
                            "condition": {"count": {"event": "Product Viewed", "within": "7d", "gte": 1}}})
QUIET = ("quiet.yaml", {"id": "quiet", "name": "Quiet",  # true with no input touched: needs a full evaluation
                        "condition": {"not": {"count": {"event": "Order Completed", "within": "30d", "gte": 1}}}})
CATALOGUE = build_catalogue([VIEWERS, QUIET])
POLICY = ConsentPolicy.parse({"default": "denied", "uses": {"profiling": ["analytics"], "meta": ["advertising"]}})


# ---- events and the fold --------------------------------------------------------------------------------


def test_any_message_carries_its_category_preferences_lower_cased() -> None:
    event = message(B, kind="page", consent={"Analytics": True, "advertising": False, "odd": "yes"})
    assert event.consent == {"analytics": True, "advertising": False}
    assert message(B).consent is None


def test_the_fold_records_preferences_with_time_channel_and_message_id() -> None:
    profile = Profile("u1")
    outcome = Engine(CATALOGUE).apply(profile, [message(B, consent={"Analytics": True}, channel="browser",
                                                        message_id="m-1")], B + 1)
    assert outcome.changed
    consent = profile.consent
    assert (consent.categories, consent.at, consent.source, consent.message_id) == ({"analytics": True}, B, "web",
                                                                                    "m-1")
    assert consent.history == [[B, "web", "m-1", {"analytics": True}]]


def test_older_preferences_never_overwrite_newer_ones_in_one_batch_or_later() -> None:
    engine = Engine(CATALOGUE)
    profile = Profile("u1")
    engine.apply(profile, [message(B + HOUR, consent={"analytics": False}, message_id="new"),
                           message(B, consent={"analytics": True}, message_id="old")], B + 2 * HOUR)
    assert profile.consent.categories == {"analytics": False}  # folded in time order: the newer wins
    engine.apply(profile, [message(B + MIN, consent={"analytics": True}, message_id="late")], B + 3 * HOUR)
    assert profile.consent.categories == {"analytics": False} and profile.consent.message_id == "new"
    assert [entry[2] for entry in profile.consent.history] == ["old", "new"]


def test_a_restatement_moves_the_time_but_adds_no_history() -> None:
    engine = Engine(CATALOGUE)
    profile = Profile("u1")
    engine.apply(profile, [message(B, consent={"analytics": True})], B)
    engine.apply(profile, [message(B + HOUR, consent={"analytics": True}, message_id="again")], B + HOUR)
    assert profile.consent.at == B + HOUR and profile.consent.message_id == "again"
    assert len(profile.consent.history) == 1


def test_the_consent_preference_updated_event_is_an_ordinary_track_event_too() -> None:
    profile = Profile("u1")
    Engine(CATALOGUE).apply(profile, [message(B, event="Segment Consent Preference Updated",
                                              consent={"advertising": True})], B)
    assert profile.consent.categories == {"advertising": True}
    counter = profile.counter("Segment Consent Preference Updated")
    assert counter is not None and counter.count == 1


@pytest.mark.parametrize(("name", "reason"), [("Unsubscribed", "unsubscribed"), ("Email Marked as Spam", "spam")])
def test_the_email_specs_unsubscribe_events_unsubscribe_the_customer(name: str, reason: str) -> None:
    profile = Profile("u1")
    Engine(CATALOGUE).apply(profile, [message(B + HOUR, event=name)], B + HOUR)
    assert (profile.consent.unsubscribed_at, profile.consent.unsubscribed_reason) == (B + HOUR, reason)
    Engine(CATALOGUE).apply(profile, [message(B, event="Unsubscribed")], B + 2 * HOUR)
    assert profile.consent.unsubscribed_at == B  # the earliest time is kept
    assert profile.consent.categories == {}  # an unsubscribe states no preferences


def test_an_event_of_that_name_that_is_not_a_track_unsubscribes_nobody() -> None:
    profile = Profile("u1")
    Engine(CATALOGUE).apply(profile, [message(B, kind="page")], B)
    assert profile.consent.empty


def test_the_history_is_capped_so_the_item_stays_bounded() -> None:
    profile = Profile("u1")
    engine = Engine(CATALOGUE)
    many = {f"category-{n:02d}-{'x' * 50}": n % 2 == 0 for n in range(40)}  # beyond the categories kept
    for n in range(MAX_CONSENT_HISTORY + 15):
        engine.apply(profile, [message(B + n, consent={"flip": n % 2 == 0, **many})], B + n)
    assert len(profile.consent.history) == MAX_CONSENT_HISTORY
    assert profile.consent.history[-1][0] == B + MAX_CONSENT_HISTORY + 14
    assert item_size({"cs": profile.consent.as_item()}) < 64 * 1024


# ---- both encoders ---------------------------------------------------------------------------------------


def consenting(customer: str = "u1") -> Profile:
    profile = Profile(customer)
    profile.consent.record({"analytics": True, "advertising": False}, B + 0.25, "web", "m-1")
    profile.consent.record({"analytics": True, "advertising": True}, B + 60.5, "server", "m-2")
    profile.consent.unsubscribe(B + 90, "spam")
    return profile


def test_consent_round_trips_through_the_plain_item_and_the_wire_encoding() -> None:
    profile = consenting()
    item = profile.to_item()
    assert set(item["cs"]) == {"c", "a", "s", "m", "u", "r", "h"}
    for back in (Profile.from_item(item), decode_profile(encode_profile(profile)),
                 Profile.from_item(deserialise_item(serialise_item(item)))):
        assert back.consent.as_json() == profile.consent.as_json()
    assert repr(encode_profile(profile)) == repr(serialise_item(item))


def test_no_consent_writes_no_attribute_and_a_stored_one_stays_packed_until_read() -> None:
    assert "cs" not in Profile("u1").to_item()
    assert "cs" not in encode_profile(Profile("u1"))
    stored = encode_profile(consenting())
    profile = decode_profile(stored)
    assert "cs" in profile.unread()
    assert encode_profile(profile)["cs"] is stored["cs"]  # written back as read
    assert profile.consent.unsubscribed_reason == "spam"
    assert "cs" not in profile.unread()


def test_the_stream_image_carries_consent() -> None:
    assert "cs" in STREAM_ATTRIBUTES
    image = decode_stream_image(encode_profile(consenting()))
    assert image["cs"]["c"] == {"analytics": True, "advertising": True}


# ---- merge -----------------------------------------------------------------------------------------------


def test_a_merge_takes_the_latest_preferences_both_histories_and_any_unsubscribe() -> None:
    known, anonymous = Profile("known"), Profile("anon")
    known.consent.record({"analytics": True}, B, "web", "k-1")
    anonymous.consent.record({"analytics": False}, B + HOUR, "mobile", "a-1")
    anonymous.consent.unsubscribe(B + 2 * HOUR, "unsubscribed")
    merged = merge_profiles(known, anonymous, B + DAY, catalogue=CATALOGUE)
    assert merged.consent.categories == {"analytics": False} and merged.consent.source == "mobile"
    assert [entry[2] for entry in merged.consent.history] == ["k-1", "a-1"]
    assert merged.consent.unsubscribed_at == B + 2 * HOUR
    assert known.consent.categories == {"analytics": True}  # neither input changed


def test_a_merge_keeps_the_known_sides_newer_preferences() -> None:
    known, anonymous = Profile("known"), Profile("anon")
    known.consent.record({"analytics": False}, B + HOUR, "web", "k-1")
    anonymous.consent.record({"analytics": True}, B, "web", "a-1")
    assert merge_profiles(known, anonymous, B + DAY, catalogue=CATALOGUE).consent.categories == {"analytics": False}


# ---- the engine's profiling use --------------------------------------------------------------------------


def test_without_profiling_consent_the_customer_is_in_no_segment() -> None:
    engine = Engine(CATALOGUE, consent_policy=POLICY)
    profile = Profile("u1")
    outcome = engine.apply(profile, [message(B)], B)
    assert outcome.transitions == [] and profile.memberships == {} and profile.deadlines == {}
    assert outcome.changed  # the event itself is still folded
    assert profile.counter("Product Viewed") is not None


def test_withdrawn_profiling_consent_exits_every_segment_with_clause_consent_and_its_return_evaluates_all() -> None:
    engine = Engine(CATALOGUE, consent_policy=POLICY)
    profile = Profile("u1")
    entered = engine.apply(profile, [message(B, consent={"analytics": True})], B)
    assert {(t.segment_id, t.kind) for t in entered.transitions} == {("viewers", ENTERED), ("quiet", ENTERED)}
    assert profile.deadlines
    withdrawn = engine.apply(profile, [message(B + MIN, kind="page", consent={"analytics": False})], B + MIN)
    assert {(t.segment_id, t.kind, t.clause) for t in withdrawn.transitions} == {
        ("viewers", EXITED, CONSENT), ("quiet", EXITED, CONSENT)}
    assert {t.reason for t in withdrawn.transitions} == {POLICY.refusal("profiling", profile.consent)}
    assert "analytics" in withdrawn.transitions[0].reason
    assert profile.memberships == {} and profile.deadlines == {} and profile.catalogue == ""
    assert profile.transitions == [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in withdrawn.transitions]
    # Nothing enters while consent is missing, whatever the events.
    assert engine.apply(profile, [message(B + 2 * MIN)], B + 2 * MIN).transitions == []
    # Consent given again by a message no segment reads: every segment is evaluated all the same.
    back = engine.apply(profile, [message(B + 3 * MIN, kind="identify", consent={"analytics": True})], B + 3 * MIN)
    assert {(t.segment_id, t.kind) for t in back.transitions} == {("viewers", ENTERED), ("quiet", ENTERED)}
    assert profile.catalogue == CATALOGUE.fingerprint


def test_the_timers_evaluation_obeys_the_policy_too() -> None:
    engine = Engine(CATALOGUE, consent_policy=POLICY)
    profile = Profile("u1")
    engine.apply(profile, [message(B, consent={"analytics": True})], B)
    profile.consent.categories = {}  # as an item edited elsewhere: "analytics" never stated, denied by default
    exits = engine.evaluate(profile, B + HOUR, set())
    assert {(t.segment_id, t.clause) for t in exits} == {("viewers", CONSENT), ("quiet", CONSENT)}
    assert profile.next_deadline is None


def test_a_policy_that_leaves_profiling_free_never_decodes_the_consent() -> None:
    stored = encode_profile(consenting())
    profile = decode_profile(stored)
    Engine(CATALOGUE, consent_policy=ConsentPolicy.parse({"uses": {"meta": ["advertising"]}})).evaluate(
        profile, B, None)
    assert "cs" in profile.unread() and profile.memberships


def test_a_merge_without_profiling_consent_exits_with_clause_consent() -> None:
    engine = Engine(CATALOGUE, consent_policy=POLICY)
    known, anonymous = Profile("known"), Profile("anon")
    engine.apply(known, [message(B, consent={"analytics": True}, user="known")], B)
    engine.apply(anonymous, [message(B + MIN, consent={"analytics": False}, user="anon")], B + MIN)
    freeze_merged(anonymous, "known", B + 2 * MIN)
    absorbed, transitions = absorb(known, [anonymous], engine, B + 2 * MIN, {"anon": "m"})
    assert absorbed == 1 and {t.clause for t in transitions} == {CONSENT} and not known.memberships


# ---- configuration ---------------------------------------------------------------------------------------


def base_env(tmp_path: Any) -> dict[str, str]:
    return {"PROFILES_TABLE": "p", "QUARANTINE_BUCKET": "q", "IDENTITY_TABLE": "i", "DUE_INDEX_NAME": "due",
            "CATALOGUE_PATH": str(tmp_path)}


def test_the_policy_comes_from_consent_policy_and_is_empty_when_unset(tmp_path: Any) -> None:
    env = base_env(tmp_path)
    assert IngestConfig.from_env(env).consent_policy is None
    assert Engine(CATALOGUE, consent_policy=None).profiling_refusal(Profile("u1")) is None
    env["CONSENT_POLICY"] = "{}"
    assert IngestConfig.from_env(env).consent_policy == ConsentPolicy()
    env["CONSENT_POLICY"] = json.dumps(POLICY.as_json())
    assert IngestConfig.from_env(env).consent_policy == POLICY
    assert TimersConfig.from_env(env).consent_policy == POLICY


@pytest.mark.parametrize("raw", ["{not json", "[]", '{"uses": {"profiling": "analytics"}}', '{"default": "maybe"}'])
def test_a_bad_policy_stops_the_cold_start_naming_the_variable(tmp_path: Any, raw: str) -> None:
    with pytest.raises(ConfigError, match="CONSENT_POLICY"):
        IngestConfig.from_env({**base_env(tmp_path), "CONSENT_POLICY": raw})
    with pytest.raises(ConfigError, match="CONSENT_POLICY"):
        TimersConfig.from_env({**base_env(tmp_path), "CONSENT_POLICY": raw})


# ---- changes ---------------------------------------------------------------------------------------------


def stream_image(version: int, members: dict[str, int], consent: ConsentState | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"customer_id": "u1", "v": version, "ua": B + version, "m": members,
                             "t": {"email": "ada@example.com"}}
    if consent is not None and not consent.empty:
        image["cs"] = consent.as_item()
    return image


def state(categories: dict[str, bool], at: float, unsubscribed: float | None = None) -> ConsentState:
    consent = ConsentState()
    consent.record(categories, at, "web", f"m-{at}")
    if unsubscribed is not None:
        consent.unsubscribe(unsubscribed, "unsubscribed")
    return consent


def test_a_consent_change_is_announced_for_every_segment_kept() -> None:
    old = stream_image(3, {"viewers": B, "quiet": B, "gone": B}, state({"advertising": True}, B))
    new = stream_image(4, {"viewers": B, "quiet": B, "fresh": B + 4}, state({"advertising": False}, B + 4))
    changes = diff(old, new)
    consent = [c for c in changes if c.kind == "consent"]
    assert [(c.segment_id, c.clause, c.reason) for c in consent] == [
        ("quiet", "consent", "consent changed"), ("viewers", "consent", "consent changed")]
    assert {(c.segment_id, c.kind) for c in changes if c.kind != "consent"} == {("fresh", "entered"),
                                                                                 ("gone", "exited")}
    ids = {c.event_id for c in changes}
    assert len(ids) == len(changes)  # a consent change's id differs from the entry's and the exit's
    assert consent[0].event_id == MembershipChange("u1", "quiet", "consent", 0, 4, "", "").event_id


@pytest.mark.parametrize(("before", "after", "announced"), [
    (state({"advertising": True}, B), state({"advertising": True}, B + 9), False),  # restated: time only
    (state({"advertising": True}, B), state({"advertising": True}, B, unsubscribed=B + 9), True),
    (None, state({"advertising": True}, B + 9), True),
    (state({"advertising": True}, B), state({"advertising": True, "analytics": False}, B + 9), True),
    (None, None, False),
])
def test_only_a_change_of_categories_or_of_the_unsubscribe_is_announced(
        before: ConsentState | None, after: ConsentState | None, announced: bool) -> None:
    changes = diff(stream_image(1, {"viewers": B}, before), stream_image(2, {"viewers": B}, after))
    assert [c.kind for c in changes] == (["consent"] if announced else [])


def test_a_new_profile_with_consent_announces_no_consent_change() -> None:
    assert [c.kind for c in diff(None, stream_image(1, {"viewers": B}, state({"a": True}, B)))] == ["entered"]


def test_a_deleted_profile_leaves_its_segments_with_clause_deleted() -> None:
    changes = diff(stream_image(5, {"viewers": B, "quiet": B}, state({"a": True}, B)), None)
    assert {(c.segment_id, c.kind, c.clause, c.reason, c.version) for c in changes} == {
        ("viewers", "exited", "deleted", "the profile was deleted", 6),
        ("quiet", "exited", "deleted", "the profile was deleted", 6)}


def test_a_consent_change_goes_on_the_bus_but_never_into_the_members_index() -> None:
    class Bus:
        def __init__(self) -> None:
            self.entries: list[dict[str, Any]] = []

        def publish(self, entries: Any) -> list[int]:
            self.entries += entries
            return []

    index, bus = MemoryMembersIndex(), Bus()
    old = stream_image(3, {"viewers": B, "quiet": B}, state({"advertising": True}, B))
    new = stream_image(4, {"viewers": B, "quiet": B}, state({"advertising": False}, B + 4))
    result = publish_changes([TableChange("r-1", old, new)], CATALOGUE, index, bus, "cdp-bus",
                             published_segments=frozenset({"viewers"}))
    assert result.failed == [] and [c.segment_id for c in result.published] == ["viewers"]
    [entry] = bus.entries
    detail = json.loads(entry["Detail"])
    assert entry["DetailType"] == DETAIL_TYPES["consent"] == "Segment Consent Changed"
    assert detail["change"] == "consent" and detail["clause"] == {"path": "consent", "reason": "consent changed"}
    assert detail["segment"] == {"id": "viewers", "name": "Viewers"} and detail["membership_version"] == 4
    assert detail["identifiers"] and "ada@example.com" not in entry["Detail"]
    assert index.size("viewers") == 0 and index.size("quiet") == 0  # nothing written


def test_bus_entry_of_a_consent_change_has_the_entered_shape() -> None:
    change = MembershipChange("u1", "viewers", "consent", B, 4, "consent", "consent changed")
    entered = MembershipChange("u1", "viewers", "entered", B, 4, "consent", "consent changed")
    new = stream_image(4, {"viewers": B})
    consent, entry = (json.loads(bus_entry(c, new, CATALOGUE, "b")["Detail"]) for c in (change, entered))
    assert set(consent) == set(entry) and consent["change"] == "consent"


@pytest.mark.parametrize(("consent", "rule"), [
    ("granted", "cs must be a map"),
    ({"c": ["analytics"]}, "cs.c must map"),
    ({"c": {"analytics": "yes"}}, "cs.c must map"),
    ({"u": -5}, "cs.u must be a time"),
])
def test_a_consent_attribute_of_another_shape_is_refused_naming_it(consent: Any, rule: str) -> None:
    with pytest.raises(InvalidImage, match=rule):
        check_image({"customer_id": "u1", "cs": consent}, "new")
    check_image(stream_image(1, {}, state({"a": True}, B, unsubscribed=B)), "new")  # the real shape passes
