"""Kinesis -> ingest -> profiles table -> table stream -> changes -> members index and the bus, against moto."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from cdp.core.identifiers import normalise_email, normalise_email_for_google
from cdp.pipeline.changes import members_partition

from .support import (
    MEMBER_SHARDS,
    MEMBERS_TABLE,
    PROFILES_TABLE,
    InjectedError,
    Stack,
    customers_of,
    detail_validator,
    failures,
    iso,
    kinesis_envelope,
    load_envelope,
    track,
)

FRANK_AT = 1791450000  # the time of the transitions in events/dynamodb/stream.json
FRANK_SEQUENCE = "111100000000000000000001"
DAY = 86400
HOUR = 3600


@pytest.fixture(scope="module")
def validator() -> Any:
    return detail_validator()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def profiles(stack: Stack) -> dict[str, dict[str, Any]]:
    return {str(item["customer_id"]): item for item in
            (stack.profile_item(raw["customer_id"]["S"]) for raw in stack.scan(PROFILES_TABLE)) if item}


def check_detail(validator: Any, event: dict[str, Any], raw_emails: set[str]) -> dict[str, Any]:
    """The bus event is a valid v1 membership event without any raw email address in it."""
    detail: dict[str, Any] = event["detail"]
    errors = sorted(validator.iter_errors(detail), key=str)
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    assert event["source"] == "cdp.segments"
    assert event["detail-type"] == {"entered": "Segment Entered", "exited": "Segment Exited"}[detail["change"]]
    text = json.dumps(detail)
    assert "@" not in text, text
    for email in raw_emails:
        assert email not in text and email.lower() not in text
    return detail


def emails(items: dict[str, dict[str, Any]]) -> set[str]:
    return {str(item["t"]["email"]) for item in items.values() if "email" in (item.get("t") or {})}


def frank_envelope() -> dict[str, Any]:
    return load_envelope("dynamodb/stream.json")


def grace_record(sequence: str = "111100000000000000000002") -> dict[str, Any]:
    """Frank's stream record, for another customer: a second record in the same stream batch."""
    record: dict[str, Any] = copy.deepcopy(frank_envelope()["Records"][0])
    body = record["dynamodb"]
    for image in (body["Keys"], body["NewImage"], body["OldImage"]):
        image["customer_id"] = {"S": "grace"}
    body["NewImage"]["t"] = {"M": {"email": {"S": "grace@example.com"}}}
    body["SequenceNumber"] = sequence
    return record


# ---- 1. the happy path --------------------------------------------------------------------------


def test_the_sample_batch_flows_from_kinesis_to_the_bus(stack: Stack, validator: Any) -> None:
    envelope = load_envelope("kinesis/batch.json")
    now = stack.clock.now()

    assert failures(stack.ingest(envelope)) == []

    items = profiles(stack)
    assert set(items) == customers_of(envelope)
    assert all(item["v"] == 1 for item in items.values())
    stream = stack.stream_envelope()
    assert sorted(r["eventName"] for r in stream["Records"]) == ["INSERT"] * len(items)

    assert failures(stack.changes(stream)) == []

    memberships = {(cid, seg) for cid, item in items.items() for seg in (item.get("m") or {})}
    # The sample's stories, as the segment definitions describe them.
    assert {("frank", "cart-abandoners"), ("erin", "cart-abandoners"), ("erin", "high-engagement-new"),
            ("dave", "browsers"), ("carol", "email-responders"), ("carol", "highly-engaged"),
            ("alice", "recent-buyers"), ("bob", "recent-buyers")} <= memberships
    assert ("frank", "potential-abandoners") not in memberships  # cart-abandoners wins cart-recovery

    members = stack.members()
    assert {(cid, seg) for seg, cid in members} == memberships
    for (seg, cid), row in members.items():
        assert row["segment_shard"] == members_partition(seg, cid, MEMBER_SHARDS)
        assert row["v"] == 1 and row["since"] == int(now) and "exited_at" not in row

    events = stack.drain_events()
    details = [check_detail(validator, event, emails(items)) for event in events]
    assert sorted((d["customer_id"], d["segment"]["id"]) for d in details) == sorted(memberships)
    assert {d["change"] for d in details} == {"entered"}
    assert len({d["event_id"] for d in details}) == len(details)
    for detail in details:
        item = items[detail["customer_id"]]
        assert detail["segments"] == sorted(item["m"])
        assert detail["membership_version"] == 1
        assert detail["at"] == iso(int(now))
        assert detail["segment"]["name"] == stack.catalogue.segments[detail["segment"]["id"]].name
        assert detail["primary_segment"] in detail["segments"]
        transition = next(t for t in item["tx"] if t[0] == detail["segment"]["id"])
        assert detail["clause"] == {"path": transition[3], "reason": transition[4]}
        email = normalise_email((item.get("t") or {}).get("email"))
        google = normalise_email_for_google((item.get("t") or {}).get("email"))
        assert detail["identifiers"] == ({"email_sha256": sha256(email), "google_email_sha256": sha256(google or "")}
                                         if email else {})
    frank = next(d for d in details if d["customer_id"] == "frank" and d["segment"]["id"] == "cart-abandoners")
    assert frank["clause"] == {"path": "condition.absence",
                               "reason": "no Order Completed within 2d after Product Added"}
    assert frank["primary_segment"] == "cart-abandoners"


def test_the_changes_function_reads_binary_attributes_as_lambda_delivers_them(stack: Stack) -> None:
    """Lambda hands the function JSON, in which DynamoDB binary (B) values are base64 text.

    Every written profile has binary attributes (the message ids ``mi``, the packed counters ``c``).
    """
    now = stack.clock.now()
    assert failures(stack.ingest(kinesis_envelope([track("max", "Product Added", now - 3 * DAY, "max-1",
                                                         product_id="sku-1", price=5)]))) == []
    stream = stack.stream_envelope()
    image = stream["Records"][0]["dynamodb"]["NewImage"]
    assert isinstance(image["mi"]["B"], str)

    assert failures(stack.changes(stream)) == []
    assert [(e["detail"]["segment"]["id"], e["detail"]["change"]) for e in stack.drain_events()] == [
        ("cart-abandoners", "entered")]


# ---- 2. the whole batch twice -------------------------------------------------------------------


def test_a_batch_delivered_twice_changes_nothing_and_publishes_nothing_new(stack: Stack) -> None:
    envelope = load_envelope("kinesis/batch.json")
    assert failures(stack.ingest(envelope)) == []
    first_stream = stack.stream_envelope()
    assert failures(stack.changes(first_stream)) == []
    first_ids = {e["detail"]["event_id"] for e in stack.drain_events()}
    assert first_ids
    table, members = stack.scan(PROFILES_TABLE), stack.scan(MEMBERS_TABLE)

    stack.counter.reset()
    assert failures(stack.ingest(envelope)) == []

    assert stack.counter.of("dynamodb") == {"BatchGetItem": 1}  # read once, nothing written
    assert stack.scan(PROFILES_TABLE) == table
    assert stack.stream_records() == []  # no write, so no stream record and nothing for the changes function
    assert stack.drain_events() == []
    assert stack.scan(MEMBERS_TABLE) == members

    # The table stream itself redelivers the first batch (a changes retry): the same ids, the same index.
    assert failures(stack.changes(first_stream)) == []
    assert {e["detail"]["event_id"] for e in stack.drain_events()} == first_ids
    assert stack.scan(MEMBERS_TABLE) == members


# ---- 6. PutEvents partial failures --------------------------------------------------------------


class FlakyEvents:
    """The real (moto) EventBridge client, except that chosen entries come back failed.

    ``fail(call, entry)`` decides per entry; failed entries are not sent, as EventBridge would not
    deliver them.
    """

    def __init__(self, real: Any, fail: Any) -> None:
        self.real, self.fail = real, fail
        self.calls: list[list[dict[str, Any]]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        call = len(self.calls)
        self.calls.append(list(Entries))
        failed = [self.fail(call, entry) for entry in Entries]
        sent = [entry for entry, bad in zip(Entries, failed, strict=True) if not bad]
        delivered = iter(self.real.put_events(Entries=sent)["Entries"] if sent else [])
        results = [{"ErrorCode": "InternalFailure", "ErrorMessage": "injected"} if bad else next(delivered)
                   for bad in failed]
        return {"FailedEntryCount": sum(1 for r in results if "ErrorCode" in r), "Entries": results}


def segment_of(entry: dict[str, Any]) -> str:
    return str(json.loads(entry["Detail"])["segment"]["id"])


def caught(stack: Stack) -> list[tuple[str, str, str, str]]:
    return sorted((e["detail"]["customer_id"], e["detail"]["segment"]["id"], e["detail"]["change"],
                   e["detail"]["event_id"]) for e in stack.drain_events())


def test_a_failed_entry_is_resent_and_delivered_once(stack: Stack) -> None:
    from cdp.aws.eventbridge import EventBridgePublisher

    client = FlakyEvents(stack.events, lambda call, entry: call == 0 and segment_of(entry) == "cart-abandoners")
    publisher = EventBridgePublisher(client, sleep=lambda _: None)

    response = stack.changes(frank_envelope(), publisher=publisher)

    assert failures(response) == []
    assert len(client.calls) == 2
    assert [segment_of(entry) for entry in client.calls[1]] == ["cart-abandoners"]
    events = caught(stack)
    assert [(c, s, k) for c, s, k, _ in events] == [("frank", "cart-abandoners", "entered"),
                                                    ("frank", "potential-abandoners", "exited")]


def test_an_entry_that_keeps_failing_fails_its_stream_record_and_the_retry_is_idempotent(stack: Stack) -> None:
    from cdp.aws.eventbridge import ATTEMPTS, EventBridgePublisher

    envelope = frank_envelope()
    envelope["Records"].append(grace_record())
    client = FlakyEvents(stack.events, lambda call, entry: json.loads(entry["Detail"])["customer_id"] == "frank"
                         and segment_of(entry) == "cart-abandoners")
    publisher = EventBridgePublisher(client, sleep=lambda _: None)

    response = stack.changes(envelope, publisher=publisher)

    assert failures(response) == [FRANK_SEQUENCE]
    assert len(client.calls) == ATTEMPTS
    first = caught(stack)
    assert ("frank", "cart-abandoners", "entered") not in {(c, s, k) for c, s, k, _ in first}
    assert {(c, s, k) for c, s, k, _ in first} >= {("grace", "cart-abandoners", "entered"),
                                                   ("grace", "potential-abandoners", "exited")}
    index = stack.scan(MEMBERS_TABLE)
    assert len(stack.members()) == 4  # the index was updated before publishing, for both customers

    # Lambda redelivers the batch from the failed record; EventBridge has recovered.
    assert failures(stack.changes(envelope)) == []
    assert stack.scan(MEMBERS_TABLE) == index
    retried = caught(stack)
    assert ("frank", "cart-abandoners", "entered") in {(c, s, k) for c, s, k, _ in retried}
    ids = {(c, s, k): i for c, s, k, i in first + retried}
    assert len(ids) == 4 and len({i for *_, i in first + retried}) == 4  # a re-sent change keeps its id


def test_a_throttled_put_events_call_is_resent(stack: Stack) -> None:
    InjectedError(stack.events, "PutEvents", "ThrottlingException", limit=1)
    assert failures(stack.changes(frank_envelope())) == []
    assert stack.counter.of("eventbridge") == {"PutEvents": 2}
    assert len(caught(stack)) == 2


def test_a_members_index_outage_fails_the_record_without_publishing_it(stack: Stack) -> None:
    envelope = frank_envelope()
    envelope["Records"].append(grace_record())
    InjectedError(stack.dynamodb, "PutItem", "ProvisionedThroughputExceededException",
                  lambda request: request["Item"]["customer_id"]["S"] == "frank")

    assert failures(stack.changes(envelope)) == [FRANK_SEQUENCE]
    assert {c for c, *_ in caught(stack)} == {"grace"}


# ---- 7. late events, through to the bus ---------------------------------------------------------


def test_a_late_order_publishes_the_membership_it_completes(stack: Stack, validator: Any) -> None:
    t = 1792497600.0  # 2026-10-20T12:00:00Z
    stack.clock.set(t)
    orders = [track("gina", "Order Completed", t - d * DAY, f"o-{d}", order_id=f"o-{d}", revenue=20)
              for d in (2, 1, 3)]
    assert failures(stack.ingest(kinesis_envelope(orders))) == []
    assert failures(stack.changes(stack.stream_envelope())) == []
    assert {(e["detail"]["segment"]["id"], e["detail"]["change"]) for e in stack.drain_events()} == {
        ("recent-buyers", "entered"), ("repeat-buyers", "entered")}

    stack.clock.set(t + HOUR)
    late = track("gina", "Order Completed", t - 10 * DAY, "o-10", order_id="o-10", revenue=20)
    assert failures(stack.ingest(kinesis_envelope([late], first=10))) == []
    assert failures(stack.changes(stack.stream_envelope())) == []

    events = stack.drain_events()
    assert len(events) == 1
    detail = check_detail(validator, events[0], set())
    assert (detail["segment"]["id"], detail["change"], detail["membership_version"]) == ("high-frequency",
                                                                                       "entered", 2)
    assert detail["at"] == iso(t + HOUR)
    assert detail["segments"] == ["high-frequency", "recent-buyers", "repeat-buyers"]
    assert detail["primary_segment"] == "recent-buyers"


# ---- 9. the sample table stream record ----------------------------------------------------------


def test_the_sample_stream_record_publishes_one_entry_and_one_exit(stack: Stack, validator: Any) -> None:
    envelope = frank_envelope()

    assert failures(stack.changes(envelope)) == []

    # One conditional write per membership change, one size update per counter a write changed (the exit
    # finds no membership stored, so only the entry counts), one PutEvents call for both entries.
    assert stack.counter.of("dynamodb") == {"PutItem": 2, "UpdateItem": 1}
    assert stack.counter.of("eventbridge") == {"PutEvents": 1}
    events = stack.drain_events()
    details = {d["change"]: d for d in (check_detail(validator, e, {"Frank@Example.com"}) for e in events)}
    assert len(events) == 2 and set(details) == {"entered", "exited"}
    entered, exited = details["entered"], details["exited"]
    assert entered["segment"] == {"id": "cart-abandoners", "name": "Cart abandoners"}
    assert exited["segment"] == {"id": "potential-abandoners", "name": "Potential abandoners"}
    assert entered["clause"] == {"path": "condition.absence",
                                 "reason": "no Order Completed within 2d after Product Added"}
    assert exited["clause"] == {"path": "condition.absence",
                                "reason": "no longer: no Order Completed within 0s after Product Added"}
    for detail in (entered, exited):
        assert detail["customer_id"] == "frank"
        assert detail["membership_version"] == 2
        assert detail["at"] == iso(FRANK_AT)
        assert detail["primary_segment"] == "cart-abandoners"
        assert detail["segments"] == ["cart-abandoners"]
        assert detail["identifiers"] == {"email_sha256": sha256("frank@example.com"),
                                         "google_email_sha256": sha256("frank@example.com")}
    assert entered["event_id"] != exited["event_id"]

    members = stack.members()
    assert members[("cart-abandoners", "frank")] == {
        "segment_shard": members_partition("cart-abandoners", "frank", MEMBER_SHARDS), "customer_id": "frank",
        "v": 2, "since": FRANK_AT}
    gone = members[("potential-abandoners", "frank")]
    assert (gone["v"], gone["exited_at"], gone["expires_at"]) == (2, FRANK_AT, FRANK_AT + 7 * DAY)
    index = stack.scan(MEMBERS_TABLE)

    # Delivered again: the same event ids, and the index as it was.
    assert failures(stack.changes(frank_envelope())) == []
    again = {e["detail"]["change"]: e["detail"]["event_id"] for e in stack.drain_events()}
    assert again == {"entered": entered["event_id"], "exited": exited["event_id"]}
    assert stack.scan(MEMBERS_TABLE) == index


def test_an_older_stream_record_never_overwrites_a_newer_index_entry(stack: Stack) -> None:
    assert failures(stack.changes(frank_envelope())) == []
    stack.drain_events()
    index = stack.scan(MEMBERS_TABLE)

    # Version 1 (frank entering potential-abandoners) arrives after version 2.
    older = copy.deepcopy(frank_envelope())
    body = older["Records"][0]["dynamodb"]
    body["NewImage"] = body.pop("OldImage")
    body["NewImage"]["tx"] = {"L": [{"L": [{"S": "potential-abandoners"}, {"S": "entered"}, {"N": "1791277200"},
                                           {"S": "condition.absence"}, {"S": "no Order Completed within 0s"}]}]}
    body["SequenceNumber"] = "111100000000000000000000"

    assert failures(stack.changes(older)) == []
    assert stack.scan(MEMBERS_TABLE) == index


def test_a_deleted_profile_exits_its_segments(stack: Stack, validator: Any) -> None:
    removed = copy.deepcopy(frank_envelope())
    record = removed["Records"][0]
    record["eventName"] = "REMOVE"
    body = record["dynamodb"]
    body["OldImage"] = body.pop("NewImage")

    assert failures(stack.changes(removed)) == []

    events = stack.drain_events()
    assert len(events) == 1
    detail = check_detail(validator, events[0], {"Frank@Example.com"})
    assert (detail["segment"]["id"], detail["change"], detail["membership_version"]) == ("cart-abandoners",
                                                                                       "exited", 3)
    assert detail["clause"]["reason"] == "the profile was deleted"
    assert detail["segments"] == [] and detail["primary_segment"] is None
