"""Identity: requests per merge, requests per event after a merge, and profile bytes after 100 merges.

Counted (not timed) through the ingest with the in-memory store and id map, on real-shaped histories: each
anonymous visitor views products, adds one to the cart and orders once, then identifies (with an email address)
in a batch of identifies from many visitors; afterwards the visitors keep sending events under their anonymous
ids, a few per customer per batch, next to as many customers who never merged (the baseline).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.profile import MAX_MERGES, Profile, item_size
from cdp.pipeline.identity import Identity
from cdp.pipeline.ingest import BatchResult, StreamRecord, ingest_batch
from cdp.ports import QuarantinedRecord
from cdp_dev.memory import MemoryIdentityMap, MemoryProfileStore

SEGMENTS = Path(__file__).resolve().parents[1] / "segments"
B = 1_767_225_600  # 2026-01-01T00:00:00Z


class CountingStore(MemoryProfileStore):
    """The in-memory store, counting its requests (a load is one BatchGetItem, a save one PutItem)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.saves = 0

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        self.loads += 1
        return super().load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        self.saves += 1
        super().save(profile, expected_version)


class Kept:
    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        raise AssertionError(f"nothing is quarantined here: {records[0].reason}")


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _track(anonymous_id: str, event: str, at: float, message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "anonymousId": anonymous_id, "messageId": message_id,
            "timestamp": _iso(at), "properties": properties,
            "context": {"library": {"name": "analytics.js"}, "page": {"url": "https://shop.example/p"}}}


def _history(anonymous_id: str, start: float) -> list[dict[str, Any]]:
    views = [_track(anonymous_id, "Product Viewed", start + i * 60, f"{anonymous_id}-v{i}", product_id=f"sku-{i}",
                    price=25.0, name=f"Product {i}", category="shoes") for i in range(5)]
    return [*views, _track(anonymous_id, "Product Added", start + 400, f"{anonymous_id}-a", product_id="sku-1",
                           price=25.0),
            _track(anonymous_id, "Order Completed", start + 500, f"{anonymous_id}-o", order_id=f"o-{anonymous_id}",
                   revenue=64.5, products=[{"product_id": "sku-1", "price": 25.0, "quantity": 2}])]


def _identify(user_id: str, anonymous_id: str, at: float) -> dict[str, Any]:
    return {"type": "identify", "userId": user_id, "anonymousId": anonymous_id, "messageId": f"id-{anonymous_id}",
            "timestamp": _iso(at), "traits": {"email": f"{user_id}@example.com", "first_name": "Ada"}}


class Run:
    def __init__(self, engine: Engine) -> None:
        self.engine, self.store, self.id_map = engine, CountingStore(), MemoryIdentityMap()
        self.identity = Identity(self.id_map)
        self.sequence = 0

    def ingest(self, messages: Sequence[dict[str, Any]]) -> BatchResult:
        records = []
        for message in messages:
            self.sequence += 1
            key = message.get("userId") or message["anonymousId"]
            records.append(StreamRecord(str(self.sequence), key, json.dumps(message).encode(), shard="shardId-0"))
        result = ingest_batch(records, self.engine, self.store, Kept(), FixedClock(B + 30 * 86_400),
                              identity=self.identity)
        assert not result.failed, result.failure_reasons
        return result

    def requests(self) -> dict[str, int]:
        return {"profile_loads": self.store.loads, "profile_puts": self.store.saves, "map_reads": self.id_map.reads,
                "map_puts": self.id_map.writes}


def _delta(after: dict[str, int], before: dict[str, int], per: int) -> dict[str, float]:
    return {name: (after[name] - before[name]) / per for name in after}


def measure(visitors: int = 400, batch: int = 100) -> dict[str, Any]:
    engine = Engine(load_catalogue(SEGMENTS))
    run = Run(engine)
    anonymous = [f"anon-{n:05d}" for n in range(visitors)]
    plain = [f"plain-{n:05d}" for n in range(visitors)]
    per_batch = max(1, batch // 7)  # seven events per history
    for start in range(0, visitors, per_batch):
        run.ingest([m for a in anonymous[start:start + per_batch] for m in _history(a, B + start)])
        run.ingest([m for a in plain[start:start + per_batch] for m in _history(a, B + start)])

    before = run.requests()
    merges = 0
    for start in range(0, visitors, batch):
        merges += run.ingest([_identify(f"user-{a}", a, B + 5 * 86_400) for a in anonymous[start:start + batch]
                              ]).identity.merges
    per_merge = _delta(run.requests(), before, merges)

    after_merge = _events_after(run, anonymous, batch, B + 6 * 86_400)
    baseline = _events_after(run, plain, batch, B + 6 * 86_400)
    return {"visitors": visitors, "merges": merges, "requests_per_merge": per_merge,
            "requests_per_event_after_merge": after_merge, "requests_per_event_never_merged": baseline,
            "extra_requests_per_event_after_merge": sum(after_merge.values()) - sum(baseline.values()),
            "profile_bytes_after_100_merges": _bytes_after_merges(engine, MAX_MERGES)}


def _events_after(run: Run, ids: Sequence[str], batch: int, at: float) -> dict[str, float]:
    """Requests per event for batches of ``batch`` events, two per customer, under the given ids."""
    before, events = run.requests(), 0
    for start in range(0, len(ids), batch // 2):
        share = ids[start:start + batch // 2]
        messages = [_track(a, "Product Viewed", at + start + k, f"{a}-late-{k}", product_id="sku-9", price=30.0)
                    for k in range(2) for a in share]
        events += run.ingest(messages).applied
    return _delta(run.requests(), before, events)


def _bytes_after_merges(engine: Engine, merges: int) -> dict[str, int]:
    """One customer who merges ``merges`` visitors, each with a history; then one more, which is refused."""
    run = Run(engine)
    for n in range(merges + 1):
        anonymous = f"device-{n:03d}-{'x' * 24}"  # about the length of an analytics.js anonymous id
        run.ingest(_history(anonymous, B + n * 3600))
        refused = run.ingest([_identify("user-with-many-devices", anonymous, B + n * 3600 + 900)]).identity.refused
    profile = run.store.load(["user-with-many-devices"])["user-with-many-devices"]
    return {"bytes": item_size(profile.to_item()), "merged_ids": len(profile.merges),
            "refused_after": sum(refused.values()), "bytes_of_merged_ids": item_size({"mg": profile.merges})}
