"""A function picks up a new catalogue version within 60 s, with no redeploy and no read per event.

The real ingest handler runs under moto with a LiveCatalogue over the DynamoDB definitions store and a fake
monotonic clock (the check interval's). A segment committed at runtime is evaluated by the first invocation
after the next check (at most CATALOGUE_CHECK_SECONDS = 30 s later); the head is read once per check however
many batches arrive in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cdp.aws.definitions import DynamoDefinitionStore, Models
from cdp.core.catalogue import Catalogue, fingerprint_version
from cdp.pipeline.definitions import folder_definitions, save_segments, seed
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.ports import SegmentChange

from .support import (
    DEFINITIONS_TABLE,
    REGION,
    SEGMENTS,
    RequestCounter,
    Stack,
    create_definitions_table,
    failures,
    kinesis_envelope,
    track,
)

BIG_SPENDERS = {"id": "big-spenders", "name": "Big spenders",
                "condition": {"rfm": {"metric": "revenue", "gt": 300}}}


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(stack: Stack) -> Iterator[DynamoDefinitionStore]:
    create_definitions_table(stack.dynamodb)
    store = DynamoDefinitionStore(Models(DEFINITIONS_TABLE, REGION))
    seed(store, folder_definitions(SEGMENTS), "deploy", 0.0)
    yield store


def head_reads(store: DynamoDefinitionStore) -> RequestCounter:
    """Counts the requests of the store's head model (its own pynamodb connection): GetItem is a head read."""
    counter = RequestCounter()
    counter.register(store.models.head._get_connection().connection.client)
    return counter


def instance(store: DynamoDefinitionStore, catalogue: Catalogue, clock: Monotonic) -> LiveCatalogue:
    """One ingest function instance's live catalogue, checked every 30 s (the default)."""
    return LiveCatalogue(store, lambda: catalogue, check_seconds=30, monotonic=clock)


def purchase(stack: Stack, live: LiveCatalogue, customer_id: str, n: int, revenue: float = 0.0) -> dict[str, Any]:
    message = track(customer_id, "Order Completed", stack.clock.now() - 30 + n * 0.001, f"m-{customer_id}-{n}",
                    revenue=revenue, order_id=f"o-{customer_id}-{n}")
    return stack.ingest(kinesis_envelope([message]), live=live)


def test_a_segment_saved_at_runtime_is_evaluated_within_60_seconds(stack: Stack, store: DynamoDefinitionStore,
                                                                   catalogue: Catalogue) -> None:
    clock = Monotonic()
    live = instance(store, catalogue, clock)
    counter = head_reads(store)
    assert failures(purchase(stack, live, "c1", 0, revenue=400)) == []
    assert live.catalogue.version == 1  # the seeded folder
    saved = save_segments(store, [SegmentChange("big-spenders", BIG_SPENDERS)], "ana", 1.0)
    counter.reset()
    reads, committed = live.reads, clock.now
    entered_after = None
    for n in range(1, 13):  # a batch every 5 s for a minute
        clock.now += 5
        assert failures(purchase(stack, live, "c1", n)) == []
        if "big-spenders" in stack.profile("c1").memberships:
            entered_after = clock.now - committed
            break
    assert entered_after is not None and entered_after <= 60
    assert entered_after >= 30  # not before the check interval: no read per batch
    assert live.catalogue.version == saved.head.version == 2
    # six batches within the interval and the one after it: one head read, one batched read of the versions
    assert counter.of("dynamodb").get("GetItem", 0) == 1
    assert live.reads == reads + 1


def test_a_burst_of_batches_reads_the_head_once_per_check(stack: Stack, store: DynamoDefinitionStore,
                                                          catalogue: Catalogue) -> None:
    clock = Monotonic()
    live = instance(store, catalogue, clock)
    live.catalogue  # noqa: B018  # the cold start's read
    counter = head_reads(store)
    for n in range(40):  # 40 batches within 20 s
        clock.now += 0.5
        assert failures(purchase(stack, live, f"c{n % 4}", n)) == []
    assert counter.of("dynamodb") == {}
    clock.now += 10
    purchase(stack, live, "c0", 100)
    assert counter.of("dynamodb") == {"GetItem": 1}


def test_an_instance_meeting_a_profile_of_a_newer_catalogue_picks_it_up_at_once(
        stack: Stack, store: DynamoDefinitionStore, catalogue: Catalogue) -> None:
    clock = Monotonic()
    ahead, behind = instance(store, catalogue, clock), instance(store, catalogue, clock)
    ahead.catalogue, behind.catalogue  # noqa: B018  # both at version 1
    save_segments(store, [SegmentChange("big-spenders", BIG_SPENDERS)], "ana", 1.0)
    ahead.refresh(force=True)  # this instance's check came first
    assert failures(purchase(stack, ahead, "c1", 0, revenue=400)) == []
    assert fingerprint_version(stack.profile("c1").catalogue) == 2
    assert "big-spenders" in stack.profile("c1").memberships
    reads = behind.reads
    clock.now += 1  # well within the behind instance's check interval
    assert failures(purchase(stack, behind, "c1", 1)) == []
    assert behind.reads == reads + 1 and behind.catalogue.version == 2
    profile = stack.profile("c1")
    assert "big-spenders" in profile.memberships and fingerprint_version(profile.catalogue) == 2
