"""The ingest handler against moto: poison pills, throttling, concurrent writers, late events, request costs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cdp.config import ChangesConfig, ConfigError, IngestConfig
from cdp.core.profile import Profile
from cdp.pipeline.write import MAX_WRITE_ATTEMPTS
from cdp.ports import ConflictError, TransientError

from .support import (
    KINESIS_ARN,
    PROFILES_TABLE,
    QUARANTINE_BUCKET,
    SEGMENTS,
    InjectedError,
    Stack,
    customers_of,
    decoded_messages,
    failures,
    identify,
    ingest_handler,
    kinesis_envelope,
    load_envelope,
    sequences_of,
    track,
)

DAY = 86400
HOUR = 3600
T = 1792497600.0  # 2026-10-20T12:00:00Z


def count(profile: Profile, event_name: str) -> int:
    counter = profile.counter(event_name)
    return counter.count if counter is not None else 0


# ---- 3. poison pills ----------------------------------------------------------------------------

# poison.json, by position: which records can never be applied, and the field each one names. Position 7, an
# Order Completed without order_id, is applied: Segment accepts it (a spec gap, counted, not a poison pill).
POISON_FIELDS = {2: "data", 3: "message", 4: "messageId", 6: "type", 8: "message"}


def test_poison_pills_are_quarantined_whole_and_the_valid_records_applied(stack: Stack) -> None:
    envelope = load_envelope("kinesis/poison.json")
    records = envelope["Records"]

    response = stack.ingest(envelope)

    assert failures(response) == []
    keys = stack.quarantine_keys()
    assert len(keys) == 1 and keys[0].startswith("quarantine/") and keys[0].endswith(".jsonl"), keys
    head = stack.s3.head_object(Bucket=QUARANTINE_BUCKET, Key=keys[0])
    assert head["ContentType"] == "application/x-ndjson"
    lines = stack.quarantined()
    by_sequence = {line["sequence"]: line for line in lines}
    expected = {records[i]["kinesis"]["sequenceNumber"]: name for i, name in POISON_FIELDS.items()}
    assert len(lines) == len(expected) and set(by_sequence) == set(expected)
    for position, name in POISON_FIELDS.items():
        record = records[position]["kinesis"]
        line = by_sequence[record["sequenceNumber"]]
        assert line["field"] == name
        assert line["reason"].startswith(f"{name}: ") and len(line["reason"]) > len(name) + 2, line["reason"]
        assert line["partition_key"] == record["partitionKey"]
        assert line["source"] == f"kinesis:{KINESIS_ARN.rsplit('/', 1)[-1]}"
        if name != "data":  # the payload as the producer sent it, byte for byte
            assert base64.b64decode(line["data"]) == base64.b64decode(record["data"])

    # The valid records (positions 0, 1, 5, 7, 9, 10) are applied around the poison.
    alice, bob, carol = stack.profile("alice"), stack.profile("bob"), stack.profile("carol")
    assert alice.traits["email"] == "Alice@Example.com"
    assert count(alice, "Product Viewed") == 2
    assert alice.seen("sample-00002") and alice.seen("sample-00003")
    assert not alice.seen("poison-type") and not alice.seen("poison-big")
    # the Order Completed without an order id is applied, by its message id, and kept from no refund's reach
    assert alice.seen("order-without-id") and (alice.orders, alice.revenue) == (1, 1000) and alice.recent_orders == []
    assert bob.traits["plan"] == "gold"
    assert carol.traits["email"] == "carol@example.com"
    assert {p["customer_id"]["S"] for p in stack.scan(PROFILES_TABLE)} == {"alice", "bob", "carol"}


def test_a_record_that_is_not_base64_is_quarantined_with_its_payload(stack: Stack) -> None:
    """The quarantine keeps records "whole ... for an operator to redrive": the undecodable one too."""
    envelope = load_envelope("kinesis/poison.json")
    record = envelope["Records"][2]["kinesis"]
    assert record["data"] == "%%% not base64 %%%"

    assert failures(stack.ingest(envelope)) == []

    line = next(line for line in stack.quarantined() if line["sequence"] == record["sequenceNumber"])
    assert line["field"] == "data"
    assert base64.b64decode(line["data"]) == record["data"].encode(), (
        f"the payload of the undecodable record was not kept: quarantined data is {line['data']!r}")


def test_engine_rejections_and_future_events_are_quarantined_not_retried(stack: Stack) -> None:
    stack.clock.set(T)
    envelope = kinesis_envelope([
        track("ines", "Order Completed", T - DAY, "o-1", order_id="A-1", revenue=10),
        track("ines", "Order Completed", T - HOUR, "o-2", order_id="A-1", revenue=10),  # same order again
        track("ines", "Product Viewed", T + 600, "future"),  # 10 minutes ahead of the clock
        track("ines", "Product Viewed", T - 60, "fine"),
    ])

    response = stack.ingest(envelope)

    assert failures(response) == []
    lines = {line["sequence"]: line for line in stack.quarantined()}
    records = envelope["Records"]
    assert set(lines) == {records[1]["kinesis"]["sequenceNumber"], records[2]["kinesis"]["sequenceNumber"]}
    assert lines[records[1]["kinesis"]["sequenceNumber"]]["field"] == "properties.order_id"
    assert lines[records[2]["kinesis"]["sequenceNumber"]]["field"] == "timestamp"
    profile = stack.profile("ines")
    assert profile.orders == 1 and count(profile, "Product Viewed") == 1


# ---- 4. throttling ------------------------------------------------------------------------------


def put_for(customer_id: str) -> Any:
    return lambda request: request.get("Item", {}).get("customer_id", {}).get("S") == customer_id


def test_a_throttled_write_fails_exactly_that_customers_records(stack: Stack) -> None:
    envelope = load_envelope("kinesis/batch.json")
    throttle = InjectedError(stack.dynamodb, "PutItem", "ProvisionedThroughputExceededException", put_for("carol"))

    response = stack.ingest(envelope)

    carol = sequences_of(envelope, "carol")
    assert len(carol) == 9
    assert failures(response) == carol
    assert throttle.injected == 1  # one write per customer per batch: carol's single PutItem
    stored = {item["customer_id"]["S"] for item in stack.scan(PROFILES_TABLE)}
    assert stored == customers_of(envelope) - {"carol"}

    # Lambda retries the batch; only carol is written now, the others are already up to date.
    throttle.remove()
    stack.counter.reset()
    assert failures(stack.ingest(envelope)) == []
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1, "PutItem": 1}
    assert stack.profile("carol").traits["email"] == "carol@example.com"


def test_a_throttled_batch_read_fails_every_record(stack: Stack) -> None:
    envelope = load_envelope("kinesis/duplicate.json")
    InjectedError(stack.dynamodb, "BatchGetItem", "ThrottlingException")

    response = stack.ingest(envelope)

    assert failures(response) == [r["kinesis"]["sequenceNumber"] for r in envelope["Records"]]
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1}  # nothing is written
    assert stack.scan(PROFILES_TABLE) == []


def test_a_quarantine_outage_retries_the_poison_rather_than_dropping_it(stack: Stack) -> None:
    envelope = load_envelope("kinesis/poison.json")
    InjectedError(stack.s3, "PutObject", "SlowDown", status=503)

    response = stack.ingest(envelope)

    records = envelope["Records"]
    assert failures(response) == [records[i]["kinesis"]["sequenceNumber"] for i in sorted(POISON_FIELDS)]
    assert stack.profile("alice").seen("sample-00003")  # the valid records were still applied


def test_a_service_error_on_write_is_retried_not_raised(stack: Stack) -> None:
    envelope = kinesis_envelope([track("jo", "Product Viewed", stack.clock.now() - 60, "jo-1"),
                                 track("kim", "Product Viewed", stack.clock.now() - 60, "kim-1")])
    InjectedError(stack.dynamodb, "PutItem", "InternalServerError", put_for("jo"), status=500)

    assert failures(stack.ingest(envelope)) == sequences_of(envelope, "jo")
    assert stack.profile_item("jo") is None and stack.profile_item("kim") is not None


# ---- 5. concurrent writers ----------------------------------------------------------------------


class InterferingStore:
    """The real store, except that just before saving ``customer_id`` another writer gets in first."""

    def __init__(self, inner: Any, customer_id: str, other_writer: Any, times: int) -> None:
        self.inner, self.customer_id, self.other_writer, self.times = inner, customer_id, other_writer, times
        self.interfered = 0
        self.conflicts = 0
        self.saves = 0

    def load(self, customer_ids: Any) -> Any:
        return self.inner.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        self.saves += 1
        if profile.customer_id == self.customer_id and self.interfered < self.times:
            self.interfered += 1
            self.other_writer(self.interfered)
        try:
            self.inner.save(profile, expected_version)
        except ConflictError:
            self.conflicts += 1
            raise


def writer_b(stack: Stack, customer_id: str) -> Any:
    """A second ingest invocation for the same customer, with its own events, through its own store
    (from another shard: within one shard a customer's records are handled in order)."""

    def write(round_number: int) -> None:
        now = stack.clock.now()
        other = kinesis_envelope([track(customer_id, "Product Viewed", now - 30, f"b-{round_number}-1"),
                                  track(customer_id, "Product Viewed", now - 20, f"b-{round_number}-2")],
                                 first=100 * round_number, shard=1)
        assert failures(stack.ingest(other)) == []

    return write


def writer_a_batch(stack: Stack, customer_id: str) -> dict[str, Any]:
    now = stack.clock.now()
    return kinesis_envelope([identify(customer_id, now - 300, "a-0", plan="silver"),
                             track(customer_id, "Product Viewed", now - 200, "a-1"),
                             track(customer_id, "Product Viewed", now - 100, "a-2"),
                             track(customer_id, "Product Viewed", now - 50, "a-3"),
                             track("lena", "Product Viewed", now - 50, "l-1")])


def test_a_concurrent_write_is_retried_and_no_update_is_lost(stack: Stack) -> None:
    store = InterferingStore(stack.store(), "hana", writer_b(stack, "hana"), times=1)
    envelope = writer_a_batch(stack, "hana")

    response = stack.ingest(envelope, store=store)

    assert failures(response) == []
    assert store.conflicts == 1
    profile = stack.profile("hana")
    assert profile.version == 2  # writer B wrote version 1, writer A version 2 after reloading
    assert all(profile.seen(mid) for mid in ("a-0", "a-1", "a-2", "a-3", "b-1-1", "b-1-2"))
    assert count(profile, "Product Viewed") == 5
    assert profile.traits == {"plan": "silver"}
    assert stack.profile("lena").seen("l-1")


def test_conflicting_on_every_attempt_reports_the_records_for_retry(stack: Stack) -> None:
    store = InterferingStore(stack.store(), "hana", writer_b(stack, "hana"), times=MAX_WRITE_ATTEMPTS)
    envelope = writer_a_batch(stack, "hana")

    response = stack.ingest(envelope, store=store)

    assert store.conflicts == MAX_WRITE_ATTEMPTS
    assert failures(response) == sequences_of(envelope, "hana")
    profile = stack.profile("hana")
    assert profile.version == MAX_WRITE_ATTEMPTS  # only writer B's writes landed
    assert count(profile, "Product Viewed") == 2 * MAX_WRITE_ATTEMPTS
    assert not any(profile.seen(mid) for mid in ("a-0", "a-1", "a-2", "a-3"))
    assert stack.profile("lena").seen("l-1")  # the other customer in the batch was written

    # The retry, with writer B gone, applies writer A's events on top of B's.
    assert failures(stack.ingest(envelope)) == []
    profile = stack.profile("hana")
    assert count(profile, "Product Viewed") == 2 * MAX_WRITE_ATTEMPTS + 3
    assert all(profile.seen(mid) for mid in ("a-0", "a-1", "a-2", "a-3"))


def test_a_transient_error_from_a_fake_store_fails_only_that_customer(stack: Stack) -> None:
    class FlakyStore:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def load(self, customer_ids: Any) -> Any:
            return self.inner.load(customer_ids)

        def save(self, profile: Profile, expected_version: int) -> None:
            if profile.customer_id == "bob":
                raise TransientError("ProvisionedThroughputExceededException")
            self.inner.save(profile, expected_version)

    envelope = load_envelope("kinesis/batch.json")
    response = stack.ingest(envelope, store=FlakyStore(stack.store()))
    assert failures(response) == sequences_of(envelope, "bob")
    assert stack.profile_item("bob") is None and stack.profile_item("alice") is not None


# ---- 7. late and out-of-order events ------------------------------------------------------------


def order(customer_id: str, at: float, order_id: str, revenue: float = 20.0) -> dict[str, Any]:
    return track(customer_id, "Order Completed", at, f"m-{order_id}", order_id=order_id, revenue=revenue)


def test_events_shuffled_in_time_and_a_later_older_event(stack: Stack) -> None:
    stack.clock.set(T)
    shuffled = kinesis_envelope([
        order("gina", T - 2 * DAY, "o-2"),
        identify("gina", T - HOUR, "id-new", plan="gold"),
        order("gina", T - 1 * DAY, "o-1"),
        identify("gina", T - 5 * HOUR, "id-old", plan="silver", city="Oslo"),  # older: must not win
        order("gina", T - 3 * DAY, "o-3"),
    ])

    assert failures(stack.ingest(shuffled)) == []

    profile = stack.profile("gina")
    assert (profile.orders, profile.revenue) == (3, 6000)
    assert (profile.first_order, profile.last_order) == (T - 3 * DAY, T - DAY)
    assert profile.traits == {"plan": "gold", "city": "Oslo"}
    # recent-buyers: an order within 7d; repeat-buyers: 3 orders within 26w; high-frequency needs > 3.
    assert set(profile.memberships) == {"recent-buyers", "repeat-buyers"}

    # A later batch brings an order older than all of them: it counts, in lifetime figures and in its window.
    stack.clock.set(T + HOUR)
    late = kinesis_envelope([order("gina", T - 10 * DAY, "o-0")], first=10)
    assert failures(stack.ingest(late)) == []

    profile = stack.profile("gina")
    assert (profile.orders, profile.revenue) == (4, 8000)
    assert (profile.first_order, profile.last_order) == (T - 10 * DAY, T - DAY)
    assert count(profile, "Order Completed") == 4
    assert set(profile.memberships) == {"recent-buyers", "repeat-buyers", "high-frequency"}
    assert profile.memberships["high-frequency"] == T + HOUR
    entered = [t for t in profile.transitions if t[1] == "entered"]
    assert [t[0] for t in entered] == ["high-frequency"] and entered[0][3] == "condition.count"

    # Older than every bucket kept (53 weeks): lifetime figures only; the windows do not change.
    stack.clock.set(T + 2 * HOUR)
    ancient = kinesis_envelope([order("gina", T - 400 * DAY, "o-ancient")], first=20)
    assert failures(stack.ingest(ancient)) == []

    profile = stack.profile("gina")
    assert (profile.orders, profile.first_order, profile.last_order) == (5, T - 400 * DAY, T - DAY)
    assert count(profile, "Order Completed") == 5
    # loyal-customers (5 orders, one within 53w) is eligible, but recent-buyers wins buyer-lifecycle.
    assert set(profile.memberships) == {"recent-buyers", "repeat-buyers", "high-frequency"}
    assert profile.version == 3


# ---- 8. requests at the physical floor ----------------------------------------------------------


def spread_batch(customers: int, per_customer: int, now: float, tag: str = "") -> dict[str, Any]:
    messages = []
    for n in range(per_customer):  # interleaved, as partitions would deliver them
        for c in range(customers):
            messages.append(track(f"cust-{c:03d}", "Product Viewed", now - 600 + n, f"{tag}m-{c}-{n}",
                                  product_id=f"sku-{n}"))
    return kinesis_envelope(messages)


@pytest.mark.parametrize(("customers", "per_customer"), [(20, 5), (100, 1)])
def test_one_batch_read_and_one_write_per_customer(stack: Stack, customers: int, per_customer: int) -> None:
    envelope = spread_batch(customers, per_customer, stack.clock.now())
    assert len(envelope["Records"]) == 100

    response = stack.ingest(envelope)

    assert failures(response) == []
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1, "PutItem": customers}
    assert {service for service, _ in stack.counter.calls} == {"dynamodb"}
    assert len(stack.scan(PROFILES_TABLE)) == customers
    assert count(stack.profile("cust-000"), "Product Viewed") == per_customer

    # The same customers again, now with stored profiles: still one read and one write each.
    stack.counter.reset()
    assert failures(stack.ingest(spread_batch(customers, per_customer, stack.clock.now(), "again-"))) == []
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1, "PutItem": customers}


def test_more_than_a_hundred_customers_take_one_batch_read_per_hundred(stack: Stack) -> None:
    envelope = spread_batch(101, 1, stack.clock.now())
    assert failures(stack.ingest(envelope)) == []
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 2, "PutItem": 101}


# ---- 10. producer duplicates --------------------------------------------------------------------


def test_repeated_message_ids_are_applied_once(stack: Stack) -> None:
    envelope = load_envelope("kinesis/duplicate.json")
    ids = [m["messageId"] for m in decoded_messages(envelope) if m]
    assert len(ids) == 5 and len(set(ids)) == 3

    response = stack.ingest(envelope)

    assert failures(response) == []
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1, "PutItem": 3}
    for customer_id in ("alice", "bob", "carol"):
        item = stack.profile_item(customer_id)
        assert item is not None and item["v"] == 1
        assert len(item["mi"]) == 12  # one remembered message id: its digest and when it was applied
        assert count(stack.profile(customer_id), "Identify") == 1

    # Delivered again later: nothing to write.
    stack.counter.reset()
    assert failures(stack.ingest(envelope)) == []
    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1}


def test_a_duplicate_add_to_cart_in_the_sample_batch_counts_once(stack: Stack) -> None:
    envelope = load_envelope("kinesis/batch.json")
    frank = sequences_of(envelope, "frank")
    assert len(frank) == 2  # the same Product Added (sample-00040) under two sequence numbers

    assert failures(stack.ingest(envelope)) == []

    profile = stack.profile("frank")
    assert profile.cart["sku-200"][0] == 1
    assert count(profile, "Product Added") == 1


# ---- 11. configuration --------------------------------------------------------------------------

CATALOGUE = str(SEGMENTS)


@pytest.mark.parametrize(("env", "missing"), [
    ({}, "PROFILES_TABLE"),
    ({"PROFILES_TABLE": "  ", "QUARANTINE_BUCKET": "b", "CATALOGUE_PATH": CATALOGUE}, "PROFILES_TABLE"),
    ({"PROFILES_TABLE": "t", "CATALOGUE_PATH": CATALOGUE}, "QUARANTINE_BUCKET"),
    ({"PROFILES_TABLE": "t", "QUARANTINE_BUCKET": "b", "CATALOGUE_PATH": "/nonexistent/segments"},
     "CATALOGUE_PATH"),
])
def test_ingest_config_names_the_missing_variable(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        IngestConfig.from_env(env)


@pytest.mark.parametrize(("env", "missing"), [
    ({"EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": CATALOGUE}, "MEMBERS_TABLE"),
    ({"MEMBERS_TABLE": "m", "CATALOGUE_PATH": CATALOGUE}, "EVENT_BUS_NAME"),
    ({"MEMBERS_TABLE": "m", "EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": str(Path(CATALOGUE) / "browsers.yaml")},
     "CATALOGUE_PATH"),
    ({"MEMBERS_TABLE": "m", "EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": CATALOGUE, "MEMBER_SHARDS": "many"},
     "MEMBER_SHARDS"),
    ({"MEMBERS_TABLE": "m", "EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": CATALOGUE, "MEMBER_SHARDS": "0"},
     "MEMBER_SHARDS"),
])
def test_changes_config_names_the_missing_variable(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        ChangesConfig.from_env(env)


def test_valid_configuration_is_read() -> None:
    ingest = IngestConfig.from_env({"PROFILES_TABLE": "t", "QUARANTINE_BUCKET": "b", "CATALOGUE_PATH": CATALOGUE,
                                    "IDENTITY_TABLE": "i"})
    assert (ingest.profiles_table, ingest.quarantine_bucket, str(ingest.catalogue_path)) == ("t", "b", CATALOGUE)
    assert (ingest.identity_table, ingest.merge_known) == ("i", False)
    changes = ChangesConfig.from_env({"MEMBERS_TABLE": "m", "EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": CATALOGUE})
    assert (changes.members_table, changes.event_bus, changes.member_shards) == ("m", "bus", 16)


def test_cold_start_without_configuration_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROFILES_TABLE", "QUARANTINE_BUCKET", "CATALOGUE_PATH"):
        monkeypatch.delenv(name, raising=False)
    ingest_handler.dependencies.cache_clear()
    try:
        with pytest.raises(ConfigError, match="PROFILES_TABLE"):
            ingest_handler.dependencies()
    finally:
        ingest_handler.dependencies.cache_clear()


def test_quarantine_lines_are_json_objects_with_the_documented_fields(stack: Stack) -> None:
    stack.ingest(load_envelope("kinesis/poison.json"))
    for line in stack.quarantined():
        assert set(line) == {"source", "shard", "sequence", "partition_key", "data", "reason", "field", "at"}
        assert line["shard"] == "shardId-000000000000"
        assert line["at"] == stack.clock.now()
        json.dumps(line)
