"""Webhook list sync: segment members added to and removed from lists at any provider that takes a signed POST.

For email and marketing-automation tools without a dedicated integration: one HTTPS endpoint receives
every change, as JSON, signed with a shared secret (the scheme Stripe and Svix use).

Request
-------
``POST <url>``, one per (list, action) chunk of at most ``batch_size`` operations::

    Content-Type: application/json
    Idempotency-Key: <sha256 hex of the chunk's event ids, sorted, joined by "\\n">
    X-CDP-Timestamp: <Unix seconds when this attempt was sent>
    X-CDP-Signature: v1=<hex HMAC-SHA256(signing_secret, "<timestamp>.<raw body>")>

    {"list_id": "newsletter-abandoners",
     "action": "add",                      # or "remove"
     "operations": [
       {"event_id": "5d1c0f8f3a4b4c6e9e0a7f2b1c3d4e5f",   # stable for a change: dedupe on it
        "customer_id": "frank",
        "membership_version": 2,                        # higher = newer, per (segment, customer)
        "identifiers": {"email_sha256": "<64 hex>", "phone_sha256": "<64 hex>"},   # those the customer has
        "email": "frank@example.com"}]}                 # only with include_email: trimmed, lower case

The same chunk sent again (a retry after 429/5xx, or the queue redelivering the batch) has the same
``Idempotency-Key``; the timestamp and signature are made afresh for every attempt. A remove carries
the identifiers (and email) that were sent with the add, even if the customer's email changed since.

Response
--------
* ``2xx`` with an empty body, or a JSON body without ``results``: every operation applied.
* ``2xx`` with ``{"results": [{"event_id": "...", "status": "ok" | "error", "retryable": true | false,
  "reason": "invalid_email"}]}``: one result per operation. ``error`` with ``"retryable": true`` is sent
  again later; any other ``error`` is refused for good (dead-letter queue, with the reason). An
  operation without a result is sent again. ``reason`` should be a short snake_case code (at most
  40 characters): it is repeated in logs and dead-letter reasons only when it is one, never otherwise.
* ``429`` and ``5xx``: sent again with back-off, honouring ``Retry-After`` (seconds).
* any other status (3xx included: redirects are not followed): a configuration problem (wrong url,
  wrong secret); the whole chunk is sent again later, and the reason names the status. Response
  bodies are never logged or repeated.

Verifying a request (receiver)
------------------------------
Read the raw body bytes before parsing them. Compute ``HMAC-SHA256(signing_secret, timestamp + "." +
body)`` as lower-case hex and compare it in constant time with each ``v1=`` value of
``X-CDP-Signature`` (comma-separated, so a secret can be rotated). Reject the request when the
timestamp is more than five minutes from your clock (a replay). Then drop operations whose
``event_id`` you have applied already. :func:`verify_signature` does the first two steps::

    if not verify_signature(secret, request.headers["X-CDP-Timestamp"], raw_body,
                            request.headers["X-CDP-Signature"]):
        return 401

Options (``OPTIONS``)
---------------------
``url`` (required, ``https://``), ``batch_size`` (operations per request, default 100, at most 1000),
``include_email`` (default false). With ``include_email`` the function reads each customer's email
trait from the profiles table (one BatchGetItem per 100 customers) and the delivery ledger keeps the
email sent with an add, so the later remove names the same address (:func:`deliver_batch`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from cdp.config import ConfigError
from cdp.core.consent import ConsentPolicy, ConsentState
from cdp.core.identifiers import normalise_email
from cdp.core.profile import Profile
from cdp.integrations.http import HttpResponse, Transport, send
from cdp.pipeline.fanout import (
    ENTERED,
    CustomerPermissions,
    DeliveryLedger,
    DeliveryResult,
    Row,
    SendOutcome,
    deliver,
)
from cdp.ports import TransientError

IDENTIFIERS = ("email_sha256", "phone_sha256")  # normalised like most platforms (see cdp.core.identifiers)
EMAIL = "email"  # the key of the plain email among an event's and the ledger's identifiers
TIMESTAMP_HEADER = "X-CDP-Timestamp"
SIGNATURE_HEADER = "X-CDP-Signature"
SIGNATURE_VERSION = "v1"
TOLERANCE_SECONDS = 300
DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE = 100, 1000
MIN_SECRET_LENGTH = 16
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


# ---- signing ----------------------------------------------------------------------------------


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def signature(secret: str, timestamp: str, body: bytes | str) -> str:
    """The ``X-CDP-Signature`` value: ``v1=`` and the hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + _as_bytes(body), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(secret: str, timestamp: str | None, body: bytes | str, header: str | None, *,
                     tolerance: float = TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """For a receiver: True when one ``v1=`` signature in ``header`` is this body's, made within ``tolerance``.

    ``body`` must be the raw bytes as received (parsing and re-serialising changes them). A timestamp
    further than ``tolerance`` seconds from ``now`` (default: this machine's clock) is refused, so a
    captured request cannot be replayed later.
    """
    if not secret or not timestamp or not header or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    candidates = (part.strip() for part in header.split(","))
    return any(hmac.compare_digest(candidate.encode(), expected.encode()) for candidate in candidates)


@dataclass(frozen=True)
class SigningTransport:
    """Signs every attempt afresh: a request resent after a back-off carries a current timestamp."""

    inner: Transport
    secret: str = field(repr=False)
    clock: Callable[[], float] = time.time

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse:
        timestamp = str(int(self.clock()))
        signed = {**headers, TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(self.secret, timestamp,
                                                                                      body or b"")}
        return self.inner.request(method, url, signed, body)


def idempotency_key(event_ids: Sequence[str]) -> str:
    """The same for the same operations, whatever their order and however often they are sent."""
    return hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()


# ---- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookOptions:
    url: str
    batch_size: int = DEFAULT_BATCH_SIZE
    include_email: bool = False

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> WebhookOptions:
        """The function's OPTIONS, checked; a problem is a ConfigError naming the option."""
        unknown = sorted(set(options) - {"url", "batch_size", "include_email"})
        if unknown:
            raise ConfigError(f"OPTIONS: unknown option(s) {unknown}; known: url, batch_size, include_email")
        url = options.get("url")
        if not isinstance(url, str) or not url_allowed(url):
            raise ConfigError("OPTIONS.url: is required, an https:// URL without credentials")
        size = options.get("batch_size", DEFAULT_BATCH_SIZE)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH_SIZE:
            raise ConfigError(f"OPTIONS.batch_size: must be a whole number from 1 to {MAX_BATCH_SIZE}")
        include_email = options.get("include_email", False)
        if not isinstance(include_email, bool):
            raise ConfigError("OPTIONS.include_email: must be true or false")
        return cls(url, size, include_email)


def signing_secret(secret: Mapping[str, Any]) -> str:
    """The function's secret's ``signing_secret``, long enough to be one."""
    value = secret.get("signing_secret")
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"the webhook secret must hold {{\"signing_secret\": \"...\"}} of at least "
                          f"{MIN_SECRET_LENGTH} characters")
    return value


def url_allowed(url: str) -> bool:
    """https:// with a host and no user:password; plain http only to this machine (tests, local runs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


# ---- the batch: what deliver() knows that a Row does not carry --------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    event_id: str
    customer_id: str
    membership_version: int
    identifiers: Mapping[str, str]
    email: str | None = None

    def as_json(self, include_email: bool) -> dict[str, Any]:
        document: dict[str, Any] = {"event_id": self.event_id, "customer_id": self.customer_id,
                                    "membership_version": self.membership_version,
                                    "identifiers": dict(self.identifiers)}
        if include_email and self.email:
            document[EMAIL] = self.email
        return document


# ---- the destination --------------------------------------------------------------------------


@dataclass
class WebhookLists:
    """The Destination for a signed webhook: segment -> list id. Deliver through :func:`deliver_batch`."""

    lists: Mapping[str, str]
    options: WebhookOptions
    signing_secret: str = field(repr=False)
    transport: Transport
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    attempts: int = 5
    name: str = "webhook"
    identifier_names: tuple[str, ...] = IDENTIFIERS
    consent_in_adds: bool = False

    def __post_init__(self) -> None:
        if self.options.include_email:
            # The email travels as an identifier: the ledger keeps the one added, so a remove names it.
            self.identifier_names = (*IDENTIFIERS, EMAIL)
        if not url_allowed(self.options.url):
            raise ValueError("webhook url must be https://")
        if not 1 <= self.options.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"webhook batch_size must be from 1 to {MAX_BATCH_SIZE}")
        if not self.signing_secret:
            raise ValueError("webhook signing secret is empty")

    @property
    def include_email(self) -> bool:
        return self.options.include_email

    def target(self, segment_id: str) -> str | None:
        return self.lists.get(segment_id)

    def send(self, target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        return self.post(target, kind, [
            Operation(row.event_id, row.customer_id, row.version,
                      {name: value for name, value in row.identifiers.items() if name != EMAIL},
                      row.identifiers.get(EMAIL)) for row in rows])

    def post(self, list_id: str, kind: str, operations: Sequence[Operation],
             outcome: SendOutcome | None = None) -> SendOutcome:
        """The operations to the webhook, ``batch_size`` per request; what it could not apply, by event id."""
        outcome = outcome if outcome is not None else SendOutcome()
        signing = SigningTransport(self.transport, self.signing_secret, self.clock)
        size = self.options.batch_size
        for start in range(0, len(operations), size):
            chunk = operations[start:start + size]
            event_ids = [operation.event_id for operation in chunk]
            payload = {"list_id": list_id, "action": "add" if kind == ENTERED else "remove",
                       "operations": [operation.as_json(self.include_email) for operation in chunk]}
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(event_ids)}
            try:
                response = send(signing, "POST", self.options.url, headers, body, service="webhook",
                                attempts=self.attempts, sleep=self.sleep)
            except TransientError as error:
                outcome.retry.update({event_id: str(error) for event_id in event_ids})
                continue
            read_response(response, event_ids, outcome)
        return outcome


def read_response(response: HttpResponse, event_ids: Sequence[str], outcome: SendOutcome) -> None:
    """The webhook's answer for one request; never repeats the response body (it may hold personal data)."""
    if not 200 <= response.status < 300:
        reason = (f"the webhook refused the request: HTTP {response.status} (a configuration problem: "
                  "url, signing secret or receiver); sent again once fixed")
        outcome.retry.update({event_id: reason for event_id in event_ids})
        return
    document = response.json() if response.body.strip() else {}
    results = document.get("results") if isinstance(document, dict) else None
    if results is None:
        return  # acknowledged without detail: all applied
    if not isinstance(results, list):
        reason = "the webhook answered with a malformed results list"
        outcome.retry.update({event_id: reason for event_id in event_ids})
        return
    by_id = {item["event_id"]: item for item in results if isinstance(item, dict) and isinstance(item.get(
        "event_id"), str)}
    for event_id in event_ids:
        item = by_id.get(event_id)
        status = item.get("status") if item is not None else None
        if status == "ok":
            continue
        if item is None:
            outcome.retry[event_id] = "the webhook returned no result for this operation"
        elif status != "error":
            outcome.retry[event_id] = "the webhook returned an unknown status for this operation"
        elif item.get("retryable") is True:
            outcome.retry[event_id] = f"the webhook could not apply this operation yet ({reason_code(item)})"
        else:
            outcome.refused[event_id] = f"the webhook refused this operation ({reason_code(item)})"


def reason_code(item: Mapping[str, Any]) -> str:
    """The receiver's reason when it is a short snake_case code; free text could hold personal data."""
    reason = item.get("reason")
    if isinstance(reason, str) and _REASON_CODE.fullmatch(reason):
        return reason
    return "no reason code given"


# ---- one batch, with emails when asked --------------------------------------------------------


class ProfileReader(Protocol):
    def load(self, customer_ids: Sequence[str]) -> Mapping[str, Profile]: ...


def with_emails(messages: Sequence[tuple[str, str]], profiles: ProfileReader,
                lists: WebhookLists) -> list[tuple[str, str]]:
    """The messages with each customer's normalised email trait added (see :func:`_with_emails`)."""
    return _with_emails(messages, profiles, lists)[0]


@dataclass(frozen=True)
class ProfilesRead:
    """The consent of profiles this batch read already (for their emails): no second read of the table."""

    profiles: Mapping[str, Profile]

    def load(self, customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        return {c: self.profiles[c].consent for c in customer_ids if c in self.profiles}


def _with_emails(messages: Sequence[tuple[str, str]], profiles: ProfileReader,
                 lists: WebhookLists) -> tuple[list[tuple[str, str]], Mapping[str, Profile]]:
    """The messages with each customer's normalised email trait added to ``detail.identifiers`` as ``email``.

    One ``profiles.load`` for every customer of the batch whose segment this destination syncs (the
    DynamoDB store reads 100 per BatchGetItem). Bodies that do not parse are left as they are, for
    :func:`cdp.pipeline.fanout.deliver` to refuse with its reason. A customer without a valid email gets none
    (and any ``email`` already in the event is dropped: only the profile's is trusted). Also returns the
    profiles read.
    """
    events = [_bus_event(body) for _, body in messages]
    customers: list[str] = []
    for event in events:
        detail = event["detail"] if event else {}
        segment = detail.get("segment")
        segment_id = segment.get("id") if isinstance(segment, dict) else None
        customer_id = detail.get("customer_id")
        if isinstance(customer_id, str) and isinstance(segment_id, str) and lists.target(segment_id) is not None:
            customers.append(customer_id)
    loaded = profiles.load(list(dict.fromkeys(customers))) if customers else {}
    emails = {cid: normalise_email(profile.traits.get("email")) for cid, profile in loaded.items()}
    enriched = []
    for (message_id, body), event in zip(messages, events, strict=True):
        identifiers = event["detail"].get("identifiers") if event else None
        if event is None or not isinstance(identifiers, dict):
            enriched.append((message_id, body))
            continue
        kept = {name: value for name, value in identifiers.items() if name != EMAIL}
        email = emails.get(str(event["detail"].get("customer_id")))
        if email:
            kept[EMAIL] = email
        event["detail"]["identifiers"] = kept
        enriched.append((message_id, json.dumps(event, separators=(",", ":"))))
    return enriched, loaded


def _bus_event(body: str) -> dict[str, Any] | None:
    """A bus event with an object as its detail; None for anything else."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("detail"), dict) else None


def deliver_batch(messages: Sequence[tuple[str, str]], lists: WebhookLists, ledger: DeliveryLedger,
                  profiles: ProfileReader | None = None, permissions: CustomerPermissions | None = None,
                  policy: ConsentPolicy | None = None) -> DeliveryResult:
    """One queue batch to the webhook. With ``include_email``, each event first gets its customer's email
    in ``detail.identifiers.email`` (:func:`with_emails`); ``plan`` treats it like any identifier, so the
    ledger records it with the add and a remove names the one added, not the current one.

    Dead-letter the **original** messages (``settle(messages, ...)``): the enriched bodies hold the
    email and must not leave the function. With ``permissions`` each customer's consent is checked for the use
    ``webhook`` (see :func:`cdp.pipeline.fanout.deliver`).
    """
    if lists.include_email:
        if profiles is None:
            raise ValueError("include_email needs the profile store")
        try:
            messages, loaded = _with_emails(messages, profiles, lists)
        except TransientError as error:
            return DeliveryResult(retry={message_id: f"profile store unavailable: {error}"
                                         for message_id, _ in messages})
        if permissions is not None:  # the same profiles: their consent comes with the read just made
            permissions = ProfilesRead(loaded)
    return deliver(messages, lists, ledger, permissions, policy)
