"""The SES email integration: the rules of cdp.integrations.email and functions/email with memory fakes, the
function's cold start, and how the SES sender reads SES's errors (from a fake client).

Times are Unix seconds; T is 2026-10-09 09:01 UTC, a minute after the sample event in events/sqs/email-batch.json.
functions/email on the AWS emulator (SES v1, the ledger and profiles tables, the dead-letter queue) is an
integration test (tests/integration/test_email.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from cdp.config import ConfigError
from cdp.core.clock import FixedClock
from cdp.core.profile import Profile
from cdp.integrations.email import (
    NAMESPACE,
    CapRecord,
    EmailOptions,
    EmailRefused,
    Send,
    SendOutcomeUnknown,
    deliver_emails,
    flag,
    permission_refusal,
    reserve_slot,
    scrub,
    sender_address,
)
from cdp.pipeline.fanout import ENTERED, EXITED, DeliveryResult, LedgerEntry, settle
from cdp.ports import TransientError
from cdp_dev.handlers import load_handler
from cdp_dev.memory import MemoryDeadLetters, MemoryDeliveryLedger, MemoryProfileStore
from tests.email_support import (
    BROWSERS,
    CART,
    DAY,
    HOUR,
    LOYAL,
    OFFER,
    OPTIONS,
    ROOT,
    SAMPLE,
    TEMPLATES,
    T,
    bus_event,
    message,
)

SENT = {"emailed": "1"}  # what a claimed (sent) entry keeps in the ledger: no identifier

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_DEV", "false")


email_handler = load_handler(ROOT, "email")


# ---- fakes ----------------------------------------------------------------------------------------------


class MemoryEmailLedger(MemoryDeliveryLedger):
    """The memory ledger plus release; ``fail`` makes the named operations raise TransientError."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: set[str] = set()
        self.before_record: Callable[[], None] | None = None

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        if "entries" in self.fail:
            raise TransientError("ledger down")
        return super().entries(destination, keys)

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        if "record" in self.fail:
            raise TransientError("ledger down")
        if self.before_record is not None:
            hook, self.before_record = self.before_record, None
            hook()
        return super().record(destination, key, entry)

    def release(self, destination: str, key: tuple[str, str], claim: LedgerEntry,
                previous: LedgerEntry | None) -> bool:
        if "release" in self.fail:
            raise TransientError("ledger down")
        if self.entries_by_key.get((destination, *key)) != claim:
            return False
        if previous is None:
            del self.entries_by_key[(destination, *key)]
        else:
            self.entries_by_key[(destination, *key)] = previous
        return True

    def entry(self, segment_id: str, customer_id: str) -> LedgerEntry | None:
        return self.entries_by_key.get((NAMESPACE, segment_id, customer_id))


class MemoryFrequencyCap:
    """Recent sends per customer with a version, written conditionally, like DynamoFrequencyCap."""

    def __init__(self) -> None:
        self.records: dict[str, CapRecord] = {}
        self.fail = False
        self.before_write: Callable[[], None] | None = None  # runs once, as another writer getting in first
        self.writes = 0

    def read(self, customer_id: str) -> CapRecord:
        if self.fail:
            raise TransientError("cap down")
        return self.records.get(customer_id, CapRecord((), 0))

    def write(self, customer_id: str, sends: Sequence[Send], expected_version: int, expires_at: int) -> bool:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        self.writes += 1
        if self.records.get(customer_id, CapRecord((), 0)).version != expected_version:
            return False
        self.records[customer_id] = CapRecord(tuple(sends), expected_version + 1)
        return True

    def sends(self, customer_id: str) -> list[str]:
        return [send.event_id for send in self.read(customer_id).sends]


@dataclass
class FakeSender:
    sent: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)  # raised in turn, before any send

    def send(self, template: str, to_address: str, template_data: Mapping[str, str]) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((template, to_address, dict(template_data)))
        return f"message-{len(self.sent)}"

    @property
    def templates(self) -> list[str]:
        return [template for template, _, _ in self.sent]


@dataclass
class World:
    profiles: MemoryProfileStore = field(default_factory=MemoryProfileStore)
    ledger: MemoryEmailLedger = field(default_factory=MemoryEmailLedger)
    cap: MemoryFrequencyCap = field(default_factory=MemoryFrequencyCap)
    sender: FakeSender = field(default_factory=FakeSender)
    dead_letters: MemoryDeadLetters = field(default_factory=MemoryDeadLetters)
    templates: dict[str, str] = field(default_factory=lambda: dict(TEMPLATES))
    options: EmailOptions = OPTIONS

    def customer(self, customer_id: str, **traits: Any) -> None:
        profile = Profile(customer_id)
        profile.version = 1
        profile.traits = traits
        self.profiles.put(profile.to_item())

    def deliver(self, messages: Sequence[tuple[str, str]], now: float = T) -> DeliveryResult:
        return deliver_emails(messages, self.templates, self.profiles, self.ledger, self.cap, self.sender, now,
                              self.options)


def reasons(result: DeliveryResult) -> list[str]:
    return [reason for _, reason in result.skipped]


@pytest.fixture
def world() -> World:
    w = World()
    w.customer("frank", email="  Frank@Example.COM ", first_name="Frank")
    w.customer("grace", email="grace@example.com")
    return w


# ---- templates and overlap ------------------------------------------------------------------------------


def test_an_entry_sends_the_segments_template_with_its_data(world: World) -> None:
    result = world.deliver([message("m1", "frank", CART, name="Cart abandoners")])
    assert world.sender.sent == [("cart-reminder", "frank@example.com",
                                  {"segment_id": CART, "segment_name": "Cart abandoners", "first_name": "Frank",
                                   "customer_id": "frank"})]
    assert [a.event.message_id for a in result.delivered] == ["m1"]
    assert not result.retry and not result.refused
    assert world.ledger.entry(CART, "frank") == LedgerEntry(1, ENTERED, "frank-cart-abandoners-entered-1", SENT)
    assert world.cap.sends("frank") == ["frank-cart-abandoners-entered-1"]


def test_template_data_leaves_out_a_first_name_it_does_not_have_and_reads_firstName(world: World) -> None:
    world.customer("ada", email="ada@example.com", firstName=" Ada ")
    world.deliver([message("m1", "grace", CART), message("m2", "ada", CART)])
    assert [data for _, _, data in world.sender.sent] == [
        {"segment_id": CART, "segment_name": "Cart-Abandoners", "customer_id": "grace"},
        {"segment_id": CART, "segment_name": "Cart-Abandoners", "customer_id": "ada", "first_name": "Ada"}]


def test_each_segment_gets_its_own_template(world: World) -> None:
    world.deliver([message("m1", "frank", OFFER), message("m2", "grace", LOYAL)])
    assert world.sender.templates == ["cart-reminder-offer", "loyal-thanks"]


def test_a_segment_without_a_template_sends_nothing_but_is_recorded(world: World) -> None:
    result = world.deliver([message("m1", "frank", BROWSERS)])
    assert world.sender.sent == [] and reasons(result) == ["segment has no email template"]
    assert world.ledger.entry(BROWSERS, "frank") is not None
    assert not result.retry and not result.refused


def test_overlap_the_primary_segments_email_wins(world: World) -> None:
    # Frank enters both abandoner segments in one change; high-intent-abandoners (priority 90) is primary.
    result = world.deliver([message("m1", "frank", CART, primary=OFFER), message("m2", "frank", OFFER, primary=OFFER)])
    assert world.sender.templates == ["cart-reminder-offer"]
    assert reasons(result) == [f"the primary segment {OFFER} has its own email"]
    assert world.ledger.entry(CART, "frank") is not None  # recorded: a redelivery will not send it either


def test_overlap_with_a_primary_segment_that_has_no_template_still_sends(world: World) -> None:
    world.deliver([message("m1", "frank", CART, primary="vip"), message("m2", "grace", CART, primary=None)])
    assert world.sender.templates == ["cart-reminder", "cart-reminder"]


# ---- the profile, consent and unsubscribe --------------------------------------------------------------


@pytest.mark.parametrize(("traits", "reason"), [
    ({}, None),
    ({"email_consent": True}, None),
    ({"email_consent": "yes"}, None),
    ({"email_consent": 1}, None),
    ({"email_consent": False}, "no email consent (trait email_consent)"),
    ({"email_consent": "false"}, "no email consent (trait email_consent)"),
    ({"email_consent": 0}, "no email consent (trait email_consent)"),
    ({"email_consent": "pending"}, "no email consent (trait email_consent)"),
    ({"unsubscribed": False}, None),
    ({"unsubscribed": "no"}, None),
    ({"unsubscribed": True}, "unsubscribed (trait unsubscribed)"),
    ({"unsubscribed": "TRUE"}, "unsubscribed (trait unsubscribed)"),
    ({"unsubscribed": "2026-10-01T00:00:00Z"}, "unsubscribed (trait unsubscribed)"),
    ({"unsubscribed": True, "email_consent": True}, "unsubscribed (trait unsubscribed)"),
])
def test_consent_and_unsubscribe(world: World, traits: dict[str, Any], reason: str | None) -> None:
    world.customer("ada", email="ada@example.com", **traits)
    result = world.deliver([message("m1", "ada", CART)])
    assert len(world.sender.sent) == (0 if reason else 1)
    assert reasons(result) == ([reason] if reason else [])
    assert world.ledger.entry(CART, "ada") is not None
    if reason:
        assert world.cap.sends("ada") == []  # a skipped email takes no slot


def test_opt_in_requires_the_consent_trait_and_trait_names_are_options(world: World) -> None:
    world.options = replace(OPTIONS, require_consent=True, consent_trait="marketing_ok",
                            unsubscribe_trait="opted_out")
    world.customer("ada", email="ada@example.com", email_consent=True)  # not the configured trait
    world.customer("bea", email="bea@example.com", marketing_ok=True, unsubscribed=True)  # nor is this one
    world.customer("cy", email="cy@example.com", marketing_ok=True, opted_out=True)
    result = world.deliver([message("m1", "ada", CART), message("m2", "bea", CART), message("m3", "cy", CART)])
    assert [to for _, to, _ in world.sender.sent] == ["bea@example.com"]
    assert reasons(result) == ["no email consent (trait marketing_ok is absent)", "unsubscribed (trait opted_out)"]


def test_flag_reads_yes_and_no() -> None:
    assert [flag(v) for v in (True, 1, " Yes", "on", "y")] == [True] * 5
    assert [flag(v) for v in (False, 0, "No ", "off", "false")] == [False] * 5
    odd: tuple[object, ...] = (None, 2, "maybe", [], 0.5)
    assert [flag(v) for v in odd] == [None] * 5
    assert permission_refusal({}, OPTIONS) is None


@pytest.mark.parametrize(("traits", "reason"), [
    (None, "no profile: deleted or expired"),
    ({}, "no valid email address in the profile"),
    ({"email": "not-an-address"}, "no valid email address in the profile"),
    ({"email": 42}, "no valid email address in the profile"),
])
def test_no_profile_or_no_valid_address_sends_nothing(world: World, traits: dict[str, Any] | None,
                                                      reason: str) -> None:
    if traits is not None:
        world.customer("ada", **traits)
    result = world.deliver([message("m1", "ada", CART)])
    assert world.sender.sent == [] and reasons(result) == [reason]
    # A missing profile (deleted or expired) leaves no ledger row: nothing of a deleted customer is written back.
    assert (world.ledger.entry(CART, "ada") is None) == (traits is None) and not result.retry


# ---- the frequency cap ---------------------------------------------------------------------------------


def test_the_cap_applies_across_segments_and_for_its_window(world: World) -> None:
    world.deliver([message("m1", "frank", CART)], now=T)
    capped = world.deliver([message("m2", "frank", OFFER)], now=T + HOUR)
    assert reasons(capped) == ["frequency cap reached (1 per 24h)"]
    assert world.ledger.entry(OFFER, "frank") is not None  # done: a capped email is dropped, not deferred
    still = world.deliver([message("m3", "frank", LOYAL)], now=T + DAY - 1)
    assert reasons(still) == ["frequency cap reached (1 per 24h)"]
    world.deliver([message("m4", "frank", CART, kind=EXITED, version=2)], now=T + DAY)
    world.deliver([message("m5", "frank", CART, version=3)], now=T + DAY)  # the window has passed
    assert world.sender.templates == ["cart-reminder", "cart-reminder"]
    assert world.cap.sends("frank") == ["frank-cart-abandoners-entered-3"]  # old sends pruned


def test_the_cap_is_per_customer_and_counts_within_one_batch(world: World) -> None:
    result = world.deliver([message("m1", "frank", CART, primary=None), message("m2", "frank", LOYAL, primary=None),
                            message("m3", "grace", CART)])
    assert [(t, to) for t, to, _ in world.sender.sent] == [("cart-reminder", "frank@example.com"),
                                                           ("cart-reminder", "grace@example.com")]
    assert reasons(result) == ["frequency cap reached (1 per 24h)"]


def test_cap_count_and_hours_are_options(world: World) -> None:
    world.options = replace(OPTIONS, cap_count=2, cap_hours=1.5)
    world.deliver([message("m1", "frank", CART)], now=T)
    world.deliver([message("m2", "frank", OFFER)], now=T + 60)
    third = world.deliver([message("m3", "frank", LOYAL)], now=T + 120)
    assert reasons(third) == ["frequency cap reached (2 per 1.5h)"]
    world.deliver([message("m4", "frank", LOYAL, version=2, kind=EXITED)], now=T + 5400)
    world.deliver([message("m5", "frank", LOYAL, version=3)], now=T + 5400)
    assert world.sender.templates == ["cart-reminder", "cart-reminder-offer", "loyal-thanks"]


def test_two_concurrent_sends_cannot_both_pass_the_cap(world: World) -> None:
    def other_invocation() -> None:  # the customer's other segment, between this one's read and write
        assert reserve_slot(world.cap, "frank", "other-event", T, OPTIONS)

    world.cap.before_write = other_invocation
    result = world.deliver([message("m1", "frank", CART)])
    assert world.sender.sent == [] and reasons(result) == ["frequency cap reached (1 per 24h)"]
    assert world.cap.sends("frank") == ["other-event"]


def test_a_cap_store_that_keeps_conflicting_is_retried_later(world: World) -> None:
    class Contended(MemoryFrequencyCap):
        def write(self, customer_id: str, sends: Sequence[Send], expected_version: int, expires_at: int) -> bool:
            self.records[customer_id] = CapRecord((), expected_version + 1)  # someone else always wins
            return False

    world.cap = Contended()
    result = world.deliver([message("m1", "frank", CART)])
    assert result.retry == {"m1": "frequency cap unavailable: frequency cap: too many concurrent updates"}
    assert world.ledger.entry(CART, "frank") is None and world.sender.sent == []


# ---- order and idempotency ---------------------------------------------------------------------------


def test_an_exit_is_recorded_so_a_later_older_entry_sends_nothing(world: World) -> None:
    exit_result = world.deliver([message("m1", "frank", CART, kind=EXITED, version=3)])
    assert reasons(exit_result) == ["exit recorded (no email on exit)"] and world.sender.sent == []
    assert world.ledger.entry(CART, "frank") == LedgerEntry(3, EXITED, "frank-cart-abandoners-exited-3", {})
    late = world.deliver([message("m2", "frank", CART, version=2)])
    assert world.sender.sent == [] and reasons(late) == ["older than the change already applied"]
    same_batch = world.deliver([message("m3", "grace", CART, version=2), message("m4", "grace", CART, kind=EXITED,
                                                                                   version=3)])
    assert world.sender.sent == [] and not same_batch.retry


def test_a_re_entry_over_an_entry_with_other_identifiers_sends_once_and_records_it(world: World) -> None:
    # An entry recorded with identifiers (email keeps none, but the ledger allows them), then an exit this
    # destination never saw: list destinations plan a clean-up removal first; email only sends.
    world.ledger.record(NAMESPACE, (CART, "frank"), LedgerEntry(1, ENTERED, "old", {"email_sha256": "a" * 64}))
    body = json.loads(bus_event("frank", CART, version=3))
    body["detail"]["identifiers"] = {"email_sha256": "b" * 64}
    result = world.deliver([("m1", json.dumps(body))])
    assert world.sender.templates == ["cart-reminder"] and not result.retry and not result.skipped
    assert world.ledger.entry(CART, "frank") == LedgerEntry(3, ENTERED, "frank-cart-abandoners-entered-3", SENT)


def test_a_redelivered_event_never_sends_twice(world: World) -> None:
    batch = [message("m1", "frank", CART)]
    world.deliver(batch)
    again = world.deliver(batch, now=T + 2 * DAY)  # after the cap window too
    duplicate = world.deliver([message("m2", "grace", CART), message("m3", "grace", CART)])
    assert world.sender.templates == ["cart-reminder", "cart-reminder"]
    assert reasons(again) == ["already delivered"]
    assert reasons(duplicate) == ["superseded by a newer change in the same batch"]


@pytest.mark.parametrize("meanwhile", [LedgerEntry(5, EXITED, "newer", {}),
                                       LedgerEntry(1, ENTERED, "frank-cart-abandoners-entered-1", {})])
def test_a_claim_made_meanwhile_by_another_delivery_or_a_newer_change_wins(world: World,
                                                                          meanwhile: LedgerEntry) -> None:
    # A newer change, or a concurrent delivery of the same message, records between this read and this claim.
    def other_invocation() -> None:
        assert world.ledger.record(NAMESPACE, (CART, "frank"), meanwhile)

    world.ledger.before_record = other_invocation
    result = world.deliver([message("m1", "frank", CART)])
    assert world.sender.sent == []
    assert reasons(result) == ["claimed meanwhile by another delivery of this change or a newer one"]
    assert world.ledger.entry(CART, "frank") == meanwhile and world.cap.sends("frank") == []


# ---- failures -------------------------------------------------------------------------------------------


def test_a_transient_send_failure_is_retried_and_its_claim_and_slot_released(world: World) -> None:
    world.sender.failures = [TransientError("SES throttled or failed the send: Throttling")]
    batch = [message("m1", "frank", CART)]
    result = world.deliver(batch)
    assert result.retry == {"m1": "send failed: SES throttled or failed the send: Throttling"}
    assert world.ledger.entry(CART, "frank") is None and world.cap.sends("frank") == []
    assert settle(batch, result, world.dead_letters) == ["m1"] and world.dead_letters.letters == []
    retried = world.deliver(batch)
    assert [a.event.message_id for a in retried.delivered] == ["m1"] and len(world.sender.sent) == 1
    assert world.deliver(batch).delivered == [] and len(world.sender.sent) == 1


def test_a_released_claim_restores_the_previous_entry(world: World) -> None:
    world.deliver([message("m1", "frank", CART, kind=EXITED, version=1)])
    before = world.ledger.entry(CART, "frank")
    world.sender.failures = [TransientError("SES unreachable: EndpointConnectionError")]
    result = world.deliver([message("m2", "frank", CART, version=2)])
    assert set(result.retry) == {"m2"} and world.ledger.entry(CART, "frank") == before


def test_a_permanent_refusal_goes_to_the_dead_letters_with_its_reason(world: World) -> None:
    world.sender.failures = [EmailRefused("SES MessageRejected: address frank@example.com is suppressed")]
    batch = [message("m1", "frank", CART)]
    result = world.deliver(batch)
    assert result.refused == {"m1": "email refused: SES MessageRejected: address <address> is suppressed"}
    assert not result.retry and world.sender.sent == []
    assert world.cap.sends("frank") == []  # nothing was sent: the slot is free for another email
    assert world.ledger.entry(CART, "frank") is None  # a replay from the dead letters can send
    assert settle(batch, result, world.dead_letters) == []
    assert world.dead_letters.letters == [(batch[0][1], result.refused["m1"])]


def test_an_unknown_outcome_keeps_the_claim_and_is_not_retried(world: World) -> None:
    world.sender.failures = [SendOutcomeUnknown("SES's answer was lost: ReadTimeoutError")]
    batch = [message("m1", "frank", CART)]
    result = world.deliver(batch)
    assert not result.retry and not result.refused
    assert reasons(result) == ["not retried, as it may have been sent (at most once): "
                               "SES's answer was lost: ReadTimeoutError"]
    assert world.ledger.entry(CART, "frank") is not None and world.cap.sends("frank") != []
    assert reasons(world.deliver(batch)) == ["already delivered"] and world.sender.sent == []


def test_an_unexpected_sender_error_counts_as_an_unknown_outcome(world: World) -> None:
    world.sender.failures = [RuntimeError("boom frank@example.com")]
    result = world.deliver([message("m1", "frank", CART)])
    assert reasons(result) == ["not retried, as it may have been sent (at most once): RuntimeError"]


def test_a_claim_that_cannot_be_released_is_reported_not_retried(world: World) -> None:
    world.sender.failures = [TransientError("SES throttled or failed the send: Throttling")]
    world.ledger.fail = {"release"}
    result = world.deliver([message("m1", "frank", CART)])
    assert not result.retry
    assert reasons(result) == ["not sent and not retried: send failed: SES throttled or failed the send: Throttling; "
                               "its ledger claim could not be released (ledger down), so a replay is skipped"]


def test_the_cap_store_unavailable_releases_the_claim_and_retries(world: World) -> None:
    world.cap.fail = True
    result = world.deliver([message("m1", "frank", CART)])
    assert result.retry == {"m1": "frequency cap unavailable: cap down"} and world.ledger.entry(CART, "frank") is None


@pytest.mark.parametrize("operation", ["entries", "record"])
def test_the_ledger_unavailable_retries(world: World, operation: str) -> None:
    world.ledger.fail = {operation}
    result = world.deliver([message("m1", "frank", CART), message("m2", "frank", BROWSERS)])
    assert result.retry == {"m1": "delivery ledger unavailable: ledger down",
                            "m2": "delivery ledger unavailable: ledger down"}
    assert world.sender.sent == []


def test_the_profile_store_unavailable_retries(world: World) -> None:
    class Down(MemoryProfileStore):
        def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
            raise TransientError("ProvisionedThroughputExceededException")

    world.profiles = Down()
    result = world.deliver([message("m1", "frank", CART), message("m2", "frank", BROWSERS)])
    assert result.retry == {"m1": "profile store unavailable: ProvisionedThroughputExceededException"}
    assert reasons(result) == ["segment has no email template"]


def test_an_unparseable_message_is_refused(world: World) -> None:
    result = world.deliver([("m1", "not json"), message("m2", "frank", CART)])
    assert result.refused == {"m1": "body: is not JSON"} and len(world.sender.sent) == 1


def test_scrub_blanks_addresses() -> None:
    assert scrub("Email address not verified Shop <shop@example.com>, a.b+c@x.co.uk") == \
        "Email address not verified Shop <<address>>, <address>"


# ---- options -------------------------------------------------------------------------------------------


def test_options_have_defaults_and_are_validated() -> None:
    options = EmailOptions.from_options({"source": "Shop <shop@example.com>", "configuration_set": ""})
    assert options == EmailOptions("Shop <shop@example.com>", None, "email_consent", "unsubscribed", False, 1, 24.0)
    assert options.cap_seconds == DAY
    assert sender_address(" Shop <Shop@Example.com> ") == "shop@example.com"
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "OPTIONS.source is required"),
        ({"source": "shop"}, "OPTIONS.source"),
        ({"source": "Shop <shop@example.com"}, "OPTIONS.source"),
        ({"source": "a@b.co", "cap_count": 0}, "OPTIONS.cap_count"),
        ({"source": "a@b.co", "cap_count": True}, "OPTIONS.cap_count"),
        ({"source": "a@b.co", "cap_hours": 0}, "OPTIONS.cap_hours"),
        ({"source": "a@b.co", "consent_trait": ""}, "OPTIONS.consent_trait"),
        ({"source": "a@b.co", "require_consent": "yes"}, "OPTIONS.require_consent"),
        ({"source": "a@b.co", "cap_hour": 1}, "unknown email option(s) cap_hour"),
    ]
    for bad, message_part in cases:
        with pytest.raises(ConfigError, match=re.escape(message_part)):
            EmailOptions.from_options(bad)


# ---- the handler with memory fakes ------------------------------------------------------------------------


def memory_deps(world: World, now: float = T) -> Any:
    return email_handler.Dependencies(world.templates, world.profiles, world.ledger, world.cap, world.sender,
                                      world.dead_letters, world.options, FixedClock(now))


def test_the_sample_envelope_sends_frank_his_cart_reminder(world: World) -> None:
    envelope = json.loads(SAMPLE.read_text())
    response = email_handler.handle(envelope, None, memory_deps(world))
    assert response == {"batchItemFailures": []}
    assert world.sender.sent == [("cart-reminder", "frank@example.com",
                                  {"segment_id": CART, "segment_name": "Cart abandoners", "first_name": "Frank",
                                   "customer_id": "frank"})]
    assert world.ledger.entry(CART, "frank") == LedgerEntry(2, ENTERED, "5d1c0f8f3a4b4c6e9e0a7f2b1c3d4e5f", SENT)


# ---- the cold start, and SES's errors --------------------------------------------------------------------


def test_cold_start_validates_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"TARGETS": json.dumps(TEMPLATES), "LEDGER_TABLE": "cdp-ledger", "PROFILES_TABLE": "cdp-profiles",
           "DEAD_LETTER_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/dlq",
           "OPTIONS": json.dumps({"source": "Shop <shop@example.com>", "configuration_set": "cdp"}),
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cases = [("PROFILES_TABLE", "", "PROFILES_TABLE is required"),
             ("OPTIONS", json.dumps({"cap_count": 1}), "OPTIONS.source is required"),
             ("OPTIONS", json.dumps({"source": "shop at example"}), "OPTIONS.source"),
             ("TARGETS", "", "TARGETS is required"),
             ("TARGETS", "{}", "TARGETS must map at least one segment")]
    for name, value, error in cases:
        monkeypatch.setenv(name, value)
        email_handler.dependencies.cache_clear()
        with pytest.raises(ConfigError, match=error):
            email_handler.dependencies()
        monkeypatch.setenv(name, env[name])
    email_handler.dependencies.cache_clear()
    try:
        deps = email_handler.dependencies()
        assert deps.templates == TEMPLATES and deps.options.configuration_set == "cdp"
        assert deps.sender.source == "Shop <shop@example.com>" and deps.sender.configuration_set == "cdp"
        assert deps.sender.client.meta.config.retries["total_max_attempts"] == 1
    finally:
        email_handler.dependencies.cache_clear()


@pytest.mark.parametrize(("errors", "outcome"), [
    (["Throttling", "Throttling", "Throttling"], TransientError("SES throttled or failed the send: Throttling")),
    (["Throttling", "InternalFailure"], "sent"),
    (["MessageRejected"], EmailRefused("SES MessageRejected")),
    (["InvalidParameterValue"], EmailRefused("SES InvalidParameterValue")),
    (["ConfigurationSetSendingPausedException"],
     TransientError("SES cannot send now: ConfigurationSetSendingPausedException")),
    (["SomethingNew"], TransientError("SES error SomethingNew")),
    ("read-timeout", SendOutcomeUnknown("SES's answer was lost: ReadTimeoutError")),
    ("no-connection", TransientError("SES unreachable: EndpointConnectionError")),
])
def test_ses_errors_map_to_retry_refusal_or_unknown(errors: Any, outcome: Any) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    from cdp.aws.ses import SesEmailSender

    class Client:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def send_templated_email(self, **request: Any) -> dict[str, Any]:
            self.calls.append(request)
            if errors == "read-timeout":
                raise ReadTimeoutError(endpoint_url="https://email.eu-west-1.amazonaws.com")
            if errors == "no-connection":
                raise EndpointConnectionError(endpoint_url="https://email.eu-west-1.amazonaws.com")
            if len(self.calls) <= len(errors):
                code = errors[len(self.calls) - 1]
                status = 500 if code == "InternalFailure" else 400
                raise ClientError({"Error": {"Code": code, "Message": "Address frank@example.com: no"},
                                   "ResponseMetadata": {"HTTPStatusCode": status}}, "SendTemplatedEmail")
            return {"MessageId": "id-1"}

    client, waits = Client(), list[float]()
    sender = SesEmailSender(client, "shop@example.com", "cdp", sleep=waits.append)
    if outcome == "sent":
        assert sender.send("t", "frank@example.com", {"a": "b"}) == "id-1" and waits == [0.2, 0.4]
    else:
        with pytest.raises(type(outcome)) as raised:
            sender.send("t", "frank@example.com", {"a": "b"})
        assert str(raised.value) == str(outcome) and raised.value.__cause__ is None
    assert client.calls[0] == {"Source": "shop@example.com", "Destination": {"ToAddresses": ["frank@example.com"]},
                               "Template": "t", "TemplateData": '{"a":"b"}', "ConfigurationSetName": "cdp"}


# ---- identity merges ------------------------------------------------------------------------------------


def merged_entry(customer_id: str, segment_id: str, version: int) -> tuple[str, str]:
    body = json.loads(bus_event(customer_id, segment_id, version=version))
    body["detail"]["clause"] = {"path": "merged", "reason": "condition: test"}
    return (f"{customer_id}-merged", json.dumps(body))


def merged_customer(world: World, customer_id: str, merged_id: str, **traits: Any) -> None:
    profile = Profile(customer_id)
    profile.version = 2
    profile.traits = traits
    profile.merges = [[merged_id, int(T), "identify-1"]]
    world.profiles.put(profile.to_item())


def test_a_customer_emailed_under_a_merged_id_gets_no_second_email_when_the_merge_moves_them_in(
        world: World) -> None:
    world.customer("anon-1", email="ada@example.com", first_name="Ada")  # identified by traits before the merge
    assert world.deliver([message("m1", "anon-1", CART)]).delivered
    world.deliver([message("m2", "anon-1", CART, kind=EXITED, version=2)])  # the merge's exit, its mark kept
    merged_customer(world, "user-1", "anon-1", email="ada@example.com", first_name="Ada")

    result = world.deliver([merged_entry("user-1", CART, 2)])

    assert world.sender.templates == ["cart-reminder"]  # the one email, before the merge
    assert reasons(result) == ["emailed for this segment under an id merged into this customer"]


def test_an_anonymous_cart_becomes_the_known_customers_reminder_after_the_merge(world: World) -> None:
    world.customer("anon-1")  # no address: the anonymous entry sends nothing
    assert reasons(world.deliver([message("m1", "anon-1", CART)])) == ["no valid email address in the profile"]
    world.deliver([message("m2", "anon-1", CART, kind=EXITED, version=2)])
    merged_customer(world, "user-1", "anon-1", email="ada@example.com", first_name="Ada")

    result = world.deliver([merged_entry("user-1", CART, 2)])

    assert [a.event.customer_id for a in result.delivered] == ["user-1"]
    assert world.sender.sent[0][1] == "ada@example.com"


def test_a_later_entry_of_a_merged_customer_that_no_merge_caused_sends_as_usual(world: World) -> None:
    world.customer("anon-1", email="ada@example.com")
    world.deliver([message("m1", "anon-1", CART)])
    merged_customer(world, "user-1", "anon-1", email="ada@example.com")
    assert world.deliver([message("m2", "user-1", CART, version=5)]).delivered  # clause "condition"
    assert len(world.sender.sent) == 2
