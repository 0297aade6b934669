"""Email campaigns: one templated email when a customer enters a segment, at most once, within a frequency cap.

Segment events arrive in batches from the integration's queue (see :mod:`cdp.pipeline.fanout`); ``TARGETS``
maps a segment id to the email template sent when a customer enters it. For each event:

* **Exited** only records the delivery ledger (namespace ``email``), so a late ``Entered`` older
  than the exit never sends. An exit with clause ``deleted`` (the profile was deleted) forgets the
  customer's ledger row instead.
* **Segment Consent Changed** never sends: the membership continues, and its email was the entry's.
* An **Entered** a backfill marked ``audiences`` or ``none`` (``detail.delivery``) never sends and is not
  recorded (:func:`cdp.pipeline.fanout.withhold`): only entries for ``all`` send email.
* **Entered** sends the segment's template, unless one of these applies; a skipped event is recorded
  in the ledger like a sent one (it is done) and reported with its reason:

  1. the segment has no template;
  2. overlap: the event's ``primary_segment`` (the customer's highest-priority segment after the
     change) is another segment that has a template; that segment's email wins;
  3. the profile is missing (deleted or expired: skipped, and *not* recorded, so that nothing of a deleted
     customer is written back), or its ``email`` trait is not a valid address;
  4. the customer is unsubscribed: the ``unsubscribe_trait`` (default ``unsubscribed``) is present
     and is not a recognised false (``false``, ``0``, ``"false"``, ``"no"``, ``"off"``, ``"n"``); a
     date or any other value counts as unsubscribed;
  5. the customer has not consented: the ``consent_trait`` (default ``email_consent``) is present and
     is not a recognised true (``true``, ``1``, ``"true"``, ``"yes"``, ``"on"``, ``"y"``). With
     ``require_consent: true`` (opt-in) an absent consent trait also stops the email; by default
     (opt-out) an absent one does not. When in doubt, no email. Also: the consent policy
     (``CONSENT_POLICY``) refuses the use ``email`` for the profile's consent categories, or the profile
     is unsubscribed by the Email spec's ``Unsubscribed`` / ``Email Marked as Spam`` events;
  6. the frequency cap: at most ``cap_count`` (default 1) emails per customer in any ``cap_hours``
     (default 24) window, across all segments. A send at ``t`` counts until ``t + cap_hours``. A capped
     email is dropped, not deferred.

Idempotency and the at-most-once window. An event's ledger entry is written *before* the send, as a
claim; a redelivered event (same ``event_id`` and version) then finds it and never sends again.
The send follows the claim and the cap reservation:

* the send fails transiently (throttled, SES unavailable; nothing was sent): the cap slot and the
  claim are released and the message is retried;
* SES refuses this message for good (rejected or suppressed address): the slot and the claim are
  released and the message goes to the dead letters with the reason, so an operator can replay it;
* the outcome is unknown (the response was lost after the request went out): the claim and the slot
  stay, and the message is not retried, because it may have been sent.

So an email is sent at most once. It can be lost, never duplicated, when the function stops between
the claim and the send (a crash or timeout), when the send's outcome is unknown, when the claim's
write succeeded but its response was lost, or when a claim cannot be released after a failed send.
Every one of these but the crash is reported with its reason.

The cap is a per-customer record of recent sends (time and event id), changed with a conditional
write on its version, so two concurrent sends for one customer cannot both pass the cap; each send's
slot carries its event id, so a retried event reuses the slot it already holds.

Template data: ``segment_id``, ``segment_name`` (when the event names it), ``first_name`` (from the
``first_name`` or ``firstName`` trait, when present) and ``customer_id``. Reasons never hold an email
address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from cdp.config import ConfigError
from cdp.core.consent import ConsentPolicy, ConsentState
from cdp.core.identifiers import normalise_email
from cdp.core.profile import Profile
from cdp.pipeline.fanout import (
    DELETED_CLAUSE,
    EMAIL,
    EXITED,
    NO_PROFILE,
    Action,
    DeliveryLedger,
    DeliveryResult,
    LedgerEntry,
    MembershipEvent,
    parse_batch,
    plan,
    withhold,
)
from cdp.ports import TransientError

NAMESPACE = "email"  # the delivery ledger's namespace for this integration
USE = "email"  # the consent policy's use
EMAILED = "emailed"  # the mark a claimed (sent) entry carries in the ledger, and its exit after it
MERGED_CLAUSE = "merged"  # the clause of a membership change an identity merge caused
CAP_ATTEMPTS = 5  # conditional writes tried on the cap record before giving up for this batch
MAX_CAP_COUNT = 100
MAX_CAP_HOURS = 24 * 366
MAX_FIRST_NAME = 100
TRUE_WORDS = frozenset({"true", "yes", "on", "y", "1"})
UNKNOWN_OUTCOME = "not retried, as it may have been sent (at most once)"
FALSE_WORDS = frozenset({"false", "no", "off", "n", "0"})
_ADDRESS = re.compile(r"[^\s<>\"',;:()\[\]]+@[^\s<>\"',;:()\[\]]+")


class EmailRefused(Exception):
    """The provider refused this message for good (e.g. a rejected or suppressed address); nothing was sent."""


class SendOutcomeUnknown(Exception):
    """The request may have been sent but its answer was lost: resending could send the email twice."""


class ProfileReader(Protocol):
    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        """The stored profiles among these ids (see :meth:`cdp.ports.ProfileStore.load`)."""
        ...


class EmailSender(Protocol):
    def send(self, template: str, to_address: str, template_data: Mapping[str, str]) -> str:
        """Send one templated email; returns the provider's message id.

        Raises :class:`~cdp.ports.TransientError` when nothing was sent and a later attempt may succeed
        (throttling, the provider unavailable), :class:`EmailRefused` when this message can never be
        sent, :class:`SendOutcomeUnknown` when it may have been sent.
        """
        ...


class EmailLedger(DeliveryLedger, Protocol):
    def release(self, destination: str, key: tuple[str, str], claim: LedgerEntry,
                previous: LedgerEntry | None) -> bool:
        """Put back ``previous`` (or nothing) if ``claim`` is still the stored entry; False when it is not."""
        ...


@dataclass(frozen=True, slots=True)
class Send:
    """One email counted by the frequency cap."""

    at: int  # Unix seconds
    event_id: str


@dataclass(frozen=True, slots=True)
class CapRecord:
    sends: tuple[Send, ...]  # oldest first
    version: int  # 0: no record yet


class FrequencyCapStore(Protocol):
    def read(self, customer_id: str) -> CapRecord:
        """The customer's recent sends and the record's version (strongly consistent)."""
        ...

    def write(self, customer_id: str, sends: Sequence[Send], expected_version: int, expires_at: int) -> bool:
        """Store these sends as version ``expected_version + 1`` if the stored version is still
        ``expected_version``; False when another writer got there first. The record may be dropped
        after ``expires_at``."""
        ...


def sender_address(source: object) -> str | None:
    """The address in ``shop@example.com`` or ``Shop <shop@example.com>``; None unless it looks like one."""
    if not isinstance(source, str):
        return None
    text = source.strip()
    if "<" in text or ">" in text:
        name, _, rest = text.rpartition("<")
        if not rest.endswith(">") or ">" in name or "<" in name:
            return None
        text = rest[:-1]
    return normalise_email(text)


@dataclass(frozen=True)
class EmailOptions:
    """The integration's ``OPTIONS``: sender, consent traits and the frequency cap."""

    source: str
    configuration_set: str | None = None
    consent_trait: str = "email_consent"
    unsubscribe_trait: str = "unsubscribed"
    require_consent: bool = False
    cap_count: int = 1
    cap_hours: float = 24

    @property
    def cap_seconds(self) -> int:
        return round(self.cap_hours * 3600)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EmailOptions:
        """Validated, with defaults; raises ConfigError naming the option."""
        known = {"source", "configuration_set", "consent_trait", "unsubscribe_trait", "require_consent",
                 "cap_count", "cap_hours"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"OPTIONS: unknown email option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        source = options.get("source")
        if sender_address(source) is None:
            raise ConfigError("OPTIONS.source is required: the verified sender, e.g. \"Shop <shop@example.com>\"")
        configuration_set = options.get("configuration_set") or None
        if configuration_set is not None and not isinstance(configuration_set, str):
            raise ConfigError("OPTIONS.configuration_set must be the name of an SES configuration set")
        traits = {}
        for name, default in (("consent_trait", cls.consent_trait), ("unsubscribe_trait", cls.unsubscribe_trait)):
            value = options.get(name, default)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"OPTIONS.{name} must be a trait name")
            traits[name] = value.strip()
        require_consent = options.get("require_consent", False)
        if not isinstance(require_consent, bool):
            raise ConfigError("OPTIONS.require_consent must be true or false")
        count = options.get("cap_count", cls.cap_count)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CAP_COUNT:
            raise ConfigError(f"OPTIONS.cap_count must be a whole number from 1 to {MAX_CAP_COUNT}")
        hours = options.get("cap_hours", cls.cap_hours)
        if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not 0 < hours <= MAX_CAP_HOURS:
            raise ConfigError(f"OPTIONS.cap_hours must be a number of hours above 0 and at most {MAX_CAP_HOURS}")
        return cls(str(source).strip(), configuration_set, traits["consent_trait"], traits["unsubscribe_trait"],
                   require_consent, count, float(hours))


# ---- the rules ----------------------------------------------------------------------------------------


def flag(value: object) -> bool | None:
    """A trait read as a yes/no: booleans, 0/1 and the usual words; None when absent or anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def permission_refusal(traits: Mapping[str, Any], options: EmailOptions, consent: ConsentState | None = None,
                       policy: ConsentPolicy | None = None) -> str | None:
    """Why the customer must not get marketing email, or None. Doubtful values count against sending."""
    if consent is not None and consent.unsubscribed_at is not None:
        return f"{consent.unsubscribed_reason or 'unsubscribed'} (Email spec event)"
    refusal = policy.refusal(USE, consent) if policy is not None else None
    if refusal is not None:
        return refusal
    unsubscribed = traits.get(options.unsubscribe_trait)
    if unsubscribed is not None and flag(unsubscribed) is not False:
        return f"unsubscribed (trait {options.unsubscribe_trait})"
    consent = traits.get(options.consent_trait)
    if consent is None:
        return f"no email consent (trait {options.consent_trait} is absent)" if options.require_consent else None
    if flag(consent) is not True:
        return f"no email consent (trait {options.consent_trait})"
    return None


def first_name(traits: Mapping[str, Any]) -> str | None:
    for name in ("first_name", "firstName"):
        value = traits.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_FIRST_NAME]
    return None


def template_data(event: MembershipEvent, segment_name: str | None, profile: Profile) -> dict[str, str]:
    data = {"segment_id": event.segment_id, "customer_id": event.customer_id}
    if segment_name:
        data["segment_name"] = segment_name
    name = first_name(profile.traits)
    if name:
        data["first_name"] = name
    return data


def segment_name(body: str) -> str | None:
    """The segment's display name in a bus event body (MembershipEvent does not carry it)."""
    try:
        segment = json.loads(body)["detail"]["segment"]
    except (ValueError, KeyError, TypeError):
        return None
    name = segment.get("name") if isinstance(segment, dict) else None
    return name if isinstance(name, str) and name else None


def scrub(reason: str) -> str:
    """A reason with anything that looks like an email address blanked out (a provider's text may hold one)."""
    return _ADDRESS.sub("<address>", reason)


# ---- the frequency cap --------------------------------------------------------------------------------


def reserve_slot(cap: FrequencyCapStore, customer_id: str, event_id: str, now: int, options: EmailOptions) -> bool:
    """Take one of the customer's slots in the window ending now; False when the cap is reached.

    Conditional on the record's version, re-read on a conflict, so concurrent sends cannot both pass.
    An event that already holds a slot (a retry after a failed release) keeps it.
    """
    window = options.cap_seconds
    for _ in range(CAP_ATTEMPTS):
        record = cap.read(customer_id)
        recent = [send for send in record.sends if send.at > now - window]
        if any(send.event_id == event_id for send in recent):
            return True
        if len(recent) >= options.cap_count:
            return False
        sends = [*recent, Send(now, event_id)]
        if cap.write(customer_id, sends, record.version, max(s.at for s in sends) + window):
            return True
    raise TransientError("frequency cap: too many concurrent updates")


def release_slot(cap: FrequencyCapStore, customer_id: str, event_id: str, now: int, options: EmailOptions) -> None:
    """Give back the event's slot (its email was not sent)."""
    window = options.cap_seconds
    for _ in range(CAP_ATTEMPTS):
        record = cap.read(customer_id)
        if not any(send.event_id == event_id for send in record.sends):
            return  # nothing of this event's is there
        kept = [send for send in record.sends if send.event_id != event_id and send.at > now - window]
        if cap.write(customer_id, kept, record.version, max((s.at for s in kept), default=now) + window):
            return
    raise TransientError("frequency cap: too many concurrent updates")


# ---- delivery -------------------------------------------------------------------------------------------


def deliver_emails(messages: Sequence[tuple[str, str]], templates: Mapping[str, str], profiles: ProfileReader,
                   ledger: EmailLedger, cap: FrequencyCapStore, sender: EmailSender, now: float,
                   options: EmailOptions, policy: ConsentPolicy | None = None) -> DeliveryResult:
    """One queue batch: plan against the ledger, then per Entered event check, claim, reserve, send.

    ``delivered`` lists the events whose email was sent; exits and skipped entries are in ``skipped``.
    """
    result = DeliveryResult()
    events = _membership_events(withhold(parse_batch(messages, result), EMAIL, result), result)
    if not events:
        return result
    applied = _applied(ledger, events, result)
    if applied is None:
        return result
    planned = plan(events, applied)
    result.skipped += planned.skipped
    candidates = _candidates(planned.actions, templates, ledger, applied, result)
    if not candidates:
        return result
    found = _recipients(profiles, candidates, result)
    if found is None:
        return result
    bodies = dict(messages)
    for action, template in candidates:
        event = action.event
        profile = found.get(event.customer_id)
        address, why_not = recipient(profile, options, policy)
        if profile is None:
            result.skipped.append((event, NO_PROFILE))  # not recorded: nothing of a deleted customer is written
            result.no_profile += 1
            continue
        if address is None:
            _done(ledger, action, why_not, result)
            continue
        if _merged_and_emailed(event, profile, ledger, result):
            _done(ledger, action, "emailed for this segment under an id merged into this customer", result)
            continue
        data = template_data(event, segment_name(bodies.get(event.message_id, "")), profile)
        _claim_and_send(action, template, address, data, applied.get(event.key), ledger, cap, sender, int(now),
                        options, result)
    return result


def _membership_events(events: Sequence[MembershipEvent], result: DeliveryResult) -> list[MembershipEvent]:
    """The entries and exits; consent changes are skipped, not planned (one would supersede its entry's email
    in the same batch): a continuing membership gets no email."""
    kept = []
    for event in events:
        if event.consent_changed:
            result.skipped.append((event, "consent changed; no email for a continuing membership"))
        else:
            kept.append(event)
    return kept


def _applied(ledger: EmailLedger, events: Sequence[MembershipEvent],
             result: DeliveryResult) -> dict[tuple[str, str], LedgerEntry] | None:
    """The ledger's entries for the batch; None when the ledger is unavailable (every event is retried)."""
    try:
        return ledger.entries(NAMESPACE, [event.key for event in events])
    except TransientError as error:
        for event in events:
            result.retry[event.message_id] = f"delivery ledger unavailable: {error}"
        return None


def email_template(event: MembershipEvent, templates: Mapping[str, str]) -> tuple[str | None, str]:
    """The template an Entered event sends, or None and why it sends none (rules 1 and 2)."""
    template = templates.get(event.segment_id)
    primary = event.primary_segment
    if template is None:
        return None, "segment has no email template"
    if primary and primary != event.segment_id and primary in templates:
        return None, f"the primary segment {primary} has its own email"
    return template, ""


def recipient(profile: Profile | None, options: EmailOptions,
              policy: ConsentPolicy | None = None) -> tuple[str | None, str]:
    """The address a customer's email goes to, or None and why they get none (rules 3 to 5)."""
    if profile is None:
        return None, NO_PROFILE
    address = normalise_email(profile.traits.get("email"))
    if address is None:
        return None, "no valid email address in the profile"
    refusal = permission_refusal(profile.traits, options, profile.consent, policy)
    if refusal is not None:
        return None, refusal
    return address, ""


def _candidates(actions: Sequence[Action], templates: Mapping[str, str], ledger: DeliveryLedger,
                applied: Mapping[tuple[str, str], LedgerEntry], result: DeliveryResult) -> list[tuple[Action, str]]:
    """The Entered actions that may send, with their template; every other action is recorded as done."""
    candidates: list[tuple[Action, str]] = []
    for action in actions:
        if not action.records:
            continue  # a clean-up removal for list destinations: an email has nothing to take back
        if action.kind == EXITED and action.event.clause == DELETED_CLAUSE:
            _forget(ledger, action, result)
            continue
        if action.kind == EXITED:
            # An exit keeps the mark of an email sent on the entry: a merge that moves the customer into the
            # segment under another id then knows this person was emailed (see ``_merged_and_emailed``).
            previous = applied.get(action.event.key)
            _done(ledger, action, "exit recorded (no email on exit)", result,
                  emailed=previous is not None and bool(previous.identifiers.get(EMAILED)))
            continue
        template, why_not = email_template(action.event, templates)
        if template is None:
            _done(ledger, action, why_not, result)
        else:
            candidates.append((action, template))
    return candidates


def _recipients(profiles: ProfileReader, candidates: Sequence[tuple[Action, str]],
                result: DeliveryResult) -> dict[str, Profile] | None:
    """The candidates' profiles, in one read; None when the store is unavailable (they are retried)."""
    try:
        return profiles.load([action.event.customer_id for action, _ in candidates])
    except TransientError as error:
        for action, _ in candidates:
            result.retry[action.event.message_id] = f"profile store unavailable: {error}"
        return None


def _claim_and_send(action: Action, template: str, address: str, data: Mapping[str, str],
                    previous: LedgerEntry | None, ledger: EmailLedger, cap: FrequencyCapStore, sender: EmailSender,
                    now: int, options: EmailOptions, result: DeliveryResult) -> None:
    event = action.event
    claim = _entry(action, emailed=True)
    try:
        claimed = ledger.record(NAMESPACE, event.key, claim)
    except TransientError as error:
        result.retry[event.message_id] = f"delivery ledger unavailable: {error}"
        return
    if not claimed:
        result.skipped.append((event, "claimed meanwhile by another delivery of this change or a newer one"))
        return
    try:
        allowed = reserve_slot(cap, event.customer_id, event.event_id, now, options)
    except TransientError as error:
        _retry(action, claim, previous, ledger, result, f"frequency cap unavailable: {error}")
        return
    if not allowed:
        # The claim stays as the record: this entry is done, without an email.
        result.skipped.append((event, f"frequency cap reached ({options.cap_count} per {options.cap_hours:g}h)"))
        return
    try:
        sender.send(template, address, data)
    except TransientError as error:
        _release_slot(cap, event, now, options)
        _retry(action, claim, previous, ledger, result, scrub(f"send failed: {error}"))
        return
    except EmailRefused as error:
        _release_slot(cap, event, now, options)
        reason = scrub(f"email refused: {error}")
        kept = _release_claim(action, claim, previous, ledger)
        result.refused[event.message_id] = reason if kept is None else f"{reason}; {kept}"
        return
    except SendOutcomeUnknown as error:
        result.skipped.append((event, scrub(f"{UNKNOWN_OUTCOME}: {error}")))
        return
    except Exception as error:  # unexpected, perhaps after the request went out: treated as unknown
        result.skipped.append((event, f"{UNKNOWN_OUTCOME}: {type(error).__name__}"))
        return
    result.delivered.append(action)


def _release_slot(cap: FrequencyCapStore, event: MembershipEvent, now: int, options: EmailOptions) -> None:
    # When this fails the slot keeps the event's id: a retry reuses it, and it expires with the window.
    with suppress(TransientError):
        release_slot(cap, event.customer_id, event.event_id, now, options)


def _release_claim(action: Action, claim: LedgerEntry, previous: LedgerEntry | None,
                   ledger: EmailLedger) -> str | None:
    """Nothing was sent: put back what the ledger held before the claim. Why it could not, or None."""
    try:
        ledger.release(NAMESPACE, action.event.key, claim, previous)
    except TransientError as error:
        return f"its ledger claim could not be released ({error}), so a replay is skipped"
    return None


def _retry(action: Action, claim: LedgerEntry, previous: LedgerEntry | None, ledger: EmailLedger,
           result: DeliveryResult, reason: str) -> None:
    """Nothing was sent: release the claim and retry; if the claim stays, a retry would skip, so report it."""
    kept = _release_claim(action, claim, previous, ledger)
    if kept is None:
        result.retry[action.event.message_id] = reason
    else:
        # The email is lost, never doubled.
        result.skipped.append((action.event, f"not sent and not retried: {reason}; {kept}"))


def _entry(action: Action, emailed: bool = False) -> LedgerEntry:
    """The ledger entry for an email event: no identifiers are kept, only whether an email was claimed."""
    return LedgerEntry(action.event.version, action.kind, action.event.event_id, {EMAILED: "1"} if emailed else {})


def _merged_and_emailed(event: MembershipEvent, profile: Profile, ledger: DeliveryLedger,
                        result: DeliveryResult) -> bool:
    """Whether an entry a merge caused (clause ``merged``) would email someone already emailed for the segment
    under one of the ids merged into them: the customer was in the segment on both sides, so no second email.
    A ledger that cannot be read retries the event."""
    if event.clause != MERGED_CLAUSE or not profile.merges:
        return False
    keys = [(event.segment_id, str(entry[0])) for entry in profile.merges]
    try:
        entries = ledger.entries(NAMESPACE, keys)
    except TransientError as error:
        result.retry[event.message_id] = f"delivery ledger unavailable: {error}"
        return True
    return any(entry.identifiers.get(EMAILED) for entry in entries.values())


def _forget(ledger: DeliveryLedger, action: Action, result: DeliveryResult) -> None:
    """A deleted customer's exit: their ledger row goes (the ledger keeps nothing of them)."""
    try:
        ledger.forget(NAMESPACE, action.event.key)
    except TransientError as error:
        result.retry[action.event.message_id] = f"delivery ledger unavailable: {error}"
        return
    result.forgotten += 1
    result.skipped.append((action.event, "the profile was deleted: its ledger row is forgotten"))


def _done(ledger: DeliveryLedger, action: Action, reason: str, result: DeliveryResult, emailed: bool = False) -> None:
    """Record an event that sends nothing, so order and idempotency hold for it too."""
    try:
        ledger.record(NAMESPACE, action.event.key, _entry(action, emailed))
    except TransientError as error:
        result.retry[action.event.message_id] = f"delivery ledger unavailable: {error}"
        return
    result.skipped.append((action.event, reason))

