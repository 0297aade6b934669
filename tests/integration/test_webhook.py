"""The webhook list sync (cdp.integrations.webhook) against a local receiver, and its function under moto.

Signing and options, which need neither, are unit tests (tests/unit/test_webhook.py).

The receiver is a real HTTP server on 127.0.0.1 in a thread. It checks every request as a
provider would: the signature with ``verify_signature``, the Idempotency-Key (worked out here
independently), the body's shape; and answers what a test scripts (429 with Retry-After, 500,
per-operation results, 400). Anything wrong with a request is a ``problem``, and every test ends
with none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.aws.ledger import DynamoDeliveryLedger
from cdp.config import ConfigError
from cdp.core.identifiers import hashed_identifiers, is_sha256, normalise_email, sha256
from cdp.core.profile import Profile
from cdp.integrations.http import UrllibTransport
from cdp.integrations.webhook import (
    WebhookLists,
    WebhookOptions,
    deliver_batch,
    idempotency_key,
    verify_signature,
)
from cdp.pipeline.changes import MembershipChange
from cdp.pipeline.fanout import ENTERED, EXITED, DeliveryResult, LedgerEntry
from cdp_dev.handlers import load_handler
from cdp_dev.memory import MemoryDeliveryLedger, MemoryProfileStore
from tests.lambda_context import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_test_0123456789abcdef"
SEGMENT, LIST = "cart-abandoners", "list-abandoners"
TARGETS = {SEGMENT: LIST, "vip": "list-vip"}
NAMESPACE = f"webhook:{LIST}"
REGION = "eu-west-1"

webhook_handler = load_handler(ROOT, "webhook")


# ---- the receiver -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def results(cls, results: list[dict[str, Any]]) -> Answer:
        return cls(200, json.dumps({"results": results}).encode(), {"Content-Type": "application/json"})


@dataclass
class Received:
    headers: dict[str, str]  # lower-case names
    raw: bytes
    document: dict[str, Any]

    @property
    def operations(self) -> list[dict[str, Any]]:
        operations: list[dict[str, Any]] = self.document["operations"]
        return operations

    @property
    def customers(self) -> list[str]:
        return [operation["customer_id"] for operation in self.operations]


def shape_problems(document: Any) -> list[str]:
    """What is wrong with a request body, against the documented wire format."""
    if not isinstance(document, dict) or set(document) != {"list_id", "action", "operations"}:
        return ["body: must have exactly list_id, action, operations"]
    problems = []
    if not isinstance(document["list_id"], str) or document["action"] not in ("add", "remove"):
        problems.append("list_id / action")
    operations = document["operations"]
    if not isinstance(operations, list) or not operations:
        return [*problems, "operations: must be a non-empty list"]
    for operation in operations:
        keys = set(operation) if isinstance(operation, dict) else set()
        if not {"event_id", "customer_id", "membership_version", "identifiers"} <= keys <= {
                "event_id", "customer_id", "membership_version", "identifiers", "email"}:
            problems.append(f"operation keys: {sorted(keys)}")
            continue
        if not isinstance(operation["membership_version"], int) or not operation["identifiers"]:
            problems.append("membership_version / identifiers")
        if not all(name in ("email_sha256", "phone_sha256") and is_sha256(value)
                   for name, value in operation["identifiers"].items()):
            problems.append("identifiers: only email_sha256 / phone_sha256, as SHA-256 hex")
        if "email" in operation and normalise_email(operation["email"]) != operation["email"]:
            problems.append("email: not normalised")
    return problems


class Receiver:
    """A provider's endpoint: verifies, records, and answers from ``script`` (then ``answer``)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.requests: list[Received] = []
        self.problems: list[str] = []
        self.script: list[Answer] = []
        self.answer: Callable[[Received], Answer] = lambda received: Answer()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = receiver.handle({k.lower(): v for k, v in self.headers.items()}, raw)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lists"

    def handle(self, headers: dict[str, str], raw: bytes) -> Answer:
        with self._lock:
            if not verify_signature(self.secret, headers.get("x-cdp-timestamp"), raw, headers.get("x-cdp-signature")):
                self.problems.append("signature did not verify")
                return Answer(401)
            try:
                document = json.loads(raw)
            except ValueError:
                self.problems.append("body: not JSON")
                return Answer(400)
            problems = shape_problems(document)
            if headers.get("content-type") != "application/json":
                problems.append("content-type")
            ids = sorted(op.get("event_id", "") for op in document.get("operations") or [] if isinstance(op, dict))
            if headers.get("idempotency-key") != hashlib.sha256("\n".join(ids).encode()).hexdigest():
                problems.append("idempotency-key")
            if problems:
                self.problems += problems
                return Answer(400)
            received = Received(headers, raw, document)
            self.requests.append(received)
            return self.script.pop(0) if self.script else self.answer(received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()
    assert server.problems == []


@pytest.fixture
def waits() -> list[float]:
    return []


class Ticking:
    """A clock that moves one second per reading, from now."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        self.now += 1
        return self.now


def make_lists(receiver: Receiver, waits: list[float], *, batch_size: int = 100, include_email: bool = False,
               attempts: int = 5, clock: Callable[[], float] = time.time) -> WebhookLists:
    return WebhookLists(TARGETS, WebhookOptions(receiver.url, batch_size, include_email), SECRET,
                        UrllibTransport(timeout=5), clock=clock, sleep=waits.append, attempts=attempts)


# ---- bus events ---------------------------------------------------------------------------------


def message(customer: str, kind: str = ENTERED, version: int = 1, *, segment: str = SEGMENT,
            email: str | None = None, identifiers: dict[str, str] | None = None) -> tuple[str, str]:
    """(message id, body) of one membership event as the rule's queue target delivers it."""
    change = MembershipChange(customer, segment, kind, 0, version, "condition", "")
    ids = identifiers if identifiers is not None else hashed_identifiers({"email": email or f"{customer}@example.com"})
    detail: dict[str, Any] = {
        "schema_version": "1", "event_id": change.event_id, "customer_id": customer,
        "segment": {"id": segment, "name": segment}, "change": kind, "at": "2026-10-09T09:00:00Z",
        "membership_version": version, "clause": {"path": "condition", "reason": ""},
        "primary_segment": None, "segments": [], "identifiers": ids}
    event: dict[str, Any] = {
        "version": "0", "id": f"bus-{change.event_id}", "source": "cdp.segments", "account": "123456789012",
        "detail-type": "Segment Entered" if kind == ENTERED else "Segment Exited", "region": REGION,
        "time": "2026-10-09T09:00:00Z", "resources": [], "detail": detail}
    return f"{customer}/{kind}/{version}", json.dumps(event)


def event_id(customer: str, kind: str = ENTERED, version: int = 1, segment: str = SEGMENT) -> str:
    return MembershipChange(customer, segment, kind, 0, version, "", "").event_id


def email_hash(email: str) -> str:
    return sha256(str(normalise_email(email)))


def store_with(emails: dict[str, str]) -> MemoryProfileStore:
    store = MemoryProfileStore()
    for customer, email in emails.items():
        set_email(store, customer, email)
    return store


def set_email(store: MemoryProfileStore, customer: str, email: str) -> None:
    profile = Profile(customer)
    profile.version = 1
    profile.traits = {"email": email}
    store.put(profile.to_item())


def delivered_ids(result: DeliveryResult) -> set[str]:
    return {action.event.event_id for action in result.delivered}


# ---- adds, removes, batching --------------------------------------------------------------------


def test_enters_are_added_in_requests_of_batch_size(receiver: Receiver, waits: list[float]) -> None:
    lists, ledger = make_lists(receiver, waits, batch_size=2), MemoryDeliveryLedger()
    customers = ["c1", "c2", "c3", "c4", "c5"]
    messages = [message(c, version=n) for n, c in enumerate(customers, start=1)]
    messages.append(message("c6", segment="not-synced"))
    result = deliver_batch(messages, lists, ledger)
    assert result.retry == {} and result.refused == {}
    assert [r.customers for r in receiver.requests] == [["c1", "c2"], ["c3", "c4"], ["c5"]]
    for request in receiver.requests:
        assert request.document["list_id"] == LIST and request.document["action"] == "add"
        assert request.headers["content-type"] == "application/json"
    first = receiver.requests[0].operations[0]
    assert first == {"event_id": event_id("c1"), "customer_id": "c1", "membership_version": 1,
                     "identifiers": {"email_sha256": email_hash("c1@example.com")}}  # no google_*, no email
    assert delivered_ids(result) == {event_id(c, version=n) for n, c in enumerate(customers, start=1)}
    assert [reason for _, reason in result.skipped] == ["segment not configured for this destination"]
    assert set(ledger.entries(NAMESPACE, [(SEGMENT, c) for c in customers])) == {(SEGMENT, c) for c in customers}
    assert waits == []


def test_exit_removes_the_identifiers_and_email_sent_with_the_add(receiver: Receiver, waits: list[float]) -> None:
    lists, ledger = make_lists(receiver, waits, include_email=True), MemoryDeliveryLedger()
    store = store_with({"alice": "  Alice@Example.COM "})
    deliver_batch([message("alice", email="alice@example.com")], lists, ledger, store)
    added = receiver.requests[0].operations[0]
    assert receiver.requests[0].document["action"] == "add"
    assert added["email"] == "alice@example.com"
    assert added["identifiers"] == {"email_sha256": email_hash("alice@example.com")}
    entry = ledger.entries(NAMESPACE, [(SEGMENT, "alice")])[(SEGMENT, "alice")]
    assert entry.identifiers["email"] == "alice@example.com"  # the ledger remembers the address added

    set_email(store, "alice", "alice.new@example.com")  # the email changes; the exit carries the new hash
    result = deliver_batch([message("alice", EXITED, 2, email="alice.new@example.com")], lists, ledger, store)
    assert delivered_ids(result) == {event_id("alice", EXITED, 2)}
    removed = receiver.requests[1]
    assert removed.document["action"] == "remove"
    assert removed.operations == [{"event_id": event_id("alice", EXITED, 2), "customer_id": "alice",
                                   "membership_version": 2, "email": "alice@example.com",
                                   "identifiers": {"email_sha256": email_hash("alice@example.com")}}]
    after = ledger.entries(NAMESPACE, [(SEGMENT, "alice")])[(SEGMENT, "alice")]
    assert (after.kind, after.identifiers) == (EXITED, {})  # an exit keeps no email


def test_emails_are_read_once_per_hundred_customers_and_only_when_asked(receiver: Receiver,
                                                                          waits: list[float]) -> None:
    customers = [f"c{n:03d}" for n in range(150)]
    store = store_with({c: f"{c}@Example.com" for c in customers[:149]})  # the last has no profile
    messages = [message(c) for c in customers] + [message("c000", segment="not-synced")]
    result = deliver_batch(messages, make_lists(receiver, waits, include_email=True, batch_size=1000),
                           MemoryDeliveryLedger(), store)
    assert store.requests["BatchGetItem"] == 2
    assert len(delivered_ids(result)) == 150 and len(receiver.requests) == 1
    operations = {op["customer_id"]: op for op in receiver.requests[0].operations}
    assert operations["c042"]["email"] == "c042@example.com"
    assert "email" not in operations["c149"]  # no profile, no email; the hashes still go

    store.requests.clear()
    deliver_batch([message("z1")], make_lists(receiver, waits), MemoryDeliveryLedger(), store)
    assert store.requests["BatchGetItem"] == 0 and "email" not in receiver.requests[-1].operations[0]


def test_an_email_already_in_the_event_is_never_trusted_nor_sent_without_include_email(
        receiver: Receiver, waits: list[float]) -> None:
    planted = {**hashed_identifiers({"email": "p@example.com"}), "email": "planted@example.com"}
    deliver_batch([message("p", identifiers=planted)], make_lists(receiver, waits), MemoryDeliveryLedger())
    assert "email" not in receiver.requests[0].operations[0]
    store = store_with({"q": "q@example.com"})
    deliver_batch([message("q", identifiers={**planted})], make_lists(receiver, waits, include_email=True),
                  MemoryDeliveryLedger(), store)
    assert receiver.requests[1].operations[0]["email"] == "q@example.com"


# ---- resends, back-off, outcomes ----------------------------------------------------------------


def test_idempotency_key_is_stable_across_resends(receiver: Receiver, waits: list[float]) -> None:
    clock = Ticking()
    lists, ledger = make_lists(receiver, waits, clock=clock), MemoryDeliveryLedger()
    messages = [message("k1"), message("k2"), message("k3")]
    expected = hashlib.sha256("\n".join(sorted(event_id(c) for c in ("k1", "k2", "k3"))).encode()).hexdigest()
    assert idempotency_key([event_id(c) for c in ("k3", "k1", "k2")]) == expected

    receiver.script = [Answer(503), Answer(400)]  # one resend inside the request, then a refusal
    result = deliver_batch(messages, lists, ledger)
    assert set(result.retry) == {m for m, _ in messages}
    receiver.script = [Answer(200)]
    result = deliver_batch(list(reversed(messages)), lists, ledger)  # the queue redelivers, in another order
    assert len(delivered_ids(result)) == 3
    assert [r.headers["idempotency-key"] for r in receiver.requests] == [expected] * 3
    timestamps = [r.headers["x-cdp-timestamp"] for r in receiver.requests]
    assert len(set(timestamps)) == 3  # each attempt signed afresh (and each verified by the receiver)


def test_429_retry_after_is_honoured(receiver: Receiver, waits: list[float]) -> None:
    receiver.script = [Answer(429, headers={"Retry-After": "7"}), Answer(429, headers={"Retry-After": "2"})]
    result = deliver_batch([message("r1")], make_lists(receiver, waits), MemoryDeliveryLedger())
    assert waits == [7.0, 2.0]
    assert delivered_ids(result) == {event_id("r1")} and len(receiver.requests) == 3


def test_5xx_backs_off_then_leaves_the_rows_for_the_queue(receiver: Receiver, waits: list[float]) -> None:
    receiver.answer = lambda received: Answer(500)
    ledger = MemoryDeliveryLedger()
    messages = [message("s1"), message("s2")]
    result = deliver_batch(messages, make_lists(receiver, waits, attempts=3), ledger)
    assert waits == [0.5, 1.0]  # exponential, no Retry-After given
    assert result.retry == {m: "webhook still answered HTTP 500 after 3 attempts" for m, _ in messages}
    assert ledger.entries_by_key == {}


def test_per_operation_results_retry_or_refuse_only_those_rows(receiver: Receiver, waits: list[float]) -> None:
    answers = {"o2": {"status": "error", "retryable": True, "reason": "rate_limited"},
               "o3": {"status": "error", "retryable": False, "reason": "invalid_email"},
               "o5": {"status": "error", "retryable": False, "reason": "o5@example.com is not valid"}}

    def per_operation(received: Received) -> Answer:
        results = [{"event_id": op["event_id"], **answers.get(op["customer_id"], {"status": "ok"})}
                   for op in received.operations if op["customer_id"] != "o6"]  # o6: no result at all
        return Answer.results(results)

    receiver.answer = per_operation
    ledger = MemoryDeliveryLedger()
    messages = [message(f"o{n}") for n in range(1, 7)]
    result = deliver_batch(messages, make_lists(receiver, waits), ledger)
    assert result.retry == {"o2/entered/1": "the webhook could not apply this operation yet (rate_limited)",
                            "o6/entered/1": "the webhook returned no result for this operation"}
    assert result.refused == {"o3/entered/1": "the webhook refused this operation (invalid_email)",
                              "o5/entered/1": "the webhook refused this operation (no reason code given)"}
    assert delivered_ids(result) == {event_id("o1"), event_id("o4")}
    assert set(ledger.entries(NAMESPACE, [(SEGMENT, f"o{n}") for n in range(1, 7)])) == {(SEGMENT, "o1"),
                                                                                       (SEGMENT, "o4")}
    receiver.answer = lambda received: Answer(200, b'{"accepted": true}')  # no results: all applied
    again = deliver_batch(messages, make_lists(receiver, waits), ledger)  # the queue sends the batch again
    assert receiver.requests[-1].customers == ["o2", "o3", "o5", "o6"]
    assert delivered_ids(again) == {event_id(c) for c in ("o2", "o3", "o5", "o6")}


def test_other_4xx_retries_the_whole_request_and_never_echoes_the_body(receiver: Receiver,
                                                                      waits: list[float]) -> None:
    secret_hash = email_hash("leak@example.com")
    receiver.script = [Answer(400, json.dumps({"error": f"leak@example.com / {secret_hash} rejected"}).encode())]
    messages = [message("leak", email="leak@example.com"), message("other")]
    result = deliver_batch(messages, make_lists(receiver, waits), MemoryDeliveryLedger())
    assert set(result.retry) == {m for m, _ in messages} and result.refused == {}
    reason = result.retry["leak/entered/1"]
    assert "HTTP 400" in reason and "configuration" in reason
    assert "leak@" not in reason and secret_hash not in reason
    assert waits == []  # a 400 is not resent within the invocation

    # A redirect is not followed (urllib would turn the POST into a body-less GET and report its 2xx).
    receiver.script = [Answer(302, headers={"Location": receiver.url + "/moved"})]
    result = deliver_batch(messages, make_lists(receiver, waits), MemoryDeliveryLedger())
    assert "HTTP 302" in result.retry["leak/entered/1"] and len(receiver.requests) == 2


def test_a_poisoned_identifier_is_isolated_and_the_rest_delivered(receiver: Receiver, waits: list[float]) -> None:
    messages = [message("p1"), message("p2", identifiers={"email_sha256": "NOT-A-HASH"}), message("p3")]
    ledger = MemoryDeliveryLedger()
    result = deliver_batch(messages, make_lists(receiver, waits), ledger)
    assert result.refused == {"p2/entered/1": "identifiers.email_sha256: is not a SHA-256 hex digest"}
    assert [r.customers for r in receiver.requests] == [["p1", "p3"]]
    assert delivered_ids(result) == {event_id("p1"), event_id("p3")}


def test_redelivery_and_a_late_entered_after_exited_send_nothing(receiver: Receiver, waits: list[float]) -> None:
    lists, ledger = make_lists(receiver, waits), MemoryDeliveryLedger()
    entered, exited = message("d1", ENTERED, 1), message("d1", EXITED, 2)
    deliver_batch([entered], lists, ledger)
    redelivered = deliver_batch([entered], lists, ledger)
    assert [why for _, why in redelivered.skipped] == ["already delivered"]
    deliver_batch([exited], lists, ledger)
    late = deliver_batch([entered], lists, ledger)
    assert [why for _, why in late.skipped] == ["older than the change already applied"]
    assert [r.document["action"] for r in receiver.requests] == ["add", "remove"]
    # Both in one batch: only the newer is acted on.
    both = deliver_batch([message("d2", ENTERED, 1), message("d2", EXITED, 2)], lists, ledger)
    assert [why for _, why in both.skipped] == ["superseded by a newer change in the same batch"]
    assert receiver.requests[-1].document["action"] == "remove" and len(receiver.requests) == 3


# ---- the function, under moto -------------------------------------------------------------------

LEDGER_TABLE, PROFILES_TABLE = "cdp-delivery-ledger", "cdp-profiles"


@dataclass
class Aws:
    dynamodb: Any
    sqs: Any
    secrets: Any
    dead_letter_queue: str
    secret_arn: str

    def dead_letters(self) -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.dead_letter_queue, MaxNumberOfMessages=10,
                                           MessageAttributeNames=["All"]).get("Messages", [])
            if not got:
                return letters
            letters += got
            for letter in got:
                self.sqs.delete_message(QueueUrl=self.dead_letter_queue, ReceiptHandle=letter["ReceiptHandle"])


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Iterator[Aws]:
    for name, value in {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        dynamodb, sqs, secrets = (session.client(name) for name in ("dynamodb", "sqs", "secretsmanager"))
        for table, key in ((LEDGER_TABLE, "delivery"), (PROFILES_TABLE, "customer_id")):
            dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                  KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                                  AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}])
        queue = sqs.create_queue(QueueName="cdp-webhook-dead-letters")["QueueUrl"]
        arn = secrets.create_secret(Name="cdp/webhook", SecretString=json.dumps({"signing_secret": SECRET}))["ARN"]
        for name, value in {"TARGETS": json.dumps(TARGETS), "LEDGER_TABLE": LEDGER_TABLE,
                            "DEAD_LETTER_QUEUE_URL": queue, "SECRET_ARN": arn, "PROFILES_TABLE": PROFILES_TABLE,
                            "OPTIONS": json.dumps({"url": receiver.url, "include_email": True})}.items():
            monkeypatch.setenv(name, value)
        webhook_handler.dependencies.cache_clear()
        yield Aws(dynamodb, sqs, secrets, queue, arn)
        webhook_handler.dependencies.cache_clear()


def put_profile(aws: Aws, customer: str, email: str) -> None:
    from cdp.aws.dynamo import DynamoProfileStore

    profile = Profile(customer)
    profile.traits = {"email": email}
    DynamoProfileStore(aws.dynamodb, PROFILES_TABLE).save(profile, 0)


def sqs_envelope(messages: list[tuple[str, str]]) -> dict[str, Any]:
    return {"Records": [{"messageId": message_id, "receiptHandle": f"handle-{message_id}", "body": body,
                         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                         "md5OfBody": hashlib.md5(body.encode()).hexdigest(), "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:cdp-webhook", "awsRegion": REGION}
                        for message_id, body in messages]}


def test_the_sample_envelope_through_the_handler(aws: Aws, receiver: Receiver) -> None:
    envelope = json.loads((ROOT / "events" / "sqs" / "webhook-batch.json").read_text())
    entered, exited = (json.loads(record["body"])["detail"] for record in envelope["Records"])
    put_profile(aws, "alice", "Alice@Example.com")
    put_profile(aws, "bob", "bob.new@example.com")
    # bob was added earlier with his old address; the exit in the envelope carries the new one's hash.
    old = {"email_sha256": email_hash("bob@example.com"), "email": "bob@example.com"}
    DynamoDeliveryLedger(aws.dynamodb, LEDGER_TABLE).record(NAMESPACE, (SEGMENT, "bob"),
                                                            LedgerEntry(4, ENTERED, "0" * 32, old))
    assert exited["identifiers"]["email_sha256"] == email_hash("bob.new@example.com")

    assert webhook_handler.handler(envelope, LambdaContext("cdp-webhook")) == {"batchItemFailures": []}
    add, remove = receiver.requests
    assert add.document == {"list_id": LIST, "action": "add", "operations": [
        {"event_id": entered["event_id"], "customer_id": "alice", "membership_version": 3, "email": "alice@example.com",
         "identifiers": {name: entered["identifiers"][name] for name in ("email_sha256", "phone_sha256")}}]}
    assert remove.document == {"list_id": LIST, "action": "remove", "operations": [
        {"event_id": exited["event_id"], "customer_id": "bob", "membership_version": 5, "email": "bob@example.com",
         "identifiers": {"email_sha256": email_hash("bob@example.com")}}]}
    ledger = DynamoDeliveryLedger(aws.dynamodb, LEDGER_TABLE).entries(NAMESPACE, [(SEGMENT, "alice"), (SEGMENT, "bob")])
    assert ledger[(SEGMENT, "alice")].identifiers["email"] == "alice@example.com"
    assert (ledger[(SEGMENT, "bob")].kind, ledger[(SEGMENT, "bob")].identifiers) == (EXITED, {})
    assert aws.dead_letters() == []


def test_the_handler_reports_a_partial_batch_and_dead_letters_without_personal_data(
        aws: Aws, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    # Powertools' handler holds the stream it was made with: point it at this test's captured stdout.
    for handler in logging.getLogger("cdp-webhook").handlers:
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", sys.stdout)
    caplog.set_level(logging.INFO)
    emails = {c: f"{c}.person@example.com" for c in ("ok", "refused", "later", "poisoned")}
    for customer, email in emails.items():
        put_profile(aws, customer, email)
    verdicts = {"refused": {"status": "error", "retryable": False,
                            "reason": f"{emails['refused']} bounced"},  # free text: never repeated
                "later": {"status": "error", "retryable": True, "reason": "mailbox_busy"}}
    receiver.answer = lambda received: Answer.results(
        [{"event_id": op["event_id"], **verdicts.get(op["customer_id"], {"status": "ok"})}
         for op in received.operations])
    messages = [message(c, email=e) for c, e in emails.items() if c != "poisoned"]
    messages += [message("poisoned", identifiers={"email_sha256": email_hash(emails["poisoned"]).upper()}),
                 ("garbage/1", "not json")]
    response = webhook_handler.handler(sqs_envelope(messages), LambdaContext("cdp-webhook"))

    assert response == {"batchItemFailures": [{"itemIdentifier": "later/entered/1"}]}
    letters = {json.loads(letter["Body"])["detail"]["customer_id"] if letter["Body"] != "not json" else "garbage":
               letter for letter in aws.dead_letters()}
    reasons = {customer: letter["MessageAttributes"]["reason"]["StringValue"] for customer, letter in letters.items()}
    assert reasons == {"refused": "the webhook refused this operation (no reason code given)",
                       "poisoned": "identifiers.email_sha256: is not a SHA-256 hex digest",
                       "garbage": "body: is not JSON"}
    assert {letter["MessageAttributes"]["source"]["StringValue"] for letter in letters.values()} == {"webhook"}
    originals = dict(messages)
    assert letters["refused"]["Body"] == originals["refused/entered/1"]  # the original, never the enriched body
    assert all("@" not in letter["Body"] for letter in letters.values())

    captured = capsys.readouterr()
    records = " ".join(json.dumps(record.__dict__, default=str) for record in caplog.records)
    logs = captured.out + captured.err + caplog.text + records
    assert "deliveries not made" in logs and "mailbox_busy" in logs  # the warning was captured
    secrets = [*emails.values()] + [email_hash(e) for e in emails.values()] + [email_hash(emails["poisoned"]).upper()]
    assert [s for s in secrets if s in logs] == []
    assert "@example.com" not in logs


def test_cold_start_configuration(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    deps = webhook_handler.dependencies()
    assert deps.destination.include_email and deps.profiles is not None and deps.destination.name == "webhook"

    webhook_handler.dependencies.cache_clear()
    monkeypatch.delenv("PROFILES_TABLE")
    with pytest.raises(ConfigError, match="PROFILES_TABLE"):
        webhook_handler.dependencies()
    monkeypatch.setenv("OPTIONS", json.dumps({"url": "https://hooks.example.com/lists"}))
    with pytest.raises(ConfigError, match="PROFILES_TABLE"):  # consent is read per customer, email or not
        webhook_handler.dependencies()
    monkeypatch.setenv("PROFILES_TABLE", PROFILES_TABLE)
    deps = webhook_handler.dependencies()
    assert deps.profiles is None and deps.permissions is not None  # no email read, consent still checked

    webhook_handler.dependencies.cache_clear()
    monkeypatch.setenv("OPTIONS", json.dumps({"url": "http://hooks.example.com/lists"}))
    with pytest.raises(ConfigError, match=r"OPTIONS\.url"):
        webhook_handler.dependencies()
    monkeypatch.setenv("OPTIONS", json.dumps({"url": "https://hooks.example.com/lists"}))
    aws.secrets.put_secret_value(SecretId=aws.secret_arn, SecretString=json.dumps({"token": "x" * 32}))
    with pytest.raises(ConfigError, match="signing_secret"):
        webhook_handler.dependencies()
    monkeypatch.delenv("SECRET_ARN")
    with pytest.raises(ConfigError, match="SECRET_ARN"):
        webhook_handler.dependencies()
