"""Completing and checking an accepted request's messages (cdp.collector.messages): ids, times, context, skew."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.collector.messages import Prepared, RejectedMessage, StreamEntry, iso, prepare
from cdp.collector.request import TrackingRequest
from cdp.core.events import MAX_MESSAGE_BYTES

KEY = "wk_test_0123456789abcdefghij"
RECEIVED = 1_792_497_600.0  # 2026-10-20T12:00:00Z
RECEIVED_ISO = "2026-10-20T12:00:00.000Z"
IP = "198.51.100.7"


def single(message: Any, route: str = "track") -> TrackingRequest:
    return TrackingRequest(route, KEY, [message])


def batch(*messages: Any, sent_at: Any = None, context: dict[str, Any] | None = None,
          integrations: dict[str, Any] | None = None) -> TrackingRequest:
    return TrackingRequest("batch", KEY, list(messages), sent_at, context, integrations)


def ids() -> Any:
    counter = iter(range(1, 10_000))
    return lambda: f"assigned-{next(counter)}"


def run(request: TrackingRequest, source_ip: str | None = IP, received_at: float = RECEIVED) -> Prepared:
    return prepare(request, received_at, source_ip, ids())


def completed(request: TrackingRequest, source_ip: str | None = IP, received_at: float = RECEIVED) -> list[Any]:
    prepared = run(request, source_ip, received_at)
    assert prepared.rejected == [], prepared.rejected
    return [json.loads(entry.data) for entry in prepared.entries]


def only(request: TrackingRequest, source_ip: str | None = IP, received_at: float = RECEIVED) -> dict[str, Any]:
    [message] = completed(request, source_ip, received_at)
    assert isinstance(message, dict)
    return message


def track(user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Signed Up", "userId": user, **extra}


# ---- ids, receivedAt, type ------------------------------------------------------------------------


def test_message_id_is_kept_when_given() -> None:
    assert only(single(track(messageId="m-1")))["messageId"] == "m-1"


def test_message_id_is_assigned_when_absent_empty_or_null() -> None:
    messages = completed(batch(track("a"), track("b", messageId=""), track("c", messageId=None), track("d")))
    assert [m["messageId"] for m in messages] == ["assigned-1", "assigned-2", "assigned-3", "assigned-4"]


def test_default_message_ids_are_fresh_uuids() -> None:
    prepared = prepare(batch(track("a"), track("b")), RECEIVED, IP)
    assigned = [json.loads(entry.data)["messageId"] for entry in prepared.entries]
    assert len(set(assigned)) == 2
    assert all(uuid.UUID(value).version == 4 for value in assigned)


def test_received_at_is_set_in_milliseconds_utc_and_replaces_a_sent_one() -> None:
    assert only(single(track()))["receivedAt"] == RECEIVED_ISO
    assert only(single(track(receivedAt="2001-01-01T00:00:00Z")))["receivedAt"] == RECEIVED_ISO
    assert only(single(track()), received_at=RECEIVED + 0.25)["receivedAt"] == "2026-10-20T12:00:00.250Z"


def test_iso_is_milliseconds_with_z() -> None:
    assert iso(RECEIVED) == RECEIVED_ISO
    assert iso(RECEIVED + 1.5) == "2026-10-20T12:00:01.500Z"


def test_a_single_message_route_sets_the_type() -> None:
    assert only(single({"userId": "alice", "traits": {"plan": "pro"}}, "identify"))["type"] == "identify"
    assert only(single({"type": "track", "userId": "alice"}, "page"))["type"] == "page"
    assert only(single({"userId": "alice", "event": "Opened"}, "track"))["type"] == "track"


def test_a_batch_keeps_each_message_type() -> None:
    messages = completed(batch(track("a"), {"type": "identify", "userId": "b"}, {"type": "page", "userId": "c"}))
    assert [m["type"] for m in messages] == ["track", "identify", "page"]


def test_a_batch_without_type_is_rejected_with_field_type() -> None:
    prepared = run(batch({"userId": "a", "event": "E"}))
    assert [(r.index, r.field) for r in prepared.rejected] == [(0, "type")]


# ---- context and integrations ---------------------------------------------------------------------


def test_context_ip_is_set_from_the_request_when_absent() -> None:
    assert only(single(track()))["context"] == {"ip": IP}
    assert only(single(track(context={"locale": "en-GB"})))["context"] == {"locale": "en-GB", "ip": IP}


def test_context_ip_given_by_the_sender_is_kept() -> None:
    assert only(single(track(context={"ip": "203.0.113.1"})))["context"] == {"ip": "203.0.113.1"}
    assert only(single(track(context={"ip": None})))["context"] == {"ip": None}


def test_no_context_ip_without_a_source_ip() -> None:
    assert "context" not in only(single(track()), source_ip=None)
    assert only(single(track(context={"locale": "fr"})), source_ip=None)["context"] == {"locale": "fr"}


def test_batch_context_is_merged_with_message_keys_winning() -> None:
    shared = {"library": {"name": "analytics-python", "version": "2.3.0"}, "locale": "en-GB"}
    first, second = completed(batch(track("a"), track("b", context={"locale": "fr-FR", "timezone": "Europe/Paris"}),
                                    context=shared))
    assert first["context"] == {**shared, "ip": IP}
    assert second["context"] == {"library": shared["library"], "locale": "fr-FR", "timezone": "Europe/Paris",
                                 "ip": IP}


def test_a_batch_context_ip_is_kept_over_the_request_ip() -> None:
    assert only(batch(track(), context={"ip": "203.0.113.9"}))["context"] == {"ip": "203.0.113.9"}


def test_batch_integrations_are_merged_with_message_keys_winning() -> None:
    first, second = completed(batch(track("a"), track("b", integrations={"Mixpanel": False}),
                                    integrations={"All": True, "Mixpanel": True}))
    assert first["integrations"] == {"All": True, "Mixpanel": True}
    assert second["integrations"] == {"All": True, "Mixpanel": False}


def test_the_sent_messages_are_not_changed() -> None:
    request = batch(track("a", timestamp="2026-10-20T11:00:00Z", context={"locale": "fr"}), track("b"),
                    sent_at="2026-10-20T11:00:01Z", context={"library": {"name": "x"}}, integrations={"All": True})
    before = copy.deepcopy(request.messages)
    run(request)
    assert request.messages == before


# ---- timestamps and skew --------------------------------------------------------------------------


def test_skew_is_corrected_with_the_message_sent_at() -> None:
    # The device clock is 2 h 10 min slow; the event happened 3.5 s before it was sent.
    message = only(single(track(timestamp="2026-10-20T09:49:56.500Z", sentAt="2026-10-20T09:50:00.000Z")))
    assert message["timestamp"] == "2026-10-20T11:59:56.500Z"
    assert message["originalTimestamp"] == "2026-10-20T09:49:56.500Z"


def test_skew_is_corrected_with_the_batch_sent_at() -> None:
    first, second = completed(batch(track("a", timestamp="2026-10-20T12:30:00.000+00:00"),
                                    track("b", timestamp="2026-10-20T14:29:59.000+02:00"),
                                    sent_at="2026-10-20T12:30:05.000Z"))
    assert first["timestamp"] == "2026-10-20T11:59:55.000Z"
    assert second["timestamp"] == "2026-10-20T11:59:54.000Z"
    assert [first["originalTimestamp"], second["originalTimestamp"]] == ["2026-10-20T12:30:00.000+00:00",
                                                                         "2026-10-20T14:29:59.000+02:00"]


def test_the_message_sent_at_wins_over_the_batch_one() -> None:
    message = only(batch(track(timestamp="2026-10-20T10:00:00Z", sentAt="2026-10-20T10:00:10Z"),
                         sent_at="2026-10-20T10:00:30Z"))
    assert message["timestamp"] == "2026-10-20T11:59:50.000Z"


def test_original_timestamp_alone_is_corrected_and_kept() -> None:
    message = only(single(track(originalTimestamp="2026-10-20T08:00:00Z", sentAt="2026-10-20T08:00:01Z")))
    assert message["timestamp"] == "2026-10-20T11:59:59.000Z"
    assert message["originalTimestamp"] == "2026-10-20T08:00:00Z"


def test_no_timestamp_gets_received_at() -> None:
    message = only(single(track(sentAt="2026-10-20T08:00:01Z")))
    assert message["timestamp"] == RECEIVED_ISO
    assert "originalTimestamp" not in message
    assert only(single(track(timestamp=None)))["timestamp"] == RECEIVED_ISO


def test_without_sent_at_the_timestamp_is_unchanged() -> None:
    message = only(single(track(timestamp="2026-10-20T08:00:00Z")))
    assert message["timestamp"] == "2026-10-20T08:00:00Z"
    assert "originalTimestamp" not in message


def test_an_unparsable_sent_at_leaves_the_timestamp_unchanged() -> None:
    for sent_at in ("yesterday", "2026-10-20T08:00:01", 1792497600, {"at": 1}, ""):
        message = only(single(track(timestamp="2026-10-20T08:00:00Z", sentAt=sent_at)))
        assert message["timestamp"] == "2026-10-20T08:00:00Z", sent_at
        assert "originalTimestamp" not in message
        batched = only(batch(track(timestamp="2026-10-20T08:00:00Z"), sent_at=sent_at))
        assert batched["timestamp"] == "2026-10-20T08:00:00Z", sent_at


def test_an_unparsable_timestamp_is_rejected_by_the_checks_with_its_field() -> None:
    prepared = run(batch(track("a", timestamp="not a time", sentAt="2026-10-20T08:00:01Z"), track("b")))
    assert [(r.index, r.field) for r in prepared.rejected] == [(0, "timestamp")]
    assert [e.partition_key for e in prepared.entries] == ["b"]


def _iso_ms(milliseconds: int, offset_minutes: int = 0) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=milliseconds)
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


@settings(max_examples=300, deadline=None)
@given(received_ms=st.integers(min_value=1_735_689_600_000, max_value=1_893_456_000_000),  # 2025-2030
       skew_ms=st.integers(min_value=-366 * 86_400_000, max_value=366 * 86_400_000),
       delay_ms=st.integers(min_value=0, max_value=7 * 86_400_000),
       offsets=st.tuples(st.integers(min_value=-12 * 60, max_value=14 * 60),
                         st.integers(min_value=-12 * 60, max_value=14 * 60)),
       in_batch=st.booleans())
def test_skew_correction_is_exact_for_any_offsets(received_ms: int, skew_ms: int, delay_ms: int,
                                                  offsets: tuple[int, int], in_batch: bool) -> None:
    """timestamp = receivedAt - (sentAt - originalTimestamp), to the millisecond, whatever the device's zone."""
    sent_device_ms = received_ms + skew_ms
    happened_device_ms = sent_device_ms - delay_ms
    happened, sent = _iso_ms(happened_device_ms, offsets[0]), _iso_ms(sent_device_ms, offsets[1])
    request = (batch(track(timestamp=happened), sent_at=sent) if in_batch
               else single(track(timestamp=happened, sentAt=sent)))
    message = only(request, received_at=received_ms / 1000)
    assert message["timestamp"] == _iso_ms(received_ms - delay_ms).replace("+00:00", "Z")
    assert message["originalTimestamp"] == happened
    assert message["receivedAt"] == _iso_ms(received_ms).replace("+00:00", "Z")


# ---- checks, one message at a time ----------------------------------------------------------------


def test_a_message_without_user_or_anonymous_id_is_rejected_and_the_rest_kept() -> None:
    prepared = run(batch(track("a"), {"type": "track", "event": "Lost"}, track("c")))
    assert [e.partition_key for e in prepared.entries] == ["a", "c"]
    [rejected] = prepared.rejected
    assert (rejected.index, rejected.field) == (1, "userId")
    assert "anonymousId" in rejected.reason
    kept = json.loads(rejected.data)
    assert kept["event"] == "Lost"
    assert kept["messageId"] == "assigned-2"  # the completed message, as it would have gone on the stream
    assert rejected.as_json() == {"index": 1, "field": "userId", "reason": rejected.reason}


def test_an_oversize_message_after_completion_is_rejected_and_the_rest_kept() -> None:
    base = track("big", messageId="m-big", properties={"blob": ""})
    # Fits as sent; over the limit once receivedAt, context.ip and timestamp are added.
    base["properties"]["blob"] = "x" * (MAX_MESSAGE_BYTES - len(json.dumps(base, separators=(",", ":"))) - 10)
    assert len(json.dumps(base, separators=(",", ":")).encode()) < MAX_MESSAGE_BYTES
    prepared = run(batch(track("a"), base, track("c")))
    assert [e.partition_key for e in prepared.entries] == ["a", "c"]
    [rejected] = prepared.rejected
    assert (rejected.index, rejected.field) == (1, "message")
    assert str(MAX_MESSAGE_BYTES) in rejected.reason
    assert len(rejected.data) > MAX_MESSAGE_BYTES


def test_a_message_that_is_not_an_object_is_rejected_and_the_rest_kept() -> None:
    prepared = run(batch("hello", track("b"), [1, 2], None, 3))
    assert [e.partition_key for e in prepared.entries] == ["b"]
    assert [(r.index, r.field, r.reason) for r in prepared.rejected] == [
        (0, "message", "must be a JSON object, not a string"), (2, "message", "must be a JSON object, not an array"),
        (3, "message", "must be a JSON object, not null"), (4, "message", "must be a JSON object, not a number")]
    assert [json.loads(r.data) for r in prepared.rejected] == ["hello", [1, 2], None, 3]


def test_a_lone_surrogate_is_rejected_and_kept_as_sent() -> None:
    prepared = run(batch(track("a", event="bad \ud800 name"), track("b")))
    assert [e.partition_key for e in prepared.entries] == ["b"]
    [rejected] = prepared.rejected
    assert (rejected.index, rejected.field) == (0, "message")
    assert b"\\ud800" in rejected.data


def test_partition_key_is_user_id_else_anonymous_id() -> None:
    prepared = run(batch(track("alice", anonymousId="anon-1"), {"type": "page", "anonymousId": "anon-2"},
                         {"type": "identify", "userId": "bob"}))
    assert [e.partition_key for e in prepared.entries] == ["alice", "anon-2", "bob"]


def test_entries_are_the_completed_compact_utf8_json_in_order() -> None:
    prepared = run(batch(track("a", messageId="1", properties={"city": "Zürich"}), track("b", messageId="2")))
    assert prepared.rejected == []
    first = prepared.entries[0]
    assert isinstance(first, StreamEntry)
    assert "Zürich".encode() in first.data
    assert b'", "' not in first.data  # compact separators
    assert [json.loads(e.data)["messageId"] for e in prepared.entries] == ["1", "2"]


def test_rejected_message_as_json_names_no_data() -> None:
    rejected = RejectedMessage(3, "userId", "either userId or anonymousId is required", b'{"email":"x@example.com"}')
    assert rejected.as_json() == {"index": 3, "field": "userId", "reason": "either userId or anonymousId is required"}


def test_a_write_key_inside_a_batch_message_is_not_kept() -> None:
    from cdp.collector.messages import prepare
    from cdp.collector.request import TrackingRequest

    request = TrackingRequest("batch", "wk_x", [{"type": "track", "event": "E", "userId": "u1",
                                                 "writeKey": "wk_inside"}])
    prepared = prepare(request, 1_790_000_000.0, None)
    assert len(prepared.entries) == 1
    assert b"wk_inside" not in prepared.entries[0].data
