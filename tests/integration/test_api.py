"""The HTTP API Lambda against moto, driven by the API Gateway REST envelopes in events/api.

Profiles are seeded through the real ingest handler (Kinesis envelope -> Engine.apply -> DynamoDB) and the
members index through the real changes handler (table stream -> members index + EventBridge), so every
response here is computed from state the pipeline itself wrote. Each call goes through
``app.resolve(envelope)`` and is recorded; when a test ends, every body it was answered with is checked against
the OpenAPI document the API generates (the ``api`` fixture). The OpenAPI tests at the end make their own tour of
every documented operation, so each of them passes alone and in any order.

DynamoDB requests per call, measured with the botocore ``before-call`` counter and asserted below
(16 member shards):

=====================================  ==========================================================
Route                                  DynamoDB requests
=====================================  ==========================================================
GET /customers/{customerId}            1 GetItem (200 and 404 alike)
GET /customers/{customerId}/segments   1 GetItem
GET /me                                1 GetItem; 0 without claims (403)
GET /segments                          0 (the catalogue ships with the function)
GET /segments/{segmentId}              1 BatchGetItem (the 16 shard size items)
GET /segments/{segmentId}/members      1 Query per shard visited, at most shards + 1 = 17 a page:
                                       45 members, limit=10: 6, 3, 4, 3, 4 Queries (20 in all);
                                       96 members (6 a shard), limit=5: 1 or 2 a page;
                                       limit=1000: 16 (one a shard), whatever the size.
                                       80 recent exits (tombstones) ahead of 1 member,
                                       limit=10: 16 (it was 24 before the Limit was dropped)
POST /segments/{segmentId}/members     1 BatchGetItem + N PutItem for N customers that change
                                       (N = 1, 5, 100); a lost race: 2 loads + 2 saves
any 400 (path, query or body invalid)  0; 403 on /me: 0; unknown route (404): 0
=====================================  ==========================================================

Items read per page (``ScannedCount``) are checked too: a page of 10 from a shard of 100 members should read
about 10 items. It reads 100, 90, 80 on the first three pages (each Query reads the rest of the shard, up to
1 MB), so that test fails on purpose: the read cost and latency of a page grow with the segment.
Also failing on purpose: ``GET /me`` percent-decodes the identity claim, so with ``ME_CLAIM=email`` a token whose
email is ``bob%40example.com`` reads the profile of ``bob@example.com``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from cdp.aws.dynamo import DynamoProfileStore
from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
from cdp.aws.members import DynamoMembersIndex
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.profile import Profile
from cdp.pipeline.changes import MembershipChange, members_partition
from cdp.pipeline.write import MAX_WRITE_ATTEMPTS
from cdp.ports import ConflictError
from cdp_dev.handlers import load_file, load_handler
from tests.lambda_context import LambdaContext

from .support import (
    EVENTS,
    MEMBER_SHARDS,
    MEMBERS_TABLE,
    REGION,
    ROOT,
    SEGMENTS,
    InjectedError,
    Stack,
    detail_validator,
    failures,
    identify,
    kinesis_envelope,
    track,
)

api_handler = load_handler(ROOT, "api")
generator = load_file("make_api_envelopes", EVENTS / "make_api_envelopes.py")

T = 1792497600.0  # 2026-10-20T12:00:00Z: the API's clock, and ingest's
NOW = "2026-10-20T12:00:00Z"
DAY = 86400
HOUR = 3600
SHARDS = MEMBER_SHARDS
ENVELOPES = ("get-customer", "get-customer-segments", "get-me", "get-me-unauthenticated", "list-segments",
             "get-segment", "list-members", "edit-members", "put-segment", "validate-segment", "preview-segment",
             "list-segment-versions", "get-segment-history", "get-job", "explain-customer", "delete-segment",
             "list-models", "get-model", "start-job", "get-customer-decision", "get-me-decision")
WEB = {"library": {"name": "analytics.js", "version": "5.2.0"}}
# The return model of each documented operation: its 200 body must match that component schema.
SUCCESS_MODELS = {
    ("get", "/customers/{customerId}/decisions"): "DecisionDocument",
    ("get", "/me/decisions"): "DecisionDocument",
    ("get", "/customers/{customerId}"): "CustomerProfile",
    ("get", "/customers"): "CustomerProfile",
    ("get", "/customers/{customerId}/segments"): "CustomerSegments",
    ("get", "/me"): "CustomerProfile",
    ("get", "/segments"): "SegmentList",
    ("get", "/segments/{segmentId}"): "SegmentDefinition",
    ("get", "/segments/{segmentId}/members"): "MemberPage",
    ("post", "/segments/{segmentId}/members"): "MembershipEditResult",
    # Data subject requests: exercised against this document in tests/integration/test_privacy.py
    ("delete", "/customers/{customerId}"): "DeletionAccepted",
    ("get", "/customers/{customerId}/export"): "CustomerExport",
    ("get", "/requests/{requestId}"): "RequestStatus",
    # The segment lifecycle: exercised against this document in tests/integration/test_api_segments.py
    ("put", "/segments/{segmentId}"): "SegmentSaved",
    ("delete", "/segments/{segmentId}"): "SegmentDeleted",
    ("post", "/segments:validate"): "ValidationResult",
    ("post", "/segments/{segmentId}:preview"): "PreviewResult",
    ("get", "/segments/{segmentId}/versions"): "SegmentVersions",
    ("get", "/segments/{segmentId}/history"): "SegmentHistory",
    ("get", "/jobs/{jobId}"): "JobDocument",
    ("get", "/customers/{customerId}/explain"): "SegmentExplanation",
    # Computed traits' models and starting a job: exercised against this document in test_api_models.py
    ("get", "/models"): "ModelList",
    ("get", "/models/{name}"): "ModelDocument",
    ("post", "/jobs"): "JobDocument",
}
# Decisions: exercised against this document in tests/integration/test_api_decisions.py
DECISION_ROUTES = {("get", "/customers/{customerId}/decisions"), ("get", "/me/decisions")}
MODEL_ROUTES = {("get", "/models"), ("get", "/models/{name}"), ("post", "/jobs")}
ACCEPTED_ROUTES = {("post", "/jobs")}  # besides deletions: work accepted to run later (202)
PRIVACY_ROUTES = {("delete", "/customers/{customerId}"), ("get", "/customers/{customerId}/export"),
                  ("get", "/requests/{requestId}")}
LIFECYCLE_ROUTES = {route for route, model in SUCCESS_MODELS.items()
                    if model in ("SegmentSaved", "SegmentDeleted", "ValidationResult", "PreviewResult",
                                 "SegmentVersions", "SegmentHistory", "JobDocument", "SegmentExplanation")}
DEFINITION_ROUTES = {("put", "/segments/{segmentId}"), ("delete", "/segments/{segmentId}"),
                     ("post", "/segments:validate"), ("post", "/segments/{segmentId}:preview")}


# ---- envelopes ------------------------------------------------------------------------------------


@cache
def _envelope_text(name: str) -> str:
    return (EVENTS / "api" / f"{name}.json").read_text()


def envelope(name: str, *, customer: str | None = None, segment: str | None = None,
             query: dict[str, str] | None = None, body: Any = None,
             claims: dict[str, str] | None = None) -> dict[str, Any]:
    """A committed envelope, with its ids, query, body or claims changed as API Gateway would send them:
    ``path`` percent-encoded, ``pathParameters`` decoded."""
    event: dict[str, Any] = json.loads(_envelope_text(name))
    params = dict(event["pathParameters"] or {})
    if customer is not None:
        params["customerId"] = customer
    if segment is not None:
        params["segmentId"] = segment
    if params:
        path = event["resource"]
        for key, value in params.items():
            path = path.replace("{" + key + "}", quote(value, safe=""))
        event["path"], event["pathParameters"] = path, params
        event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
    if query is not None:
        event["queryStringParameters"] = dict(query) or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    if claims is not None:
        event["requestContext"]["authorizer"] = {"claims": claims}
    return event


def raw_event(method: str, path: str, query: dict[str, list[str]] | None = None, body: str | None = None,
              base64_body: bool = False, content_type: str | None = "application/json") -> dict[str, Any]:
    """Any request at all, on the shape of a committed operator envelope (for fuzzing and odd routes)."""
    event: dict[str, Any] = json.loads(_envelope_text("list-segments"))
    event.update(httpMethod=method, path=path, resource=path, body=body, isBase64Encoded=base64_body,
                 queryStringParameters={k: v[-1] for k, v in query.items()} if query else None,
                 multiValueQueryStringParameters=query or None)
    event["requestContext"].update(httpMethod=method, resourcePath=path, path=f"/prod{path}")
    if content_type is not None:
        event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"]["Content-Type"] = [content_type]
    return event


# ---- calling the API and recording every exchange ----------------------------------------------------


@dataclass(frozen=True)
class Reply:
    method: str
    path: str
    route: str | None  # the documented path template the request's path matches, if any
    status: int
    headers: dict[str, list[str]]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def header(self, name: str) -> str | None:
        values = {k.lower(): v for k, v in self.headers.items()}.get(name.lower())
        return values[-1] if values else None


@cache
def document() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(api_handler.openapi_document())
    return parsed


@cache
def _route_patterns() -> list[tuple[re.Pattern[str], str]]:
    patterns = []
    # The template with more literal text first: /segments/{segmentId}:preview before /segments/{segmentId}.
    for template in sorted(document()["paths"], key=lambda t: -len(re.sub(r"\{[^}]+\}", "", t))):
        regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        patterns.append((re.compile(regex), template))
    return patterns


def route_of(path: str) -> str | None:
    trimmed = path.rstrip("/") or "/"
    return next((template for pattern, template in _route_patterns() if pattern.match(trimmed)), None)


class Api:
    def __init__(self, stack: Stack, log: list[Reply], deps: Any) -> None:
        self.stack, self.log, self.deps = stack, log, deps

    def use(self, **changes: Any) -> None:
        """Swap a dependency (a fake store) for the rest of the test."""
        self.deps = dataclasses.replace(self.deps, **changes)
        api_handler.configure(self.deps)

    def send(self, event: dict[str, Any]) -> Reply:
        response = api_handler.app.resolve(event, None)
        headers = {k: list(v) for k, v in (response.get("multiValueHeaders") or {}).items()}
        for key, value in (response.get("headers") or {}).items():
            headers.setdefault(key, [value])
        reply = Reply(event["httpMethod"], event["path"], route_of(event["path"]), response["statusCode"],
                      headers, response["body"])
        self.log.append(reply)
        return reply

    def call(self, name: str, **adjust: Any) -> Reply:
        return self.send(envelope(name, **adjust))

    def counted(self, name: str, **adjust: Any) -> tuple[Reply, dict[str, int]]:
        """The reply and the DynamoDB requests it took, by operation."""
        self.stack.counter.reset()
        reply = self.call(name, **adjust)
        return reply, self.stack.counter.of("dynamodb")


@pytest.fixture
def exchanges() -> list[Reply]:
    """Every (method, route, status, body) the current test produced, in order."""
    return []


@pytest.fixture
def api(stack: Stack, exchanges: list[Reply], monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The API over this test's own moto stack. When the test ends, every body it was answered with is checked
    against the schema the OpenAPI document gives for its path, method and status: in whatever order the tests
    run, and whichever run alone, each exchange is checked once, by the test that made it."""
    monkeypatch.setattr(api_handler, "_dependencies", None)  # restored after the test
    monkeypatch.setenv("IDENTITY_TABLE", IDENTITY_TABLE)
    deps = api_handler.Dependencies(stack.catalogue, stack.store(), members_index(stack), FixedClock(T), "sub",
                                    identity_map(stack))
    api_handler.configure(deps)
    yield Api(stack, exchanges, deps)
    problems = undocumented(exchanges)
    if problems:
        pytest.fail("answered with bodies the OpenAPI document does not describe:\n" + "\n".join(problems),
                    pytrace=False)


def members_index(stack: Stack) -> DynamoMembersIndex:
    return DynamoMembersIndex(stack.dynamodb, MEMBERS_TABLE, SHARDS)


IDENTITY_TABLE = "cdp-identity-map"


def identity_map(stack: Stack) -> DynamoIdentityMap:
    """The id map's table in this test's moto stack (its requests go through pynamodb's own client, which
    ``stack.counter`` does not see)."""
    stack.dynamodb.create_table(
        TableName=IDENTITY_TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}])
    stack.counter.reset()
    return DynamoIdentityMap(bind_identity_map(IDENTITY_TABLE, REGION))


def problem(reply: Reply, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.text)
    assert reply.header("Content-Type") == "application/json"
    body: dict[str, Any] = reply.json
    assert body["code"] == code and isinstance(body["message"], str) and body["message"], body
    assert body.get("field") == field, body
    return body


# ---- seeding through the pipeline ----------------------------------------------------------------


def web(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "context": WEB}


def alice_messages() -> list[dict[str, Any]]:
    messages = [
        web(identify("alice", T - 20 * DAY, "a-id", first_name="Alice", plan="gold")),
        web(track("alice", "Order Completed", T - 40 * DAY, "a-o1", order_id="o-1", revenue=120.25)),
        web(track("alice", "Order Completed", T - 10 * DAY, "a-o2", order_id="o-2", revenue=79.60)),
        web(track("alice", "Order Completed", T - 2 * DAY - 5 * HOUR, "a-o3", order_id="o-3", revenue=45)),
    ]
    messages += [web(track("alice", "Product Viewed", T - h * HOUR, f"a-v{h}", product_id=f"p-{h}"))
                 for h in range(1, 7)]
    messages += [web(track("alice", "Product Viewed", T - 5 * DAY - n, f"a-w{n}", product_id="p-1"))
                 for n in range(2)]
    messages.append(web(track("alice", "Product Added", T - 30 * 60, "a-add", product_id="p-9", quantity=2,
                              price=15.0)))
    return messages


def seed(stack: Stack, messages: list[dict[str, Any]]) -> None:
    """Kinesis -> ingest -> profiles table -> stream -> changes -> members index and bus."""
    assert failures(stack.ingest(kinesis_envelope(messages), clock=FixedClock(T))) == []
    assert failures(stack.changes(stack.stream_envelope())) == []
    stack.drain_events()


def seed_alice(stack: Stack) -> None:
    seed(stack, alice_messages())


def flush_stream(stack: Stack) -> list[dict[str, Any]]:
    """Feed the table's new stream records to the changes handler; the bus events it published."""
    assert failures(stack.changes(stack.stream_envelope())) == []
    return stack.drain_events()


# By hand, from alice_messages() at T = 2026-10-20T12:00:00Z:
#   orders 3; revenue 120.25 + 79.60 + 45.00 = 244.85; average 244.85 / 3 = 81.6166.. -> 81.62;
#   first order T-40d = 2026-09-10T12:00Z; last T-2d5h = 2026-10-18T07:00Z; recency floor(2.21 days) = 2.
#   Product Viewed: 6 in the last 24h (T-1h .. T-6h), 2 more at T-5d -> 24h: 6, 7d: 8, 30d: 8, lifetime 8.
#   Order Completed: T-10d and T-2d5h are within 30d (2); all 3 within 26w.
#   Segments (priority order): recent-buyers 80 (w 2), repeat-buyers 65 (3 orders in 26w, w 2),
#   potential-abandoners 50 (cart add, no order since, w 1), engaged-browsers 40 (> 5 views in 24h, w 1),
#   web-only-visitors 10 (w 0.5): score 6.5, primary recent-buyers.
#   Next deadline: the 06:00 view leaves the 24h window at 2026-10-21T06:00Z, leaving 5 views (not > 5).
ALICE_SEGMENTS = [
    {"id": "recent-buyers", "name": "Recent buyers", "since": NOW},
    {"id": "repeat-buyers", "name": "Repeat buyers", "since": NOW},
    {"id": "potential-abandoners", "name": "Potential abandoners", "since": NOW},
    {"id": "engaged-browsers", "name": "Engaged browsers", "since": NOW},
    {"id": "web-only-visitors", "name": "Web-only visitors", "since": NOW},
]
ALICE = {
    "customer_id": "alice",
    "canonical_id": "alice",
    "merged_ids": [],
    "traits": {"first_name": "Alice", "plan": "gold"},
    "rfm": {"orders": 3, "revenue": 244.85, "average_order_value": 81.62,
            "first_order_at": "2026-09-10T12:00:00Z", "last_order_at": "2026-10-18T07:00:00Z",
            "recency_days": 2},
    "counters": [
        {"key": "Identify", "event": "Identify", "lifetime": 1, "lifetime_sum": None,
         "first_at": "2026-09-30T12:00:00Z", "last_at": "2026-09-30T12:00:00Z", "windows": {}},
        {"key": "Order Completed", "event": "Order Completed", "lifetime": 3, "lifetime_sum": None,
         "first_at": "2026-09-10T12:00:00Z", "last_at": "2026-10-18T07:00:00Z",
         "windows": {"30d": {"count": 2, "sum": None}, "26w": {"count": 3, "sum": None}}},
        {"key": "Product Added", "event": "Product Added", "lifetime": 1, "lifetime_sum": None,
         "first_at": "2026-10-20T11:30:00Z", "last_at": "2026-10-20T11:30:00Z", "windows": {}},
        {"key": "Product Viewed", "event": "Product Viewed", "lifetime": 8, "lifetime_sum": None,
         "first_at": "2026-10-15T11:59:59Z", "last_at": "2026-10-20T11:00:00Z",
         "windows": {"24h": {"count": 6, "sum": None}, "7d": {"count": 8, "sum": None},
                     "30d": {"count": 8, "sum": None}}},
    ],
    "cart": {"items": [{"product_id": "p-9", "quantity": 2, "price": 15.0}],
             "last_added": {"product_id": "p-9", "at": "2026-10-20T11:30:00Z"}},
    # Viewed p-1 .. p-6 one to six hours ago (p-1 also five days ago: its last time counts), newest first;
    # her orders name no products.
    "recent_products": [{"product_id": f"p-{h}", "category": None, "kind": "viewed",
                         "at": f"2026-10-20T{12 - h:02d}:00:00Z"} for h in range(1, 7)],
    "channels": {"web": "2026-10-20T11:30:00Z"},
    "computed_traits": {},  # no traits job has run
    "segments": ALICE_SEGMENTS,
    "primary_segment": "recent-buyers",
    "score": 6.5,
    "next_deadline": "2026-10-21T06:00:00Z",
    "version": 1,
    "updated_at": NOW,
}


# ---- the envelopes themselves ------------------------------------------------------------------------


def test_committed_envelopes_are_the_generator_output_and_rest_proxy_shaped() -> None:
    made = generator.envelopes()
    assert sorted(made) == sorted(ENVELOPES)
    for name in ENVELOPES:
        committed = json.loads(_envelope_text(name))
        assert committed == made[name], f"events/api/{name}.json is stale: run events/make_api_envelopes.py"
        assert {"resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
                "multiValueQueryStringParameters", "pathParameters", "stageVariables", "requestContext", "body",
                "isBase64Encoded"} <= set(committed)
        context = committed["requestContext"]
        assert context["requestId"] and context["stage"] == "prod" and "sourceIp" in context["identity"]
        assert context["resourcePath"] == committed["resource"] and context["httpMethod"] == committed["httpMethod"]
        assert context["path"] == f"/prod{committed['path']}"
        assert {k: [v] for k, v in committed["headers"].items()} == committed["multiValueHeaders"]
        for key, value in (committed["pathParameters"] or {}).items():
            assert committed["resource"].replace("{" + key + "}", value) == committed["path"]
    assert len({json.loads(_envelope_text(n))["requestContext"]["requestId"] for n in ENVELOPES}) == len(ENVELOPES)
    me = json.loads(_envelope_text("get-me"))["requestContext"]
    assert me["authorizer"]["claims"]["sub"] == "alice" and me["identity"]["userArn"] is None
    assert "authorizer" not in json.loads(_envelope_text("get-me-unauthenticated"))["requestContext"]
    members = json.loads(_envelope_text("list-members"))
    assert members["queryStringParameters"] == {"limit": "10"}
    assert members["multiValueQueryStringParameters"] == {"limit": ["10"]}
    edit = json.loads(_envelope_text("edit-members"))
    assert edit["httpMethod"] == "POST" and json.loads(edit["body"]) == {"add": ["alice", "bob"], "remove": ["carol"]}


# ---- customers ------------------------------------------------------------------------------------------


def test_get_customer_returns_the_profile_from_one_read(api: Api) -> None:
    seed_alice(api.stack)

    reply, requests = api.counted("get-customer")

    assert reply.status == 200 and reply.header("Content-Type") == "application/json"
    assert reply.json == ALICE
    assert requests == {"GetItem": 1}


def test_get_customer_segments_returns_memberships_primary_and_score(api: Api) -> None:
    seed_alice(api.stack)

    reply, requests = api.counted("get-customer-segments")

    assert reply.status == 200
    assert reply.json == {"customer_id": "alice", "segments": ALICE_SEGMENTS, "primary_segment": "recent-buyers",
                          "score": 6.5}
    assert requests == {"GetItem": 1}


@pytest.mark.parametrize("name", ["get-customer", "get-customer-segments"])
def test_an_unknown_customer_is_404_not_found(api: Api, name: str) -> None:
    seed_alice(api.stack)

    reply, requests = api.counted(name, customer="nobody")

    body = problem(reply, 404, "not_found")
    assert body["message"] == "customerId: no profile has this customer id"  # the id is never repeated back
    assert "nobody" not in reply.text
    assert requests == {"GetItem": 1}


def test_a_customer_with_no_events_but_a_static_membership_has_empty_figures(api: Api) -> None:
    assert api.call("edit-members", body={"add": ["dora"]}).status == 200

    reply = api.call("get-customer", customer="dora")

    assert reply.status == 200
    assert reply.json == {
        "customer_id": "dora", "canonical_id": "dora", "merged_ids": [], "traits": {},
        "rfm": {"orders": 0, "revenue": 0.0, "average_order_value": None, "first_order_at": None,
                "last_order_at": None, "recency_days": None},
        "counters": [], "cart": {"items": [], "last_added": None}, "recent_products": [], "channels": {},
        "computed_traits": {},
        "segments": [{"id": "vip", "name": "VIP list", "since": NOW}], "primary_segment": "vip", "score": 5.0,
        "next_deadline": None, "version": 1, "updated_at": NOW}


def test_a_customer_id_that_needs_percent_encoding_is_found(api: Api) -> None:
    """API Gateway REST passes ``path`` still percent-encoded (``pathParameters`` decoded): an id with a space
    or a non-ASCII letter must still reach its profile."""
    customer = "jos\u00e9 m@example.com"
    seed(api.stack, [web(identify(customer, T - DAY, "j-1", first_name="Jos\u00e9"))])

    reply = api.call("get-customer", customer=customer)

    assert reply.status == 200, (reply.path, reply.text)
    assert reply.json["customer_id"] == customer


# ---- /me ------------------------------------------------------------------------------------------------


def test_me_returns_the_callers_own_profile(api: Api) -> None:
    seed_alice(api.stack)

    reply, requests = api.counted("get-me")

    assert reply.status == 200
    assert reply.json == ALICE == api.call("get-customer").json
    assert requests == {"GetItem": 1}


def test_me_can_never_read_another_customer(api: Api) -> None:
    seed_alice(api.stack)
    seed(api.stack, [web(identify("bob", T - DAY, "b-1", first_name="Bob"))])
    read_keys: list[str] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        read_keys.append(json.loads(params["body"])["Key"]["customer_id"]["S"])

    api.stack.dynamodb.meta.events.register("before-call.dynamodb.GetItem", capture)
    attempts: list[Callable[[dict[str, Any]], None]] = [
        lambda e: e.update(queryStringParameters={"customerId": "bob", "customer_id": "bob", "sub": "bob"},
                           multiValueQueryStringParameters={"customerId": ["bob"], "sub": ["bob"]}),
        lambda e: e.update(pathParameters={"customerId": "bob"}),
        lambda e: e.update(body=json.dumps({"customer_id": "bob", "sub": "bob"})),
        lambda e: e["headers"].update({"X-Customer-Id": "bob", "X-Amzn-Oidc-Identity": "bob"}),
        lambda e: e["requestContext"]["identity"].update(cognitoIdentityId="bob", user="bob", caller="bob"),
        lambda e: e["requestContext"]["authorizer"].update(principalId="bob", sub="bob"),
        lambda e: e["requestContext"]["authorizer"]["claims"].update({"cognito:username": "bob", "email": "bob",
                                                                      "username": "bob", "custom:id": "bob"}),
        lambda e: e.update(path="/me/"),
    ]
    for attempt in attempts:
        event = envelope("get-me")
        attempt(event)
        reply = api.send(event)
        assert reply.status == 200, reply.text
        assert reply.json["customer_id"] == "alice"
    assert read_keys == ["alice"] * len(attempts)

    # Another path under /me is no route at all, and reads nothing.
    for path in ("/me/bob", "/me/../customers/bob", "/me/customers/bob"):
        event = envelope("get-me")
        event["path"] = path
        problem(api.send(event), 404, "no_route")
    assert read_keys == ["alice"] * len(attempts)

    # Bob's own token reads Bob, and a token for someone with no profile reads nothing else.
    assert api.call("get-me", claims={"sub": "bob"}).json["customer_id"] == "bob"
    problem(api.call("get-me", claims={"sub": "carol", "cognito:username": "alice"}), 404, "not_found")
    assert read_keys[-2:] == ["bob", "carol"]


def test_me_reads_the_claim_literally_not_percent_decoded(api: Api) -> None:
    """The identity claim is a verified value, not a URL: percent-escapes in it must not name someone else.
    With ``ME_CLAIM=email`` (a claim the user can set on their own Cognito attributes), a token whose email is
    ``bob%40example.com`` must not read the profile of ``bob@example.com``."""
    seed(api.stack, [web(identify("bob@example.com", T - DAY, "b-1", first_name="Bob"))])
    api.use(me_claim="email")

    own = api.call("get-me", claims={"sub": "x", "email": "bob@example.com"})
    spoofed = api.call("get-me", claims={"sub": "y", "email": "bob%40example.com"})

    assert own.status == 200 and own.json["customer_id"] == "bob@example.com"
    assert spoofed.status == 404, spoofed.text
    problem(spoofed, 404, "not_found")
    sub = api.call("get-me", claims={"email": "b%6Fb@example.com"})
    assert sub.status == 404, sub.text


def test_me_without_an_identity_is_403_and_reads_nothing(api: Api) -> None:
    seed_alice(api.stack)
    cases: dict[str, dict[str, Any]] = {"no-authorizer": envelope("get-me-unauthenticated"),
                                        "empty-claims": envelope("get-me", claims={}),
                                        "no-sub": envelope("get-me", claims={"email": "alice@example.com"}),
                                        "empty-sub": envelope("get-me", claims={"sub": ""})}
    for name, event in cases.items():
        event["queryStringParameters"] = {"customerId": "alice"}
        event["pathParameters"] = {"customerId": "alice"}
        api.stack.counter.reset()

        reply = api.send(event)

        assert reply.status == 403, name
        problem(reply, 403, "forbidden")
        assert api.stack.counter.of("dynamodb") == {}, name


# ---- segments ----------------------------------------------------------------------------------------


def test_list_segments_returns_every_enabled_definition_without_reading_dynamodb(api: Api) -> None:
    reply, requests = api.counted("list-segments")

    assert reply.status == 200 and requests == {}
    segments = reply.json["segments"]
    catalogue = api.stack.catalogue.segments
    assert [s["id"] for s in segments] == [s.id for s in sorted(catalogue.values(), key=lambda s: s.rank())]
    assert all(s["size"] is None for s in segments)  # sizes are on GET /segments/{segmentId}
    vip = next(s for s in segments if s["id"] == "vip")
    assert vip == {"id": "vip", "name": "VIP list", "description": catalogue["vip"].description, "enabled": True,
                   "priority": 95, "group": None, "weight": 5.0, "static": True, "condition": {"manual": True},
                   "size": None}
    recent = next(s for s in segments if s["id"] == "recent-buyers")
    assert recent["static"] is False and recent["group"] == "buyer-lifecycle"
    assert recent["condition"] == {"recency": {"event": "Order Completed", "within": "7d"}}
    assert [s["id"] for s in segments if s["static"]] == ["vip"]


def test_get_segment_returns_the_definition_and_size_from_one_batch_read(api: Api) -> None:
    seed_alice(api.stack)

    vip, vip_requests = api.counted("get-segment")
    recent, recent_requests = api.counted("get-segment", segment="recent-buyers")

    assert vip.status == 200 and vip.json["size"] == 0 and vip.json["static"] is True
    assert recent.status == 200 and recent.json["size"] == 1 and recent.json["priority"] == 80
    assert vip_requests == recent_requests == {"BatchGetItem": 1}
    problem(api.call("get-segment", segment="no-such-segment"), 404, "not_found")


# ---- validation: 400 naming the field, before any read ---------------------------------------------------


INVALID_PARAMETERS: list[tuple[str, dict[str, Any], str]] = [
    ("list-members", {"query": {"limit": "0"}}, "limit"),
    ("list-members", {"query": {"limit": "abc"}}, "limit"),
    ("list-members", {"query": {"limit": "1001"}}, "limit"),
    ("list-members", {"query": {"limit": "2.5"}}, "limit"),
    ("list-members", {"query": {"cursor": "not-a-cursor"}}, "cursor"),
    ("list-members", {"query": {"cursor": "%%%"}}, "cursor"),
    ("list-members", {"query": {"cursor": base64.urlsafe_b64encode(b'[99,"x"]').decode()}}, "cursor"),
    ("list-members", {"query": {"cursor": base64.urlsafe_b64encode(b'{"shard":0}').decode()}}, "cursor"),
    ("list-members", {"query": {"cursor": base64.urlsafe_b64encode(b'["0","x"]').decode()}}, "cursor"),
    ("list-members", {"query": {"cursor": "c" * 513}}, "cursor"),
    ("list-members", {"segment": "VIP"}, "segmentId"),
    ("get-segment", {"segment": "Recent-Buyers"}, "segmentId"),
    ("get-segment", {"segment": "-vip"}, "segmentId"),
    ("get-segment", {"segment": "v" * 65}, "segmentId"),
    ("edit-members", {"segment": "VIP"}, "segmentId"),
    ("get-customer", {"customer": "c" * 257}, "customerId"),
    ("get-customer-segments", {"customer": "c" * 257}, "customerId"),
]


def test_invalid_parameters_are_400_naming_the_field_and_read_nothing(api: Api) -> None:
    seed_alice(api.stack)
    for name, adjust, field in INVALID_PARAMETERS:
        reply, requests = api.counted(name, **adjust)

        case = f"{name} {adjust}"[:80]
        assert (reply.status, reply.json.get("field")) == (400, field), (case, reply.text)
        body = problem(reply, 400, "invalid_request", field)
        assert body["message"].startswith(f"{field}: "), (case, body)
        assert requests == {}, case


INVALID_EDITS: list[tuple[str, dict[str, Any], str]] = [
    ("add-and-remove", {"add": ["alice"], "remove": ["bob", "alice"]}, "remove"),
    ("101-in-all", {"add": [f"c-{i}" for i in range(60)], "remove": [f"r-{i}" for i in range(41)]}, "add"),
    ("101-added", {"add": [f"c-{i}" for i in range(101)]}, "add"),
    ("101-removed", {"remove": [f"c-{i}" for i in range(101)]}, "remove"),
    ("empty-id", {"add": [""]}, "add"),
    ("long-id", {"remove": ["x" * 257]}, "remove"),
    ("not-a-string", {"add": [7]}, "add.0"),
    ("not-a-list", {"add": "alice"}, "add"),
    ("unknown-field", {"add": ["alice"], "extra": True}, "extra"),
]


def test_invalid_edits_are_400_naming_the_field_and_touch_nothing(api: Api) -> None:
    seed_alice(api.stack)
    for case, body, field in INVALID_EDITS:
        reply, requests = api.counted("edit-members", body=body)

        assert (reply.status, reply.json.get("field")) == (400, field), (case, reply.text)
        problem(reply, 400, "invalid_request", field)
        assert requests == {}, case
    assert "vip" not in api.stack.profile("alice").memberships
    assert api.stack.profile_item("bob") is None


def test_a_body_that_is_not_a_json_object_is_400(api: Api) -> None:
    for text in ("[]", "null", '"alice"'):
        body = problem(api.call("edit-members", body=text), 400, "invalid_request")
        assert body["message"]
    missing = envelope("edit-members")
    missing["body"] = None
    problem(api.send(missing), 400, "invalid_request")


def test_a_body_that_is_not_json_is_400_without_a_bogus_field(api: Api) -> None:
    """``field`` names what is wrong; for unparseable JSON that is the body, not a field called "0"."""
    reply = api.call("edit-members", body="add=alice&remove=bob")

    assert reply.status == 400 and reply.json["code"] == "invalid_request"
    assert reply.json["field"] in (None, "body"), reply.json


def test_a_body_of_another_media_type_is_answered_with_a_problem(api: Api) -> None:
    """Every error is a JSON Problem with a stable ``code``, whatever the request's Content-Type (media types are
    case-insensitive, so ``Application/JSON`` is JSON)."""
    answers = {}
    for content_type in ("text/plain", "application/xml", "Application/JSON"):
        event = envelope("edit-members", body={"add": ["alice"]})
        event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"]["Content-Type"] = [content_type]
        reply = api.send(event)
        answers[content_type] = (reply.status, reply.json)
    assert all(status < 500 for status, _ in answers.values()), answers
    assert all(status == 200 or isinstance(body.get("code"), str) for status, body in answers.values()), answers


def test_only_static_segments_can_be_edited(api: Api) -> None:
    seed_alice(api.stack)

    reply, requests = api.counted("edit-members", segment="recent-buyers", body={"remove": ["alice"]})

    body = problem(reply, 400, "invalid_request", "segmentId")
    assert "static" in body["message"]
    assert requests == {}
    assert "recent-buyers" in api.stack.profile("alice").memberships
    problem(api.call("edit-members", segment="no-such-list"), 404, "not_found")


def test_an_unknown_route_is_a_404_json_problem(api: Api) -> None:
    for event in (raw_event("GET", "/nope"), raw_event("GET", "/customers"), raw_event("GET", "/customers/"),
                  raw_event("DELETE", "/customers/alice"), raw_event("PUT", "/segments/vip/members", body="{}"),
                  raw_event("PATCH", "/me"), raw_event("GET", "/segments/vip/members/alice"),
                  raw_event("OPTIONS", "/segments"), raw_event("GET", "/customers/a/b")):
        api.stack.counter.reset()

        reply = api.send(event)

        assert reply.status == 404, (event["httpMethod"], event["path"], reply.text)
        body = problem(reply, 404, "no_route")
        assert event["httpMethod"] in body["message"] and "/openapi.json" in body["message"]
        assert event["path"] not in reply.text  # a path can hold a customer id: it is not repeated back
        assert api.stack.counter.of("dynamodb") == {}


# ---- failures downstream -------------------------------------------------------------------------------


class ConflictingStore:
    """Every conditional write loses: another writer always got there first."""

    def __init__(self, real: DynamoProfileStore) -> None:
        self.real = real
        self.loads = self.saves = 0

    def get(self, customer_id: str) -> Profile | None:
        return self.real.get(customer_id)

    def load(self, customer_ids: list[str]) -> dict[str, Profile]:
        self.loads += 1
        return self.real.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        self.saves += 1
        raise ConflictError("ConditionalCheckFailedException")


def test_an_edit_that_keeps_conflicting_is_409(api: Api) -> None:
    seed_alice(api.stack)
    store = ConflictingStore(api.stack.store())
    api.use(profiles=store)

    reply = api.call("edit-members", body={"add": ["alice"]})

    problem(reply, 409, "conflict")
    assert (store.loads, store.saves) == (MAX_WRITE_ATTEMPTS, MAX_WRITE_ATTEMPTS)
    assert "vip" not in api.stack.profile("alice").memberships


def test_an_edit_that_loses_one_race_reloads_and_keeps_the_other_write(api: Api) -> None:
    """Ingest writes Alice between the API's read and its write: the API re-reads and applies its edit on top."""
    seed_alice(api.stack)
    real = api.stack.store()
    calls: list[str] = []

    class RacingStore:
        def get(self, customer_id: str) -> Profile | None:
            return real.get(customer_id)

        def load(self, customer_ids: list[str]) -> dict[str, Profile]:
            calls.append("load")
            return real.load(customer_ids)

        def save(self, profile: Profile, expected_version: int) -> None:
            calls.append(f"save v{expected_version}")
            if calls.count("save v1") == 1 and expected_version == 1:
                seed(api.stack, [web(track("alice", "Product Viewed", T - 60, "a-race", product_id="p-7"))])
            real.save(profile, expected_version)

    api.use(profiles=RacingStore())

    reply = api.call("edit-members", body={"add": ["alice"]})

    assert reply.status == 200 and reply.json["added"] == ["alice"], reply.text
    assert calls == ["load", "save v1", "load", "save v2"]
    profile = api.stack.profile("alice")
    assert profile.version == 3 and "vip" in profile.memberships
    counter = profile.counter("Product Viewed")
    assert counter is not None and counter.count == 9  # the racing event survived
    assert [e["detail-type"] for e in flush_stream(api.stack)] == ["Segment Entered"]


THROTTLED = [
    ("get-customer", {}, "GetItem"),
    ("get-customer-segments", {}, "GetItem"),
    ("get-me", {}, "GetItem"),
    ("get-segment", {}, "BatchGetItem"),
    ("list-members", {}, "Query"),
    ("edit-members", {"body": {"add": ["alice"]}}, "BatchGetItem"),
    ("edit-members", {"body": {"add": ["alice"]}}, "PutItem"),
]


def test_dynamodb_throttling_is_503_with_retry_after(api: Api) -> None:
    seed_alice(api.stack)
    for name, adjust, operation in THROTTLED:
        injected = InjectedError(api.stack.dynamodb, operation, "ProvisionedThroughputExceededException")

        reply = api.call(name, **adjust)

        injected.remove()
        assert reply.status == 503, (name, operation, reply.text)
        body = problem(reply, 503, "unavailable")
        assert "ProvisionedThroughputExceededException" in body["message"]
        assert reply.header("Retry-After") == "1", (name, operation)
        assert injected.injected == 1
        assert api.call(name, **adjust).status == 200, (name, operation)
        if name == "edit-members":  # undo, so the next case adds again
            assert api.call(name, body={"remove": ["alice"]}).json["removed"] == ["alice"]


# ---- static segments: edits, the stream, sizes and members --------------------------------------------


def test_edit_members_adds_and_removes_and_the_stream_publishes_manual_changes(api: Api) -> None:
    seed_alice(api.stack)
    stack = api.stack
    validator = detail_validator()

    # The committed envelope: add alice and bob, remove carol (who has no profile).
    reply, requests = api.counted("edit-members")

    assert reply.status == 200
    assert reply.json == {"segment_id": "vip", "added": ["alice", "bob"], "removed": [], "unchanged": ["carol"]}
    assert requests == {"BatchGetItem": 1, "PutItem": 2}
    item = stack.profile_item("alice")
    assert item is not None and item["v"] == 2 and item["m"]["vip"] == int(T)
    assert item["tx"] == [["vip", "entered", int(T), "manual", "added by hand"]]
    assert stack.profile_item("carol") is None
    # The size follows the table stream: nothing yet.
    assert api.call("get-segment").json["size"] == 0

    events = flush_stream(stack)

    assert sorted((e["detail-type"], e["detail"]["customer_id"]) for e in events) == [
        ("Segment Entered", "alice"), ("Segment Entered", "bob")]
    for event in events:
        validator.validate(event["detail"])
        assert event["detail"]["segment"] == {"id": "vip", "name": "VIP list"}
        assert event["detail"]["clause"] == {"path": "manual", "reason": "added by hand"}
        assert event["detail"]["primary_segment"] == "vip"  # priority 95 outranks recent-buyers (80)
    assert api.call("get-segment").json["size"] == 2
    page = api.call("list-members", query={"limit": "10"}).json
    assert sorted(m["customer_id"] for m in page["members"]) == ["alice", "bob"] and page["next_cursor"] is None
    assert {m["since"] for m in page["members"]} == {int(T)}
    segments = api.call("get-customer-segments").json
    assert segments["primary_segment"] == "vip" and segments["score"] == 11.5
    assert segments["segments"][0] == {"id": "vip", "name": "VIP list", "since": NOW}

    # A later event for Alice keeps her on the list: only the API changes a static segment.
    seed(stack, [web(track("alice", "Product Viewed", T - 120, "a-late", product_id="p-3"))])
    assert "vip" in stack.profile("alice").memberships

    reply, requests = api.counted("edit-members", body={"remove": ["alice"]})

    assert reply.json == {"segment_id": "vip", "added": [], "removed": ["alice"], "unchanged": []}
    assert requests == {"BatchGetItem": 1, "PutItem": 1}
    item = stack.profile_item("alice")
    assert item is not None and "vip" not in item["m"]
    assert item["tx"] == [["vip", "exited", int(T), "manual", "removed by hand"]]
    events = flush_stream(stack)
    assert [(e["detail-type"], e["detail"]["customer_id"]) for e in events] == [("Segment Exited", "alice")]
    validator.validate(events[0]["detail"])
    assert events[0]["detail"]["clause"] == {"path": "manual", "reason": "removed by hand"}
    assert events[0]["detail"]["primary_segment"] == "recent-buyers"
    assert api.call("get-segment").json["size"] == 1
    assert [m["customer_id"] for m in api.call("list-members").json["members"]] == ["bob"]

    # Removing again changes nothing and writes nothing.
    reply, requests = api.counted("edit-members", body={"remove": ["alice", "bob"]})

    assert reply.json == {"segment_id": "vip", "added": [], "removed": ["bob"], "unchanged": ["alice"]}
    assert requests == {"BatchGetItem": 1, "PutItem": 1}
    assert [e["detail-type"] for e in flush_stream(stack)] == ["Segment Exited"]
    assert api.call("get-segment").json["size"] == 0
    page = api.call("list-members").json
    assert page == {"segment_id": "vip", "members": [], "next_cursor": None}


@pytest.mark.parametrize("n", [1, 5, 100])
def test_an_edit_of_n_customers_is_one_batch_read_and_n_writes(api: Api, n: int) -> None:
    customers = [f"c-{i:03d}" for i in range(n)]

    reply, requests = api.counted("edit-members", body={"add": customers})

    assert reply.status == 200 and reply.json["added"] == customers
    assert requests == {"BatchGetItem": 1, "PutItem": n}


def add_members(api: Api, customers: list[str]) -> None:
    for start in range(0, len(customers), 100):
        reply = api.call("edit-members", body={"add": customers[start:start + 100]})
        assert reply.status == 200 and len(reply.json["added"]) == len(customers[start:start + 100])
    flush_stream(api.stack)


def walk(api: Api, segment: str, limit: int) -> list[tuple[list[str], str | None, int]]:
    """Every page of a segment's members: (customer ids, next cursor, Query requests it took)."""
    pages: list[tuple[list[str], str | None, int]] = []
    cursor: str | None = None
    while True:
        query = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        reply, requests = api.counted("list-members", segment=segment, query=query)
        assert reply.status == 200, reply.text
        assert set(requests) <= {"Query"}, requests
        body = reply.json
        assert body["segment_id"] == segment and len(body["members"]) <= limit
        cursor = body["next_cursor"]
        pages.append(([m["customer_id"] for m in body["members"]], cursor, requests.get("Query", 0)))
        if cursor is None:
            return pages
        assert len(pages) < 1000


def shard_of(segment: str, customer: str) -> int:
    return int(members_partition(segment, customer, SHARDS).rsplit("#", 1)[1])


def test_members_pages_return_every_member_once_in_a_stable_order(api: Api) -> None:
    customers = [f"m-{i:02d}" for i in range(45)]
    add_members(api, customers)
    expected = sorted(customers, key=lambda c: (shard_of("vip", c), c))

    size, size_requests = api.counted("get-segment")
    pages = walk(api, "vip", 10)

    assert size.json["size"] == 45 and size_requests == {"BatchGetItem": 1}
    assert [len(ids) for ids, _, _ in pages] == [10, 10, 10, 10, 5]
    assert pages[0][0] == expected[:10]
    listed = [c for ids, _, _ in pages for c in ids]
    assert listed == expected  # every member exactly once, by shard then id
    assert all(cursor for _, cursor, _ in pages[:-1]) and pages[-1][1] is None
    assert walk(api, "vip", 10) == pages  # the same pages, cursors and costs again
    # A page visits the shards from where the previous one stopped to where it stops itself.
    stopped = 0
    for ids, cursor, queries in pages:
        last = shard_of("vip", ids[-1]) if cursor else SHARDS - 1
        assert 1 <= queries <= min(SHARDS + 1, last - stopped + 2), (queries, stopped, last)
        stopped = last
    assert sum(q for _, _, q in pages) <= SHARDS + len(pages)
    assert [q for _, _, q in pages] == [6, 3, 4, 3, 4]
    # Any page size walks the same members in the same order.
    assert [c for ids, _, _ in walk(api, "vip", 7) for c in ids] == expected
    assert [c for ids, _, _ in walk(api, "vip", 1000) for c in ids] == expected


def test_a_member_page_costs_the_same_however_large_the_segment(api: Api) -> None:
    """96 members, 6 in every shard (recorded through the members index): a page of 5 is 1 or 2 Queries, never
    more; what bounds a page's cost is the number of shards, not the number of members."""
    by_shard: dict[int, list[str]] = {shard: [] for shard in range(SHARDS)}
    number = 0
    while any(len(ids) < 6 for ids in by_shard.values()):
        customer = f"b-{number:05d}"
        number += 1
        if len(by_shard[shard_of("browsers", customer)]) < 6:
            by_shard[shard_of("browsers", customer)].append(customer)
    index = members_index(api.stack)
    for customer in (c for ids in by_shard.values() for c in ids):
        index.record(MembershipChange(customer, "browsers", "entered", int(T), 1, "condition", "seeded"))

    size, size_requests = api.counted("get-segment", segment="browsers")
    pages = walk(api, "browsers", 5)

    assert size.json["size"] == 96 and size_requests == {"BatchGetItem": 1}
    assert sorted(c for ids, _, _ in pages for c in ids) == sorted(c for ids in by_shard.values() for c in ids)
    assert pages[0][2] == 1
    assert max(q for _, _, q in pages) <= 2
    sparse = walk(api, "browsers", 1000)  # one page of everything: one Query per shard
    assert len(sparse) == 1 and sparse[0][2] == SHARDS


def test_a_member_page_reads_about_limit_items_however_large_the_segment(api: Api) -> None:
    """A page of 10 from a shard of 100 live members (no exits) reads about 10 items, not the rest of the shard:
    otherwise every page of a large segment reads up to 1 MB (~128 read units) to return 10 members, and its
    latency grows with the segment. Items read are DynamoDB's ``ScannedCount`` on each Query."""
    read: list[int] = []

    def after(parsed: dict[str, Any], **_: Any) -> None:
        read.append(int(parsed.get("ScannedCount", 0)))

    in_first_shard = [c for c in (f"h-{i:05d}" for i in range(4000)) if shard_of("browsers", c) == 0][:100]
    assert len(in_first_shard) == 100
    index = members_index(api.stack)
    for customer in in_first_shard:
        index.record(MembershipChange(customer, "browsers", "entered", int(T), 1, "condition", "seeded"))
    api.stack.dynamodb.meta.events.register("after-call.dynamodb.Query", after)

    per_page = []
    cursor: str | None = None
    for _ in range(3):
        read.clear()
        query = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        body = api.call("list-members", segment="browsers", query=query).json
        assert len(body["members"]) == 10
        cursor = body["next_cursor"]
        per_page.append(sum(read))

    assert max(per_page) <= 2 * 10, f"items read by the first three pages of 10: {per_page}"


def test_a_member_page_costs_at_most_shards_plus_one_queries_after_many_exits(api: Api) -> None:
    """Members who left stay in the index as tombstones for 7 days, and a Query's Limit counts the items it
    reads *before* the filter drops the tombstones: 80 recent exits ahead of the one remaining member must not
    multiply the Queries of a page."""
    in_first_shard = [c for c in (f"t-{i:05d}" for i in range(4000)) if shard_of("vip", c) == 0][:81]
    index = members_index(api.stack)
    for customer in in_first_shard:
        index.record(MembershipChange(customer, "vip", "entered", int(T) - 60, 1, "manual", "added by hand"))
    for customer in in_first_shard[:-1]:
        index.record(MembershipChange(customer, "vip", "exited", int(T), 2, "manual", "removed by hand"))
    assert api.call("get-segment").json["size"] == 1

    pages = walk(api, "vip", 10)

    assert [ids for ids, _, _ in pages] == [[in_first_shard[-1]]]
    assert pages[0][2] <= SHARDS + 1, f"one page of 10 took {pages[0][2]} Queries"


# ---- the Lambda entry point ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_the_lambda_handler_serves_the_envelopes(api: Api) -> None:
    seed_alice(api.stack)
    for name, status in (("get-customer", 200), ("get-me", 200), ("get-me-unauthenticated", 403),
                         ("list-segments", 200), ("get-segment", 200), ("list-members", 200)):
        response = api_handler.handler(envelope(name), LambdaContext("cdp-api"))
        assert response["statusCode"] == status, (name, response["body"])
        assert isinstance(json.loads(response["body"]), dict)


# ---- fuzzing --------------------------------------------------------------------------------------------

ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
LONG_TEXT = st.integers(200, 3000).map(lambda n: "\u00e9" * (n // 2) + "x" * (n - n // 2))
KNOWN_IDS = st.sampled_from(["alice", "bob", "nobody", "m-03", "vip", "recent-buyers", "browsers", "VIP", "-", "."])
IDS = st.one_of(KNOWN_IDS, KNOWN_IDS, KNOWN_IDS, st.from_regex(r"[a-z0-9][a-z0-9-]{0,70}", fullmatch=True), ODD_TEXT,
                LONG_TEXT)
ROUTES = [("GET", "/customers/{}"), ("GET", "/customers/{}/segments"), ("GET", "/me"), ("GET", "/segments"),
          ("GET", "/segments/{}"), ("GET", "/segments/{}/members"), ("POST", "/segments/{}/members"),
          # the segment lifecycle's (with_lifecycle gives them their stores)
          ("PUT", "/segments/{}"), ("DELETE", "/segments/{}"), ("POST", "/segments:validate"),
          ("POST", "/segments/{}:preview"), ("GET", "/segments/{}/versions"), ("GET", "/segments/{}/history"),
          ("GET", "/jobs/{}"), ("GET", "/customers/{}/explain")]
ODD_PATHS = ["/me/", "/me/{}", "/segments/{}/members/{}", "/customers/{}/{}", "/{}/{}", "/{}", "{}", "/", "",
             "/openapi.json"]


@st.composite
def path_segment(draw: st.DrawFn) -> str:
    text: str = draw(IDS)
    how = draw(st.sampled_from(["raw", "raw", "quoted", "quoted-slash", "double"]))
    if how == "quoted":
        return quote(text, safe="")
    if how == "quoted-slash":
        return quote(text, safe="/")
    if how == "double":
        return quote(quote(text, safe=""), safe="")
    return text


@st.composite
def method_and_path(draw: st.DrawFn) -> tuple[str, str]:
    """Three times in four a documented method and route (with random ids); else anything at all."""
    if draw(st.integers(0, 3)):
        method, template = draw(st.sampled_from(ROUTES))
    else:
        method = draw(st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
                                st.text(min_size=1, max_size=8)))
        template = draw(st.sampled_from([t for _, t in ROUTES] + ODD_PATHS))
    return method, template.format(*(draw(path_segment()) for _ in range(template.count("{}"))))


@st.composite
def cursors(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["text", "well-formed", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=600))
    if kind == "bytes":
        return base64.urlsafe_b64encode(draw(st.binary(max_size=300))).decode().rstrip("=")
    shard = draw(st.one_of(st.integers(-3, SHARDS + 3), st.booleans(), st.none(), st.floats(), st.text(max_size=5)))
    after = draw(st.one_of(ODD_TEXT, st.integers(), st.none()))
    raw = json.dumps([shard, after] if draw(st.booleans()) else [shard, after, after])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


QUERY_VALUES = {
    "limit": st.one_of(st.integers(-5, 1100).map(str), st.text(max_size=20)),
    "cursor": cursors(),
    "customerId": ODD_TEXT,
}
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     ODD_TEXT),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
                           max_leaves=12)
EDITS = st.fixed_dictionaries({}, optional={
    "add": st.one_of(st.lists(IDS, max_size=4), st.integers(0, 120).map(lambda n: [f"f-{i}" for i in range(n)]),
                     JSON_VALUES),
    "remove": st.one_of(st.lists(IDS, max_size=4), JSON_VALUES),
    "other": JSON_VALUES,
})


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method, path = draw(method_and_path())
    names = st.sampled_from(sorted(QUERY_VALUES))
    keys = draw(st.lists(st.one_of(names, names, st.text(max_size=8)), max_size=3, unique=True))
    query = {key: draw(st.lists(QUERY_VALUES.get(key, ODD_TEXT), min_size=1, max_size=2)) for key in keys}
    kind = draw(st.sampled_from(["none", "edit", "edit", "json", "text", "base64"]))
    body: str | None = None
    if kind == "edit":
        body = json.dumps(draw(EDITS))
    elif kind == "json":
        body = json.dumps(draw(JSON_VALUES))
    elif kind == "text":
        body = draw(st.text(max_size=200))
    elif kind == "base64":  # as API Gateway sends a body of a binary media type
        body = base64.b64encode(json.dumps(draw(st.one_of(EDITS, JSON_VALUES))).encode()).decode()
    # What JSON clients send. Other media types get a bare Powertools 415 instead of a Problem: that bug has
    # its own test (test_a_body_of_another_media_type_is_answered_with_a_problem), so it does not mask others here.
    content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8",
                                         "application/x-www-form-urlencoded", None]))
    event = raw_event(method, path, query, body, kind == "base64", content_type)
    if draw(st.booleans()):
        event["requestContext"]["authorizer"] = {"claims": {"sub": draw(st.sampled_from(["alice", "nobody"]))}}
    return event


class NoJobs:
    """Starts nothing: the fuzzed lifecycle routes record their jobs and stop there."""

    def start(self, job_id: str) -> None:
        pass


class EmptyScan:
    def page(self, segment: int, total: int, cursor: object | None, limit: int) -> Any:
        from cdp.pipeline.jobs import ScanPage

        return ScanPage([], None)

    def approximate_count(self) -> int:
        return 0


class NoHistory:
    def days(self, segment_id: str, since: str) -> list[dict[str, Any]]:
        return []


def with_lifecycle(api: Api) -> None:
    """The segment lifecycle's stores, in memory, so that fuzzed requests reach those routes' own checks."""
    from cdp.pipeline.definitions import folder_definitions, seed
    from cdp.pipeline.live_catalogue import LiveCatalogue
    from cdp_dev.memory_definitions import InMemoryDefinitionStore
    from cdp_dev.memory_jobs import MemoryJobStore

    store = InMemoryDefinitionStore()
    seed(store, folder_definitions(SEGMENTS), "seed", T - DAY)
    live = LiveCatalogue(store, lambda: api.stack.catalogue)
    api.use(catalogue=live.catalogue, engine=Engine(live.catalogue), definitions=store, catalogue_source=live,
            job_store=MemoryJobStore(), runner=NoJobs(), scan=EmptyScan(), history=NoHistory())


def test_fuzzed_requests_never_fail_with_5xx_and_always_answer_json(api: Api) -> None:
    seed_alice(api.stack)
    add_members(api, [f"m-{i:02d}" for i in range(12)])
    with_lifecycle(api)
    statuses: list[int] = []

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(event=requests())
    def check(event: dict[str, Any]) -> None:
        reply = api.send(event)
        statuses.append(reply.status)
        assert reply.status < 500, (event["httpMethod"], event["path"], reply.text)
        assert reply.header("Content-Type") == "application/json", reply.headers
        body = reply.json
        if reply.status >= 400:
            assert isinstance(body, dict) and isinstance(body.get("code"), str) and body["code"], body
            assert isinstance(body.get("message"), str), body

    check()
    assert len(statuses) >= 100
    seen = Counter(statuses)
    assert all(seen[status] >= 10 for status in (200, 400, 404)), seen


# ---- the OpenAPI document ---------------------------------------------------------------------------------
# Each test's own exchanges are checked against the document when it ends (the ``api`` fixture). The tests here
# take theirs from ``tour``: one request for every documented operation and the statuses it answers with, made in
# the test itself, so that each passes alone and in any order.


def test_openapi_document_is_valid_and_served() -> None:
    validate(document())
    operations = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert operations == set(SUCCESS_MODELS)


def test_openapi_json_route_serves_the_document(api: Api) -> None:
    reply = api.send(raw_event("GET", "/openapi.json"))
    assert reply.status == 200 and reply.json == document()


@cache
def _validator(schema_text: str) -> Draft202012Validator:
    root = {**json.loads(schema_text), "components": document()["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(schema: dict[str, Any], body: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in _validator(json.dumps(schema, sort_keys=True)).iter_errors(body)]


def undocumented(replies: list[Reply]) -> list[str]:
    """Each reply whose body is not what the document says for its path, method and status (or whose status it
    does not document at all)."""
    problems: set[str] = set()
    for reply in replies:
        body = reply.json
        operation = document()["paths"].get(reply.route or "", {}).get(reply.method.lower())
        if reply.path == "/openapi.json" and reply.status == 200:
            continue  # the document itself: served, not documented (include_in_schema=False)
        if operation is None:  # no such route: still a documented Problem
            problems.update(f"{reply.method} (no route) {reply.status}: {e}"
                            for e in _errors({"$ref": "#/components/schemas/Problem"}, body))
            continue
        response = operation["responses"].get(str(reply.status))
        if response is None:
            problems.add(f"{reply.method} {reply.route} {reply.status}: the status is not documented")
            continue
        schema = response["content"]["application/json"]["schema"]
        problems.update(f"{reply.method} {reply.route} {reply.status}: {e}" for e in _errors(schema, body))
    return sorted(problems)


@pytest.fixture
def tour(api: Api) -> list[Reply]:
    """Every documented operation, answered with its success and with each error it documents, in one test."""
    seed_alice(api.stack)
    add_members(api, [f"m-{i:02d}" for i in range(12)])
    for name in ("get-customer", "get-customer-segments"):
        assert api.call(name).status == 200
        assert api.call(name, customer="nobody").status == 404
        assert api.call(name, customer="c" * 257).status == 400
    for query, status in (({"anonymous_id": ["alice"]}, 200), ({"anonymous_id": ["nobody"]}, 404),
                          ({"email": ["nobody@example.com"]}, 404), ({"email": ["x"], "anonymous_id": ["y"]}, 400)):
        assert api.send(raw_event("GET", "/customers", query)).status == status, query
    assert api.call("get-me").status == 200
    assert api.call("get-me", claims={"sub": "nobody"}).status == 404
    assert api.call("get-me-unauthenticated").status == 403
    assert api.call("list-segments").status == 200
    for segment in sorted(api.stack.catalogue.segments):
        assert api.call("get-segment", segment=segment).status == 200
        assert api.call("list-members", segment=segment, query={"limit": "5"}).status == 200
    for name in ("get-segment", "list-members", "edit-members"):
        assert api.call(name, segment="no-such-segment").status == 404
        assert api.call(name, segment="VIP").status == 400
    assert api.call("list-members", query={"limit": "0"}).status == 400
    assert api.call("edit-members").status == 200
    assert api.call("edit-members", body={"add": [7]}).status == 400
    real = api.deps.profiles
    api.use(profiles=ConflictingStore(api.stack.store()))
    assert api.call("edit-members", body={"add": ["conflicted"]}).status == 409
    api.use(profiles=real)
    for number, (name, adjust, operation) in enumerate(THROTTLED):
        if name == "edit-members":  # someone new, so that the edit reads and writes
            adjust = {"body": {"add": [f"throttled-{number}"]}}
        injected = InjectedError(api.stack.dynamodb, operation, "ProvisionedThroughputExceededException", limit=1)
        assert api.call(name, **adjust).status == 503, (name, operation)
        injected.remove()
    assert api.send(raw_event("GET", "/nope")).status == 404
    assert api.send(raw_event("GET", "/openapi.json")).status == 200
    return list(api.log)


def test_success_bodies_match_their_models_schemas(tour: list[Reply]) -> None:
    checked = 0
    problems: list[str] = []
    for reply in tour:
        model = SUCCESS_MODELS.get((reply.method.lower(), reply.route or ""))
        if reply.status != 200 or model is None:
            continue
        checked += 1
        problems += [f"{reply.method} {reply.route}: {e}"
                     for e in _errors({"$ref": f"#/components/schemas/{model}"}, reply.json)]
    assert checked >= 20
    assert not problems, "\n".join(problems)


def test_openapi_every_response_matches_its_documented_schema(tour: list[Reply]) -> None:
    """Every body of the tour, against the schema documented for its path, method and status."""
    assert tour
    problems = undocumented(tour)
    assert not problems, "\n".join(problems)


def test_openapi_documents_the_statuses_the_api_returns() -> None:
    """Each operation documents its success (200) and every error it answers with (409 for an edit that keeps
    conflicting), and no status it never answers with (422 only for a refused segment definition: request
    validation errors are 400 Problems)."""
    wrong = []
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            documented = set(operation["responses"])
            accepted = method == "delete" or (method, path) in ACCEPTED_ROUTES
            success = "202" if accepted else "200"  # a deletion or a job is accepted, then runs
            edits = method in ("post", "put") and (method, path) not in ACCEPTED_ROUTES  # starting a job edits nothing
            needed = {success, "400", "404"} | ({"409"} if edits else set())
            if (method, path) in DEFINITION_ROUTES:
                needed.add("422")  # a definition the catalogue refuses: each problem with its path and rule
            if needed - documented:
                wrong.append(f"{method.upper()} {path}: does not document {sorted(needed - documented)}")
            problem = operation["responses"].get("422", {}).get("content", {}).get("application/json", {})
            if "422" in documented and ((method, path) not in DEFINITION_ROUTES
                                        or problem.get("schema") != {"$ref": "#/components/schemas/DefinitionProblem"}):
                wrong.append(f"{method.upper()} {path}: documents 422, which it answers only for a definition")
    assert not wrong, "\n".join(wrong)


def test_openapi_every_documented_route_was_exercised(tour: list[Reply]) -> None:
    """The tour reaches every documented operation with a success, so the checks above cover each one (the data
    subject requests need the privacy stores: tests/integration/test_privacy.py checks them against the document)."""
    documented = ({(m, p) for p, item in document()["paths"].items() for m in item} - PRIVACY_ROUTES
                  - LIFECYCLE_ROUTES - MODEL_ROUTES - DECISION_ROUTES)
    exercised = {(r.method.lower(), r.route) for r in tour if r.status == 200}
    assert documented - exercised == set()
