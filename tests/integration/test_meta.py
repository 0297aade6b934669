"""Meta Custom Audiences (cdp.integrations.meta and functions/meta) against a local fake Graph API.

The rules that need no Graph API (normalisation, the row limit, the session id) are unit tests
(tests/unit/test_meta.py).

The fake server (http.server on 127.0.0.1, port 0, in a thread) checks every request against Meta's
documented format for the audience ``/users`` edge: ``POST`` adds and ``DELETE`` removes at
``/{version}/{audience_id}/users``; the body is form-encoded with exactly ``payload`` (JSON: ``schema``
``["EMAIL_SHA256", "PHONE_SHA256"]`` and ``data``, rows of two entries, each '' or 64 lower-case hex, at
most 10,000 rows), ``session`` (JSON: ``session_id``, ``batch_seq``, ``last_batch_flag``,
``estimated_num_total``, consistent across the requests of a split upload) and ``access_token``.
A request that breaks the format is recorded as a violation (every test fails on one) and answered
like Meta answers an invalid parameter. The server records what it accepted and can be told to answer
429 with Retry-After, HTTP 400 with a Graph error code (17 and the other rate-limit codes; 100 for a
configuration problem), or 200 with ``invalid_entry_samples`` naming some of the hashes it received.

Back-off sleeps are recorded instead of slept: ``cdp.integrations.http.send`` binds ``time.sleep`` as its default
at import, so the tests replace the ``send`` the Meta module calls with one given a recording sleep.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlencode

import boto3
import pytest
from moto import mock_aws

import cdp.integrations.http
import cdp.integrations.meta as meta
from cdp.aws.ledger import DynamoDeliveryLedger, ledger_key
from cdp.config import ConfigError
from cdp.core.identifiers import hashed_identifiers
from cdp.integrations.http import UrllibTransport
from cdp.integrations.meta import MetaAudiences
from cdp.pipeline.changes import MembershipChange
from cdp.pipeline.fanout import ENTERED, EXITED, LedgerEntry, Row, deliver, settle
from cdp_dev.handlers import load_handler
from cdp_dev.memory import MemoryDeadLetters, MemoryDeliveryLedger
from tests.lambda_context import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "EAAGm0PX4ZCpsBAtest-token"
API_VERSION = "v25.0"
CART_AUDIENCE, VIP_AUDIENCE = "23851234567890001", "23851234567890002"
CART, VIP = "cart-abandoners", "vip"
SCHEMA = ["EMAIL_SHA256", "PHONE_SHA256"]
DOCUMENTED_MAX_ROWS = 10_000
HEX64 = re.compile(r"^[0-9a-f]{64}$")
PATH = re.compile(r"^/(v\d+\.\d+)/(\d+)/users$")


def sha(text: str) -> str:
    """An independent oracle for the hashes: SHA-256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the fake Graph API ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: dict[str, Any] | None = None  # None: the usual success body
    headers: Mapping[str, str] = field(default_factory=dict)


def too_many_requests(retry_after: str | None = "3") -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Answer(429, {"error": {"message": "Too many requests", "code": 80003, "type": "OAuthException"}}, headers)


def graph_error(code: int, subcode: int | None = None, status: int = 400) -> Answer:
    error: dict[str, Any] = {"message": f"(#{code}) error", "type": "OAuthException", "code": code,
                             "fbtrace_id": "AbCdEf"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return Answer(status, {"error": error})


@dataclass(frozen=True)
class GraphRequest:
    """One well-formed request as the fake received it."""

    method: str
    version: str
    audience: str
    rows: list[list[str]]
    session: dict[str, Any]


def check_request_line(method: str, path: str, headers: Any, problems: list[str]) -> re.Match[str] | None:
    """The method, the users edge's path (matched: its version and audience id) and the form content type."""
    if method not in ("POST", "DELETE"):
        problems.append(f"method {method}: the users edge takes POST (add) or DELETE (remove)")
    matched = PATH.match(path)
    if not matched:
        problems.append(f"path {path!r}: expected /{{version}}/{{audience_id}}/users")
    if headers.get("Content-Type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        problems.append(f"Content-Type {headers.get('Content-Type')!r}: expected a form")
    return matched


def check_payload(payload: Any, problems: list[str]) -> list[Any] | None:
    """The payload's schema and its rows; None when there are no rows to check."""
    rows = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or sorted(payload) != ["data", "schema"]:
        problems.append("payload must hold exactly schema and data")
    elif payload["schema"] != SCHEMA:
        problems.append(f"schema {payload['schema']}: expected {SCHEMA}")
    return rows if isinstance(rows, list) and rows else None


def check_session(session: Any, rows: int, problems: list[str]) -> bool:
    """The upload session's four fields and their values; False when its fields are not those four."""
    if not isinstance(session, dict) or sorted(session) != ["batch_seq", "estimated_num_total", "last_batch_flag",
                                                            "session_id"]:
        return False
    sid, seq, last, total = (session["session_id"], session["batch_seq"], session["last_batch_flag"],
                             session["estimated_num_total"])
    if not (type(sid) is int and 0 < sid < 2 ** 63):
        problems.append("session_id must be a positive 64-bit integer")
    if not (type(seq) is int and seq >= 1):
        problems.append("batch_seq must be a whole number from 1")
    if type(last) is not bool:
        problems.append("last_batch_flag must be a boolean")
    if not (type(total) is int and total >= rows):
        problems.append("estimated_num_total must be a whole number covering the rows")
    return True


class FakeGraph:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.max_rows = DOCUMENTED_MAX_ROWS
        self.requests: list[GraphRequest] = []
        self.violations: list[str] = []
        self.queued: list[Answer] = []  # answered first, in order
        self.respond: Callable[[GraphRequest], Answer | None] = lambda request: None  # then this, then 200
        self.invalid: set[str] = set()  # hashes a 200 reports in invalid_entry_samples
        self.samples_as_list = False
        self._lock = threading.Lock()
        graph = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                graph._serve(self)

            def do_DELETE(self) -> None:
                graph._serve(self)

            def do_GET(self) -> None:
                graph._serve(self)

            def do_PUT(self) -> None:
                graph._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # checking one request against the documented format

    def _check(self, method: str, path: str, headers: Any, body: bytes
               ) -> tuple[list[str], GraphRequest | None]:
        problems: list[str] = []
        matched = check_request_line(method, path, headers, problems)
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as error:
            return [*problems, f"body is not form-encoded: {error}"], None
        self._check_form(form, problems)
        try:
            payload = json.loads(form.get("payload", [""])[0])
            session = json.loads(form.get("session", [""])[0])
        except ValueError:
            return [*problems, "payload or session is not JSON"], None
        rows = check_payload(payload, problems)
        if rows is None:
            return [*problems, "payload.data must be a non-empty list"], None
        self._check_rows(rows, problems)
        if not check_session(session, len(rows), problems):
            return [*problems, f"session {session!r}: unexpected fields"], None
        if problems or not matched:
            return problems, None
        return [], GraphRequest(method, matched.group(1), matched.group(2), rows, session)

    def _check_form(self, form: dict[str, list[str]], problems: list[str]) -> None:
        """The form fields: payload, session and the access token, once each."""
        if sorted(form) != ["access_token", "payload", "session"]:
            problems.append(f"form fields {sorted(form)}: expected access_token, payload, session")
        if any(len(values) != 1 for values in form.values()):
            problems.append("a form field is repeated")
        if form.get("access_token", [""])[0] != self.token:
            problems.append("access_token missing or not the secret's")

    def _check_rows(self, rows: list[Any], problems: list[str]) -> None:
        """At most the documented rows, each one entry per schema key, '' or a SHA-256 hex, not all empty."""
        if len(rows) > self.max_rows:
            problems.append(f"{len(rows)} rows in one request: at most {self.max_rows}")
        for row in rows:
            if not (isinstance(row, list) and len(row) == len(SCHEMA)
                    and all(isinstance(v, str) and (v == "" or HEX64.match(v)) for v in row) and any(row)):
                problems.append("a data row is not two entries, each '' or 64 lower-case hex, one not empty")
                break

    def session_problems(self) -> list[str]:
        """Across all requests of one session: one audience and method, one total, batches 1..n, last flag on n."""
        problems = []
        sessions: dict[int, list[GraphRequest]] = {}
        for request in self.requests:
            sessions.setdefault(request.session["session_id"], []).append(request)
        for sid, requests in sessions.items():
            if len({(r.method, r.audience, r.session["estimated_num_total"]) for r in requests}) != 1:
                problems.append(f"session {sid}: method, audience or estimated_num_total changed")
            batches = {r.session["batch_seq"]: r for r in requests}
            count = max(batches)
            if sorted(batches) != list(range(1, count + 1)):
                problems.append(f"session {sid}: batch_seq {sorted(batches)} has gaps")
            if [seq for seq, r in sorted(batches.items()) if r.session["last_batch_flag"]] != [count]:
                problems.append(f"session {sid}: last_batch_flag must be set on batch {count} alone")
            if sum(len(r.rows) for r in batches.values()) != requests[0].session["estimated_num_total"]:
                problems.append(f"session {sid}: the batches do not add up to estimated_num_total")
        return problems

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        problems, request = self._check(handler.command, handler.path, handler.headers, body)
        with self._lock:
            if request is None:
                self.violations += problems or ["unreadable request"]
                answer = graph_error(100)
            else:
                self.requests.append(request)
                answer = (self.queued.pop(0) if self.queued else None) or self.respond(request) or Answer()
        payload = answer.body
        if payload is None and request is not None:
            invalid = sorted(self.invalid & {value for row in request.rows for value in row})
            samples: Any = invalid if self.samples_as_list else {value: "Invalid entry" for value in invalid}
            payload = {"audience_id": request.audience, "session_id": str(request.session["session_id"]),
                       "num_received": len(request.rows), "num_invalid_entries": len(invalid),
                       "invalid_entry_samples": samples}
        data = json.dumps(payload or {}).encode()
        handler.send_response(answer.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    # reading what was received

    def calls(self, audience: str | None = None) -> list[tuple[str, str, list[list[str]]]]:
        return [(r.method, r.audience, r.rows) for r in self.requests if audience in (None, r.audience)]

    def hashes_received(self) -> set[str]:
        return {value for r in self.requests for row in r.rows for value in row if value}


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    server = FakeGraph()
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.violations == []
    assert server.session_problems() == []


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(meta, "send", functools.partial(cdp.integrations.http.send, sleep=waited.append))
    return waited


@pytest.fixture
def audiences(graph: FakeGraph, sleeps: list[float]) -> MetaAudiences:
    return MetaAudiences({CART: CART_AUDIENCE, VIP: VIP_AUDIENCE}, TOKEN, UrllibTransport(timeout=5),
                         base_url=graph.base_url)


def _form(payload: Any = None, session: Any = None, token: str | None = TOKEN) -> bytes:
    fields = {"payload": json.dumps(payload if payload is not None else {"schema": SCHEMA, "data": [[sha("a"), ""]]}),
              "session": json.dumps(session if session is not None else {
                  "session_id": 7, "batch_seq": 1, "last_batch_flag": True, "estimated_num_total": 1})}
    if token is not None:
        fields["access_token"] = token
    return urlencode(fields).encode()


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(("method", "path", "content_type", "body", "problem"), [
    ("GET", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM, _form(), "method GET"),
    ("POST", f"/{CART_AUDIENCE}/users", FORM, _form(), "path"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", "application/json", _form(), "Content-Type"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM, _form(token=None), "form fields"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM, _form(token="other"), "access_token"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM,
     _form({"schema": ["EMAIL"], "data": [[sha("a")]]}), "schema"),
    ("DELETE", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM,
     _form({"schema": SCHEMA, "data": [[sha("a").upper(), ""]]}), "a data row"),
    ("DELETE", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM,
     _form({"schema": SCHEMA, "data": [[sha("a")]]}), "a data row"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM, _form({"schema": SCHEMA, "data": [["", ""]]}),
     "a data row"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM,
     _form({"schema": SCHEMA, "data": [[sha("a"), ""]] * 3}), "3 rows in one request"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM,
     _form(session={"session_id": 7, "batch_seq": 0, "last_batch_flag": True, "estimated_num_total": 1}),
     "batch_seq"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM,
     _form(session={"session_id": 7, "batch_seq": 1, "last_batch_flag": "true", "estimated_num_total": 1}),
     "last_batch_flag"),
    ("POST", f"/{API_VERSION}/{CART_AUDIENCE}/users", FORM, _form(session={"id": 7}), "session"),
], ids=lambda value: value if isinstance(value, str) and " " in value else None)
def test_the_fake_graph_api_flags_requests_meta_would_refuse(method: str, path: str, content_type: str,
                                                             body: bytes, problem: str) -> None:
    server = FakeGraph()
    server.max_rows = 2
    server.start()
    try:
        response = UrllibTransport(timeout=5).request(method, server.base_url + path, {"Content-Type": content_type},
                                                      body)
    finally:
        server.stop()
    assert response.status == 400 and response.json()["error"]["code"] == 100
    assert any(v.startswith(problem) for v in server.violations), server.violations


def test_the_fake_graph_api_flags_an_inconsistent_session() -> None:
    server = FakeGraph()
    server.start()
    try:
        for seq, last in ((1, False), (3, True)):
            session = {"session_id": 9, "batch_seq": seq, "last_batch_flag": last, "estimated_num_total": 2}
            UrllibTransport(timeout=5).request("POST", f"{server.base_url}/{API_VERSION}/{CART_AUDIENCE}/users",
                                               {"Content-Type": FORM}, _form(session=session))
    finally:
        server.stop()
    assert server.violations == []
    assert server.session_problems() == ["session 9: batch_seq [1, 3] has gaps"]

# ---- bus events ------------------------------------------------------------------------------


def ids_of(email: str | None = None, phone: str | None = None) -> dict[str, str]:
    traits = {name: value for name, value in (("email", email), ("phone", phone)) if value is not None}
    return hashed_identifiers(traits)


def event_id(customer: str, segment: str, kind: str, version: int) -> str:
    return MembershipChange(customer, segment, kind, 0, version, "", "").event_id


def message(kind: str, customer: str, version: int, identifiers: Mapping[str, str] | None = None,
            segment: str = CART) -> tuple[str, str]:
    detail = {"schema_version": "1", "event_id": event_id(customer, segment, kind, version),
              "customer_id": customer, "segment": {"id": segment, "name": segment}, "change": kind,
              "at": "2026-10-09T09:00:00Z", "membership_version": version,
              "clause": {"path": "condition.absence", "reason": "test"},
              "primary_segment": segment if kind == ENTERED else None,
              "segments": [segment] if kind == ENTERED else [],
              "identifiers": dict(identifiers if identifiers is not None else ids_of(f"{customer}@example.com"))}
    body: dict[str, Any] = {"version": "0", "id": f"bus-{customer}-{kind}-{version}",
                            "detail-type": "Segment Entered" if kind == ENTERED else "Segment Exited",
                            "source": "cdp.segments", "account": "123456789012", "time": "2026-10-09T09:00:00Z",
                            "region": "eu-west-1", "resources": [], "detail": detail}
    return (f"m-{customer}-{kind}-{version}", json.dumps(body))


def ledger_customers(ledger: MemoryDeliveryLedger) -> set[str]:
    return {customer for _, _, customer in ledger.entries_by_key}


# ---- adds and removes --------------------------------------------------------------------------


def test_entered_customers_are_added_with_a_post_of_their_hashes(graph: FakeGraph, audiences: MetaAudiences,
                                                                 sleeps: list[float]) -> None:
    ledger = MemoryDeliveryLedger()
    alice = ids_of(" Alice@Example.COM ", "+44 20 7946 0958")
    bob = ids_of("bob@example.com")
    carol = ids_of(phone="0049 30 1234567")
    messages = [message(ENTERED, "alice", 2, alice), message(ENTERED, "bob", 3, bob),
                message(ENTERED, "carol", 1, carol)]

    result = deliver(messages, audiences, ledger)

    assert (result.retry, result.refused) == ({}, {})
    assert graph.calls() == [("POST", CART_AUDIENCE, [
        [sha("alice@example.com"), sha("442079460958")],
        [sha("bob@example.com"), ""],
        ["", sha("49301234567")],
    ])]
    assert graph.requests[0].version == API_VERSION
    assert graph.requests[0].session["last_batch_flag"] is True
    assert graph.requests[0].session["batch_seq"] == 1 and graph.requests[0].session["estimated_num_total"] == 3
    assert ledger.entries_by_key[(f"meta:{CART_AUDIENCE}", CART, "alice")] == LedgerEntry(
        2, ENTERED, event_id("alice", CART, ENTERED, 2), alice)
    assert ledger_customers(ledger) == {"alice", "bob", "carol"}
    assert sleeps == []


def test_exited_customers_are_removed_with_the_identifiers_stored_at_add(graph: FakeGraph,
                                                                         audiences: MetaAudiences) -> None:
    ledger = MemoryDeliveryLedger()
    added = ids_of("alice@old.example", "+44 20 7946 0958")
    deliver([message(ENTERED, "alice", 2, added), message(ENTERED, "bob", 2)], audiences, ledger)

    changed = ids_of("alice@new.example")  # the email changed while she was a member
    result = deliver([message(EXITED, "alice", 5, changed), message(EXITED, "bob", 4)], audiences, ledger)

    assert (result.retry, result.refused) == ({}, {})
    assert graph.calls()[1] == ("DELETE", CART_AUDIENCE, [
        [sha("alice@old.example"), sha("442079460958")], [sha("bob@example.com"), ""]])
    assert sha("alice@new.example") not in graph.hashes_received()
    assert ledger.entries_by_key[(f"meta:{CART_AUDIENCE}", CART, "alice")] == LedgerEntry(
        5, EXITED, event_id("alice", CART, EXITED, 5), {})


def test_an_exit_without_a_recorded_add_removes_its_own_identifiers(graph: FakeGraph,
                                                                    audiences: MetaAudiences) -> None:
    deliver([message(EXITED, "alice", 5)], audiences, MemoryDeliveryLedger())
    assert graph.calls() == [("DELETE", CART_AUDIENCE, [[sha("alice@example.com"), ""]])]


def test_each_segment_goes_to_its_own_audience_and_others_nowhere(graph: FakeGraph,
                                                                  audiences: MetaAudiences) -> None:
    result = deliver([message(ENTERED, "alice", 2), message(ENTERED, "bob", 2, segment=VIP),
                      message(ENTERED, "carol", 2, segment="browsers")], audiences, MemoryDeliveryLedger())
    assert sorted((method, audience) for method, audience, _ in graph.calls()) == [
        ("POST", CART_AUDIENCE), ("POST", VIP_AUDIENCE)]
    assert [why for _, why in result.skipped] == ["segment not configured for this destination"]


def test_a_redelivered_batch_sends_nothing(graph: FakeGraph, audiences: MetaAudiences) -> None:
    ledger = MemoryDeliveryLedger()
    messages = [message(ENTERED, "alice", 2), message(EXITED, "bob", 3)]
    deliver(messages, audiences, ledger)
    again = deliver(messages, audiences, ledger)
    assert len(graph.requests) == 2
    assert [why for _, why in again.skipped] == ["already delivered", "already delivered"]


# ---- batching at Meta's 10,000-row limit ---------------------------------------------------------


def test_ten_thousand_and_one_rows_are_two_requests_of_one_session(graph: FakeGraph,
                                                                   audiences: MetaAudiences) -> None:
    rows = [Row(f"e{n:05d}", {"email_sha256": sha(f"c{n}@example.com")}) for n in range(DOCUMENTED_MAX_ROWS + 1)]

    outcome = audiences.send(CART_AUDIENCE, ENTERED, rows)

    assert (outcome.retry, outcome.refused) == ({}, {})
    assert [len(r.rows) for r in graph.requests] == [DOCUMENTED_MAX_ROWS, 1]
    assert [(r.session["batch_seq"], r.session["last_batch_flag"]) for r in graph.requests] == [(1, False), (2, True)]
    assert len({r.session["session_id"] for r in graph.requests}) == 1
    assert graph.requests[1].rows == [[sha(f"c{DOCUMENTED_MAX_ROWS}@example.com"), ""]]


def test_a_large_change_is_split_into_chunks_of_one_session(graph: FakeGraph, audiences: MetaAudiences,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta, "MAX_ROWS", 3)
    graph.max_rows = 3
    ledger = MemoryDeliveryLedger()
    names = [f"c{n}" for n in range(8)]

    result = deliver([message(ENTERED, name, 2) for name in names], audiences, ledger)

    assert (result.retry, result.refused) == ({}, {})
    assert [len(r.rows) for r in graph.requests] == [3, 3, 2]
    sessions = [r.session for r in graph.requests]
    assert len({s["session_id"] for s in sessions}) == 1
    assert [(s["batch_seq"], s["last_batch_flag"], s["estimated_num_total"]) for s in sessions] == [
        (1, False, 8), (2, False, 8), (3, True, 8)]
    assert [row[0] for r in graph.requests for row in r.rows] == [sha(f"{name}@example.com") for name in names]
    assert ledger_customers(ledger) == set(names)


# ---- rate limiting ---------------------------------------------------------------------------------


def test_a_429_is_resent_after_its_retry_after(graph: FakeGraph, audiences: MetaAudiences,
                                               sleeps: list[float]) -> None:
    graph.queued = [too_many_requests("7"), too_many_requests("2")]
    ledger = MemoryDeliveryLedger()

    result = deliver([message(ENTERED, "alice", 2), message(ENTERED, "bob", 2)], audiences, ledger)

    assert (result.retry, result.refused) == ({}, {})
    assert sleeps == [7.0, 2.0]
    assert len(graph.requests) == 3
    assert len({json.dumps(r.session, sort_keys=True) for r in graph.requests}) == 1  # the same batch resent
    assert ledger_customers(ledger) == {"alice", "bob"}


@pytest.mark.parametrize("code", sorted(meta.THROTTLE_CODES))
def test_a_graph_rate_limit_error_is_resent_with_back_off(graph: FakeGraph, audiences: MetaAudiences,
                                                          sleeps: list[float], code: int) -> None:
    graph.queued = [graph_error(code, 2446079), graph_error(code), graph_error(code)]
    ledger = MemoryDeliveryLedger()

    result = deliver([message(ENTERED, "alice", 2)], audiences, ledger)

    assert (result.retry, result.refused) == ({}, {})
    assert sleeps == [0.5, 1.0, 2.0]  # exponential, as no Retry-After came
    assert len(graph.requests) == 4
    assert ledger_customers(ledger) == {"alice"}


def test_a_retry_after_is_capped(graph: FakeGraph, audiences: MetaAudiences, sleeps: list[float]) -> None:
    graph.queued = [too_many_requests("3600")]
    deliver([message(ENTERED, "alice", 2)], audiences, MemoryDeliveryLedger())
    assert sleeps == [cdp.integrations.http.MAX_WAIT_SECONDS]


@pytest.mark.parametrize("answer", [too_many_requests("1"), graph_error(17, 2446079), graph_error(80003)],
                         ids=["429", "code-17", "code-80003"])
def test_still_throttled_after_all_attempts_retries_the_rows(graph: FakeGraph, audiences: MetaAudiences,
                                                             sleeps: list[float], answer: Answer) -> None:
    graph.respond = lambda request: answer
    ledger, dead = MemoryDeliveryLedger(), MemoryDeadLetters()
    messages = [message(ENTERED, "alice", 2), message(ENTERED, "bob", 2)]

    result = deliver(messages, audiences, ledger)
    retry = settle(messages, result, dead)

    assert len(graph.requests) == 5
    assert len(sleeps) == 4
    reason = f"Meta still answered HTTP {answer.status} after 5 attempts"
    assert result.retry == {messages[0][0]: reason, messages[1][0]: reason}
    assert result.refused == {} and dead.letters == []
    assert retry == [messages[0][0], messages[1][0]]
    assert ledger.entries_by_key == {}


def test_a_throttled_chunk_is_retried_and_the_other_chunks_recorded(graph: FakeGraph, audiences: MetaAudiences,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta, "MAX_ROWS", 2)
    graph.max_rows = 2
    graph.respond = lambda request: graph_error(17) if request.session["batch_seq"] == 2 else None
    ledger, dead = MemoryDeliveryLedger(), MemoryDeadLetters()
    names = ["a", "b", "c", "d", "e"]
    messages = [message(ENTERED, name, 2) for name in names]

    retry = settle(messages, deliver(messages, audiences, ledger), dead)

    assert retry == [messages[2][0], messages[3][0]]  # the second chunk: c and d
    assert ledger_customers(ledger) == {"a", "b", "e"}
    assert dead.letters == []
    assert sorted({r.session["batch_seq"] for r in graph.requests}) == [1, 2, 3]


def test_a_configuration_error_is_retried_not_refused_and_not_resent_at_once(
        graph: FakeGraph, audiences: MetaAudiences, sleeps: list[float]) -> None:
    graph.respond = lambda request: graph_error(100, 1713230)
    ledger, dead = MemoryDeliveryLedger(), MemoryDeadLetters()
    messages = [message(ENTERED, "alice", 2)]

    result = deliver(messages, audiences, ledger)

    assert len(graph.requests) == 1 and sleeps == []
    assert result.retry == {messages[0][0]: "Meta refused the request: HTTP 400, code 100/1713230"}
    assert result.refused == {}
    assert settle(messages, result, dead) == [messages[0][0]] and dead.letters == []
    assert ledger.entries_by_key == {}


def test_a_network_failure_is_retried(sleeps: list[float]) -> None:
    closed = FakeGraph()  # bound, never started or served: the connection is refused or times out
    url = closed.base_url
    closed.server.server_close()
    destination = MetaAudiences({CART: CART_AUDIENCE}, TOKEN, UrllibTransport(timeout=1), base_url=url)
    messages = [message(ENTERED, "alice", 2)]

    result = deliver(messages, destination, MemoryDeliveryLedger())

    assert result.retry == {messages[0][0]: "Meta still answered no connection after 5 attempts"}
    assert len(sleeps) == 4


# ---- per-row outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_list", [False, True], ids=["samples-as-map", "samples-as-list"])
def test_rows_meta_reports_invalid_are_refused_alone(graph: FakeGraph, audiences: MetaAudiences,
                                                     as_list: bool) -> None:
    graph.invalid = {sha("erin@example.com")}
    graph.samples_as_list = as_list
    ledger, dead = MemoryDeliveryLedger(), MemoryDeadLetters()
    messages = [message(ENTERED, "alice", 2), message(ENTERED, "erin", 2), message(ENTERED, "bob", 2)]

    result = deliver(messages, audiences, ledger)
    retry = settle(messages, result, dead)

    assert result.refused == {messages[1][0]: "Meta reported this row's identifiers as invalid"}
    assert result.retry == {} and retry == []
    assert ledger_customers(ledger) == {"alice", "bob"}
    assert dead.letters == [(messages[1][1], "Meta reported this row's identifiers as invalid")]


def test_one_poisoned_identifier_is_isolated(graph: FakeGraph, audiences: MetaAudiences) -> None:
    ledger, dead = MemoryDeliveryLedger(), MemoryDeadLetters()
    poisoned = {**ids_of("dave@example.com"), "phone_sha256": sha("4930123456").upper()}
    messages = [message(ENTERED, "alice", 2), message(ENTERED, "dave", 2, poisoned), message(ENTERED, "bob", 2)]

    result = deliver(messages, audiences, ledger)
    settle(messages, result, dead)

    assert result.refused == {messages[1][0]: "identifiers.phone_sha256: is not a SHA-256 hex digest"}
    assert graph.calls() == [("POST", CART_AUDIENCE, [[sha("alice@example.com"), ""], [sha("bob@example.com"), ""]])]
    assert sha("dave@example.com") not in graph.hashes_received()
    assert ledger_customers(ledger) == {"alice", "bob"}
    assert [reason for _, reason in dead.letters] == ["identifiers.phone_sha256: is not a SHA-256 hex digest"]


# ---- the function end to end, under moto -------------------------------------------------------


def meta_handler(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """functions/meta/handler.py, imported (once) without the event logging a developer may have switched on."""
    monkeypatch.delenv("POWERTOOLS_LOGGER_LOG_EVENT", raising=False)
    return load_handler(ROOT, "meta")


def test_the_function_delivers_a_batch_end_to_end(graph: FakeGraph, sleeps: list[float],
                                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    handler = meta_handler(monkeypatch)
    envelope = json.loads((ROOT / "events" / "sqs" / "meta-batch.json").read_text())
    records = envelope["Records"]
    message_ids = [record["messageId"] for record in records]
    customers = [json.loads(record["body"])["detail"]["customer_id"] for record in records]
    assert customers == ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "alice", "heidi"]
    assert records[7]["body"] == records[0]["body"]  # the same bus event delivered twice

    for name, value in (("AWS_DEFAULT_REGION", "eu-west-1"), ("AWS_REGION", "eu-west-1"),
                        ("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)
    graph.invalid = {sha("erin@example.com")}
    graph.respond = lambda request: too_many_requests("1") if request.audience == VIP_AUDIENCE else None
    stream = io.StringIO()
    logger = handler.logger
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    caplog.set_level(logging.DEBUG, logger=logger.name)

    with mock_aws():
        secret_arn = boto3.client("secretsmanager").create_secret(
            Name="cdp/meta", SecretString=json.dumps({"access_token": TOKEN}))["ARN"]
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(TableName="cdp-delivery-ledger", BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "delivery", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "delivery", "KeyType": "HASH"}])
        sqs = boto3.client("sqs")
        dlq_url = sqs.create_queue(QueueName="cdp-meta-dead-letters")["QueueUrl"]
        namespace = f"meta:{CART_AUDIENCE}"
        # carol was added with her old email; she has changed it since (her exit carries the new one).
        carol_added = ids_of("carol@example.com")
        DynamoDeliveryLedger(dynamodb, "cdp-delivery-ledger").record(
            namespace, (CART, "carol"), LedgerEntry(5, ENTERED, event_id("carol", CART, ENTERED, 5), carol_added))
        # Every customer has a profile that permits Meta (consent is read per customer at delivery).
        dynamodb.create_table(TableName="cdp-profiles", BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "customer_id", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "customer_id", "KeyType": "HASH"}])
        for customer in set(customers):
            dynamodb.put_item(TableName="cdp-profiles", Item={"customer_id": {"S": customer}})
        for name, value in (("TARGETS", json.dumps({CART: CART_AUDIENCE, VIP: VIP_AUDIENCE})),
                            ("LEDGER_TABLE", "cdp-delivery-ledger"), ("DEAD_LETTER_QUEUE_URL", dlq_url),
                            ("SECRET_ARN", secret_arn), ("BASE_URL", graph.base_url + "/"),
                            ("API_VERSION", API_VERSION), ("PROFILES_TABLE", "cdp-profiles"),
                            ("CONSENT_POLICY", json.dumps({"uses": {"meta": ["advertising"]}}))):
            monkeypatch.setenv(name, value)
        handler.dependencies.cache_clear()
        try:
            deps = handler.dependencies()
            assert handler.dependencies() is deps  # built once, at cold start
            assert (deps.destination.access_token, deps.destination.base_url) == (TOKEN, graph.base_url)

            response = handler.handler(envelope, LambdaContext("cdp-meta"))

            items = dynamodb.scan(TableName="cdp-delivery-ledger", ConsistentRead=True)["Items"]
            letters = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                          WaitTimeSeconds=0)["Messages"]
        finally:
            handler.dependencies.cache_clear()

    # frank's VIP audience stayed throttled: only his message is retried.
    assert response == {"batchItemFailures": [{"itemIdentifier": message_ids[5]}]}
    assert sleeps == [1.0] * 4  # the Retry-After of each 429

    # Meta received: one add of alice (her redelivery collapsed), bob and erin; carol removed by her old email.
    assert graph.calls(CART_AUDIENCE) == [
        ("POST", CART_AUDIENCE, [[sha("alice@example.com"), sha("442079460958")], [sha("bob@example.com"), ""],
                                 [sha("erin@example.com"), sha("49301234567")]]),
        ("DELETE", CART_AUDIENCE, [[sha("carol@example.com"), ""]]),
    ]
    assert sha("carol.new@example.com") not in graph.hashes_received()
    assert sha("grace@example.com") not in graph.hashes_received()
    assert [r.method for r in graph.requests if r.audience == VIP_AUDIENCE] == ["POST"] * 5

    ledger = {item["delivery"]["S"]: item for item in items}
    assert set(ledger) == {ledger_key(namespace, (CART, name)) for name in ("alice", "bob", "carol")}
    alice = ledger[ledger_key(namespace, (CART, "alice"))]
    assert (alice["v"]["N"], alice["kind"]["S"], alice["event_id"]["S"]) == (
        "2", ENTERED, event_id("alice", CART, ENTERED, 2))
    assert json.loads(alice["ids"]["S"]) == json.loads(records[0]["body"])["detail"]["identifiers"]
    carol = ledger[ledger_key(namespace, (CART, "carol"))]
    assert (carol["v"]["N"], carol["kind"]["S"], "ids" in carol, "expires_at" in carol) == ("7", EXITED, False, True)

    dead = {letter["Body"]: letter["MessageAttributes"] for letter in letters}
    assert dead == {
        records[3]["body"]: {"reason": {"DataType": "String",
                                        "StringValue": "identifiers.email_sha256: is not a SHA-256 hex digest"},
                             "source": {"DataType": "String", "StringValue": "meta"}},
        records[4]["body"]: {"reason": {"DataType": "String",
                                        "StringValue": "Meta reported this row's identifiers as invalid"},
                             "source": {"DataType": "String", "StringValue": "meta"}},
        records[8]["body"]: {"reason": {"DataType": "String", "StringValue":
                                        "detail-type: must be one of ['Segment Consent Changed', 'Segment Entered', "
                                        "'Segment Exited']"},
                             "source": {"DataType": "String", "StringValue": "meta"}},
    }

    # The logs say why deliveries were not made, and carry no identifier, hashed or raw.
    captured = capsys.readouterr()
    own = "\n".join(json.dumps(vars(record), default=str) for record in caplog.records
                    if record.name.startswith("cdp"))  # the function's records with their extra fields
    logs = "\n".join((stream.getvalue(), captured.out, captured.err, own))
    assert "deliveries not made" in stream.getvalue()
    assert '"Refused"' in captured.out  # the metrics went out through the same capture
    assert "Meta reported this row's identifiers as invalid" in stream.getvalue()
    hashes = {value for record in records for value in json.loads(record["body"])["detail"]["identifiers"].values()}
    assert not any(value.lower() in logs.lower() for value in hashes)
    assert not re.search(r"[0-9a-fA-F]{64}", logs)
    assert "@" not in logs and "example.com" not in logs


def test_the_function_refuses_to_start_without_an_access_token(graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    handler = meta_handler(monkeypatch)
    for name, value in (("AWS_DEFAULT_REGION", "eu-west-1"), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="cdp/meta", SecretString='{"token": "x"}')["ARN"]
        for name, value in (("TARGETS", json.dumps({CART: CART_AUDIENCE})), ("LEDGER_TABLE", "t"),
                            ("DEAD_LETTER_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/q"),
                            ("SECRET_ARN", arn), ("BASE_URL", graph.base_url)):
            monkeypatch.setenv(name, value)
        handler.dependencies.cache_clear()
        try:
            with pytest.raises(ConfigError, match="access_token"):
                handler.dependencies()
        finally:
            handler.dependencies.cache_clear()

