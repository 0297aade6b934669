"""The timers function against moto: deadlines that pass with no new event, through to the bus.

The sweep is driven through the real handler module (``handle(event, context, deps)``) with the
EventBridge Scheduled Event of events/eventbridge/schedule.json (all 32 due shards), or with a
schedule target's ``{"shards": [...]}`` input, and a FixedClock set to the deadlines the items carry.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from cdp.aws.dynamo import DynamoDueIndex, DynamoProfileStore, deserialise_item
from cdp.config import ConfigError, TimersConfig
from cdp.core.clock import FixedClock, WallClock
from cdp.core.profile import Profile, due_shard
from cdp.pipeline.timers import DUE_SHARDS, DueEntry, shard_groups
from cdp.ports import ConflictError
from tests.lambda_context import LambdaContext

from .support import (
    DUE_INDEX,
    PROFILES_TABLE,
    SEGMENTS,
    InjectedError,
    Stack,
    failures,
    identify,
    kinesis_envelope,
    load_envelope,
    timers_handler,
    track,
)

HOUR = 3600
DAY = 86400
T0 = 1790845200  # 2026-10-01T09:00:00Z, the start of the shipped cart stories
CART_WAIT = 48 * HOUR  # cart-abandoners: no Order Completed within 48h after Product Added
CART_EXPIRE = 30 * DAY  # ... and leaves 30 days after the add
WEB = {"library": {"name": "analytics.js", "version": "5.2.0"}, "userAgent": "Mozilla/5.0",
       "page": {"path": "/cart"}, "location": {"country": "DE", "city": "Berlin"}}
SERVER = {"library": {"name": "analytics-python", "version": "2.3.0"}}
CART_RECOVERY = {"potential-abandoners", "cart-abandoners"}  # an exclusive group: one at a time


# ---- messages and helpers -------------------------------------------------------------------------


def schedule_event() -> dict[str, Any]:
    """The Scheduled Event envelope EventBridge sends at every tick of a rate rule without an input."""
    return load_envelope("eventbridge/schedule.json")


def product_added(customer_id: str, at: float, message_id: str, product_id: str = "sku-102",
                  price: float = 59.0) -> dict[str, Any]:
    return {**track(customer_id, "Product Added", at, message_id, product_id=product_id, price=price),
            "context": WEB}


def order_completed(customer_id: str, at: float, message_id: str, order_id: str, revenue: float) -> dict[str, Any]:
    return {**track(customer_id, "Order Completed", at, message_id, order_id=order_id, revenue=revenue,
                    currency="EUR", products=[{"product_id": "sku-102", "price": revenue, "quantity": 1}]),
            "context": SERVER}


def ingest_at(stack: Stack, messages: Iterable[dict[str, Any]], now: float, first: int = 1) -> None:
    """Messages through the ingest handler (one Kinesis batch), evaluated by an ingest clock at ``now``."""
    assert failures(stack.ingest(kinesis_envelope(list(messages), first=first), clock=FixedClock(now))) == []


def add_to_carts(stack: Stack, customers: Iterable[str], at: float, first: int = 1) -> None:
    ingest_at(stack, [product_added(c, at, f"{c}-add-{int(at)}") for c in customers], at + 60, first)


def customers_in_shards(counts: dict[str, int], prefix: str) -> dict[str, list[str]]:
    """``counts[shard]`` customer ids per due shard, found by hashing candidate ids as the store does."""
    found: dict[str, list[str]] = {shard: [] for shard in counts}
    number = 0
    while any(len(found[shard]) < n for shard, n in counts.items()):
        customer_id = f"{prefix}-{number:05d}"
        shard = due_shard(customer_id)
        if shard in found and len(found[shard]) < counts[shard]:
            found[shard].append(customer_id)
        number += 1
    return found


def segments_of(item: dict[str, Any] | None) -> set[str]:
    assert item is not None
    return set(item.get("m") or {})


def cart_segments(item: dict[str, Any] | None) -> dict[str, int]:
    """The item's cart-recovery membership, segment -> since (a web add also enters web-only-visitors)."""
    assert item is not None
    return {s: int(since) for s, since in (item.get("m") or {}).items() if s in CART_RECOVERY}


def writes_by_customer(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """The new images of every table stream record since the last read, by customer."""
    images: dict[str, list[dict[str, Any]]] = {}
    for record in stack.stream_records():
        image = deserialise_item(record["dynamodb"]["NewImage"])
        images.setdefault(str(image["customer_id"]), []).append({"event": record["eventName"], **image})
    return images


def stored(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every profile's version, memberships and last transitions (a projection: moto answers it quickly)."""
    items: dict[str, dict[str, Any]] = {}
    request: dict[str, Any] = {"TableName": PROFILES_TABLE, "ConsistentRead": True,
                               "ProjectionExpression": "customer_id, v, m, tx, nd"}
    while True:
        page = stack.dynamodb.scan(**request)
        for raw in page["Items"]:
            item = deserialise_item(raw)
            items[str(item["customer_id"])] = item
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def index_entries(stack: Stack, until: int) -> list[DueEntry]:
    """Everything the due index holds at or before ``until``, over all shards."""
    index = DynamoDueIndex(stack.dynamodb, PROFILES_TABLE, DUE_INDEX)
    entries: list[DueEntry] = []
    for shard in range(DUE_SHARDS):
        cursor: object | None = None
        while True:
            page = index.due(f"{shard:02d}", until, 100, cursor)
            entries += page.entries
            if page.cursor is None:
                break
            cursor = page.cursor
    return entries


class ShrinkingContext:
    """A Lambda context whose remaining time drops by ``step_ms`` at every look: with the handler's
    ``reserve_ms``, ``has_time()`` says yes exactly ``pages`` times (one look per page), then no."""

    def __init__(self, reserve_ms: int, pages: int, step_ms: int = 500) -> None:
        self.reserve_ms, self.step_ms = reserve_ms, step_ms
        self.left = reserve_ms + pages * step_ms
        self.looks = 0

    def get_remaining_time_in_millis(self) -> int:
        self.looks += 1
        remaining, self.left = self.left, self.left - self.step_ms
        return remaining


# ---- 0. the sample event ----------------------------------------------------------------------------


def test_the_sample_schedule_event_is_the_documented_scheduled_event_and_sweeps_every_shard() -> None:
    event = schedule_event()
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                          "detail"}
    assert (event["detail-type"], event["source"], event["detail"]) == ("Scheduled Event", "aws.events", {})
    assert event["resources"][0].startswith(f"arn:aws:events:{event['region']}:{event['account']}:rule/")
    assert timers_handler.sweep_shards(event) == list(range(DUE_SHARDS))
    assert timers_handler.sweep_shards({"shards": [21, 5, 5]}) == [5, 21]
    for bad in ([], [DUE_SHARDS], [-1], [True], ["05"], "05"):
        with pytest.raises(ValueError, match="shards"):
            timers_handler.sweep_shards({"shards": bad})


# ---- 1. cart abandonment, end to end ------------------------------------------------------------------


def test_a_cart_left_48_hours_enters_cart_abandoners_through_the_sweep_and_reaches_the_bus(stack: Stack) -> None:
    add_to_carts(stack, ["frank"], T0)
    assert failures(stack.changes(stack.stream_envelope())) == []
    assert sorted((e["detail-type"], e["detail"]["segment"]["id"]) for e in stack.drain_events()) == [
        ("Segment Entered", "potential-abandoners"), ("Segment Entered", "web-only-visitors")]
    item = stack.profile_item("frank")
    assert item is not None
    deadline = int(item["nd"])
    assert deadline == T0 + CART_WAIT
    assert segments_of(item) == {"potential-abandoners", "web-only-visitors"}

    # One second early: nobody is due, nothing is read or written.
    stack.clock.set(deadline - 1)
    stack.counter.reset()
    early = stack.timers(schedule_event())
    assert (early["due"], early["reevaluated"], early["transitioned"], early["unfinished"]) == (0, 0, 0, False)
    assert stack.counter.of("dynamodb") == {"Query": DUE_SHARDS}

    # At the exact deadline the item carries.
    stack.clock.set(deadline)
    summary = stack.timers(schedule_event())

    assert summary == {"due": 1, "reevaluated": 1, "stale": 0, "transitioned": 1, "transitions": 2,
                       "unfinished": False, "delay_p50_seconds": 0.0, "delay_max_seconds": 0.0}
    item = stack.profile_item("frank")
    assert item is not None
    assert item["m"] == {"cart-abandoners": deadline,  # potential-abandoners gave way (exclusive group)
                         "web-only-visitors": T0 + 60}  # untouched: entered at ingest, due only at T0 + 30d
    assert item["v"] == 2
    assert item["nd"] == T0 + CART_EXPIRE and item["ds"] == due_shard("frank")  # its next deadline: the expiry
    assert sorted((t[0], t[1], t[2]) for t in item["tx"]) == [("cart-abandoners", "entered", deadline),
                                                              ("potential-abandoners", "exited", deadline)]

    stream = stack.stream_envelope()
    assert [r["eventName"] for r in stream["Records"]] == ["MODIFY"]
    assert failures(stack.changes(stream)) == []
    events = {(e["detail-type"], e["detail"]["segment"]["id"]): e for e in stack.drain_events()}
    assert set(events) == {("Segment Entered", "cart-abandoners"), ("Segment Exited", "potential-abandoners")}
    entered = events[("Segment Entered", "cart-abandoners")]
    assert entered["source"] == "cdp.segments"
    assert entered["detail"]["customer_id"] == "frank"
    assert entered["detail"]["membership_version"] == 2
    assert entered["detail"]["clause"] == {"path": "condition.absence",
                                           "reason": "no Order Completed within 2d after Product Added"}

    # The next minute's run finds nobody: frank left the due range when his profile was written.
    stack.clock.advance(60)
    assert stack.timers(schedule_event())["due"] == 0
    assert stack.stream_records() == []

    # Gina adds to her cart and buys 47 hours later: the order moves her deadline, the sweep never sees her.
    t1 = deadline + HOUR
    add_to_carts(stack, ["gina"], t1, first=10)
    gina_deadline = int(stack.profile("gina").next_deadline or 0)
    assert gina_deadline == t1 + CART_WAIT
    ingest_at(stack, [order_completed("gina", t1 + 47 * HOUR, "gina-order", "G-1", 30.0)], t1 + 47 * HOUR + 60,
              first=20)
    assert failures(stack.changes(stack.stream_envelope())) == []
    stack.drain_events()
    gina = stack.profile_item("gina")
    assert "recent-buyers" in segments_of(gina) and "cart-abandoners" not in segments_of(gina)
    assert gina is not None and ("nd" not in gina or gina["nd"] > gina_deadline)

    for now in (gina_deadline, gina_deadline + HOUR):
        stack.clock.set(now)
        summary = stack.timers(schedule_event())
        assert (summary["due"], summary["transitioned"], summary["unfinished"]) == (0, 0, False)
    assert "cart-abandoners" not in segments_of(stack.profile_item("gina"))
    assert stack.stream_records() == []  # the sweep wrote nothing, so nothing reaches the bus
    assert stack.drain_events() == []


# ---- 2. the item and the due index ---------------------------------------------------------------------


def test_the_stored_item_carries_its_deadline_and_shard_and_the_index_finds_it_only_once_due(stack: Stack) -> None:
    add_to_carts(stack, ["frank"], T0)
    ingest_at(stack, [identify("ida", T0, "ida-1", email="ida@example.com")], T0 + 60, first=5)

    item = stack.profile_item("frank")
    assert item is not None
    deadline = T0 + CART_WAIT
    assert item["nd"] == deadline == min(item["dl"].values())
    assert item["ds"] == due_shard("frank")
    ida = stack.profile_item("ida")
    assert ida is not None and "nd" not in ida and "ds" not in ida  # no deadline: not in the (sparse) index

    index = DynamoDueIndex(stack.dynamodb, PROFILES_TABLE, DUE_INDEX)
    shard = due_shard("frank")
    assert index.due(shard, deadline - 1, 100, None).entries == []
    for until in (deadline, deadline + DAY):
        page = index.due(shard, until, 100, None)
        assert page.entries == [DueEntry("frank", deadline)] and page.cursor is None
    other = f"{(int(shard) + 1) % DUE_SHARDS:02d}"
    assert index.due(other, deadline + DAY, 100, None).entries == []
    assert index_entries(stack, deadline + DAY) == [DueEntry("frank", deadline)]


def test_the_due_index_pages_a_shard_oldest_first(stack: Stack) -> None:
    shard, = customers_in_shards({"07": 3}, "page").values()
    for hours, customer_id in zip((2, 0, 1), shard, strict=True):
        add_to_carts(stack, [customer_id], T0 + hours * HOUR, first=1 + hours)
    deadlines = {c: T0 + h * HOUR + CART_WAIT for h, c in zip((2, 0, 1), shard, strict=True)}
    oldest_first = sorted(deadlines, key=deadlines.__getitem__)
    index = DynamoDueIndex(stack.dynamodb, PROFILES_TABLE, DUE_INDEX)
    until = T0 + 2 * HOUR + CART_WAIT

    first = index.due("07", until, 2, None)
    assert [e.customer_id for e in first.entries] == oldest_first[:2] and first.cursor is not None
    second = index.due("07", until, 2, first.cursor)
    assert second.entries == [DueEntry(oldest_first[2], deadlines[oldest_first[2]])] and second.cursor is None
    assert [e.customer_id for e in index.due("07", until - HOUR, 100, None).entries] == oldest_first[:2]


# ---- 3. what a sweep costs ------------------------------------------------------------------------------


def test_an_idle_sweep_is_exactly_one_query_per_shard(stack: Stack) -> None:
    customers = [f"shopper-{n:02d}" for n in range(50)]
    add_to_carts(stack, customers, T0)
    assert len({due_shard(c) for c in customers}) > 1
    stack.clock.set(T0 + CART_WAIT - 1)  # everyone falls due in a second: nobody now
    stack.counter.reset()

    summary = stack.timers(schedule_event())

    assert (summary["due"], summary["reevaluated"], summary["transitioned"], summary["unfinished"]) == (
        0, 0, 0, False)
    assert dict(stack.counter.calls) == {("dynamodb", "Query"): DUE_SHARDS}  # and nothing else, on any service


def test_a_sweep_reads_due_customers_in_pages_of_100_and_writes_each_once(stack: Stack) -> None:
    due = customers_in_shards({"05": 130, "21": 20}, "due")
    later = customers_in_shards({"05": 10, "21": 10, "11": 30}, "later")
    everyone_due = [c for ids in due.values() for c in ids]
    add_to_carts(stack, everyone_due, T0)
    add_to_carts(stack, [c for ids in later.values() for c in ids], T0 + DAY, first=1000)
    stack.clock.set(T0 + CART_WAIT + 30)
    stack.counter.reset()

    summary = stack.timers(schedule_event())

    k = len(everyone_due)
    assert (summary["due"], summary["reevaluated"], summary["stale"], summary["transitioned"],
            summary["transitions"], summary["unfinished"]) == (k, k, 0, k, 2 * k, False)
    assert summary["delay_max_seconds"] == 30.0
    # Per shard: one query per page of up to 100 (a full page has a next page), one BatchGetItem per page.
    pages = {shard: math.ceil(len(ids) / 100) for shard, ids in due.items()}
    assert stack.counter.of("dynamodb") == {"Query": DUE_SHARDS + sum(p - 1 for p in pages.values()),
                                            "BatchGetItem": sum(pages.values()), "PutItem": k}
    assert stack.counter.of("dynamodb") == {"Query": 33, "BatchGetItem": 3, "PutItem": 150}
    versions = {c: item["v"] for c, item in stored(stack).items()}
    assert {c for c, v in versions.items() if v == 2} == set(everyone_due)  # each written once
    assert {c for c, v in versions.items() if v == 1} == {c for ids in later.values() for c in ids}


# ---- 4. a sweep that runs out of time ----------------------------------------------------------------------


@pytest.mark.parametrize(("event", "pages_per_run"), [
    # All 32 shards: a run needs at least 32 pages (one empty query per shard) to ever finish.
    pytest.param(schedule_event(), 36, id="scheduled-event-all-shards"),
    # A schedule target's input (shard_groups(4)[1] holds shards 05, 21 and 29): 8 shards.
    pytest.param({"shards": shard_groups(4)[1]}, 10, id="target-input-shard-group"),
])
def test_a_sweep_that_runs_out_of_time_hands_the_rest_to_the_next_run_and_skips_nobody(
        stack: Stack, event: dict[str, Any], pages_per_run: int) -> None:
    due = customers_in_shards({"05": 41, "21": 29, "29": 20}, "due")
    later = customers_in_shards({"05": 5, "21": 5, "29": 5, "13": 5}, "later")
    everyone_due = {c for ids in due.values() for c in ids}
    add_to_carts(stack, sorted(everyone_due), T0)
    add_to_carts(stack, [c for ids in later.values() for c in ids], T0 + DAY, first=1000)
    stack.clock.set(T0 + CART_WAIT)
    reserve_ms = 2_000

    runs: list[dict[str, Any]] = []
    while not runs or runs[-1]["unfinished"]:
        assert len(runs) < 12, f"the sweep makes no progress: {runs}"
        stack.counter.reset()
        context = ShrinkingContext(reserve_ms, pages_per_run)
        summary = stack.timers(copy.deepcopy(event), context, page_size=5, reserve_ms=reserve_ms)
        queries = stack.counter.of("dynamodb").get("Query", 0)
        if summary["unfinished"]:
            # One look at the remaining time per page, and the last look found too little of it.
            assert queries == pages_per_run and context.looks == pages_per_run + 1, summary
        else:
            assert queries <= pages_per_run
        runs.append(summary)
        stack.clock.advance(60)  # the next tick of the every-minute schedule

    assert len(runs) >= 2, "the budget should not fit the whole sweep into one run"
    totals = Counter[str]()
    for summary in runs:
        totals.update({key: summary[key] for key in ("due", "reevaluated", "stale", "transitioned")})
    n = len(everyone_due)
    assert dict(totals) == {"due": n, "reevaluated": n, "stale": 0, "transitioned": n}
    items = stored(stack)
    run_times = {T0 + CART_WAIT + 60 * tick for tick in range(len(runs))}
    entered_at = Counter[int]()
    for customer_id in everyone_due:
        item = items[customer_id]
        assert item["v"] == 2, customer_id  # the ingest's write, then exactly one sweep write
        at = next(t[2] for t in item["tx"] if t[:2] == ["cart-abandoners", "entered"])
        assert cart_segments(item) == {"cart-abandoners": at} and at in run_times
        entered_at[at] += 1
    assert len(entered_at) >= 2  # the customers were shared out over several runs
    assert index_entries(stack, int(stack.clock.now())) == []  # nobody left behind
    assert {c for c, item in items.items() if item["v"] == 1} == {c for ids in later.values() for c in ids}


# ---- 5. a concurrent write -------------------------------------------------------------------------------


def test_a_conflicting_write_is_retried_and_the_customer_reevaluated_once(stack: Stack) -> None:
    add_to_carts(stack, ["frank"], T0)
    stack.stream_records()
    stack.clock.set(T0 + CART_WAIT)
    conflict = InjectedError(stack.dynamodb, "PutItem", "ConditionalCheckFailedException",
                             lambda request: request["Item"]["customer_id"]["S"] == "frank", limit=1)
    stack.counter.reset()

    summary = stack.timers(schedule_event())

    assert conflict.injected == 1
    assert (summary["due"], summary["reevaluated"], summary["stale"], summary["transitioned"],
            summary["transitions"], summary["unfinished"]) == (1, 1, 0, 1, 2, False)
    # The failed write, a strongly consistent re-read of the profile, the second write.
    assert stack.counter.of("dynamodb") == {"Query": DUE_SHARDS, "BatchGetItem": 2, "PutItem": 2}
    assert stack.profile("frank").version == 2
    assert failures(stack.changes(stack.stream_envelope())) == []
    assert sorted((e["detail-type"], e["detail"]["segment"]["id"]) for e in stack.drain_events()) == [
        ("Segment Entered", "cart-abandoners"), ("Segment Exited", "potential-abandoners")]


def test_a_customer_whose_writes_keep_conflicting_is_left_due_for_the_next_run(stack: Stack) -> None:
    add_to_carts(stack, ["frank"], T0)
    stack.clock.set(T0 + CART_WAIT)
    conflict = InjectedError(stack.dynamodb, "PutItem", "ConditionalCheckFailedException",
                             lambda request: request["Item"]["customer_id"]["S"] == "frank")
    stack.counter.reset()

    summary = stack.timers(schedule_event())

    assert conflict.injected == 3  # cdp.pipeline.write.MAX_WRITE_ATTEMPTS
    # Re-evaluated counts written profiles: none was.
    assert (summary["due"], summary["reevaluated"], summary["transitioned"], summary["unfinished"]) == (
        1, 0, 0, True)
    assert stack.counter.of("dynamodb") == {"Query": DUE_SHARDS, "BatchGetItem": 3, "PutItem": 3}
    assert stack.profile("frank").version == 1
    assert index_entries(stack, T0 + CART_WAIT) == [DueEntry("frank", T0 + CART_WAIT)]  # still queued

    conflict.remove()
    stack.clock.advance(60)
    summary = stack.timers(schedule_event())
    assert (summary["due"], summary["transitioned"], summary["unfinished"]) == (1, 1, False)
    assert set(stack.profile("frank").memberships) & CART_RECOVERY == {"cart-abandoners"}


class InterleavedStore:
    """The real store, except that just before the sweep's first write ``interleave()`` runs: a
    concurrent ingest writes the same profile, so the sweep's conditional PutItem really fails."""

    def __init__(self, store: DynamoProfileStore, interleave: Any) -> None:
        self.store, self.interleave = store, interleave
        self.conflicts = 0

    def load(self, customer_ids: Any) -> dict[str, Profile]:
        return self.store.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        if self.interleave is not None:
            interleave, self.interleave = self.interleave, None
            interleave()
        try:
            self.store.save(profile, expected_version)
        except ConflictError:
            self.conflicts += 1
            raise

    def get(self, customer_id: str) -> Profile | None:
        return self.store.get(customer_id)


def test_a_concurrent_ingest_write_is_kept_and_the_deadline_still_handled_once(stack: Stack) -> None:
    add_to_carts(stack, ["frank"], T0)
    stack.stream_records()
    deadline = T0 + CART_WAIT
    stack.clock.set(deadline + 20)
    # An identify processed by ingest a little before the deadline lands between the sweep's read and write.
    store = InterleavedStore(stack.store(), lambda: ingest_at(
        stack, [identify("frank", deadline - 30, "frank-plan", plan="gold")], deadline - 10, first=7))

    summary = stack.timers(schedule_event(), store=store)

    assert store.conflicts == 1
    assert (summary["due"], summary["reevaluated"], summary["stale"], summary["transitioned"],
            summary["unfinished"]) == (1, 1, 0, 1, False)
    frank = stack.profile("frank")
    assert frank.version == 3  # the add, the concurrent identify, the sweep's retried write
    assert frank.traits["plan"] == "gold"  # the retry re-read the profile: the concurrent write is not lost
    assert set(frank.memberships) & CART_RECOVERY == {"cart-abandoners"}
    writes = writes_by_customer(stack)["frank"]
    assert [(w["event"], w["v"]) for w in writes] == [("MODIFY", 2), ("MODIFY", 3)]
    assert set(cart_segments(writes[0])) == {"potential-abandoners"}  # the ingest write: not yet due
    assert set(cart_segments(writes[1])) == {"cart-abandoners"}


def test_a_concurrent_write_that_already_passed_the_deadline_leaves_the_sweep_nothing_to_do(stack: Stack) -> None:
    add_to_carts(stack, ["frank"], T0)
    stack.stream_records()
    deadline = T0 + CART_WAIT
    stack.clock.set(deadline + 20)
    store = InterleavedStore(stack.store(), lambda: ingest_at(
        stack, [identify("frank", deadline + 5, "frank-plan", plan="gold")], deadline + 10, first=7))

    summary = stack.timers(schedule_event(), store=store)

    assert store.conflicts == 1
    # The ingest write made the transition; the sweep re-read the profile, found it no longer due, wrote nothing.
    assert (summary["due"], summary["reevaluated"], summary["stale"], summary["transitioned"],
            summary["unfinished"]) == (1, 0, 1, 0, False)
    frank = stack.profile("frank")
    assert frank.version == 2 and frank.traits["plan"] == "gold"
    assert set(frank.memberships) & CART_RECOVERY == {"cart-abandoners"}
    writes = writes_by_customer(stack)["frank"]
    assert len(writes) == 1
    assert ["cart-abandoners", "entered"] in [t[:2] for t in writes[0]["tx"]]


# ---- the deployed entry point ----------------------------------------------------------------------------


def test_the_lambda_entry_point_sweeps_with_the_wall_clock_and_emits_its_metrics(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``handler(event, context)`` as Lambda calls it: config from the environment, the wall clock, EMF metrics."""
    added = int(time.time()) - 3 * DAY  # so the deadline passed a day ago, by the wall clock
    ingest_at(stack, [product_added("walt", added, "walt-add")], added + 60)
    for name, value in {**valid_env(), "SWEEP_PAGE_SIZE": "50"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CDP_CLOCK", raising=False)
    timers_handler.dependencies.cache_clear()
    try:
        deps = timers_handler.dependencies()
        assert deps.page_size == 50 and isinstance(deps.clock, WallClock)
        stack.counter.register(deps.index.client)  # the function's own client
        stack.counter.reset()
        timers_handler.metrics.clear_metrics()
        capsys.readouterr()

        summary = timers_handler.handler(schedule_event(), LambdaContext("cdp-timers", memory_limit_in_mb=512))
    finally:
        timers_handler.dependencies.cache_clear()

    assert (summary["due"], summary["reevaluated"], summary["transitioned"], summary["unfinished"]) == (
        1, 1, 1, False)
    assert DAY <= summary["delay_max_seconds"] < DAY + 600
    assert stack.counter.of("dynamodb") == {"Query": DUE_SHARDS, "BatchGetItem": 1, "PutItem": 1}
    assert set(stack.profile("walt").memberships) & CART_RECOVERY == {"cart-abandoners"}
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emf = [doc for doc in emitted if "_aws" in doc and "CustomersDue" in doc]
    assert len(emf) == 1, emitted
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "cdp" and emf[0]["service"] == "timers"
    assert {name: emf[0][name] for name in ("CustomersDue", "CustomersTransitioned", "SweepUnfinished")} == {
        "CustomersDue": [1.0], "CustomersTransitioned": [1.0], "SweepUnfinished": [0.0]}


# ---- 6. configuration ------------------------------------------------------------------------------------


def valid_env() -> dict[str, str]:
    return {"PROFILES_TABLE": PROFILES_TABLE, "DUE_INDEX_NAME": DUE_INDEX, "CATALOGUE_PATH": str(SEGMENTS)}


def test_a_valid_environment_gives_the_defaults() -> None:
    config = TimersConfig.from_env(valid_env())
    assert config == TimersConfig(PROFILES_TABLE, DUE_INDEX, SEGMENTS, 100, 10_000)
    assert TimersConfig.from_env({**valid_env(), "SWEEP_PAGE_SIZE": "25", "SWEEP_RESERVE_MS": "0"}).page_size == 25


@pytest.mark.parametrize(("changes", "variable"), [
    ({"DUE_INDEX_NAME": None}, "DUE_INDEX_NAME"),
    ({"DUE_INDEX_NAME": "  "}, "DUE_INDEX_NAME"),
    ({"PROFILES_TABLE": None}, "PROFILES_TABLE"),
    ({"SWEEP_PAGE_SIZE": "0"}, "SWEEP_PAGE_SIZE"),
    ({"SWEEP_PAGE_SIZE": "abc"}, "SWEEP_PAGE_SIZE"),
    ({"SWEEP_PAGE_SIZE": "101"}, "SWEEP_PAGE_SIZE"),  # BatchGetItem takes 100 keys: one call per page
    ({"SWEEP_RESERVE_MS": "-1"}, "SWEEP_RESERVE_MS"),
    ({"CATALOGUE_PATH": "/nonexistent/segments"}, "CATALOGUE_PATH"),
])
def test_an_invalid_environment_is_refused_naming_the_variable(changes: dict[str, str | None],
                                                               variable: str) -> None:
    env = valid_env()
    for name, value in changes.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    with pytest.raises(ConfigError, match=variable):
        TimersConfig.from_env(env)


def test_the_function_refuses_to_start_without_its_index_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dependencies()`` validates the environment at cold start, before any request."""
    for name, value in valid_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DUE_INDEX_NAME")
    timers_handler.dependencies.cache_clear()
    try:
        with pytest.raises(ConfigError, match="DUE_INDEX_NAME"):
            timers_handler.dependencies()
        monkeypatch.setenv("DUE_INDEX_NAME", DUE_INDEX)
        monkeypatch.setenv("SWEEP_PAGE_SIZE", "25")
        deps = timers_handler.dependencies()
        assert (deps.page_size, deps.reserve_ms, deps.index.index_name) == (25, 10_000, DUE_INDEX)
    finally:
        timers_handler.dependencies.cache_clear()


def test_the_timers_function_refuses_an_event_time_clock_it_could_never_advance() -> None:
    from cdp.config import ConfigError
    from cdp.core.clock import WallClock

    assert isinstance(timers_handler.sweep_clock(""), WallClock)
    assert isinstance(timers_handler.sweep_clock("wall"), WallClock)
    with pytest.raises(ConfigError, match="CDP_CLOCK"):
        timers_handler.sweep_clock("event")


def test_given_a_shared_clock_the_timers_function_builds_in_event_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the local stack builds it: ``build(clock=...)`` never reads CDP_CLOCK, so event time is no refusal;
    with no clock given (Lambda) CDP_CLOCK=event still is."""
    from cdp.config import ConfigError
    from cdp.core.clock import EventClock

    for name, value in valid_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CDP_CLOCK", "event")
    shared = EventClock()
    deps = timers_handler.build(clock=shared)
    assert deps.clock is shared and deps.index.index_name == DUE_INDEX
    with pytest.raises(ConfigError, match="CDP_CLOCK"):
        timers_handler.build()
    with pytest.raises(TypeError, match="clok"):
        timers_handler.build(clok=shared)
