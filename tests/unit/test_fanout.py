"""The fan-out core (cdp.pipeline.fanout), pure: parsing bus events, planning against the ledger, delivering, settling.

Bus events are built the way the changes function publishes them (``cdp.pipeline.changes.bus_entry``) and wrapped
the way an EventBridge rule's SQS target delivers them. The destination is a small in-test fake that
records what it was asked to send and can answer with a TransientError or a per-row SendOutcome; it also
keeps the audience it would hold (a set of identifier tuples), so tests can check the end state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import load_catalogue
from cdp.core.identifiers import hashed_identifiers, sha256
from cdp.pipeline.changes import MembershipChange, bus_entry
from cdp.pipeline.fanout import (
    ENTERED,
    EXITED,
    DeliveryResult,
    InvalidDelivery,
    LedgerEntry,
    MembershipEvent,
    Row,
    SendOutcome,
    applied_entry,
    deliver,
    parse_message,
    plan,
    settle,
    valid_identifiers,
)
from cdp.ports import TransientError
from cdp_dev.memory import MemoryDeadLetters, MemoryDeliveryLedger

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = load_catalogue(ROOT / "segments")
AT = int(datetime(2026, 10, 9, 9, 0, tzinfo=UTC).timestamp())
CART, VIP, BROWSERS = "cart-abandoners", "vip", "browsers"
EMAIL, PHONE = "email_sha256", "phone_sha256"


# ---- bus events ------------------------------------------------------------------------------


def ids_of(email: str | None = None, phone: str | None = None) -> dict[str, str]:
    """The hashed identifiers the changes function puts in the detail, from raw traits."""
    traits = {name: value for name, value in (("email", email), ("phone", phone)) if value is not None}
    return hashed_identifiers(traits)


def event_id(customer: str, segment: str, kind: str, version: int) -> str:
    return MembershipChange(customer, segment, kind, AT, version, "", "").event_id


def bus_event(kind: str, customer: str, version: int, identifiers: Mapping[str, str] | None = None,
              segment: str = CART) -> dict[str, Any]:
    """A bus event as the rule's queue target delivers it, its detail made by ``bus_entry``."""
    change = MembershipChange(customer, segment, kind, AT + version, version, "condition.absence", "test clause")
    members = {segment: AT} if kind == ENTERED else {}
    entry = bus_entry(change, {"customer_id": customer, "m": members, "t": {}, "v": version}, CATALOGUE, "cdp-bus")
    detail = json.loads(entry["Detail"])
    detail["identifiers"] = dict(identifiers if identifiers is not None else ids_of(f"{customer}@example.com"))
    return {"version": "0", "id": f"bus-{customer}-{segment}-{kind}-{version}", "detail-type": entry["DetailType"],
            "source": entry["Source"], "account": "123456789012", "time": "2026-10-09T09:00:00Z",
            "region": "eu-west-1", "resources": [], "detail": detail}


def message(kind: str, customer: str, version: int, identifiers: Mapping[str, str] | None = None,
            segment: str = CART, message_id: str | None = None) -> tuple[str, str]:
    body = json.dumps(bus_event(kind, customer, version, identifiers, segment))
    return (message_id or f"m-{customer}-{segment}-{kind}-{version}", body)


def parsed(kind: str, customer: str, version: int, identifiers: Mapping[str, str] | None = None,
           segment: str = CART) -> MembershipEvent:
    return parse_message(*message(kind, customer, version, identifiers, segment))


# ---- fakes -----------------------------------------------------------------------------------


@dataclass
class FakeDestination:
    """An audience per target; ``respond`` decides each send's outcome (default: all applied)."""

    targets: dict[str, str] = field(default_factory=lambda: {CART: "aud-cart", VIP: "aud-vip"})
    name: str = "fake"
    identifier_names: tuple[str, ...] = (EMAIL, PHONE)
    consent_in_adds: bool = False
    respond: Callable[[str, str, Sequence[Row]], SendOutcome] | None = None
    sent: list[tuple[str, str, list[Row]]] = field(default_factory=list)
    audiences: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)

    def target(self, segment_id: str) -> str | None:
        return self.targets.get(segment_id)

    def send(self, target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        self.sent.append((target, kind, list(rows)))
        outcome = self.respond(target, kind, rows) if self.respond else SendOutcome()
        audience = self.audiences.setdefault(target, set())
        for row in rows:
            if row.event_id in outcome.retry or row.event_id in outcome.refused:
                continue
            keys = tuple(f"{name}={value}" for name, value in sorted(row.identifiers.items()))
            if kind == ENTERED:
                audience.add(keys)
            else:
                audience.discard(keys)
        return outcome


class FlakyLedger(MemoryDeliveryLedger):
    def __init__(self, fail_entries: bool = False, fail_record_for: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.fail_entries = fail_entries
        self.fail_record_for = fail_record_for  # customer ids whose record fails

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        if self.fail_entries:
            raise TransientError("ProvisionedThroughputExceededException")
        return super().entries(destination, keys)

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        if key[1] in self.fail_record_for:
            raise TransientError("ThrottlingException")
        return super().record(destination, key, entry)


class BrokenDeadLetters:
    def put(self, body: str, reason: str) -> None:
        raise TransientError("ServiceUnavailable")


def sent_rows(destination: FakeDestination) -> list[tuple[str, str, str, dict[str, str]]]:
    return [(target, kind, row.event_id, dict(row.identifiers)) for target, kind, rows in destination.sent
            for row in rows]


# ---- parse_message ---------------------------------------------------------------------------


def test_a_real_bus_event_is_parsed() -> None:
    identifiers = ids_of(" Alice@Example.COM ", "+44 20 7946 0958")
    event = parse_message("m-1", json.dumps(bus_event(ENTERED, "alice", 4, identifiers)))

    assert event == MembershipEvent(
        message_id="m-1", event_id=event_id("alice", CART, ENTERED, 4), kind=ENTERED, customer_id="alice",
        segment_id=CART, version=4, at=datetime.fromtimestamp(AT + 4, UTC).isoformat().replace("+00:00", "Z"),
        primary_segment=CART, identifiers=identifiers, clause="condition.absence", change=ENTERED)
    assert event.key == (CART, "alice")
    assert event.identifiers[EMAIL] == sha256("alice@example.com")


def test_the_fixture_batch_holds_real_bus_events() -> None:
    envelope = json.loads((ROOT / "events" / "sqs" / "meta-batch.json").read_text())
    kinds = []
    for record in envelope["Records"]:
        try:
            kinds.append(parse_message(record["messageId"], record["body"]).kind)
        except InvalidDelivery as error:
            kinds.append(str(error))
    assert kinds.count(ENTERED) == 7 and kinds.count(EXITED) == 1
    assert kinds[-1] == "detail-type: must be one of ['Segment Consent Changed', 'Segment Entered', 'Segment Exited']"


def test_an_exit_without_segments_left_has_no_primary_segment() -> None:
    event = parsed(EXITED, "bob", 9)
    assert (event.kind, event.primary_segment, event.version) == (EXITED, None, 9)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for part in parents:
            target = target[part]
        target[last] = value
    change.__name__ = f"{path}={value!r}"
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for part in parents:
            target = target[part]
        del target[last]
    change.__name__ = f"no {path}"
    return change


VERSION_REASON = "detail.membership_version: must be a positive whole number"
IDENTIFIERS_REASON = "detail.identifiers: must be an object of strings"


DETAIL_TYPE_REASON = "detail-type: must be one of ['Segment Consent Changed', 'Segment Entered', 'Segment Exited']"


@pytest.mark.parametrize(("change", "reason"), [
    (_set("detail-type", "Segment Updated"), DETAIL_TYPE_REASON),
    (_drop("detail-type"), DETAIL_TYPE_REASON),
    (_drop("detail"), "detail: is missing"),
    (_set("detail", "{}"), "detail: is missing"),
    (_set("detail.schema_version", "2"), "detail.schema_version: only version 1 is understood"),
    (_drop("detail.schema_version"), "detail.schema_version: only version 1 is understood"),
    (_set("detail.change", EXITED), "detail.change: does not match the detail-type"),
    (_set("detail-type", "Segment Exited"), "detail.change: does not match the detail-type"),
    (_set("detail.membership_version", 0), VERSION_REASON),
    (_set("detail.membership_version", -3), VERSION_REASON),
    (_set("detail.membership_version", "4"), VERSION_REASON),
    (_set("detail.membership_version", 4.0), VERSION_REASON),
    (_set("detail.membership_version", True), VERSION_REASON),
    (_drop("detail.membership_version"), VERSION_REASON),
    (_drop("detail.event_id"), "detail.event_id: must be a non-empty string"),
    (_set("detail.event_id", ""), "detail.event_id: must be a non-empty string"),
    (_set("detail.customer_id", 42), "detail.customer_id: must be a non-empty string"),
    (_drop("detail.segment"), "detail.segment.id: must be a non-empty string"),
    (_set("detail.segment", "cart-abandoners"), "detail.segment.id: must be a non-empty string"),
    (_set("detail.segment.id", None), "detail.segment.id: must be a non-empty string"),
    (_set("detail.identifiers", {EMAIL: 5}), IDENTIFIERS_REASON),
    (_set("detail.identifiers", {EMAIL: None}), IDENTIFIERS_REASON),
    (_set("detail.identifiers", [sha256("x")]), IDENTIFIERS_REASON),
    (_set("detail.identifiers", "not an object"), IDENTIFIERS_REASON),
], ids=lambda value: getattr(value, "__name__", "reason"))
def test_a_malformed_field_is_refused_with_a_precise_reason(change: Callable[[dict[str, Any]], None],
                                                            reason: str) -> None:
    event = bus_event(ENTERED, "alice", 4)
    change(event)
    with pytest.raises(InvalidDelivery) as raised:
        parse_message("m-1", json.dumps(event))
    assert str(raised.value) == reason


@pytest.mark.parametrize(("body", "reason"), [
    ("{not json", "body: is not JSON"),
    ("", "body: is not JSON"),
    ("[1, 2]", "body: is not a JSON object"),
    ('"Segment Entered"', "body: is not a JSON object"),
])
def test_a_body_that_is_not_a_json_object_is_refused(body: str, reason: str) -> None:
    with pytest.raises(InvalidDelivery, match=f"^{reason}$"):
        parse_message("m-1", body)


def test_a_refusal_names_the_field_never_the_value() -> None:
    secret = "alice@example.com"
    event = bus_event(ENTERED, "alice", 4)
    event["detail"]["identifiers"] = {EMAIL: {"raw": secret}}
    with pytest.raises(InvalidDelivery) as raised:
        parse_message("m-1", json.dumps(event))
    assert secret not in str(raised.value)


def test_missing_or_empty_identifiers_are_an_empty_mapping() -> None:
    event = bus_event(EXITED, "alice", 4)
    event["detail"]["identifiers"] = None
    assert parse_message("m-1", json.dumps(event)).identifiers == {}


# ---- plan ------------------------------------------------------------------------------------


def test_the_newest_version_per_key_wins_within_a_batch() -> None:
    v1, v3, v2 = parsed(ENTERED, "alice", 1), parsed(EXITED, "alice", 3), parsed(ENTERED, "alice", 2)
    bob = parsed(ENTERED, "bob", 1)
    other_segment = parsed(ENTERED, "alice", 1, segment=VIP)

    result = plan([v1, v3, bob, v2, other_segment], {})

    assert [(a.event, a.kind) for a in result.actions] == [(v3, EXITED), (bob, ENTERED), (other_segment, ENTERED)]
    assert sorted((e.version, why) for e, why in result.skipped) == [
        (1, "superseded by a newer change in the same batch"), (2, "superseded by a newer change in the same batch")]


def test_a_redelivery_is_skipped_as_already_delivered() -> None:
    event = parsed(ENTERED, "alice", 2)
    applied = {event.key: LedgerEntry(2, ENTERED, event.event_id, dict(event.identifiers))}

    result = plan([event], applied)

    assert result.actions == []
    assert result.skipped == [(event, "already delivered")]


def test_a_change_older_than_the_applied_one_is_skipped() -> None:
    late_enter = parsed(ENTERED, "alice", 3)
    applied = {late_enter.key: LedgerEntry(5, EXITED, event_id("alice", CART, EXITED, 5))}

    result = plan([late_enter], applied)

    assert result.actions == []
    assert result.skipped == [(late_enter, "older than the change already applied")]


def test_a_newer_change_than_the_applied_one_is_acted_on() -> None:
    enter = parsed(ENTERED, "alice", 6)
    applied = {enter.key: LedgerEntry(5, EXITED, event_id("alice", CART, EXITED, 5))}
    assert [(a.kind, a.identifiers) for a in plan([enter], applied).actions] == [(ENTERED, enter.identifiers)]


def test_an_exit_after_an_enter_removes_the_identifiers_that_were_added() -> None:
    added = ids_of("alice@old.example", "+49 30 1234567")
    exit_ = parsed(EXITED, "alice", 3, ids_of("alice@new.example"))
    applied = {exit_.key: LedgerEntry(2, ENTERED, event_id("alice", CART, ENTERED, 2), added)}

    (action,) = plan([exit_], applied).actions

    assert (action.kind, action.identifiers) == (EXITED, added)


@pytest.mark.parametrize("applied", [
    None,
    LedgerEntry(1, EXITED, "e-older-exit"),
    LedgerEntry(1, ENTERED, "e-enter-without-identifiers", {}),
], ids=["no-ledger-entry", "prior-exit", "add-had-no-identifiers"])
def test_an_exit_with_no_prior_add_uses_its_own_identifiers(applied: LedgerEntry | None) -> None:
    exit_ = parsed(EXITED, "alice", 3, ids_of("alice@new.example"))
    (action,) = plan([exit_], {exit_.key: applied} if applied else {}).actions
    assert (action.kind, action.identifiers) == (EXITED, ids_of("alice@new.example"))


def test_the_ledger_keeps_the_identifiers_of_an_add_only() -> None:
    enter, exit_ = parsed(ENTERED, "alice", 2), parsed(EXITED, "alice", 3)
    (add,) = plan([enter], {}).actions
    (remove,) = plan([exit_], {}).actions
    assert applied_entry(add) == LedgerEntry(2, ENTERED, enter.event_id, dict(enter.identifiers))
    assert applied_entry(remove) == LedgerEntry(3, EXITED, exit_.event_id, {})


# ---- deliver ---------------------------------------------------------------------------------


def test_a_batch_is_sent_per_target_and_kind_and_recorded() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    alice = ids_of("alice@example.com", "+44 20 7946 0958")
    messages = [message(ENTERED, "alice", 2, alice), message(EXITED, "bob", 5),
                message(ENTERED, "carol", 1, segment=VIP), message(ENTERED, "dave", 1)]

    result = deliver(messages, destination, ledger)

    assert (result.retry, result.refused, result.skipped) == ({}, {}, [])
    assert [(target, kind, [r.event_id for r in rows]) for target, kind, rows in destination.sent] == [
        ("aud-cart", ENTERED, [event_id("alice", CART, ENTERED, 2), event_id("dave", CART, ENTERED, 1)]),
        ("aud-cart", EXITED, [event_id("bob", CART, EXITED, 5)]),
        ("aud-vip", ENTERED, [event_id("carol", VIP, ENTERED, 1)]),
    ]
    # Only the identifiers the destination matches on are sent (not the Google variants).
    assert destination.sent[0][2][0].identifiers == {EMAIL: alice[EMAIL], PHONE: alice[PHONE]}
    assert set(ledger.entries_by_key) == {
        ("fake:aud-cart", CART, "alice"), ("fake:aud-cart", CART, "bob"), ("fake:aud-vip", VIP, "carol"),
        ("fake:aud-cart", CART, "dave")}
    assert ledger.entries_by_key[("fake:aud-cart", CART, "alice")] == LedgerEntry(
        2, ENTERED, event_id("alice", CART, ENTERED, 2), alice)
    assert len(result.delivered) == 4


def test_a_segment_without_a_target_is_skipped_and_never_sent() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    result = deliver([message(ENTERED, "alice", 2, segment=BROWSERS)], destination, ledger)
    assert [why for _, why in result.skipped] == ["segment not configured for this destination"]
    assert (destination.sent, ledger.entries_by_key, result.retry, result.refused) == ([], {}, {}, {})


def test_an_event_with_no_matching_identifiers_is_recorded_and_skipped() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    google_only = {"google_email_sha256": sha256("alice@example.com")}

    result = deliver([message(ENTERED, "alice", 2, google_only), message(ENTERED, "bob", 2)], destination, ledger)

    assert [(e.customer_id, why) for e, why in result.skipped] == [
        ("alice", "no identifiers this destination matches on")]
    assert [row[2] for row in sent_rows(destination)] == [event_id("bob", CART, ENTERED, 2)]
    assert ledger.entries_by_key[("fake:aud-cart", CART, "alice")].version == 2  # order still holds
    late = deliver([message(ENTERED, "alice", 1)], destination, ledger)
    assert [why for _, why in late.skipped] == ["older than the change already applied"]


@pytest.mark.parametrize("poison", [
    sha256("dave@example.com").upper(), sha256("dave@example.com")[:63], "dave@example.com", "",
    sha256("dave@example.com")[:-1] + "g",
], ids=["upper-case", "63-digits", "raw-email", "empty", "non-hex"])
def test_a_poisoned_identifier_is_refused_alone(poison: str) -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    dave = {**ids_of("dave@example.com", "+44 20 7946 0958"), PHONE: poison}
    messages = [message(ENTERED, "alice", 2), message(ENTERED, "dave", 4, dave), message(ENTERED, "erin", 3)]

    result = deliver(messages, destination, ledger)

    assert result.refused == {messages[1][0]: "identifiers.phone_sha256: is not a SHA-256 hex digest"}
    assert poison not in str(result.refused) or poison == ""
    assert [row[2] for row in sent_rows(destination)] == [event_id("alice", CART, ENTERED, 2),
                                                           event_id("erin", CART, ENTERED, 3)]
    assert ("fake:aud-cart", CART, "dave") not in ledger.entries_by_key
    assert result.retry == {}


def test_a_malformed_identifier_the_destination_does_not_use_is_ignored() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    identifiers = {**ids_of("alice@example.com"), "google_email_sha256": "NOT-A-HASH"}
    result = deliver([message(ENTERED, "alice", 2, identifiers)], destination, ledger)
    assert result.refused == {}
    assert sent_rows(destination)[0][3] == {EMAIL: sha256("alice@example.com")}


def test_a_transient_error_from_send_retries_those_rows_only() -> None:
    def respond(target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        if kind == EXITED:
            raise TransientError("platform still answered HTTP 429 after 5 attempts")
        return SendOutcome()

    destination, ledger = FakeDestination(respond=respond), MemoryDeliveryLedger()
    messages = [message(ENTERED, "alice", 2), message(EXITED, "bob", 5), message(EXITED, "carol", 3)]

    result = deliver(messages, destination, ledger)

    assert result.retry == {messages[1][0]: "platform still answered HTTP 429 after 5 attempts",
                            messages[2][0]: "platform still answered HTTP 429 after 5 attempts"}
    assert result.refused == {}
    assert list(ledger.entries_by_key) == [("fake:aud-cart", CART, "alice")]
    assert [a.event.customer_id for a in result.delivered] == ["alice"]


def test_a_send_outcome_retries_and_refuses_per_row() -> None:
    bob_id, carol_id = event_id("bob", CART, ENTERED, 2), event_id("carol", CART, ENTERED, 2)

    def respond(target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        return SendOutcome(retry={bob_id: "rate limited"}, refused={carol_id: "identifiers rejected"})

    destination, ledger = FakeDestination(respond=respond), MemoryDeliveryLedger()
    messages = [message(ENTERED, name, 2) for name in ("alice", "bob", "carol")]

    result = deliver(messages, destination, ledger)

    assert result.retry == {messages[1][0]: "rate limited"}
    assert result.refused == {messages[2][0]: "identifiers rejected"}
    assert list(ledger.entries_by_key) == [("fake:aud-cart", CART, "alice")]
    assert [a.event.customer_id for a in result.delivered] == ["alice"]


def test_an_unavailable_ledger_retries_the_events_of_that_target() -> None:
    destination, ledger = FakeDestination(), FlakyLedger(fail_entries=True)
    messages = [message(ENTERED, "alice", 2), message(EXITED, "bob", 5)]

    result = deliver(messages, destination, ledger)

    reason = "delivery ledger unavailable: ProvisionedThroughputExceededException"
    assert result.retry == {messages[0][0]: reason, messages[1][0]: reason}
    assert destination.sent == []


def test_a_failed_ledger_write_after_sending_retries_that_event() -> None:
    destination, ledger = FakeDestination(), FlakyLedger(fail_record_for=frozenset({"bob"}))
    messages = [message(ENTERED, "alice", 2), message(ENTERED, "bob", 2)]

    result = deliver(messages, destination, ledger)

    assert result.retry == {messages[1][0]: "delivery ledger unavailable: ThrottlingException"}
    assert [a.event.customer_id for a in result.delivered] == ["alice"]


def test_a_failed_ledger_write_for_an_event_without_identifiers_retries_it() -> None:
    destination, ledger = FakeDestination(), FlakyLedger(fail_record_for=frozenset({"alice"}))
    message_id, body = message(ENTERED, "alice", 2, {})
    result = deliver([(message_id, body)], destination, ledger)
    assert result.retry == {message_id: "delivery ledger unavailable: ThrottlingException"}


def test_a_redelivered_batch_is_not_sent_again() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    messages = [message(ENTERED, "alice", 2), message(EXITED, "bob", 5)]
    deliver(messages, destination, ledger)

    again = deliver(messages, destination, ledger)

    assert len(destination.sent) == 2
    assert [why for _, why in again.skipped] == ["already delivered", "already delivered"]
    assert (again.retry, again.refused, again.delivered) == ({}, {}, [])


def test_an_exit_after_an_add_in_an_earlier_batch_removes_the_old_identifiers() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, "alice", 2, ids_of("alice@old.example"))], destination, ledger)

    deliver([message(EXITED, "alice", 3, ids_of("alice@new.example"))], destination, ledger)

    assert sent_rows(destination)[1][1:] == (EXITED, event_id("alice", CART, EXITED, 3),
                                             {EMAIL: sha256("alice@old.example")})
    assert destination.audiences["aud-cart"] == set()


def test_unparseable_messages_are_refused_and_the_rest_delivered() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    messages = [("m-junk", "{not json"), message(ENTERED, "alice", 2)]
    result = deliver(messages, destination, ledger)
    assert result.refused == {"m-junk": "body: is not JSON"}
    assert [a.event.customer_id for a in result.delivered] == ["alice"]


@pytest.mark.parametrize("late_exit", [False, True], ids=["exit-and-re-enter-in-one-batch", "exit-arrives-late"])
def test_an_email_change_between_exit_and_re_entry_leaves_no_stale_identifiers(late_exit: bool) -> None:
    # BUG (cdp.pipeline.fanout.plan): alice entered with her old email (applied), exited (v3) and re-entered (v4)
    # after changing her email. When the exit and the re-entry arrive in one batch, plan() keeps only the
    # re-entry ("superseded by a newer change in the same batch"), so the old email is never removed; when
    # the exit arrives after the re-entry, it is skipped as "older than the change already applied", with
    # the same effect. Either way the audience keeps alice's old hashed email for good: the ledger now holds
    # the new identifiers only, so no later exit will ever remove the old one.
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    old, new = ids_of("alice@old.example"), ids_of("alice@new.example")
    deliver([message(ENTERED, "alice", 2, old)], destination, ledger)
    exit_, re_enter = message(EXITED, "alice", 3, new), message(ENTERED, "alice", 4, new)

    if late_exit:
        deliver([re_enter], destination, ledger)
        deliver([exit_], destination, ledger)
    else:
        deliver([exit_, re_enter], destination, ledger)

    assert destination.audiences["aud-cart"] == {(f"{EMAIL}={new[EMAIL]}",)}


class InterleavingLedger(MemoryDeliveryLedger):
    """Runs another invocation right after the first ledger read, as a concurrent Lambda would."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], object] | None = None
        self.refused_writes: list[LedgerEntry] = []

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        found = super().entries(destination, keys)
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return found

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        stored = super().record(destination, key, entry)
        if not stored:
            self.refused_writes.append(entry)
        return stored


def test_an_enter_overtaken_by_a_concurrent_exit_does_not_leave_the_customer_added() -> None:
    # The queue does not order per customer, so two invocations can hold alice's Entered v2 and Exited v3
    # at once: B reads, removes and records v3 while A, having read the ledger before that, adds her.
    # A's write of v2 is refused; A then puts the destination back in the state B recorded (removed).
    destination, ledger = FakeDestination(), InterleavingLedger()
    enter, exit_ = message(ENTERED, "alice", 2), message(EXITED, "alice", 3)
    ledger.meanwhile = lambda: deliver([exit_], destination, ledger)

    result = deliver([enter], destination, ledger)

    assert [kind for _, kind, _ in destination.sent] == [EXITED, ENTERED, EXITED]  # B's exit, A's add, the fix
    assert [e.version for e in ledger.refused_writes] == [2]
    assert result.delivered == [] and result.retry == {}
    assert [why for _, why in result.skipped] == ["overtaken by a newer change delivered concurrently"]
    assert destination.audiences["aud-cart"] == set()


def test_an_exit_overtaken_by_a_concurrent_re_entry_puts_the_customer_back() -> None:
    destination, ledger = FakeDestination(), InterleavingLedger()
    deliver([message(ENTERED, "alice", 2)], destination, ledger)
    exit_, enter = message(EXITED, "alice", 3), message(ENTERED, "alice", 4)
    ledger.meanwhile = lambda: deliver([enter], destination, ledger)

    result = deliver([exit_], destination, ledger)

    assert [kind for _, kind, _ in destination.sent] == [ENTERED, ENTERED, EXITED, ENTERED]
    assert result.delivered == [] and result.retry == {}
    assert destination.audiences["aud-cart"] == {(f"{EMAIL}={ids_of('alice@example.com')[EMAIL]}",)}


# ---- settle ----------------------------------------------------------------------------------


def test_refused_messages_go_to_the_dead_letters_with_their_reason() -> None:
    destination, ledger, dead = FakeDestination(), MemoryDeliveryLedger(), MemoryDeadLetters()
    poisoned = {EMAIL: "not-a-hash"}
    messages = [("m-junk", "{not json"), message(ENTERED, "alice", 2), message(ENTERED, "dave", 4, poisoned)]

    retry = settle(messages, deliver(messages, destination, ledger), dead)

    assert retry == []
    assert dead.letters == [("{not json", "body: is not JSON"),
                            (messages[2][1], "identifiers.email_sha256: is not a SHA-256 hex digest")]


def test_messages_to_retry_are_returned_in_batch_order_and_never_dead_lettered() -> None:
    def respond(target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        raise TransientError("later")

    destination, ledger, dead = FakeDestination(respond=respond), MemoryDeliveryLedger(), MemoryDeadLetters()
    messages = [message(EXITED, "bob", 5), ("m-junk", "[]"), message(ENTERED, "alice", 2)]

    retry = settle(messages, deliver(messages, destination, ledger), dead)

    assert retry == [messages[0][0], messages[2][0]]
    assert dead.letters == [("[]", "body: is not a JSON object")]


def test_an_unavailable_dead_letter_queue_turns_a_refusal_into_a_retry() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    messages = [message(ENTERED, "alice", 2), ("m-junk", "{not json")]
    result = deliver(messages, destination, ledger)

    retry = settle(messages, result, BrokenDeadLetters())

    assert retry == ["m-junk"]
    assert result.refused == {"m-junk": "body: is not JSON"}


def test_a_message_both_refused_and_retried_is_retried_only() -> None:
    dead = MemoryDeadLetters()
    result = DeliveryResult(retry={"m-1": "later"}, refused={"m-1": "never"})
    assert settle([("m-1", "{}")], result, dead) == ["m-1"]
    assert dead.letters == []


def test_an_event_refused_by_the_destination_is_dead_lettered_whole() -> None:
    def respond(target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        return SendOutcome(refused={row.event_id: "rejected by the platform" for row in rows})

    destination, ledger, dead = FakeDestination(respond=respond), MemoryDeliveryLedger(), MemoryDeadLetters()
    messages = [message(ENTERED, "alice", 2)]
    assert settle(messages, deliver(messages, destination, ledger), dead) == []
    assert dead.letters == [(messages[0][1], "rejected by the platform")]
    assert ledger.entries_by_key == {}


def test_rows_carry_the_customer_and_the_membership_version_they_apply() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, "alice", 2), message(EXITED, "bob", 5)], destination, ledger)
    assert [(kind, row.customer_id, row.version) for _, kind, rows in destination.sent for row in rows] == [
        (ENTERED, "alice", 2), (EXITED, "bob", 5)]


def test_an_email_identifier_must_be_normalised_to_be_sent() -> None:
    assert valid_identifiers({"email": "a@b.co", "email_sha256": "0" * 64}, ["email", "email_sha256"]) == {
        "email": "a@b.co", "email_sha256": "0" * 64}
    with pytest.raises(InvalidDelivery, match=r"identifiers\.email: is not a normalised email address"):
        valid_identifiers({"email": " A@B.co"}, ["email"])


# ---- identity merges: the anonymous side's exit and the known side's audience ---------------------------------

ANON, KNOWN, ADA = "anon-1", "user-1", "ada@example.com"


def merged_exit(customer: str, version: int, identifiers: Mapping[str, str], into: str,
                segment: str = CART) -> tuple[str, str]:
    """The exit a merge causes, as the changes function publishes it: clause ``merged``, the frozen image's
    ``mt`` naming the canonical customer."""
    change = MembershipChange(customer, segment, EXITED, AT + version, version, "merged",
                              "merged into another customer")
    entry = bus_entry(change, {"customer_id": customer, "m": {}, "t": {}, "v": version, "mt": into}, CATALOGUE,
                      "cdp-bus")
    detail = json.loads(entry["Detail"])
    detail["identifiers"] = dict(identifiers)
    body = {"version": "0", "id": f"bus-{customer}-merged-{version}", "detail-type": entry["DetailType"],
            "source": entry["Source"], "account": "123456789012", "time": "2026-10-09T09:00:00Z",
            "region": "eu-west-1", "resources": [], "detail": detail}
    return (f"m-{customer}-{segment}-merged-{version}", json.dumps(body))


def holds(destination: FakeDestination, identifiers: Mapping[str, str], target: str = "aud-cart") -> bool:
    keys = tuple(f"{name}={value}" for name, value in sorted(matched(destination, identifiers).items()))
    return keys in destination.audiences.get(target, set())


def matched(destination: FakeDestination, identifiers: Mapping[str, str]) -> dict[str, str]:
    """The identifiers the destination matches on, as its rows carry them."""
    return {name: value for name, value in identifiers.items() if name in destination.identifier_names}


def test_a_merged_exit_names_the_customer_it_was_merged_into() -> None:
    event = parse_message(*merged_exit(ANON, 2, ids_of(ADA), KNOWN))
    assert (event.kind, event.clause, event.merged_into) == (EXITED, "merged", KNOWN)
    assert parsed(EXITED, ANON, 2).merged_into == ""  # an ordinary exit names nobody


def test_a_member_on_both_sides_stays_in_the_audience_after_the_merge() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, KNOWN, 1, ids_of(ADA)), message(ENTERED, ANON, 1, ids_of(ADA))], destination, ledger)
    result = deliver([merged_exit(ANON, 2, ids_of(ADA), KNOWN)], destination, ledger)
    assert holds(destination, ids_of(ADA))
    assert [kind for _, kind, _ in destination.sent] == [ENTERED]  # the exit sent nothing
    assert [why for _, why in result.skipped] == ["the customer it was merged into holds its identifiers in this "
                                                  "segment"]
    assert ledger.entries("fake:aud-cart", [(CART, ANON)])[(CART, ANON)].kind == EXITED  # recorded: order holds


@pytest.mark.parametrize("order", ["known first", "exit first", "same batch", "same batch, exit listed first"])
def test_the_known_side_entry_and_the_anonymous_exit_leave_the_person_in_whatever_the_order(order: str) -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, ANON, 1, ids_of(ADA))], destination, ledger)
    exit_, entry = merged_exit(ANON, 2, ids_of(ADA), KNOWN), message(ENTERED, KNOWN, 3, ids_of(ADA))
    batches = {"known first": [[entry], [exit_]], "exit first": [[exit_], [entry]], "same batch": [[entry, exit_]],
               "same batch, exit listed first": [[exit_, entry]]}[order]
    for batch in batches:
        result = deliver(batch, destination, ledger)
        assert not result.retry and not result.refused
    assert holds(destination, ids_of(ADA))
    entries = ledger.entries("fake:aud-cart", [(CART, ANON), (CART, KNOWN)])
    assert (entries[(CART, ANON)].kind, entries[(CART, KNOWN)].kind) == (EXITED, ENTERED)


def test_a_merged_exit_removes_the_identifiers_the_known_customer_does_not_hold() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    anon_ids, known_ids = ids_of("old@example.com", "+447700900123"), ids_of(ADA, "+447700900123")
    deliver([message(ENTERED, ANON, 1, anon_ids), message(ENTERED, KNOWN, 1, known_ids)], destination, ledger)
    deliver([merged_exit(ANON, 2, anon_ids, KNOWN)], destination, ledger)
    assert holds(destination, known_ids)
    removed = [ids for _, kind, _, ids in sent_rows(destination) if kind == EXITED]
    assert removed == [{EMAIL: anon_ids[EMAIL]}]  # the shared phone stays; the email only the anonymous side had goes


@pytest.mark.parametrize("known", ["not a member", "a member who exited", "a member with other identifiers"])
def test_a_merged_exit_removes_everything_when_the_known_customer_holds_none_of_it(known: str) -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, ANON, 1, ids_of(ADA))], destination, ledger)
    if known != "not a member":
        deliver([message(ENTERED, KNOWN, 1, ids_of("bob@example.com"))], destination, ledger)
    if known == "a member who exited":
        deliver([message(EXITED, KNOWN, 2, ids_of("bob@example.com"))], destination, ledger)
    deliver([merged_exit(ANON, 3, ids_of(ADA), KNOWN)], destination, ledger)
    assert not holds(destination, ids_of(ADA))
    removed = [ids for _, kind, _, ids in sent_rows(destination) if kind == EXITED]
    assert removed[-1] == matched(destination, ids_of(ADA))


def test_a_known_side_exit_in_the_same_batch_does_not_keep_the_anonymous_identifiers() -> None:
    """The known customer's newest change in the batch is an exit: they will hold nothing, so the merge's exit
    removes all it added."""
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, ANON, 1, ids_of(ADA)), message(ENTERED, KNOWN, 1, ids_of(ADA))], destination, ledger)
    deliver([message(EXITED, KNOWN, 2, ids_of(ADA)), merged_exit(ANON, 2, ids_of(ADA), KNOWN)], destination, ledger)
    assert not holds(destination, ids_of(ADA))


def test_a_merged_exit_keeps_only_what_the_known_customer_holds_in_that_segment() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver([message(ENTERED, ANON, 1, ids_of(ADA)), message(ENTERED, KNOWN, 1, ids_of(ADA), segment=VIP)],
            destination, ledger)
    deliver([merged_exit(ANON, 2, ids_of(ADA), KNOWN)], destination, ledger)
    assert not holds(destination, ids_of(ADA))  # out of the cart audience: the known customer is a VIP only
    assert holds(destination, ids_of(ADA), "aud-vip")
