"""Profile retention: a profile no event touched for ``retention_days`` expires. The timers sweep makes its
exits (clause ``expired``) at the start of the day that many days after its last event; DynamoDB's TTL
(``xp``, a day later) may delete the item only after that."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import build_catalogue
from cdp.core.clock import FixedClock
from cdp.core.consent import ConsentPolicy
from cdp.core.engine import DAY, ENTERED, EXITED, EXPIRED, EXPIRY, TTL_GRACE, Engine
from cdp.core.events import normalise
from cdp.core.merge import merge_profiles
from cdp.core.profile import Profile
from cdp.pipeline.ingest import StreamRecord, ingest_batch
from cdp.pipeline.timers import sweep
from cdp_dev.memory import MemoryDueIndex, MemoryProfileStore

B = 1_704_844_800 + 9 * 3600  # 2024-01-10T09:00:00Z
MIDNIGHT_AFTER = 1_704_844_800 + DAY
# A condition with no deadline of its own (never seen in the apps), so the expiry is the profile's one deadline.
VIEWERS = ("viewers.yaml", {"id": "viewers", "name": "Viewers",
                            "condition": {"not": {"channel": {"name": "mobile"}}}})
CATALOGUE = build_catalogue([VIEWERS])
_ids = iter(range(10**6))


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def view(at: float, user: str = "u1") -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "messageId": f"m-{next(_ids)}", "userId": user,
            "timestamp": iso(at)}


def test_an_event_sets_the_expiry_to_the_day_after_plus_the_retention_and_the_ttl_a_day_later() -> None:
    profile = Profile("u1")
    Engine(CATALOGUE, retention_days=30).apply(profile, [normalise(view(B))], B)
    assert profile.deadlines[EXPIRY] == MIDNIGHT_AFTER + 30 * DAY
    assert profile.expires_at == MIDNIGHT_AFTER + 30 * DAY + TTL_GRACE
    assert profile.next_deadline == profile.deadlines[EXPIRY]  # the viewers segment holds no deadline of its own


def test_later_events_the_same_day_leave_the_expiry_where_it_is_and_a_later_day_moves_it() -> None:
    engine, profile = Engine(CATALOGUE, retention_days=30), Profile("u1")
    engine.apply(profile, [normalise(view(B))], B)
    first = profile.deadlines[EXPIRY]
    engine.apply(profile, [normalise(view(B + 3600))], B + 3600)
    assert profile.deadlines[EXPIRY] == first  # the due index entry does not move on every write
    engine.apply(profile, [normalise(view(B + 2 * DAY))], B + 2 * DAY)
    assert profile.deadlines[EXPIRY] == first + 2 * DAY


def test_without_a_retention_nothing_expires() -> None:
    profile = Profile("u1")
    Engine(CATALOGUE).apply(profile, [normalise(view(B))], B)
    assert EXPIRY not in profile.deadlines and profile.expires_at is None


def test_at_its_expiry_the_profile_leaves_every_segment_with_clause_expired_and_keeps_its_ttl() -> None:
    engine, profile = Engine(CATALOGUE, retention_days=30), Profile("u1")
    entered = engine.apply(profile, [normalise(view(B))], B)
    assert [(t.segment_id, t.kind) for t in entered.transitions] == [("viewers", ENTERED)]
    expiry, ttl = profile.deadlines[EXPIRY], profile.expires_at
    assert engine.evaluate(profile, expiry - 1, set()) == []  # not yet
    exits = engine.evaluate(profile, expiry, set())
    assert [(t.segment_id, t.kind, t.clause) for t in exits] == [("viewers", EXITED, EXPIRED)]
    assert "30 days" in exits[0].reason
    assert profile.memberships == {} and profile.deadlines == {} and profile.expires_at == ttl
    assert profile.transitions == [["viewers", EXITED, expiry, EXPIRED, exits[0].reason]]


def test_an_event_after_the_expiry_brings_the_customer_back_with_a_full_evaluation() -> None:
    engine, profile = Engine(CATALOGUE, retention_days=30), Profile("u1")
    engine.apply(profile, [normalise(view(B))], B)
    expiry = profile.deadlines[EXPIRY]
    engine.evaluate(profile, expiry, set())
    back = engine.apply(profile, [normalise(view(expiry + 3600))], expiry + 3600)
    assert [(t.segment_id, t.kind) for t in back.transitions] == [("viewers", ENTERED)]
    assert profile.deadlines[EXPIRY] == expiry + DAY + 30 * DAY


def test_a_customer_without_profiling_consent_still_expires() -> None:
    policy = ConsentPolicy.parse({"uses": {"profiling": ["analytics"]}, "default": "denied"})
    engine, profile = Engine(CATALOGUE, consent_policy=policy, retention_days=30), Profile("u1")
    engine.apply(profile, [normalise(view(B))], B)
    assert profile.memberships == {} and profile.deadlines == {EXPIRY: MIDNIGHT_AFTER + 30 * DAY}


def test_both_encoders_keep_the_expiry_and_the_ttl() -> None:
    profile = Profile("u1")
    Engine(CATALOGUE, retention_days=30).apply(profile, [normalise(view(B))], B)
    stored = encode_profile(profile)
    assert stored["xp"] == {"N": str(profile.expires_at)}
    for decoded in (decode_profile(stored), Profile.from_item(profile.to_item())):
        assert decoded.expires_at == profile.expires_at and decoded.deadlines == profile.deadlines


def test_a_merge_keeps_the_later_expiry_of_the_two() -> None:
    engine = Engine(CATALOGUE, retention_days=30)
    known, anonymous = Profile("known"), Profile("anon")
    engine.apply(known, [normalise(view(B, "known"))], B)
    engine.apply(anonymous, [normalise(view(B + 3 * DAY, "anon"))], B + 3 * DAY)
    merged = merge_profiles(known, anonymous, B + 3 * DAY, catalogue=CATALOGUE)
    assert merged.deadlines[EXPIRY] == anonymous.deadlines[EXPIRY]
    assert merged.expires_at == anonymous.expires_at


class NoQuarantine:
    def put(self, records: Any) -> None:
        raise AssertionError(records)


def test_the_timers_sweep_makes_the_exits_of_an_expired_profile() -> None:
    engine, store, clock = Engine(CATALOGUE, retention_days=7), MemoryProfileStore(), FixedClock(B)
    records = [StreamRecord(sequence="1", partition_key="u1", data=json.dumps(view(B)).encode())]
    assert ingest_batch(records, engine, store, NoQuarantine(), clock).failed == []
    expiry = MIDNIGHT_AFTER + 7 * DAY
    clock.set(expiry - 60)
    assert sweep(MemoryDueIndex(store), store, engine, clock).transitions == []
    clock.set(expiry + 30)
    swept = sweep(MemoryDueIndex(store), store, engine, clock)
    assert [(t.customer_id, t.segment_id, t.kind, t.clause) for t in swept.transitions] == [
        ("u1", "viewers", EXITED, EXPIRED)]
    stored = store.load(["u1"])["u1"]
    assert stored.memberships == {} and stored.next_deadline is None and stored.expires_at == expiry + TTL_GRACE
    clock.set(expiry + 3600)
    assert sweep(MemoryDueIndex(store), store, engine, clock).transitions == []  # nothing is due any more


STATIC = build_catalogue([VIEWERS, ("vip.yaml", {"id": "vip", "name": "VIP", "condition": {"manual": True}})])


def test_a_static_segment_edit_sets_the_expiry_of_the_profile_it_creates_or_touches() -> None:
    profile = Profile("u9")
    transition = Engine(STATIC, retention_days=30).set_manual(profile, "vip", True, B)
    assert transition is not None and profile.memberships == {"vip": int(B)}
    assert profile.deadlines[EXPIRY] == MIDNIGHT_AFTER + 30 * DAY and profile.expires_at is not None


def test_a_customer_without_profiling_consent_is_not_added_to_a_static_segment() -> None:
    policy = ConsentPolicy.parse({"uses": {"profiling": ["analytics"]}, "default": "denied"})
    profile = Profile("u9")
    assert Engine(STATIC, consent_policy=policy).set_manual(profile, "vip", True, B) is None
    assert profile.memberships == {}
