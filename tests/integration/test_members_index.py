"""The DynamoDB members index under moto: conditional membership writes that yield their size delta, one size
update per touched counter per batch, and sizes exact under redelivery and reordering."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cdp.aws.members import DynamoMembersIndex
from cdp.pipeline.changes import MembershipChange, publish_changes
from tests.unit.test_members_sizes import CATALOGUE, Bus, Delivery, change, check_exact, history

from .support import MEMBER_SHARDS, MEMBERS_TABLE, InjectedError, Stack

T = 1_790_000_000


def index_of(stack: Stack, shards: int = MEMBER_SHARDS) -> DynamoMembersIndex:
    return DynamoMembersIndex(stack.dynamodb, MEMBERS_TABLE, shards, sleep=lambda _: None)


def test_a_membership_write_yields_the_size_delta_it_made(stack: Stack) -> None:
    index = index_of(stack)

    def at(kind: str, version: int) -> MembershipChange:
        return MembershipChange("ada", "vip", kind, T + version, version, "c", "r")

    assert index.write(at("entered", 2)) == 1
    assert index.write(at("entered", 2)) == 0  # redelivered
    assert index.write(at("exited", 1)) == 0  # older, arriving late
    assert index.write(at("exited", 3)) == -1
    assert index.write(at("exited", 4)) == 0  # already out (a tombstone)
    assert index.write(at("entered", 5)) == 1
    assert index.page("vip", 10, None) == ([{"customer_id": "ada", "since": T + 5}], None)
    assert stack.counter.of("dynamodb") == {"PutItem": 6, "Query": 16}


def test_a_batch_costs_one_write_per_change_and_one_update_per_touched_segment(stack: Stack) -> None:
    index = index_of(stack, shards=2)
    records = [change(f"c-{n:02d}", "vip", "entered", 1) for n in range(30)]

    result = publish_changes(records, CATALOGUE, index, Bus(), "bus", concurrency=8)

    assert result.failed == []
    assert stack.counter.of("dynamodb") == {"PutItem": 30, "UpdateItem": 1}  # never TransactWriteItems
    assert index.size("vip") == 30


def test_a_size_update_is_resent_while_throttled(stack: Stack) -> None:
    index = index_of(stack)
    InjectedError(stack.dynamodb, "UpdateItem", "ProvisionedThroughputExceededException", limit=2)

    result = publish_changes([change("ada", "vip", "entered", 1)], CATALOGUE, index, Bus(), "bus")

    assert result.failed == [] and result.sizes_lost == {}
    assert stack.counter.of("dynamodb") == {"PutItem": 1, "UpdateItem": 3}
    assert index.size("vip") == 1


class Doomed:
    """Makes the members index's PutItem of chosen changes fail once each, as throttled writes do."""

    def __init__(self, stack: Stack) -> None:
        self.keys: set[tuple[str, str, str]] = set()
        self.error = InjectedError(stack.dynamodb, "PutItem", "ProvisionedThroughputExceededException", self.matches)

    def doom(self, change: MembershipChange) -> None:
        self.keys.add((change.segment_id, change.customer_id, str(change.version)))

    def matches(self, request: dict[str, Any]) -> bool:
        item = request.get("Item", {})
        key = (item["segment_shard"]["S"].split("#")[0], item["customer_id"]["S"], item["v"]["N"])
        if key in self.keys:
            self.keys.discard(key)
            return True
        return False


@pytest.mark.parametrize(("seed", "shards", "concurrency"), [(1, 16, 8), (2, 4, 1), (3, 1, 16)])
def test_sizes_and_listings_are_exact_under_redelivery_and_reordering(stack: Stack, seed: int, shards: int,
                                                                     concurrency: int) -> None:
    rng = random.Random(seed)
    past = history(rng, customers=25, writes=150)
    index = index_of(stack, shards)
    doomed = Doomed(stack)
    delivery = Delivery(rng, index, doomed.doom, concurrency)

    delivery.stream(past.records)

    check_exact(index, past.final, shards)
    assert set(stack.counter.of("dynamodb")) <= {"PutItem", "UpdateItem", "BatchGetItem", "Query"}
    assert delivery.invocations > 20 and doomed.error.injected > 3 and any(past.final.values())
