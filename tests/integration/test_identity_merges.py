"""Merges through the ingest handler under moto: the profiles table, the id map and the table stream together.

Concurrency is made deterministic: a second invocation (another shard's batch) runs inside the first one's
PutItem of a profile, the moment at which two Lambdas race; the conditional writes of DynamoDB (moto) decide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from cdp.aws.dynamo import DynamoProfileStore
from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
from cdp.core.identity import customer_digest
from cdp.core.profile import Profile
from cdp.pipeline.identity import Identity
from tests.integration.support import PROFILES_TABLE, REGION, Stack, failures, iso, kinesis_envelope

IDENTITY_TABLE = "cdp-identity"


@pytest.fixture
def identity(stack: Stack) -> Iterator[Identity]:
    boto3.client("dynamodb", region_name=REGION).create_table(
        TableName=IDENTITY_TABLE, KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    yield Identity(DynamoIdentityMap(bind_identity_map(IDENTITY_TABLE, REGION)))


def anonymous(event: str, at: float, message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "anonymousId": "anon-7", "messageId": message_id, "timestamp": iso(at),
            "properties": properties}


def merge(at: float) -> dict[str, Any]:
    return {"type": "identify", "userId": "user-7", "anonymousId": "anon-7", "messageId": "identify-7",
            "timestamp": iso(at), "traits": {"email": "seven@example.com"}}


class Interleaving(DynamoProfileStore):
    """The profiles table, running ``between`` once just before the first put of ``customer_id``."""

    def __init__(self, client: Any, customer_id: str, between: Callable[[], object]) -> None:
        super().__init__(client, PROFILES_TABLE)
        self.customer_id, self.between = customer_id, between

    def save(self, profile: Profile, expected_version: int) -> None:
        if profile.customer_id == self.customer_id and self.between is not None:
            between, self.between = self.between, None  # type: ignore[assignment]
            between()
        super().save(profile, expected_version)


def history(stack: Stack) -> list[dict[str, Any]]:
    start = stack.clock.now() - 3600
    views = [anonymous("Product Viewed", start + i, f"v-{i}", product_id=f"p{i}", price=10.0) for i in range(4)]
    return [*views, anonymous("Product Added", start + 10, "add", product_id="p1", price=10.0),
            anonymous("Order Completed", start + 20, "order", order_id="o-7", revenue=30.0)]


def views(profile: Profile) -> int:
    counter = profile.counter("Product Viewed")
    return counter.count if counter else 0


def test_a_merge_racing_an_anonymous_event_on_another_shard_loses_and_doubles_nothing(
        stack: Stack, identity: Identity) -> None:
    now = stack.clock.now()
    assert failures(stack.ingest(kinesis_envelope(history(stack), shard=1), identity=identity)) == []
    racing_merge = lambda: stack.ingest(kinesis_envelope([merge(now - 60)], shard=0),  # noqa: E731
                                        identity=identity)
    store = Interleaving(stack.dynamodb, "anon-7", racing_merge)

    late = kinesis_envelope([anonymous("Order Completed", now - 30, "order-2", order_id="o-8", revenue=12.0)],
                            shard=1)
    assert failures(stack.ingest(late, identity=identity, store=store)) == []
    again = kinesis_envelope([merge(now - 60), *history(stack)], shard=0)  # everything redelivered
    assert failures(stack.ingest(again, identity=identity)) == []

    known, frozen = stack.profile("user-7"), stack.profile("anon-7")
    assert (known.orders, known.revenue, views(known)) == (2, 4200, 4)
    assert frozen.merged_into == "user-7" and frozen.orders == 1 and frozen.memberships == {}
    assert [entry[0] for entry in known.merges] == ["anon-7"]
    assert identity.id_map.links([customer_digest("anon-7")]) == {customer_digest("anon-7"): "user-7"}


def test_the_table_stream_carries_the_merge_as_exits_and_entries_with_clause_merged(
        stack: Stack, identity: Identity) -> None:
    assert failures(stack.ingest(kinesis_envelope(history(stack), shard=1), identity=identity)) == []
    stack.stream_records()  # what the history made
    assert failures(stack.ingest(kinesis_envelope([merge(stack.clock.now() - 60)]), identity=identity)) == []

    records = stack.stream_records()
    by_customer = {r["dynamodb"]["Keys"]["customer_id"]["S"]: r["dynamodb"]["NewImage"] for r in records}
    assert set(by_customer) == {"anon-7", "user-7"}
    exits = by_customer["anon-7"]["tx"]["L"]
    assert exits and all(t["L"][3]["S"] == "merged" and t["L"][1]["S"] == "exited" for t in exits)
    entries = [t["L"] for t in by_customer["user-7"]["tx"]["L"]]
    assert entries and all(t[3]["S"] == "merged" for t in entries)
    assert {t[0]["S"] for t in entries} >= {t["L"][0]["S"] for t in exits} - {"potential-abandoners"}
    assert by_customer["anon-7"]["mt"] == {"S": "user-7"}


def known(event: str, at: float, message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "user-7", "messageId": message_id, "timestamp": iso(at),
            "properties": properties}


def test_a_known_side_event_racing_the_merge_on_another_shard_is_applied_once_to_the_merged_customer(
        stack: Stack, identity: Identity) -> None:
    """The known customer's batch read ``user-7``; the merge (another shard) links, freezes ``anon-7`` and writes
    ``user-7`` before that batch puts: its put is refused (the version moved), it reloads the merged profile and
    applies its order there."""
    now = stack.clock.now()
    assert failures(stack.ingest(kinesis_envelope(history(stack), shard=1), identity=identity)) == []
    racing_merge = lambda: stack.ingest(kinesis_envelope([merge(now - 60)], shard=0),  # noqa: E731
                                        identity=identity)
    store = Interleaving(stack.dynamodb, "user-7", racing_merge)
    order = known("Order Completed", now - 30, "known-order", order_id="o-9", revenue=50.0)
    assert failures(stack.ingest(kinesis_envelope([order], shard=2), identity=identity, store=store)) == []
    assert store.between is None  # the merge did run inside the known batch's write

    again = kinesis_envelope([merge(now - 60), *history(stack), order], shard=3)  # everything redelivered
    assert failures(stack.ingest(again, identity=identity)) == []

    customer, frozen = stack.profile("user-7"), stack.profile("anon-7")
    assert (customer.orders, customer.revenue, views(customer)) == (2, 8000, 4)  # $30 anonymous + $50 known
    assert [entry[0] for entry in customer.merges] == ["anon-7"]
    assert frozen.merged_into == "user-7" and frozen.memberships == {}


def test_two_merges_of_one_visitor_into_two_customers_make_one_and_count_nothing_twice(
        stack: Stack, identity: Identity) -> None:
    """``anon-7`` is identified as ``user-7`` on one shard and as ``user-8`` on another at once: the id map's
    conditional link lets one win; the other is then a merge of two known customers, refused."""
    now = stack.clock.now()
    assert failures(stack.ingest(kinesis_envelope(history(stack), shard=1), identity=identity)) == []
    other = {**merge(now - 50), "userId": "user-8", "messageId": "identify-8", "traits": {"email": "8@example.com"}}
    inner: list[dict[str, Any]] = []
    racing = lambda: inner.append(stack.ingest(kinesis_envelope([other], shard=2),  # noqa: E731
                                               identity=identity))
    store = Interleaving(stack.dynamodb, "anon-7", racing)  # the freeze of anon-7 by the user-7 merge
    outer = stack.ingest(kinesis_envelope([merge(now - 60)], shard=0), identity=identity, store=store)
    assert store.between is None and len(inner) == 1
    retried = failures(inner[0]) + failures(outer)
    for _ in range(3):  # a merge message handed back is redelivered until it settles
        if not retried:
            break
        retried = failures(stack.ingest(kinesis_envelope([other, merge(now - 60)], shard=4), identity=identity))
    assert retried == []
    # Everything again, on yet another shard: nothing changes.
    assert failures(stack.ingest(kinesis_envelope([merge(now - 60), other, *history(stack)], shard=5),
                                 identity=identity)) == []

    seven, eight, frozen = stack.profile("user-7"), stack.profile("user-8"), stack.profile("anon-7")
    winner = frozen.merged_into
    assert winner in {"user-7", "user-8"}
    live = [seven, eight]
    assert sum(p.orders for p in live) == 1 and sum(p.revenue for p in live) == 3000
    assert sum(views(p) for p in live) == 4
    assert [[entry[0] for entry in p.merges] for p in live] == [["anon-7"] if p.customer_id == winner else []
                                                                 for p in live]
    assert identity.id_map.links([customer_digest("anon-7")]) == {customer_digest("anon-7"): winner}
