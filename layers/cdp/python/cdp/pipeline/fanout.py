"""Fan-out: segment events delivered to email and ad platforms exactly once, in membership order.

Every integration reads ``Segment Entered`` / ``Segment Exited`` bus events from its own queue, in
batches. For each (destination, segment, customer) a delivery ledger keeps the membership
version last applied and the identifiers that were sent with the add. That one record gives:

* idempotency: an event whose version is already applied (a redelivery, a replay from the
  archive, a republished change) is skipped; its ``event_id`` is stable across all of those;
* order: a late ``Entered`` whose version is older than an applied ``Exited`` never re-adds;
* correct exits: a removal uses the identifiers that were added, even if the email or phone
  changed since.

Within one batch only the newest version per key is acted on; older ones are superseded.
Problems with one event (unparseable, a poisoned identifier) fail that event alone, with a reason.

Consent is checked per customer at delivery (:func:`deliver` with a :class:`CustomerPermissions`): one read
of the batch's customers' consent, then

* an add (``Entered``, or ``Segment Consent Changed`` for a continuing member) of a customer with no profile
  (deleted or expired) is skipped and leaves no ledger row: a replay after a deletion brings nobody back;
* an add the policy refuses for this destination's use becomes an exit with clause ``consent``: what the
  ledger says was added is removed, and the exit is recorded at the event's version;
* a ``Segment Consent Changed`` carries the membership version it continues, so the ledger orders it after
  the changes of that version by its time (:attr:`MembershipEvent.order`): a later grant adds back;
* an exit with clause ``deleted`` (the profile was deleted) removes, then forgets the ledger row.

Identity merges. A profile merged into another (clause ``merged``) exits its segments, and its exit names the
customer it was merged into (``detail.merged_into``: the canonical one). Such an exit removes only the identifiers
that the canonical customer does not hold at this destination for the same segment, as that customer's ledger row
says or as an add for them in the same batch will leave it (:func:`canonical_holds`). So a person who was a member on
both sides stays in the audience whichever side's change is delivered first; one whose known side does not hold
the anonymous side's identifiers (or is not a member) has them removed. One window is left: two batches running
at the same moment, the canonical customer's add sent before the exit's removal but recorded after the exit read
the ledger; the next change of that customer's membership, or a replay of its add, puts them back.

Backfill entries. A change's ``delivery`` (the backfill job's deliver option) says which kinds of destination act
on an add: ``all`` (every one), ``audiences`` (the ad audiences: list-sync webhook, Meta, Google; never email) or
``none`` (nobody). :func:`withhold` is the one check, by destination kind (:data:`REACH`); a withheld add leaves
no ledger row and counts in ``suppressed`` (the ``BackfillSuppressed`` metric). Exits always pass: an exit of a
customer a destination never added is a removal of a non-member there (the platforms ignore it), and email only
records it in its ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cdp.core.consent import ConsentPolicy, ConsentState
from cdp.core.identifiers import is_sha256, normalise_email
from cdp.ports import TransientError

ENTERED, EXITED = "entered", "exited"
CONSENT_CHANGE = "consent"  # detail.change of a Segment Consent Changed event
CONSENT_CLAUSE, DELETED_CLAUSE = "consent", "deleted"
CONSENT_CHANGED = "Segment Consent Changed"
# detail-type -> (the kind planned, the detail.change it must carry). A consent change is planned as an add:
# the customer is still a member, and the destination adds them if their consent now permits it.
DETAIL_TYPES = {"Segment Entered": ENTERED, "Segment Exited": EXITED, CONSENT_CHANGED: ENTERED}
CHANGES = {"Segment Entered": ENTERED, "Segment Exited": EXITED, CONSENT_CHANGED: CONSENT_CHANGE}
NO_PROFILE = "no profile: deleted or expired"
DELIVER_ALL = "all"
DELIVERY_MODES = (DELIVER_ALL, "audiences", "none")  # detail.delivery; see cdp.pipeline.changes
EMAIL, AUDIENCES = "email", "audiences"  # the destination kinds
# The delivery marks each kind of destination acts on. Email only on "all": nobody should get an email because a
# segment was saved, unless the backfill asked for it.
REACH = {EMAIL: frozenset({DELIVER_ALL}), AUDIENCES: frozenset({DELIVER_ALL, "audiences"})}


class InvalidDelivery(ValueError):
    """An event that can never be delivered, with the reason (never the personal data in it)."""


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    message_id: str  # the queue message that carried it, for the partial-batch response
    event_id: str
    kind: str
    customer_id: str
    segment_id: str
    version: int
    at: str
    primary_segment: str | None
    identifiers: Mapping[str, str]
    clause: str = ""  # the clause that flipped it; "merged" for a change an identity merge caused
    change: str = ""  # detail.change: entered, exited or consent
    refusal: str = ""  # set when consent turned an add into this exit: why
    delivery: str = DELIVER_ALL  # detail.delivery: the destination kinds that act on it (see withhold)
    merged_into: str = ""  # detail.merged_into: on a merge's exit, the canonical customer (see canonical_holds)

    @property
    def key(self) -> tuple[str, str]:
        return (self.segment_id, self.customer_id)

    @property
    def consent_changed(self) -> bool:
        return self.change == CONSENT_CHANGE

    @property
    def step(self) -> str:
        """The order within one membership version: a consent change comes after the change of its version,
        and later consent changes after earlier ones (by their ISO time)."""
        return self.at or self.event_id if self.consent_changed else ""

    @property
    def order(self) -> tuple[int, str]:
        return (self.version, self.step)


def parse_message(message_id: str, body: str) -> MembershipEvent:
    """A bus event (as the rule's queue target delivers it) as a :class:`MembershipEvent`."""
    event = _json_object(body)
    kind = DETAIL_TYPES.get(str(event.get("detail-type")))
    if kind is None:
        raise InvalidDelivery(f"detail-type: must be one of {sorted(DETAIL_TYPES)}")
    detail = _detail(event)
    event_id, customer_id, segment_id = _identity(detail)
    version = detail.get("membership_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidDelivery("detail.membership_version: must be a positive whole number")
    change = CHANGES[str(event.get("detail-type"))]
    if detail.get("change") != change:
        raise InvalidDelivery("detail.change: does not match the detail-type")
    identifiers = detail.get("identifiers") or {}
    if not isinstance(identifiers, dict) or not all(isinstance(v, str) for v in identifiers.values()):
        raise InvalidDelivery("detail.identifiers: must be an object of strings")
    primary = detail.get("primary_segment")
    clause = detail.get("clause")
    path = clause.get("path") if isinstance(clause, dict) else None
    merged_into = detail.get("merged_into")
    return MembershipEvent(message_id, event_id, kind, customer_id, segment_id, version, str(detail.get("at", "")),
                           primary if isinstance(primary, str) else None, dict(identifiers),
                           path if isinstance(path, str) else "", change, delivery=_delivery(detail),
                           merged_into=merged_into if kind == EXITED and isinstance(merged_into, str) else "")


def _delivery(detail: Mapping[str, Any]) -> str:
    """``detail.delivery``: absent (every change before backfills had one) means ``all``."""
    delivery = detail.get("delivery", DELIVER_ALL)
    if delivery not in DELIVERY_MODES:
        raise InvalidDelivery(f"detail.delivery: must be one of {', '.join(DELIVERY_MODES)}")
    return str(delivery)


def withhold(events: Sequence[MembershipEvent], kind: str, result: DeliveryResult) -> list[MembershipEvent]:
    """The events a destination of ``kind`` (:data:`EMAIL` or :data:`AUDIENCES`) acts on. An add whose delivery
    mark does not reach it is skipped, unrecorded, and counted in ``result.suppressed``; exits always pass."""
    reach = REACH[kind]
    kept = []
    for event in events:
        if event.kind == EXITED or event.delivery in reach:
            kept.append(event)
        else:
            result.skipped.append((event, f"backfill entry not delivered to {kind} (delivery {event.delivery})"))
            result.suppressed += 1
    return kept


def _json_object(body: str) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except ValueError:
        raise InvalidDelivery("body: is not JSON") from None
    if not isinstance(event, dict):
        raise InvalidDelivery("body: is not a JSON object")
    return event


def _detail(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event's ``detail``, of the one schema version understood."""
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise InvalidDelivery("detail: is missing")
    if str(detail.get("schema_version")) != "1":
        raise InvalidDelivery("detail.schema_version: only version 1 is understood")
    return detail


def _identity(detail: Mapping[str, Any]) -> tuple[str, str, str]:
    """The change's event id, customer id and segment id, each a non-empty string."""
    segment = detail.get("segment")
    fields = {"detail.event_id": detail.get("event_id"), "detail.customer_id": detail.get("customer_id"),
              "detail.segment.id": segment.get("id") if isinstance(segment, dict) else None}
    for name, value in fields.items():
        if not isinstance(value, str) or not value:
            raise InvalidDelivery(f"{name}: must be a non-empty string")
    event_id, customer_id, segment_id = fields.values()
    return str(event_id), str(customer_id), str(segment_id)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What was last applied at one destination for one (segment, customer)."""

    version: int
    kind: str
    event_id: str
    identifiers: Mapping[str, str] = field(default_factory=dict)  # those sent with the add
    step: str = ""  # the order within the version (see MembershipEvent.step); empty for membership changes

    @property
    def order(self) -> tuple[int, str]:
        return (self.version, self.step)


class DeliveryLedger(Protocol):
    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        """The applied entries among these (segment, customer) keys."""
        ...

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        """Store the entry unless a newer version is there already; False when it was."""
        ...

    def forget(self, destination: str, key: tuple[str, str]) -> None:
        """Delete the entry (a deleted customer's): nothing of theirs stays in the ledger."""
        ...


class CustomerPermissions(Protocol):
    def load(self, customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        """Each customer's consent, by id; a customer with no profile (deleted or expired) is absent.
        Raises TransientError when the profile store is unavailable."""
        ...


@dataclass(frozen=True, slots=True)
class Action:
    """One change to make at a destination: add or remove one customer, with the identifiers to use."""

    event: MembershipEvent
    kind: str  # entered: add; exited: remove
    identifiers: Mapping[str, str]
    records: bool = True  # False for a clean-up removal that goes with the event's add
    sends: bool = True  # False: only recorded (a consent exit of someone never added, a restated add)
    note: str = ""  # why an action that sends nothing sends nothing, when it is not a consent refusal


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    skipped: list[tuple[MembershipEvent, str]] = field(default_factory=list)  # already applied, superseded


def plan(events: Sequence[MembershipEvent], applied: Mapping[tuple[str, str], LedgerEntry],
         consent_in_adds: bool = False) -> Plan:
    """What to do for a batch: the newest event per key, unless the ledger has it or something newer."""
    result = Plan()
    newest: dict[tuple[str, str], MembershipEvent] = {}
    for event in events:
        current = newest.get(event.key)
        if current is None or event.order > current.order:
            if current is not None:
                result.skipped.append((current, "superseded by a newer change in the same batch"))
            newest[event.key] = event
        else:
            result.skipped.append((event, "superseded by a newer change in the same batch"))
    for key, event in newest.items():
        entry = applied.get(key)
        if entry is not None and entry.order >= event.order:
            why = "already delivered" if entry.event_id == event.event_id else "older than the change already applied"
            result.skipped.append((event, why))
            continue
        actions = _actions(event, entry, consent_in_adds)
        if event.merged_into:
            held = canonical_holds(event, newest, applied)
            actions = [_keep_held(action, held) for action in actions]
        result.actions += actions
    return result


def canonical_keys(events: Sequence[MembershipEvent]) -> list[tuple[str, str]]:
    """The ledger keys of the customers that merged-away profiles' exits name: read with the batch's own."""
    return [(e.segment_id, e.merged_into) for e in events if e.merged_into]


def canonical_holds(event: MembershipEvent, newest: Mapping[tuple[str, str], MembershipEvent],
                    applied: Mapping[tuple[str, str], LedgerEntry]) -> dict[str, str]:
    """The identifiers the customer a merged exit names holds in its segment at this destination once the batch
    is applied: those of the newer of their ledger row and their change in this batch, when that is an add."""
    key = (event.segment_id, event.merged_into)
    pending, entry = newest.get(key), applied.get(key)
    latest: MembershipEvent | LedgerEntry | None = entry
    if pending is not None and (entry is None or pending.order > entry.order):
        latest = pending
    return dict(latest.identifiers) if latest is not None and latest.kind == ENTERED else {}


def _keep_held(action: Action, held: Mapping[str, str]) -> Action:
    """A merged exit's removal without the identifiers the canonical customer holds; nothing left: only recorded."""
    if action.kind != EXITED or not held:
        return action
    removed = {k: v for k, v in action.identifiers.items() if held.get(k) != v}
    if len(removed) == len(action.identifiers):
        return action
    if removed:
        return replace(action, identifiers=removed)
    return replace(action, identifiers={}, sends=False,
                   note="the customer it was merged into holds its identifiers in this segment")


def _actions(event: MembershipEvent, entry: LedgerEntry | None, consent_in_adds: bool = False) -> list[Action]:
    """The actions of one event newer than its ledger entry."""
    added = entry is not None and entry.kind == ENTERED
    if event.kind == EXITED:
        if added and entry is not None and entry.identifiers:
            return [Action(event, EXITED, entry.identifiers)]  # remove what was added, even if traits changed since
        # A consent exit of someone this destination does not hold: nothing to remove, only the order to keep.
        return [Action(event, EXITED, event.identifiers, sends=not event.refusal)]
    actions = []
    if added and entry is not None:
        if event.consent_changed and dict(entry.identifiers) == dict(event.identifiers):
            # Still there: only the order moves, unless the add itself says what the customer consents to.
            return [Action(event, ENTERED, event.identifiers, sends=consent_in_adds)]
        # Re-entered after an exit this destination never saw (superseded or late), with changed
        # identifiers: the ones added before and not added now come off first.
        stale = {k: v for k, v in entry.identifiers.items() if event.identifiers.get(k) != v}
        if stale:
            actions.append(Action(event, EXITED, stale, records=False))
    actions.append(Action(event, ENTERED, event.identifiers))
    return actions


def applied_entry(action: Action) -> LedgerEntry:
    """The ledger entry that records an action as done."""
    kept = dict(action.identifiers) if action.kind == ENTERED else {}
    return LedgerEntry(action.event.version, action.kind, action.event.event_id, kept, action.event.step)


def valid_identifiers(identifiers: Mapping[str, str], wanted: Sequence[str]) -> dict[str, str]:
    """The wanted identifiers, each checked for its form (``*_sha256``: SHA-256 hex; ``email``: a normalised
    address); a malformed one is refused, never sent."""
    chosen = {name: identifiers[name] for name in wanted if name in identifiers}
    for name, value in chosen.items():
        if name.endswith("_sha256") and not is_sha256(value):
            raise InvalidDelivery(f"identifiers.{name}: is not a SHA-256 hex digest")
        if name == "email" and normalise_email(value) != value:
            raise InvalidDelivery("identifiers.email: is not a normalised email address")
    return chosen


@dataclass
class DeliveryResult:
    """What a handler reports: messages to retry, and messages refused for good (to the DLQ, with why)."""

    retry: dict[str, str] = field(default_factory=dict)  # message id -> reason
    refused: dict[str, str] = field(default_factory=dict)  # message id -> reason
    delivered: list[Action] = field(default_factory=list)
    skipped: list[tuple[MembershipEvent, str]] = field(default_factory=list)
    consent_exits: int = 0  # adds that consent turned into exits, recorded
    no_profile: int = 0  # adds skipped because the customer has no profile
    forgotten: int = 0  # ledger rows deleted after a deleted customer's exit
    suppressed: int = 0  # backfill adds this kind of destination does not act on (see withhold)


class DeadLetters(Protocol):
    def put(self, body: str, reason: str) -> None:
        """Keep a message that can never be delivered, with the reason, for an operator to replay."""
        ...


def parse_batch(messages: Sequence[tuple[str, str]], result: DeliveryResult) -> list[MembershipEvent]:
    """Parse every (message id, body); the unparseable ones are refused with their reason."""
    events = []
    for message_id, body in messages:
        try:
            events.append(parse_message(message_id, body))
        except InvalidDelivery as error:
            result.refused[message_id] = str(error)
    return events


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Row:
    """One add or remove as a platform receives it: the identifiers it matches on, tied to its event."""

    event_id: str
    identifiers: Mapping[str, str]
    customer_id: str = ""
    version: int = 0  # the membership version the row applies
    consent: Mapping[str, bool] | None = None  # the customer's consent categories, when they were read


@dataclass
class SendOutcome:
    """A platform's answer for a batch of rows; rows in neither dict were applied."""

    retry: dict[str, str] = field(default_factory=dict)  # event id -> reason: send these rows again
    refused: dict[str, str] = field(default_factory=dict)  # event id -> reason: these rows can never succeed


class Destination(Protocol):
    """An ad platform or list: where a segment's members are added and removed in batches."""

    name: str  # the ledger's namespace, e.g. "meta"
    identifier_names: tuple[str, ...]  # the hashed identifiers it matches on, in order of preference
    # Whether an add carries the customer's consent (Google's ad_user_data / ad_personalization): then a consent
    # change of someone it holds is sent again, so the platform has their consent as it is now.
    consent_in_adds: bool

    def target(self, segment_id: str) -> str | None:
        """The audience or list a segment maps to; None when the segment is not configured."""
        ...

    def send(self, target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        """Add (``entered``) or remove (``exited``) these rows; raises TransientError when nothing was applied."""
        ...


# The order of a target's sends: clean-up removals first (if one fails, its event's add waits for the retry
# with it), then the adds, then the removals. Each is (kind, whether the action is recorded in the ledger).
SEND_ORDER = ((EXITED, False), (ENTERED, True), (EXITED, True))


def deliver(messages: Sequence[tuple[str, str]], destination: Destination, ledger: DeliveryLedger,
            permissions: CustomerPermissions | None = None, policy: ConsentPolicy | None = None) -> DeliveryResult:
    """One queue batch to one destination: consent checked per customer (with ``permissions``: one read for
    the batch), then planned against the ledger, sent per audience and kind, recorded. Every destination
    delivered through here is an ad audience (:data:`AUDIENCES`) for :func:`withhold`."""
    result = DeliveryResult()
    events = _by_target(withhold(parse_batch(messages, result), AUDIENCES, result), destination, result)
    consent: dict[str, ConsentState] = {}
    if permissions is not None:
        checked = check_consent([e for batch in events.values() for e in batch], destination.name, permissions,
                                policy or ConsentPolicy(), result)
        if checked is None:
            return result
        consent, allowed = checked
        events = {target: [allowed[e.message_id] for e in batch if e.message_id in allowed]
                  for target, batch in events.items()}
    for target, batch in events.items():
        _deliver_to(target, batch, destination, ledger, result, consent if permissions is not None else None)
    return result


def check_consent(events: Sequence[MembershipEvent], use: str, permissions: CustomerPermissions,
                  policy: ConsentPolicy, result: DeliveryResult,
                  ) -> tuple[dict[str, ConsentState], dict[str, MembershipEvent]] | None:
    """The customers' consent (one read) and the events to plan, by message id: an add of a customer with no
    profile is skipped; an add the policy refuses for ``use`` becomes an exit with clause ``consent``. None
    when the profile store is unavailable (every event is retried)."""
    adds = [event.customer_id for event in events if event.kind == ENTERED]
    try:
        consent = permissions.load(list(dict.fromkeys(adds))) if adds else {}
    except TransientError as error:
        for event in events:
            result.retry[event.message_id] = f"profile store unavailable: {error}"
        return None
    allowed: dict[str, MembershipEvent] = {}
    for event in events:
        if event.kind != ENTERED:
            allowed[event.message_id] = event
        elif event.customer_id not in consent:
            result.skipped.append((event, NO_PROFILE))
            result.no_profile += 1
        else:
            refusal = policy.refusal(use, consent[event.customer_id])
            allowed[event.message_id] = event if refusal is None else replace(
                event, kind=EXITED, clause=CONSENT_CLAUSE, refusal=refusal)
    return consent, allowed


def _by_target(events: Sequence[MembershipEvent], destination: Destination,
               result: DeliveryResult) -> dict[str, list[MembershipEvent]]:
    """The events by the audience or list their segment maps to; those of unmapped segments are skipped."""
    by_target: dict[str, list[MembershipEvent]] = {}
    for event in events:
        target = destination.target(event.segment_id)
        if target is None:
            result.skipped.append((event, "segment not configured for this destination"))
        else:
            by_target.setdefault(target, []).append(event)
    return by_target


def _deliver_to(target: str, events: Sequence[MembershipEvent], destination: Destination, ledger: DeliveryLedger,
                result: DeliveryResult, consent: Mapping[str, ConsentState] | None = None) -> None:
    """One target's events: planned against its ledger entries, then sent kind by kind in :data:`SEND_ORDER`."""
    namespace = f"{destination.name}:{target}"
    try:
        applied = ledger.entries(namespace, list(dict.fromkeys([e.key for e in events] + canonical_keys(events))))
    except TransientError as error:
        for event in events:
            result.retry[event.message_id] = f"delivery ledger unavailable: {error}"
        return
    planned = plan(events, applied, destination.consent_in_adds)
    result.skipped += planned.skipped
    for action in planned.actions:
        if not action.sends:
            _settle_unsent(ledger, namespace, action, result)
    for kind, records in SEND_ORDER:
        actions = [a for a in planned.actions if a.kind == kind and a.records == records and a.sends
                   and a.event.message_id not in result.retry and a.event.message_id not in result.refused]
        rows = _rows(actions, destination, ledger, namespace, result, consent)
        if rows:
            _send(target, kind, rows, destination, ledger, namespace, result)


def _settle_unsent(ledger: DeliveryLedger, namespace: str, action: Action, result: DeliveryResult) -> None:
    """An action with nothing to send, recorded so that order holds: a consent exit of someone never added,
    or a consent change for someone still added."""
    if _record(ledger, namespace, action, result):
        why = action.note or action.event.refusal or "already added; the consent change is recorded"
        result.skipped.append((action.event, why))


def _rows(actions: Sequence[Action], destination: Destination, ledger: DeliveryLedger, namespace: str,
          result: DeliveryResult, consent: Mapping[str, ConsentState] | None = None) -> dict[str, tuple[Action, Row]]:
    """The row of each action, by event id. A malformed identifier refuses its event; an action with nothing
    the destination matches on is done without a send, and recorded so that order still holds."""
    rows: dict[str, tuple[Action, Row]] = {}
    for action in actions:
        try:
            identifiers = valid_identifiers(action.identifiers, destination.identifier_names)
        except InvalidDelivery as error:
            result.refused[action.event.message_id] = str(error)
            continue
        if not identifiers:
            if action.records and _record(ledger, namespace, action, result):
                result.skipped.append((action.event, "no identifiers this destination matches on"))
            continue
        event = action.event
        state = consent.get(event.customer_id) if consent is not None else None
        rows[event.event_id] = (action, Row(event.event_id, identifiers, event.customer_id, event.version,
                                            dict(state.categories) if state is not None else None))
    return rows


def _send(target: str, kind: str, rows: Mapping[str, tuple[Action, Row]], destination: Destination,
          ledger: DeliveryLedger, namespace: str, result: DeliveryResult) -> None:
    """Send one kind of rows to the target, then settle each action by the destination's answer for its row."""
    try:
        outcome = destination.send(target, kind, [row for _, row in rows.values()])
    except TransientError as error:
        for action, _ in rows.values():
            result.retry[action.event.message_id] = str(error)
        return
    for event_id, (action, _) in rows.items():
        if event_id in outcome.refused:
            result.refused[action.event.message_id] = outcome.refused[event_id]
        elif event_id in outcome.retry:
            result.retry[action.event.message_id] = outcome.retry[event_id]
        elif not action.records:
            continue
        elif _record(ledger, namespace, action, result):
            result.delivered.append(action)
        elif action.event.message_id not in result.retry:
            _reconcile(destination, target, namespace, action, ledger, result)


def _record(ledger: DeliveryLedger, namespace: str, action: Action, result: DeliveryResult) -> bool:
    """Record an applied action; False when a newer change was recorded meanwhile (or the ledger failed).
    A deleted customer's exit forgets the row instead: nothing of theirs stays in the ledger."""
    try:
        if action.kind == EXITED and action.event.clause == DELETED_CLAUSE:
            ledger.forget(namespace, action.event.key)
            result.forgotten += 1
            return True
        recorded = ledger.record(namespace, action.event.key, applied_entry(action))
    except TransientError as error:
        # Applied but not recorded: resending is harmless (adds and removes are idempotent there).
        result.retry[action.event.message_id] = f"delivery ledger unavailable: {error}"
        return False
    if recorded and action.event.refusal:
        result.consent_exits += 1
    return recorded


def _reconcile(destination: Destination, target: str, namespace: str, action: Action, ledger: DeliveryLedger,
               result: DeliveryResult) -> None:
    """A concurrent delivery applied a newer change while this one was on its way (the queue does not
    order per customer): put the destination back in the state the newer change recorded."""
    try:
        newer = ledger.entries(namespace, [action.event.key]).get(action.event.key)
        if newer is None:
            return
        rows: list[Row] = []
        if action.kind == ENTERED:
            kept = newer.identifiers if newer.kind == ENTERED else {}
            stale = {k: v for k, v in action.identifiers.items() if kept.get(k) != v}
            chosen = valid_identifiers(stale, destination.identifier_names)
            kind = EXITED
        else:
            chosen = valid_identifiers(newer.identifiers, destination.identifier_names) if newer.kind == ENTERED else {}
            kind = ENTERED
        if chosen:
            rows.append(Row(action.event.event_id, chosen, action.event.customer_id, action.event.version))
            outcome = destination.send(target, kind, rows)
            if outcome.retry or outcome.refused:
                raise TransientError("the destination did not take the correction")
        result.skipped.append((action.event, "overtaken by a newer change delivered concurrently"))
    except (TransientError, InvalidDelivery) as error:
        result.retry[action.event.message_id] = f"could not reconcile with a concurrent change: {error}"


def settle(messages: Sequence[tuple[str, str]], result: DeliveryResult, dead_letters: DeadLetters) -> list[str]:
    """Refused messages go to the dead letters with their reason; returns the message ids to retry."""
    retry = dict(result.retry)
    for message_id, body in messages:
        reason = result.refused.get(message_id)
        if reason is None or message_id in retry:
            continue
        try:
            dead_letters.put(body, reason)
        except TransientError as error:
            retry[message_id] = f"dead-letter queue unavailable: {error}"
    return [message_id for message_id, _ in messages if message_id in retry]


def queue_messages(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(message id, body) of each record of an SQS event."""
    return [(str(record["messageId"]), str(record["body"])) for record in event.get("Records", [])]


def batch_response(retry: Sequence[str]) -> dict[str, Any]:
    """The partial-batch response that hands these messages back to the queue."""
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in retry]}


def report(result: DeliveryResult, retried: int, metrics: Any, logger: Any) -> None:
    """Counts per outcome (Powertools ``Metrics``), and the reasons of what was not delivered (``Logger``):
    never identifiers, hashed or not."""
    for name, value in (("Delivered", len(result.delivered)), ("Skipped", len(result.skipped)),
                        ("Refused", len(result.refused)), ("Retried", retried),
                        ("ConsentExits", result.consent_exits), ("NoProfile", result.no_profile),
                        ("Forgotten", result.forgotten), ("BackfillSuppressed", result.suppressed)):
        metrics.add_metric(name=name, unit="Count", value=value)
    if result.refused or result.retry:
        logger.warning("deliveries not made", extra={"refused": sorted(set(result.refused.values())),
                                                     "retried": sorted(set(result.retry.values()))})


@dataclass(frozen=True)
class BatchDelivery:
    """What a batch integration function works with: its destination, the ledger and its dead letters."""

    destination: Destination
    ledger: DeliveryLedger
    dead_letters: DeadLetters
    permissions: CustomerPermissions | None = None  # None: consent is not checked (tests, tools)
    policy: ConsentPolicy = field(default_factory=ConsentPolicy)

    def deliver(self, messages: Sequence[tuple[str, str]]) -> DeliveryResult:
        return deliver(messages, self.destination, self.ledger, self.permissions, self.policy)


def run_batch(event: Mapping[str, Any], deliver_messages: Callable[[list[tuple[str, str]]], DeliveryResult],
              dead_letters: DeadLetters, seconds_left: float | None, metrics: Any, logger: Any) -> dict[str, Any]:
    """One SQS batch through a delivery: rows given back rather than waiting past the time left, refused
    messages to the dead letters (their original bodies), and the partial-batch response."""
    from cdp.integrations.http import time_limit

    messages = queue_messages(event)
    with time_limit(seconds_left):
        result = deliver_messages(messages)
    retry = settle(messages, result, dead_letters)
    report(result, len(retry), metrics, logger)
    return batch_response(retry)
