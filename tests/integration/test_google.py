"""Google Ads Customer Match against a local fake of Google's REST API that checks every request it gets.

The fake (``FakeGoogle``) serves the OAuth token endpoint and the three offline user data job
endpoints on 127.0.0.1 and holds each request to Google's documented format: paths and API version,
the Authorization / developer-token / login-customer-id headers, the JSON shape of each body, hashes
as 64 lower-case hex digits, at most 20 identifiers per UserData and the per-request identifier limit.
A request that breaks a rule is answered 400 and recorded; every test ends by asserting none was.
It can be told to answer a step with a scripted status (429 with Retry-After, 503, ...) and to fail
chosen operation indexes of each addOperations request in ``partialFailureError``.

The rules that need no Google (normalisation, the documented limits, the sample envelope) are unit tests
(tests/unit/test_google.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from cdp.config import ConfigError
from cdp.core.consent import ConsentPolicy, ConsentState
from cdp.core.identifiers import hashed_identifiers
from cdp.integrations.google import (
    API_VERSION,
    MAX_IDENTIFIERS_PER_REQUEST,
    MAX_IDENTIFIERS_PER_USER,
    GoogleCustomerMatch,
)
from cdp.integrations.http import UrllibTransport
from cdp.pipeline.changes import MembershipChange
from cdp.pipeline.fanout import LedgerEntry, deliver, settle
from cdp_dev.handlers import load_handler
from cdp_dev.memory import MemoryDeadLetters, MemoryDeliveryLedger

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "events" / "sqs" / "google-batch.json"

CUSTOMER, LOGIN = "1234567890", "9876543210"
DEVELOPER_TOKEN, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN = (
    "dev-TOKEN-not-to-leak", "client-id.apps.example", "client-SECRET-not-to-leak", "1//refresh-TOKEN-not-to-leak")
SECRET = {"developer_token": DEVELOPER_TOKEN, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
          "refresh_token": REFRESH_TOKEN}
TARGETS = {"cart-abandoners": "111", "vip": "222"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
INVALID = "offlineUserDataJobError.INVALID_SHA256_FORMAT"
THROTTLED = "quotaError.RESOURCE_EXHAUSTED"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the fake Google -------------------------------------------------------------------------------


@dataclass
class Seen:
    step: str  # token | create | add | run | unknown
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class Job:
    user_list: str
    metadata: dict[str, Any]
    operations: list[dict[str, Any]] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # identifiers per addOperations request
    ran: bool = False


def ads_failure(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/google.ads.googleads.{API_VERSION}.errors.GoogleAdsFailure",
            "errors": errors, "requestId": "fake-request"}


def ads_error(code: str, index: int | None = None, trigger: str = "") -> dict[str, Any]:
    family, value = code.split(".")
    error: dict[str, Any] = {"errorCode": {family: value}, "message": f"The value {trigger} was refused."}
    if trigger:
        error["trigger"] = {"stringValue": trigger}
    if index is not None:
        error["location"] = {"fieldPathElements": [{"fieldName": "operations", "index": index},
                                                   {"fieldName": "create"},
                                                   {"fieldName": "user_identifiers", "index": 0},
                                                   {"fieldName": "hashed_email"}]}
    return error


def throttle_body(delay: str | None = None) -> dict[str, Any]:
    error = ads_error(THROTTLED)
    error["message"] = "Too many requests. Retry in a while."
    if delay:
        error["details"] = {"quotaErrorDetails": {"rateScope": "DEVELOPER", "rateName": "operations",
                                                  "retryDelay": delay}}
    return {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                      "status": "RESOURCE_EXHAUSTED", "details": [ads_failure([error])]}}


def check_operation(index: int, operation: Any, problems: list[str]) -> int:
    """One ``create`` / ``remove`` operation as Google takes it; returns how many identifiers it holds."""
    if not isinstance(operation, dict) or len(operation) != 1 or next(iter(operation)) not in ("create", "remove"):
        problems.append(f"operations[{index}] must hold exactly one of create / remove")
        return 0
    data = next(iter(operation.values()))
    identifiers = data.get("userIdentifiers") if isinstance(data, dict) else None
    if not isinstance(identifiers, list) or set(data) != {"userIdentifiers"}:
        problems.append(f"operations[{index}] UserData must hold userIdentifiers only")
        return 0
    if not 1 <= len(identifiers) <= MAX_IDENTIFIERS_PER_USER:
        problems.append(f"operations[{index}] has {len(identifiers)} identifiers (1 to 20)")
    for identifier in identifiers:
        check_identifier(index, identifier, problems)
    return len(identifiers)


def check_identifier(index: int, identifier: Any, problems: list[str]) -> None:
    """One user identifier: exactly one hashed email or phone number, as 64 lower-case hex digits."""
    if not isinstance(identifier, dict) or len(identifier) != 1 or next(iter(identifier)) not in (
            "hashedEmail", "hashedPhoneNumber"):
        problems.append(f"operations[{index}] identifier must be one hashedEmail or hashedPhoneNumber")
    elif not HEX64.match(str(next(iter(identifier.values())))):
        problems.append(f"operations[{index}] identifier is not 64 lower-case hex digits")

class FakeGoogle:
    """Google's token endpoint and OfflineUserDataJobService (REST), checking what it is sent."""

    def __init__(self, login: str = LOGIN, limit: int = MAX_IDENTIFIERS_PER_REQUEST) -> None:
        self.login = login
        self.limit = limit
        self.expires_in = 3600
        self.requests: list[Seen] = []
        self.violations: list[str] = []
        self.jobs: dict[str, Job] = {}
        self.tokens: set[str] = set()
        self.revoked: set[str] = set()
        self.scripted: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        self.fail_indexes: dict[int, str] = {}  # operation index in each addOperations request -> error code
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake.answer(self)

            def do_GET(self) -> None:
                fake.answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test controls --

    def script(self, step: str, status: int, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """Answer the next ``times`` well-formed requests of a step with this instead."""
        self.scripted.setdefault(step, []).extend([(status, body or {}, headers or {})] * times)

    def revoke_tokens(self) -> None:
        self.revoked |= self.tokens
        self.tokens.clear()

    def steps(self) -> list[str]:
        return [seen.step for seen in self.requests]

    def seen(self, step: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.step == step]

    # -- serving --

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen = Seen("unknown", request.path, headers, raw)
        self.requests.append(seen)
        problems: list[str] = []
        status, body, extra = self.route(request.command, seen, raw, problems)
        if problems:
            self.violations += [f"{seen.step} {request.path}: {p}" for p in problems]
            status, body, extra = 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                  "message": "; ".join(problems)}}, {}
        seen.status = status
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def route(self, method: str, seen: Seen, raw: bytes,
              problems: list[str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method != "POST":
            problems.append(f"method {method}, not POST")
        if seen.path == "/token":
            seen.step = "token"
            return self.token(seen, raw, problems)
        match = re.match(r"^/(v\d+)/(.+)$", seen.path)
        if not match:
            problems.append("not an API path")
            return 404, {}, {}
        if match.group(1) != API_VERSION:
            problems.append(f"API version {match.group(1)}, not {API_VERSION}")
        rest = match.group(2)
        routes = {"create": rf"^customers/({CUSTOMER})/offlineUserDataJobs:create$",
                  "add": rf"^(customers/{CUSTOMER}/offlineUserDataJobs/\d+):addOperations$",
                  "run": rf"^(customers/{CUSTOMER}/offlineUserDataJobs/\d+):run$"}
        step, found = next(((s, re.match(p, rest)) for s, p in routes.items() if re.match(p, rest)), ("unknown", None))
        seen.step = step
        if found is None:
            problems.append("no such endpoint (or another customer's)")
            return 404, {}, {}
        try:
            seen.body = json.loads(raw) if raw else None
        except ValueError:
            problems.append("body is not JSON")
            return 400, {}, {}
        unauthorised = self.check_headers(seen.headers, problems)
        if unauthorised:
            return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid "
                                   "authentication credentials."}}, {}
        check = {"create": self.check_create, "add": self.check_add, "run": self.check_run}[step]
        check(found.group(1), seen.body, problems)
        if problems:
            return 400, {}, {}
        queued = self.scripted.get(step)
        if queued:
            return queued.pop(0)
        return {"create": self.create, "add": self.add, "run": self.run}[step](found.group(1), seen.body)

    def token(self, seen: Seen, raw: bytes, problems: list[str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not seen.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            problems.append("token request is not form-encoded")
        form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        seen.body = form
        expected = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "refresh_token": REFRESH_TOKEN}
        if form != expected:
            problems.append(f"token form has fields {sorted(form)} or wrong values")
        queued = self.scripted.get("token")
        if not problems and queued:
            return queued.pop(0)
        token = f"ya29.fake-{len(self.tokens) + len(self.revoked) + 1}"
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer",
                     "scope": "https://www.googleapis.com/auth/adwords"}, {}

    def check_headers(self, headers: dict[str, str], problems: list[str]) -> bool:
        authorization = headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or (token not in self.tokens and token not in self.revoked):
            problems.append("Authorization is not 'Bearer <a token the token endpoint issued>'")
        if headers.get("developer-token") != DEVELOPER_TOKEN:
            problems.append("developer-token header missing or wrong")
        if self.login and headers.get("login-customer-id") != self.login:
            problems.append("login-customer-id header missing or not the manager's digits")
        if not self.login and "login-customer-id" in headers:
            problems.append("login-customer-id header sent without a manager account")
        if not headers.get("content-type", "").startswith("application/json"):
            problems.append("Content-Type is not application/json")
        return not problems and token in self.revoked

    def check_create(self, customer: str, body: Any, problems: list[str]) -> None:
        job = body.get("job") if isinstance(body, dict) else None
        if not isinstance(job, dict) or set(body) != {"job"}:
            problems.append("create body must be exactly {job: ...}")
            return
        metadata = job.get("customerMatchUserListMetadata")
        if set(job) != {"type", "customerMatchUserListMetadata"} or job.get("type") != "CUSTOMER_MATCH_USER_LIST":
            problems.append("job must have type CUSTOMER_MATCH_USER_LIST and customerMatchUserListMetadata only")
        if not isinstance(metadata, dict) or not set(metadata) <= {"userList", "consent"}:
            problems.append("customerMatchUserListMetadata holds userList (and consent) only")
            return
        if not re.match(rf"^customers/{customer}/userLists/\d+$", str(metadata.get("userList"))):
            problems.append("userList is not this customer's user list resource name")
        consent = metadata.get("consent")
        if consent is not None and (not isinstance(consent, dict) or not consent or not all(
                k in ("adUserData", "adPersonalization") and v in ("GRANTED", "DENIED") for k, v in consent.items())):
            problems.append("consent must map adUserData / adPersonalization to GRANTED or DENIED")

    def check_add(self, job_name: str, body: Any, problems: list[str]) -> None:
        if not isinstance(body, dict) or not set(body) <= {"operations", "enablePartialFailure", "enableWarnings",
                                                           "validateOnly"}:
            problems.append("addOperations body has unknown fields")
            return
        if body.get("enablePartialFailure") is not True:
            problems.append("enablePartialFailure must be true")
        job = self.jobs.get(job_name)
        if job is None or job.ran:
            problems.append("no such job, or it has run already")
        operations = body.get("operations")
        if not isinstance(operations, list) or not operations:
            problems.append("operations must be a non-empty list")
            return
        total = sum(check_operation(index, operation, problems) for index, operation in enumerate(operations))
        if total > self.limit:
            problems.append(f"{total} identifiers in one request, over the limit of {self.limit}")

    def check_run(self, job_name: str, body: Any, problems: list[str]) -> None:
        if body not in (None, {}, {"validateOnly": False}):
            problems.append("run body must be empty")
        job = self.jobs.get(job_name)
        if job is None or job.ran or not job.operations:
            problems.append("no such job, already run, or without operations")

    def create(self, customer: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        name = f"customers/{customer}/offlineUserDataJobs/{5000 + len(self.jobs)}"
        metadata = body["job"]["customerMatchUserListMetadata"]
        self.jobs[name] = Job(metadata["userList"], metadata)
        return 200, {"resourceName": name}, {}

    def add(self, job_name: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        job = self.jobs[job_name]
        operations = body["operations"]
        job.requests.append(sum(len(next(iter(op.values()))["userIdentifiers"]) for op in operations))
        errors = []
        for index, operation in enumerate(operations):
            if index in self.fail_indexes:
                trigger = next(iter(next(iter(operation.values()))["userIdentifiers"][0].values()))
                errors.append(ads_error(self.fail_indexes[index], index, trigger))
            else:
                job.operations.append(operation)
        if not errors:
            return 200, {}, {}
        return 200, {"partialFailureError": {"code": 3, "message": f"Multiple errors in 'details'. First error: "
                                             f"{errors[0]['message']}", "details": [ads_failure(errors)]}}, {}

    def run(self, job_name: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.jobs[job_name].ran = True
        return 200, {"name": f"customers/{CUSTOMER}/operations/{job_name.rsplit('/', 1)[1]}"}, {}


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    server = FakeGoogle()
    yield server
    server.close()
    assert server.violations == [], "requests broke Google's documented format"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def destination(fake: FakeGoogle, waits: list[float] | None = None, clock: Clock | None = None,
                **options: Any) -> GoogleCustomerMatch:
    settings: dict[str, Any] = {"customer_id": "123-456-7890", "token_url": f"{fake.url}/token"}
    if fake.login:
        settings["login_customer_id"] = "987-654-3210"
    settings.update(options)
    built = GoogleCustomerMatch.from_settings(TARGETS, settings, SECRET, UrllibTransport(timeout=5),
                                              base_url=fake.url)
    recorder = waits.append if waits is not None else (lambda seconds: pytest.fail(f"unexpected wait {seconds}"))
    built.sleep = built.tokens.sleep = recorder
    if clock is not None:
        built.tokens.clock = clock
    return built


# ---- bus events as the queue delivers them -----------------------------------------------------------


def event(customer: str, kind: str = "entered", version: int = 1, segment: str = "cart-abandoners",
          email: str | None = None, phone: str | None = None,
          identifiers: dict[str, str] | None = None) -> tuple[str, str]:
    """(message id, body): a Segment Entered / Exited bus event for one customer."""
    traits = {"email": email or f"{customer}@example.com", **({"phone": phone} if phone else {})}
    change = MembershipChange(customer, segment, kind, 1_791_536_400 + version, version, "condition", "a reason")
    detail = {"schema_version": "1", "event_id": change.event_id, "customer_id": customer,
              "segment": {"id": segment, "name": segment}, "change": kind, "at": "2026-10-09T09:00:00Z",
              "membership_version": version, "clause": {"path": "condition", "reason": "a reason"},
              "primary_segment": segment if kind == "entered" else None,
              "segments": [segment] if kind == "entered" else [],
              "identifiers": identifiers if identifiers is not None else hashed_identifiers(traits)}
    body: dict[str, Any] = {"version": "0", "id": f"bus-{change.event_id}", "source": "cdp.segments",
            "detail-type": "Segment Entered" if kind == "entered" else "Segment Exited",
            "account": "123456789012", "time": "2026-10-09T09:00:00Z", "region": "eu-west-1", "resources": [],
            "detail": detail}
    return f"msg-{customer}-{kind}-{version}", json.dumps(body)


def operations(fake: FakeGoogle) -> list[dict[str, Any]]:
    return [op for job in fake.jobs.values() for op in job.operations]


def hashes_of(operation: dict[str, Any]) -> list[str]:
    return [value for identifier in next(iter(operation.values()))["userIdentifiers"]
            for value in identifier.values()]


def no_identifiers_in(texts: list[str], *identifiers: str) -> None:
    for text in texts:
        assert not HEX64.search(text) and not re.search(r"[0-9a-f]{64}", text), text
        for secret in (DEVELOPER_TOKEN, CLIENT_SECRET, REFRESH_TOKEN, *identifiers):
            assert secret not in text


# ---- the job flow -----------------------------------------------------------------------------------


@pytest.mark.parametrize("login", [LOGIN, ""])
def test_a_batch_of_enters_is_one_job_of_create_operations_that_is_run(login: str) -> None:
    fake = FakeGoogle(login=login)
    try:
        ledger = MemoryDeliveryLedger()
        messages = [event("ann"), event("bob", phone="+1 (555) 010-0000"), event("cat", email=" Cat.X@GMail.com ")]
        result = deliver(messages, destination(fake), ledger)

        assert fake.steps() == ["token", "create", "add", "run"]
        assert not result.retry and not result.refused and len(result.delivered) == 3
        (job,) = fake.jobs.values()
        assert job.user_list == f"customers/{CUSTOMER}/userLists/111" and job.ran
        assert [next(iter(op)) for op in job.operations] == ["create"] * 3
        assert [hashes_of(op) for op in job.operations] == [
            [sha("ann@example.com")], [sha("bob@example.com"), sha("+15550100000")], [sha("catx@gmail.com")]]
        assert fake.seen("add")[0].body["enablePartialFailure"] is True
        assert fake.seen("create")[0].body == {"job": {"type": "CUSTOMER_MATCH_USER_LIST",
                                                       "customerMatchUserListMetadata": {
                                                           "userList": f"customers/{CUSTOMER}/userLists/111"}}}
        entry = ledger.entries("google:111", [("cart-abandoners", "bob")])[("cart-abandoners", "bob")]
        assert entry.kind == "entered" and entry.identifiers["google_phone_sha256"] == sha("+15550100000")
    finally:
        fake.close()
    assert fake.violations == []


def test_exits_remove_what_was_added_even_when_the_identifiers_changed(fake: FakeGoogle) -> None:
    ledger = MemoryDeliveryLedger()
    google = destination(fake)
    deliver([event("frank", email="old@example.com")], google, ledger)
    # frank's email changed, then he left; ann joins in the same batch: one job per kind
    result = deliver([event("frank", "exited", 2, email="new@example.com"), event("ann")], google, ledger)

    assert not result.retry and not result.refused and len(result.delivered) == 2
    assert fake.steps() == ["token", "create", "add", "run", "create", "add", "run", "create", "add", "run"]
    first, adds, removes = fake.jobs.values()
    assert all(job.ran for job in (first, adds, removes))
    assert [next(iter(op)) for op in adds.operations] == ["create"]
    assert removes.operations == [{"remove": {"userIdentifiers": [{"hashedEmail": sha("old@example.com")}]}}]
    entry = ledger.entries("google:111", [("cart-abandoners", "frank")])[("cart-abandoners", "frank")]
    assert entry == LedgerEntry(2, "exited", entry.event_id, {})


def test_an_exit_without_a_ledger_entry_uses_the_identifiers_it_carries(fake: FakeGoogle) -> None:
    result = deliver([event("gus", "exited", 4, phone="+44 20 7946 0000")], destination(fake), MemoryDeliveryLedger())
    assert len(result.delivered) == 1
    assert operations(fake) == [{"remove": {"userIdentifiers": [{"hashedEmail": sha("gus@example.com")},
                                                                {"hashedPhoneNumber": sha("+442079460000")}]}}]


def test_add_jobs_carry_each_customers_consent_one_job_per_pair_and_removals_none(fake: FakeGoogle) -> None:
    google = destination(fake, consent={"ad_user_data": "advertising", "ad_personalization": "personalization"})
    google.consent_default = "denied"
    permissions = {"ann": ConsentState({"advertising": True, "personalization": True}, at=1.0),
                   "bob": ConsentState({"advertising": True, "personalization": False}, at=1.0),
                   "cat": ConsentState({"advertising": True}, at=1.0),  # personalization never stated: the default
                   "dan": ConsentState({"advertising": True, "personalization": True}, at=1.0)}
    result = deliver([event("ann"), event("bob"), event("cat"), event("dan"), event("eve", "exited", 2)], google,
                     MemoryDeliveryLedger(), StaticPermissions(permissions), ConsentPolicy())

    assert not result.retry and not result.refused and len(result.delivered) == 5
    consents = sorted((json.dumps(job.metadata.get("consent"), sort_keys=True), len(job.operations))
                      for job in fake.jobs.values())
    assert consents == sorted([
        ('{"adPersonalization": "DENIED", "adUserData": "GRANTED"}', 2),  # bob declined, cat never said
        ('{"adPersonalization": "GRANTED", "adUserData": "GRANTED"}', 2),  # ann and dan
        ("null", 1)])  # the removal carries no consent
    assert all(job.ran for job in fake.jobs.values())


@dataclass
class StaticPermissions:
    consent: dict[str, ConsentState]

    def load(self, customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        return {cid: self.consent[cid] for cid in customer_ids if cid in self.consent}


def test_segments_map_to_their_own_user_lists_and_unconfigured_ones_are_skipped(fake: FakeGoogle) -> None:
    result = deliver([event("ann"), event("bob", segment="vip"), event("cat", segment="not-mapped")],
                     destination(fake), MemoryDeliveryLedger())
    assert sorted(job.user_list for job in fake.jobs.values()) == [
        f"customers/{CUSTOMER}/userLists/111", f"customers/{CUSTOMER}/userLists/222"]
    assert [why for _, why in result.skipped] == ["segment not configured for this destination"]


# ---- batching -----------------------------------------------------------------------------------------


def test_a_batch_over_the_identifier_limit_is_split_over_requests_to_one_job(fake: FakeGoogle) -> None:
    fake.limit = 5  # the fake refuses more identifiers in one request, as Google does above its limit
    google = destination(fake)
    google.max_identifiers = 5
    messages = [event(f"c{n}", phone=f"+49 30 123450{n}") for n in range(7)]  # 2 identifiers each
    result = deliver(messages, google, MemoryDeliveryLedger())

    assert len(result.delivered) == 7 and not result.retry
    assert fake.steps() == ["token", "create", "add", "add", "add", "add", "run"]
    (job,) = fake.jobs.values()
    assert job.requests == [4, 4, 4, 2] and job.ran
    assert [hashes_of(op)[0] for op in job.operations] == [sha(f"c{n}@example.com") for n in range(7)]


def test_the_fake_holds_requests_to_the_limit_and_the_hash_format() -> None:
    fake = FakeGoogle(limit=3)
    try:
        google = destination(fake)
        assert google.max_identifiers == MAX_IDENTIFIERS_PER_REQUEST
        result = deliver([event(f"c{n}", phone=f"+49 30 123450{n}") for n in range(2)], google, MemoryDeliveryLedger())
        assert set(result.retry) == {"msg-c0-entered-1", "msg-c1-entered-1"}  # refused by the fake: 4 > 3
        assert any("over the limit of 3" in problem for problem in fake.violations)
        fake.violations.clear()
        job = google._create_job("111", "entered")
        response = google._post(f"{fake.url}/{API_VERSION}/{job}:addOperations", {
            "enablePartialFailure": True, "operations": [{"create": {"userIdentifiers": [{"hashedEmail": "A" * 64}]}}]})
        assert response.status == 400 and any("64 lower-case hex" in p for p in fake.violations)
    finally:
        fake.close()


# ---- throttling -----------------------------------------------------------------------------------------


def test_429_with_retry_after_is_honoured_then_the_batch_goes_through(fake: FakeGoogle) -> None:
    waits: list[float] = []
    fake.script("add", 429, throttle_body(), {"Retry-After": "7"}, times=2)
    result = deliver([event("ann"), event("bob")], destination(fake, waits), MemoryDeliveryLedger())

    assert waits == [7.0, 7.0]
    assert [seen.status for seen in fake.seen("add")] == [429, 429, 200]
    assert len(result.delivered) == 2 and next(iter(fake.jobs.values())).ran


def test_429_with_only_googles_retry_delay_waits_that_long(fake: FakeGoogle) -> None:
    waits: list[float] = []
    fake.script("create", 429, throttle_body("3s"))
    fake.script("run", 503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "later"}})
    result = deliver([event("ann")], destination(fake, waits), MemoryDeliveryLedger())
    assert waits == [3.0, 0.5]  # Google's retryDelay; then exponential back-off for the 503
    assert len(result.delivered) == 1


def test_throttling_past_the_attempts_retries_the_rows_and_records_nothing(fake: FakeGoogle) -> None:
    waits: list[float] = []
    ledger = MemoryDeliveryLedger()
    fake.script("add", 429, throttle_body(), {"Retry-After": "2"}, times=5)
    messages = [event("ann"), event("bob")]
    result = deliver(messages, destination(fake, waits), ledger)

    assert waits == [2.0] * 4
    assert set(result.retry) == {"msg-ann-entered-1", "msg-bob-entered-1"} and not result.delivered
    assert set(result.retry.values()) == {"Google Ads still answered HTTP 429 after 5 attempts"}
    assert "run" not in fake.steps()  # nothing was added, so the job is not run
    assert ledger.entries("google:111", [("cart-abandoners", "ann"), ("cart-abandoners", "bob")]) == {}
    assert settle(messages, result, MemoryDeadLetters()) == ["msg-ann-entered-1", "msg-bob-entered-1"]


def test_throttling_past_the_wait_budget_gives_the_rows_back_to_the_queue(fake: FakeGoogle) -> None:
    waits: list[float] = []
    fake.script("add", 429, throttle_body("20s"), times=3)
    result = deliver([event("ann")], destination(fake, waits), MemoryDeliveryLedger())
    assert waits == [20.0]  # a second 20 s wait would pass the 30 s budget within the 60 s function timeout
    assert result.retry == {"msg-ann-entered-1": "Google Ads asked to wait more than 30 s for one job"}


def test_a_job_that_cannot_be_created_retries_its_rows_with_googles_codes_only(fake: FakeGoogle) -> None:
    fake.script("create", 403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "The caller "
                                          "does not have permission", "details": [ads_failure([ads_error(
                                              "authorizationError.USER_PERMISSION_DENIED")])]}})
    result = deliver([event("ann")], destination(fake), MemoryDeliveryLedger())
    assert result.retry == {"msg-ann-entered-1": "Google Ads did not create a job: HTTP 403 PERMISSION_DENIED: "
                                                 "authorizationError.USER_PERMISSION_DENIED"}


def test_a_job_that_does_not_run_sends_its_rows_again(fake: FakeGoogle) -> None:
    fake.script("run", 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "no",
                                       "details": [ads_failure([ads_error("offlineUserDataJobError.INVALID_JOB")])]}})
    ledger = MemoryDeliveryLedger()
    result = deliver([event("ann")], destination(fake), ledger)
    assert list(result.retry) == ["msg-ann-entered-1"] and "HTTP 400" in result.retry["msg-ann-entered-1"]
    assert ledger.entries("google:111", [("cart-abandoners", "ann")]) == {}


# ---- partial failure ------------------------------------------------------------------------------------


def test_partial_failure_fails_only_the_rows_google_names(fake: FakeGoogle) -> None:
    fake.fail_indexes = {1: INVALID, 2: THROTTLED}
    ledger, letters = MemoryDeliveryLedger(), MemoryDeadLetters()
    messages = [event("ann"), event("bob"), event("cat"), event("dan")]
    result = deliver(messages, destination(fake), ledger)

    assert result.refused == {"msg-bob-entered-1": f"Google Ads refused this row: {INVALID}"}
    assert result.retry == {"msg-cat-entered-1": f"Google Ads could not take this row yet: {THROTTLED}"}
    assert [a.event.customer_id for a in result.delivered] == ["ann", "dan"]
    assert set(ledger.entries("google:111", [("cart-abandoners", c) for c in ("ann", "bob", "cat", "dan")])) == {
        ("cart-abandoners", "ann"), ("cart-abandoners", "dan")}
    (job,) = fake.jobs.values()
    assert job.ran and [hashes_of(op) for op in job.operations] == [[sha("ann@example.com")], [sha("dan@example.com")]]
    no_identifiers_in([*result.refused.values(), *result.retry.values()], sha("bob@example.com"))

    assert settle(messages, result, letters) == ["msg-cat-entered-1"]
    assert letters.letters == [(messages[1][1], f"Google Ads refused this row: {INVALID}")]
    fake.fail_indexes = {}
    again = deliver([messages[2]], destination(fake), ledger)  # the retried row goes through later
    assert [a.event.customer_id for a in again.delivered] == ["cat"]


def test_partial_failure_indexes_are_per_request(fake: FakeGoogle) -> None:
    fake.fail_indexes = {1: INVALID}
    google = destination(fake)
    google.max_identifiers = 2  # two one-identifier rows per request
    result = deliver([event(f"c{n}") for n in range(5)], google, MemoryDeliveryLedger())
    assert sorted(result.refused) == ["msg-c1-entered-1", "msg-c3-entered-1"]
    assert [a.event.customer_id for a in result.delivered] == ["c0", "c2", "c4"]


def test_an_error_for_no_particular_row_resends_the_chunk(fake: FakeGoogle) -> None:
    fake.script("add", 200, {"partialFailureError": {"code": 3, "message": "x", "details": [ads_failure([
        ads_error("internalError.INTERNAL_ERROR")])]}})
    result = deliver([event("ann"), event("bob")], destination(fake), MemoryDeliveryLedger())
    assert set(result.retry) == {"msg-ann-entered-1", "msg-bob-entered-1"}
    assert not result.delivered


# ---- what never reaches Google ---------------------------------------------------------------------------


def test_a_poisoned_identifier_is_isolated_and_the_rest_delivered(fake: FakeGoogle) -> None:
    letters = MemoryDeadLetters()
    poisoned = event("bob", identifiers={"google_email_sha256": "not-a-sha256 bob@example.com"})
    upper = event("cat", identifiers={"google_email_sha256": sha("cat@example.com").upper()})
    messages = [event("ann"), poisoned, upper, event("dan")]
    result = deliver(messages, destination(fake), MemoryDeliveryLedger())

    assert result.refused == {"msg-bob-entered-1": "identifiers.google_email_sha256: is not a SHA-256 hex digest",
                              "msg-cat-entered-1": "identifiers.google_email_sha256: is not a SHA-256 hex digest"}
    assert [a.event.customer_id for a in result.delivered] == ["ann", "dan"]
    assert len(operations(fake)) == 2
    assert settle(messages, result, letters) == []
    assert [body for body, _ in letters.letters] == [poisoned[1], upper[1]]


def test_a_row_with_a_bad_hash_is_refused_by_the_destination_itself(fake: FakeGoogle) -> None:
    from cdp.pipeline.fanout import Row
    outcome = destination(fake).send("111", "entered", [Row("e1", {"google_email_sha256": "x" * 64}),
                                                        Row("e2", {"google_email_sha256": sha("a@b.co")})])
    assert outcome.refused == {"e1": "an identifier is not a SHA-256 hex digest"} and not outcome.retry
    assert [hashes_of(op) for op in operations(fake)] == [[sha("a@b.co")]]


def test_redelivered_events_send_nothing(fake: FakeGoogle) -> None:
    ledger = MemoryDeliveryLedger()
    google = destination(fake)
    messages = [event("ann"), event("bob", "exited", 3)]
    deliver(messages, google, ledger)
    sent = len(fake.requests)
    again = deliver(messages, google, ledger)
    assert len(fake.requests) == sent
    assert sorted(why for _, why in again.skipped) == ["already delivered", "already delivered"]
    assert not again.delivered and not again.retry and not again.refused


def test_a_late_entered_older_than_an_applied_exited_sends_nothing(fake: FakeGoogle) -> None:
    ledger = MemoryDeliveryLedger()
    google = destination(fake)
    deliver([event("ann", version=1)], google, ledger)
    deliver([event("ann", "exited", 3)], google, ledger)
    sent = len(fake.requests)
    late = deliver([event("ann", version=2)], google, ledger)
    assert len(fake.requests) == sent
    assert [why for _, why in late.skipped] == ["older than the change already applied"]
    assert ledger.entries("google:111", [("cart-abandoners", "ann")])[("cart-abandoners", "ann")].kind == "exited"


# ---- OAuth ---------------------------------------------------------------------------------------------


def test_the_access_token_is_cached_until_shortly_before_it_expires(fake: FakeGoogle) -> None:
    clock = Clock()
    google = destination(fake, clock=clock)
    ledger = MemoryDeliveryLedger()
    deliver([event("ann")], google, ledger)
    clock.now += 3000  # within the hour, outside the margin
    deliver([event("bob")], google, ledger)
    assert fake.steps().count("token") == 1
    clock.now += 500  # 3,500 s: less than two minutes left
    deliver([event("cat")], google, ledger)
    assert fake.steps().count("token") == 2
    tokens = {seen.headers["authorization"] for seen in fake.requests if seen.step != "token"}
    assert tokens == {"Bearer ya29.fake-1", "Bearer ya29.fake-2"}


def test_a_rejected_access_token_is_renewed_once(fake: FakeGoogle) -> None:
    google = destination(fake)
    deliver([event("ann")], google, MemoryDeliveryLedger())
    fake.revoke_tokens()
    result = deliver([event("bob")], google, MemoryDeliveryLedger())
    assert len(result.delivered) == 1
    assert fake.steps()[4:] == ["create", "token", "create", "add", "run"]
    assert fake.requests[4].status == 401


def test_a_refused_refresh_token_retries_the_batch_without_leaking_it(fake: FakeGoogle) -> None:
    fake.script("token", 400, {"error": "invalid_grant", "error_description": f"Bad {REFRESH_TOKEN}"})
    result = deliver([event("ann")], destination(fake), MemoryDeliveryLedger())
    assert result.retry == {"msg-ann-entered-1": "Google OAuth refused the refresh token: HTTP 400 (invalid_grant)"}
    assert fake.steps() == ["token"]


def test_credentials_stay_out_of_reprs(fake: FakeGoogle) -> None:
    text = repr(destination(fake))
    no_identifiers_in([text])


# ---- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("targets", "options", "secret", "message"), [
    (TARGETS, {}, SECRET, "OPTIONS: customer_id must be a Google Ads customer id"),
    (TARGETS, {"customer_id": "12-ab"}, SECRET, "OPTIONS: customer_id must be a Google Ads customer id"),
    (TARGETS, {"customer_id": "1", "login_customer_id": "x"}, SECRET, "OPTIONS: login_customer_id must be"),
    ({"vip": "my list"}, {"customer_id": "1"}, SECRET, "TARGETS: 'vip' must map to a user list id"),
    ({"vip": "customers/2/userLists/3"}, {"customer_id": "1"}, SECRET, "TARGETS: 'vip' must map"),
    ({"vip": "3", "cart": "customers/1/userLists/3"}, {"customer_id": "1"}, SECRET,
     "TARGETS: 'cart' and 'vip' map to the same user list"),
    (TARGETS, {"customer_id": "1", "token_url": "http://evil.example/token"}, SECRET, "token_url must be an https"),
    (TARGETS, {"customer_id": "1", "consent": {"ad_user_data": "GRANTED"}}, SECRET, "consent must map"),
    (TARGETS, {"customer_id": "1", "consent": {"ad_user_data": ""}}, SECRET, "consent must map"),
    (TARGETS, {"customer_id": "1", "consent": {"adUserData": "advertising"}}, SECRET, "consent must map"),
    (TARGETS, {"customer_id": "1"}, {**SECRET, "refresh_token": "", "client_secret": None},
     "must hold non-empty strings for: client_secret, refresh_token"),
])
def test_configuration_is_checked_with_clear_messages(targets: dict[str, str], options: dict[str, Any],
                                                      secret: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        GoogleCustomerMatch.from_settings(targets, options, secret, UrllibTransport())
    no_identifiers_in([str(raised.value)])


def test_configuration_accepts_dashes_and_full_user_list_names() -> None:
    built = GoogleCustomerMatch.from_settings({"vip": f"customers/{CUSTOMER}/userLists/9"},
                                              {"customer_id": "123-456-7890", "login_customer_id": "987-654-3210"},
                                              SECRET, UrllibTransport(), api_version="v25")
    assert (built.customer_id, built.login_customer_id, built.api_version) == (CUSTOMER, LOGIN, "v25")
    assert built.target("vip") == f"customers/{CUSTOMER}/userLists/9" and built.target("other") is None


# ---- the handler under moto -------------------------------------------------------------------------------


def sqs_record(template: dict[str, Any], message_id: str, body: str) -> dict[str, Any]:
    return {**template, "messageId": message_id, "receiptHandle": f"rh-{message_id}", "body": body,
            "md5OfBody": hashlib.md5(body.encode()).hexdigest()}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for name, value in {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"}.items():
        monkeypatch.setenv(name, value)
    import boto3
    from moto import mock_aws

    with mock_aws():
        clients = {name: boto3.client(name, region_name="eu-west-1") for name in ("secretsmanager", "dynamodb", "sqs")}
        clients["dynamodb"].create_table(
            TableName="cdp-deliveries", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "delivery", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "delivery", "AttributeType": "S"}])
        clients["dynamodb"].create_table(
            TableName="cdp-profiles", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "customer_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "customer_id", "AttributeType": "S"}])
        for customer in ("frank", "grace", "hal", "ivy", "joe"):  # each with a profile: consent is read at delivery
            clients["dynamodb"].put_item(TableName="cdp-profiles", Item={"customer_id": {"S": customer}})
        queue_url = clients["sqs"].create_queue(QueueName="cdp-google-dead-letters")["QueueUrl"]
        for name, value in {"LEDGER_TABLE": "cdp-deliveries", "DEAD_LETTER_QUEUE_URL": queue_url,
                            "TARGETS": json.dumps(TARGETS), "PROFILES_TABLE": "cdp-profiles",
                            "CONSENT_POLICY": json.dumps({"default": "granted",
                                                          "uses": {"google": ["advertising"]}})}.items():
            monkeypatch.setenv(name, value)
        handler = load_handler(ROOT, "google")
        handler.dependencies.cache_clear()
        yield {"handler": handler, "queue_url": queue_url, **clients}
        handler.dependencies.cache_clear()
        # handle() adds metrics that only the Lambda decorator flushes; Powertools keeps them in a store that
        # every Metrics instance shares, so they would show up in the next test that flushes metrics.
        handler.metrics.clear_metrics()


def test_the_handler_end_to_end_with_moto(fake: FakeGoogle, aws: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cdp.aws.dead_letters import SqsDeadLetters
    from cdp.aws.ledger import DynamoDeliveryLedger, ledger_key

    arn = aws["secretsmanager"].create_secret(Name="cdp/google", SecretString=json.dumps(SECRET))["ARN"]
    monkeypatch.setenv("SECRET_ARN", arn)
    monkeypatch.setenv("BASE_URL", fake.url)
    monkeypatch.setenv("OPTIONS", json.dumps({"customer_id": "123-456-7890", "login_customer_id": "987-654-3210",
                                              "token_url": f"{fake.url}/token"}))
    handler = aws["handler"]
    deps = handler.dependencies()  # the cold start, from the environment and the secret
    assert isinstance(deps.ledger, DynamoDeliveryLedger) and isinstance(deps.dead_letters, SqsDeadLetters)

    envelope = json.loads(SAMPLE.read_text())
    template = envelope["Records"][0]
    extra = [sqs_record(template, "m-hal", event("hal")[1]), sqs_record(template, "m-ivy", event("ivy")[1]),
             sqs_record(template, "m-poison", event("joe", identifiers={"google_email_sha256": "bad"})[1])]
    envelope["Records"] += extra
    fake.fail_indexes = {1: INVALID, 2: THROTTLED}  # the add job's operations: frank, hal, ivy

    response = handler.handle(envelope, None, deps)

    assert response == {"batchItemFailures": [{"itemIdentifier": "m-ivy"}]}
    messages = aws["sqs"].receive_message(QueueUrl=aws["queue_url"], MaxNumberOfMessages=10,
                                          MessageAttributeNames=["All"])["Messages"]
    letters = {json.loads(m["Body"])["detail"]["customer_id"]: m["MessageAttributes"] for m in messages}
    assert {name: attributes["reason"]["StringValue"] for name, attributes in letters.items()} == {
        "hal": f"Google Ads refused this row: {INVALID}",
        "joe": "identifiers.google_email_sha256: is not a SHA-256 hex digest"}
    assert {attributes["source"]["StringValue"] for attributes in letters.values()} == {"google"}

    adds, removes = fake.jobs.values()
    assert adds.ran and removes.ran
    assert [hashes_of(op) for op in adds.operations] == [[sha("frankexample@gmail.com"), sha("+49301234567")]]
    assert removes.operations == [{"remove": {"userIdentifiers": [{"hashedEmail": sha("grace@example.org")}]}}]
    assert all(seen.headers.get("login-customer-id") == LOGIN for seen in fake.requests if seen.step != "token")

    items = {}
    for customer in ("frank", "grace", "hal", "ivy"):
        found = aws["dynamodb"].get_item(TableName="cdp-deliveries", Key={"delivery": {
            "S": ledger_key("google:111", ("cart-abandoners", customer))}}).get("Item")
        items[customer] = found
    assert items["frank"] is not None and items["frank"]["kind"]["S"] == "entered"
    assert json.loads(items["frank"]["ids"]["S"])["google_email_sha256"] == sha("frankexample@gmail.com")
    assert items["grace"] is not None and items["grace"]["kind"]["S"] == "exited"
    assert items["hal"] is None and items["ivy"] is None

    # the same envelope again (Lambda retrying it whole): nothing new reaches Google for frank and grace
    fake.fail_indexes = {}
    sent = len(fake.jobs)
    again = handler.handle({"Records": envelope["Records"][:2]}, None, deps)
    assert again == {"batchItemFailures": []} and len(fake.jobs) == sent


def test_the_handler_cold_start_names_what_is_missing_in_the_secret(aws: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    secret = {**SECRET}
    del secret["refresh_token"]
    arn = aws["secretsmanager"].create_secret(Name="cdp/google", SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("SECRET_ARN", arn)
    monkeypatch.setenv("OPTIONS", json.dumps({"customer_id": "123-456-7890"}))
    with pytest.raises(ConfigError, match="must hold non-empty strings for: refresh_token") as raised:
        aws["handler"].dependencies()
    no_identifiers_in([str(raised.value)])
    monkeypatch.delenv("SECRET_ARN")
    aws["handler"].dependencies.cache_clear()
    with pytest.raises(ConfigError, match="SECRET_ARN is required"):
        aws["handler"].dependencies()

