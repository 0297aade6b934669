"""An engine that holds an older catalogue than the one that last evaluated a profile changes nothing of it.

Functions pick up a new catalogue version within their check interval, so for a moment one function can hold an
older version than another (or than a backfill job). Folding events with the older one would drop the counters
and latches only the newer one keeps; evaluating with it could re-enter a deleted segment or leave a new one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.core.catalogue import Catalogue, build_catalogue
from cdp.core.engine import Engine, NewerCatalogue
from cdp.core.events import normalise
from cdp.core.profile import Profile
from cdp.pipeline.ingest import StreamRecord, ingest_batch
from cdp_dev.memory import MemoryProfileStore

T = 1_790_000_000
SHOE_FANS = {"id": "shoe-fans", "name": "Shoe fans", "condition": {"count": {
    "event": "Product Viewed", "where": {"category": "shoes"}, "within": "24h", "gte": 3}}}
VIEWERS = {"id": "viewers", "name": "Viewers", "condition": {"count": {"event": "Product Viewed", "gte": 1}}}


def catalogue(version: int, *definitions: dict[str, Any]) -> Catalogue:
    return build_catalogue([(f"test:{d['id']}", d) for d in definitions], version=version)


def view(who: str, at: int, number: int, category: str = "shoes") -> Any:
    return normalise({"type": "track", "event": "Product Viewed", "userId": who, "messageId": f"{who}-{number}",
                      "timestamp": datetime.fromtimestamp(at, UTC).isoformat(),
                      "properties": {"product_id": f"p{number}", "category": category}})


def evaluated_by_version_2() -> tuple[Profile, Engine]:
    newer = Engine(catalogue(2, VIEWERS, SHOE_FANS))
    profile = Profile("ann")
    newer.apply(profile, [view("ann", T, 1), view("ann", T + 60, 2)], T + 60)
    return profile, newer


def test_an_older_engine_refuses_to_fold_and_the_newer_counters_survive() -> None:
    profile, newer = evaluated_by_version_2()
    before = profile.to_item()
    older = Engine(catalogue(1, VIEWERS))

    with pytest.raises(NewerCatalogue, match="version 2; this function holds 1"):
        older.apply(profile, [view("ann", T + 120, 3, "hats")], T + 120)

    assert profile.to_item() == before
    newer.apply(profile, [view("ann", T + 180, 4)], T + 180)  # the third shoe view, under the newer catalogue
    assert "shoe-fans" in profile.memberships


def test_an_older_engine_defers_every_time_and_the_newer_one_then_evaluates_in_full() -> None:
    profile, newer = evaluated_by_version_2()
    memberships = dict(profile.memberships)
    older = Engine(catalogue(1, VIEWERS))

    for moment in (T + 120, T + 180):  # deferring once must not let the next evaluation through
        assert older.evaluate(profile, moment) == []
        assert profile.memberships == memberships and profile.catalogue == "2.stale"

    assert newer.evaluate(profile, T + 240, set()) == []  # not its fingerprint: a full evaluation
    assert profile.catalogue == newer.catalogue.fingerprint and profile.memberships == memberships


def record(sequence: int, event: dict[str, Any]) -> StreamRecord:
    import json

    return StreamRecord(f"{sequence:021d}", event["userId"], json.dumps(event).encode(), "kinesis:test", "", "s-0")


class Kept:
    def put(self, records: Any) -> None:
        raise AssertionError("nothing is quarantined")


class Clock:
    def now(self) -> float:
        return float(T + 300)


def test_ingest_retries_the_records_of_a_newer_profile_unless_the_refresh_brings_the_newer_catalogue() -> None:
    profile, _ = evaluated_by_version_2()
    profile.version = 1
    store = MemoryProfileStore()
    store.put(profile.to_item())
    event = {"type": "track", "event": "Product Viewed", "userId": "ann", "messageId": "ann-3",
             "timestamp": datetime.fromtimestamp(T + 200, UTC).isoformat(),
             "properties": {"product_id": "p3", "category": "shoes"}}
    engine = Engine(catalogue(1, VIEWERS))

    stale = ingest_batch([record(1, event)], engine, store, Kept(), Clock(), newer_catalogue=lambda: None)
    assert list(stale.failure_reasons.values()) == ["the profile was evaluated by catalogue version 2; this "
                                                    "function holds 1"]
    assert store.item("ann") == profile.to_item()

    def refresh() -> None:
        engine.catalogue = catalogue(2, VIEWERS, SHOE_FANS)

    fresh = ingest_batch([record(1, event)], engine, store, Kept(), Clock(), newer_catalogue=refresh)
    assert fresh.failure_reasons == {} and fresh.applied == 1
    assert "shoe-fans" in (store.item("ann") or {}).get("m", {})
