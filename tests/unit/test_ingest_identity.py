"""Identity in the ingest: merges that lose nothing and count nothing twice, under redelivery and concurrency.

Each test runs ``ingest_batch`` with an :class:`Identity` over the in-memory id map and profile store, with the
repository's segments. Concurrency is simulated by running a second batch inside a store call of the first (the
moment a second Lambda would interleave), which is where the protocol's conditional writes decide.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.identity import customer_digest, identifier_digest
from cdp.core.merge import MERGED
from cdp.core.profile import Profile
from cdp.pipeline.identity import Identity
from cdp.pipeline.ingest import BatchResult, StreamRecord, ingest_batch
from cdp.ports import QuarantinedRecord, TransientError
from cdp_dev.memory import MemoryIdentityMap, MemoryProfileStore

ENGINE = Engine(load_catalogue(Path(__file__).resolve().parents[2] / "segments"))
B = 1_767_225_600  # 2026-01-01T00:00:00Z
NOW = B + 3600
_sequence = itertools.count(1)


class Quarantine:
    def __init__(self) -> None:
        self.records: list[QuarantinedRecord] = []

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.records += records


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def track(anonymous_id: str, name: str, at: float, message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "anonymousId": anonymous_id, "messageId": message_id,
            "timestamp": iso(at), "properties": properties}


def identify(user_id: str, anonymous_id: str | None, at: float, message_id: str, **traits: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "identify", "userId": user_id, "messageId": message_id, "timestamp": iso(at),
                               "traits": traits}
    if anonymous_id:
        message["anonymousId"] = anonymous_id
    return message


def alias(previous_id: str, user_id: str, at: float, message_id: str) -> dict[str, Any]:
    return {"type": "alias", "previousId": previous_id, "userId": user_id, "messageId": message_id,
            "timestamp": iso(at)}


def record(message: dict[str, Any], shard: str = "shardId-0") -> StreamRecord:
    key = message.get("userId") or message.get("anonymousId") or ""
    return StreamRecord(str(next(_sequence)), key, json.dumps(message).encode(), shard=shard)


def browsing(anonymous_id: str) -> list[dict[str, Any]]:
    """The issue's visitor: six products viewed, an $80 order, then a product left in the cart."""
    views = [track(anonymous_id, "Product Viewed", B + i * 60, f"{anonymous_id}-view-{i}", product_id=f"p{i}")
             for i in range(6)]
    return [*views, track(anonymous_id, "Order Completed", B + 600, f"{anonymous_id}-order",
                          order_id=f"o-{anonymous_id}", revenue=80.0),
            track(anonymous_id, "Product Added", B + 900, f"{anonymous_id}-add", product_id="sku-9", price=20.0)]


class World:
    """The store, the id map and the policy one deployment shares."""

    def __init__(self, merge_known: bool = False, max_merges: int = 100) -> None:
        self.store = MemoryProfileStore()
        self.id_map = MemoryIdentityMap()
        self.identity = Identity(self.id_map, merge_known=merge_known, max_merges=max_merges)
        self.quarantine = Quarantine()

    def ingest(self, messages: Sequence[dict[str, Any]] | Sequence[StreamRecord], store: Any = None,
               shard: str = "shardId-0") -> BatchResult:
        records = [m if isinstance(m, StreamRecord) else record(m, shard) for m in messages]
        return ingest_batch(records, ENGINE, store or self.store, self.quarantine, FixedClock(NOW),
                            identity=self.identity)

    def profile(self, customer_id: str) -> Profile:
        return self.store.load([customer_id])[customer_id]


def views(profile: Profile) -> int:
    counter = profile.counter("Product Viewed")
    return counter.count if counter else 0


def test_an_anonymous_visitor_who_identifies_brings_everything_to_the_known_customer() -> None:
    world = World()
    world.ingest(browsing("anon-1"))
    anonymous_segments = set(world.profile("anon-1").memberships)
    assert anonymous_segments  # the visitor qualified for something before logging in

    result = world.ingest([identify("user-1", "anon-1", B + 1000, "identify-1", email="Ada@Example.com")])

    assert result.failed == [] and result.identity.merges == 1 and result.identity.absorbed == 1
    known, anonymous = world.profile("user-1"), world.profile("anon-1")
    assert (known.orders, known.revenue, views(known)) == (1, 8000, 6)
    assert known.cart["sku-9"][0] == 1 and known.order_completed("o-anon-1")
    assert known.traits["email"] == "Ada@Example.com" and known.known
    assert [entry[0] for entry in known.merges] == ["anon-1"] and known.merges[0][2] == "identify-1"
    assert anonymous.merged_into == "user-1" and anonymous.memberships == {} and anonymous.deadlines == {}
    exits = {(t.customer_id, t.segment_id) for t in result.identity.transitions if t.kind == "exited"}
    assert exits == {("anon-1", segment) for segment in anonymous_segments}
    assert all(t.clause == MERGED for t in result.identity.transitions)
    entered = {t.segment_id for t in result.transitions if t.customer_id == "user-1" and t.clause == MERGED}
    assert anonymous_segments <= entered | set(known.memberships)
    assert set(known.memberships) >= anonymous_segments - {"potential-abandoners"}
    assert world.id_map.items[customer_digest("anon-1")]["message_id"] == "identify-1"
    assert world.id_map.items[identifier_digest("email", " ada@example.com")]["canonical"] == "user-1"


def test_later_events_for_merged_ids_go_to_the_known_customers_with_two_map_reads_for_the_whole_batch() -> None:
    """40 events of two merged ids cost two batched reads of the id map, not one per event: the first reads the
    batch's ids and finds their links; the second reads the customers they point to, to see that neither was
    merged in turn (nothing found: the chain ends)."""
    world = World()
    world.ingest([*browsing("anon-1"), *browsing("anon-2")])
    world.ingest([identify("user-1", "anon-1", B + 1000, "i-1"), alias("anon-2", "user-2", B + 1000, "a-2")])
    reads = world.id_map.reads

    late = [track(anon, "Product Viewed", B + 2000 + i, f"{anon}-late-{i}", product_id="p-late")
            for i in range(20) for anon in ("anon-1", "anon-2")]
    result = world.ingest(late)

    assert result.failed == [] and result.applied == 40 and result.identity.forwarded == 40
    assert world.id_map.reads - reads == result.identity.map_reads == 2
    assert views(world.profile("user-1")) == 26 and views(world.profile("user-2")) == 26
    assert views(world.profile("anon-1")) == 6  # frozen as it was merged


def test_redelivering_the_merge_and_the_history_counts_nothing_twice() -> None:
    world = World()
    history = [record(m) for m in browsing("anon-1")]
    merge = record(identify("user-1", "anon-1", B + 1000, "identify-1"))
    world.ingest(history)
    world.ingest([merge])
    before = world.profile("user-1").to_item()

    again = world.ingest([*history, merge, record(identify("user-1", "anon-1", B + 1000, "identify-1"))])

    assert again.applied == 0 and again.identity.merges == 0 and again.identity.absorbed == 0
    after = world.profile("user-1")
    assert (after.orders, after.revenue, views(after)) == (1, 8000, 6)
    assert {k: v for k, v in after.to_item().items() if k not in ("v", "tx", "ua")} == \
        {k: v for k, v in before.items() if k not in ("v", "tx", "ua")}


def test_a_merge_in_the_same_batch_as_the_anonymous_history_takes_all_of_it() -> None:
    world = World()
    result = world.ingest([*browsing("anon-1"), identify("user-1", "anon-1", B + 1000, "identify-1"),
                           track("anon-1", "Product Viewed", B + 1100, "after", product_id="p1")])

    assert result.failed == [] and result.identity.merges == 1
    known = world.profile("user-1")
    assert (known.orders, views(known)) == (1, 7)
    assert world.profile("anon-1").merged_into == "user-1"


def test_two_known_customers_are_not_merged_unless_configured() -> None:
    world = World()
    world.ingest([identify("user-1", None, B, "i-1", plan="pro"), identify("user-2", None, B, "i-2")])
    result = world.ingest([alias("user-1", "user-2", B + 10, "a-1")])
    assert result.identity.refused == {"known": 1} and result.identity.merges == 0
    assert world.profile("user-1").merged_into is None

    permissive = World(merge_known=True)
    permissive.ingest([identify("user-1", None, B, "i-1", plan="pro"), identify("user-2", None, B, "i-2")])
    assert permissive.ingest([alias("user-1", "user-2", B + 10, "a-1")]).identity.merges == 1
    assert permissive.profile("user-2").traits["plan"] == "pro"


def test_a_chain_resolves_to_one_canonical_customer() -> None:
    world = World(merge_known=True)
    world.ingest(browsing("a"))
    world.ingest([identify("b", "a", B + 1000, "m-1")])
    world.ingest([alias("b", "c", B + 1100, "m-2")])
    result = world.ingest([track("a", "Product Viewed", B + 1200, "late", product_id="p1")])

    assert result.failed == [] and result.identity.map_reads <= 3
    assert views(world.profile("c")) == 7 and world.profile("c").orders == 1
    assert world.profile("c").merged_ids() == {"a", "b"}
    assert world.profile("b").merged_into == "c" and world.profile("a").merged_into == "b"


def test_merges_beyond_the_limit_are_refused_and_counted() -> None:
    world = World(max_merges=2)
    results = [world.ingest([identify("user-1", f"anon-{i}", B + i, f"i-{i}")]) for i in range(3)]
    assert [r.identity.merges for r in results] == [1, 1, 0]
    assert results[2].identity.refused == {"limit": 1}
    assert world.profile("user-1").merged_ids() == {"anon-0", "anon-1"}


class InterleavingStore(MemoryProfileStore):
    """A store that runs ``between`` once, just before the first put of ``customer_id``: another Lambda's batch
    landing between this batch's read and its write."""

    def __init__(self, shared: MemoryProfileStore, customer_id: str, between: Callable[[], object]) -> None:
        super().__init__()
        self.shared, self.customer_id, self.between = shared, customer_id, between

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        return self.shared.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        if profile.customer_id == self.customer_id and self.between is not None:
            between, self.between = self.between, None  # type: ignore[assignment]
            between()
        self.shared.save(profile, expected_version)


def test_an_event_written_while_its_profile_is_merged_away_is_forwarded_and_counted_once() -> None:
    world = World()
    world.ingest(browsing("anon-1"))
    merge = lambda: world.ingest([identify("user-1", "anon-1", B + 1000, "identify-1")], shard="shardId-1")  # noqa: E731
    racing = InterleavingStore(world.store, "anon-1", merge)

    result = world.ingest([track("anon-1", "Order Completed", B + 1001, "o-2", order_id="o-2", revenue=20.0)],
                          store=racing)

    assert result.failed == [] and result.identity.forwarded == 1 and result.conflicts >= 1
    known = world.profile("user-1")
    assert (known.orders, known.revenue) == (2, 10000)
    assert world.profile("anon-1").orders == 1  # frozen before the racing order


def test_a_merge_that_lands_while_the_known_customer_is_written_is_absorbed_once() -> None:
    world = World()
    world.ingest(browsing("anon-1"))
    world.ingest([identify("user-1", None, B, "i-0")])
    merge = lambda: world.ingest([identify("user-1", "anon-1", B + 1000, "identify-1")], shard="shardId-1")  # noqa: E731
    racing = InterleavingStore(world.store, "user-1", merge)

    result = world.ingest([identify("user-1", None, B + 1001, "i-2", plan="pro"),
                           track("anon-1", "Product Viewed", B + 1002, "late", product_id="p1")], store=racing)

    assert result.failed == []
    known = world.profile("user-1")
    assert (known.orders, views(known), known.traits.get("plan")) == (1, 7, "pro")
    assert [entry[0] for entry in known.merges] == ["anon-1"]
    assert views(world.profile("anon-1")) == 6 and world.profile("anon-1").merged_into == "user-1"


def test_two_concurrent_merges_of_one_visitor_into_two_customers_leave_it_in_one() -> None:
    world = World()
    world.ingest(browsing("anon-1"))
    inner: list[BatchResult] = []
    second = lambda: inner.append(world.ingest([identify("user-2", "anon-1", B + 1000, "i-2")],  # noqa: E731
                                               shard="shardId-1"))
    racing = InterleavingStore(world.store, "anon-1", second)

    first = world.ingest([identify("user-1", "anon-1", B + 1000, "i-1")], store=racing)

    # The first to link the visitor wins; the other finds it belongs to a known customer and refuses.
    assert first.failed == [] and first.identity.merges == 1
    assert inner[0].failed == [] and inner[0].identity.refused == {"known": 1}
    assert [c for c in ("user-1", "user-2") if world.profile(c).orders == 1] == ["user-1"]
    assert world.profile("anon-1").merged_into == "user-1"


class FailingSaves(MemoryProfileStore):
    def __init__(self, shared: MemoryProfileStore, customer_id: str) -> None:
        super().__init__()
        self.shared, self.customer_id = shared, customer_id

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        return self.shared.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        if profile.customer_id == self.customer_id:
            raise TransientError("throttled")
        self.shared.save(profile, expected_version)


def test_a_merge_stopped_after_its_link_is_completed_by_the_retry_or_by_any_later_message() -> None:
    for finish in ("retry", "later message"):
        world = World()
        world.ingest(browsing("anon-1"))
        merge = record(identify("user-1", "anon-1", B + 1000, "identify-1"))

        stopped = world.ingest([merge], store=FailingSaves(world.store, "anon-1"))
        assert stopped.failed == [merge.sequence]
        assert customer_digest("anon-1") in world.id_map.items and world.profile("anon-1").merged_into is None

        later = [merge] if finish == "retry" else [
            record(track("anon-1", "Product Viewed", B + 1100, "late", product_id="p1"))]
        done = world.ingest(later)
        assert done.failed == [] and done.identity.absorbed == 1
        known = world.profile("user-1")
        assert known.orders == 1 and views(known) == 6 + (finish == "later message")
        assert world.profile("anon-1").merged_into == "user-1"


def test_an_email_index_that_cannot_be_written_retries_the_customer_and_nothing_else() -> None:
    world = World()

    class Down(MemoryIdentityMap):
        def index(self, digest: str, kind: str, canonical: str, at: float) -> None:
            raise TransientError("throttled")

    down = Down()
    world.identity = Identity(down)
    failed = world.ingest([identify("user-1", None, B, "i-1", email="a@example.com"),
                           identify("user-2", None, B, "i-2")])
    assert len(failed.failed) == 1 and "user-1" not in world.store.load(["user-1"])
    assert world.profile("user-2").known

    world.identity = Identity(world.id_map)
    assert world.ingest([identify("user-1", None, B, "i-1", email="a@example.com")]).failed == []
    assert world.id_map.items[identifier_digest("email", "a@example.com")]["canonical"] == "user-1"


def test_a_chain_merged_in_the_batch_that_names_its_first_id_counts_that_id_once() -> None:
    world = World(merge_known=True)
    world.ingest(browsing("a"))
    world.ingest([identify("b", "a", B + 1000, "m-1")])

    result = world.ingest([track("a", "Product Viewed", B + 1200, "late", product_id="z"),
                           alias("b", "c", B + 1100, "m-2")])

    assert result.failed == []
    merged = world.profile("c")
    assert (views(merged), merged.orders, merged.revenue) == (7, 1, 8000)  # a's history through b, once
    assert merged.merged_ids() == {"a", "b"}
