"""Every documented route of the local API answers with API Gateway's headers and a documented status.

The routes are those of the API's own OpenAPI document (GET /openapi.json); a route added there without
a case here fails the test. Path parameters are real sample customers (events/sample.jsonl) and segments.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Running, customer, track, wait_for

SAMPLE_CUSTOMER = "alice"  # in events/sample.jsonl: identified, with web events


@dataclass(frozen=True)
class Case:
    path: str
    status: int
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def call(stack: Running, method: str, case: Case) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(stack.api + case.path, data=case.body, method=method, headers=dict(case.headers))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


@pytest.fixture(scope="module")
def sample_customer(stack: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample customer's own lines of events/sample.jsonl, sent with `cdp send FILE` (no flags: the
    running local stack is found by its state file). Resent, they change nothing: their ids are remembered."""
    lines = [line for line in (ROOT / "events" / "sample.jsonl").read_text().splitlines()
             if json.loads(line).get("userId") == SAMPLE_CUSTOMER]
    path = tmp_path_factory.mktemp("sample") / f"{SAMPLE_CUSTOMER}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sent = stack.cdp("send", str(path))
    assert sent.returncode == 0, sent.stderr
    assert f"sent {len(lines)} messages" in sent.stdout
    assert sent.stderr.startswith(f"sending to the local stack at {stack.endpoint}, stream "), sent.stderr
    wait_for(lambda: stack.get(f"/customers/{SAMPLE_CUSTOMER}")[0] == 200)
    yield SAMPLE_CUSTOMER


@pytest.fixture(scope="module")
def doomed_customer(stack: Running, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A customer of their own for the deletion route (the sample customer is other tests' too)."""
    who = customer()
    sent = stack.send([track(who, "Product Viewed", product_id="p1")], tmp_path_factory.mktemp("doomed"))
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: stack.get(f"/customers/{who}")[0] == 200)
    return who


def cases(who: str, doomed: str) -> dict[tuple[str, str], list[Case]]:
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    json_body = (("Content-Type", "application/json"),)
    add = json.dumps({"add": [f"e2e-vip-{uuid.uuid4().hex[:8]}"]}).encode()
    return {
        ("get", "/customers/{customerId}"): [Case(f"/customers/{who}", 200), Case(f"/customers/{nobody}", 404)],
        ("get", "/customers/{customerId}/segments"): [Case(f"/customers/{who}/segments", 200),
                                                      Case(f"/customers/{nobody}/segments", 404)],
        ("get", "/customers"): [Case(f"/customers?anonymous_id={who}", 200),
                                Case(f"/customers?anonymous_id={nobody}", 404),
                                Case(f"/customers?anonymous_id={who}&email=a%40example.com", 400)],
        ("get", "/me"): [Case("/me", 200, headers=(("X-Local-User", who),)), Case("/me", 403)],
        ("get", "/segments"): [Case("/segments", 200)],
        ("get", "/segments/{segmentId}"): [Case("/segments/cart-abandoners", 200), Case("/segments/no-such", 404),
                                           Case("/segments/Not_An_Id", 400)],
        ("get", "/segments/{segmentId}/members"): [Case("/segments/web-only-visitors/members?limit=10", 200),
                                                   Case("/segments/web-only-visitors/members?limit=0", 400),
                                                   Case("/segments/no-such/members", 404)],
        ("post", "/segments/{segmentId}/members"): [
            Case("/segments/vip/members", 200, add, json_body),
            Case("/segments/vip/members", 400, json.dumps({"add": [who], "remove": [who]}).encode(), json_body),
            Case("/segments/cart-abandoners/members", 400, add, json_body),  # not a static segment
            Case("/segments/no-such/members", 404, add, json_body),
            Case("/segments/vip/members", 415, b"add=x", (("Content-Type", "text/plain"),)),
        ],
        ("get", "/customers/{customerId}/export"): [Case(f"/customers/{who}/export", 200),
                                                    Case(f"/customers/{nobody}/export", 404)],
        ("delete", "/customers/{customerId}"): [Case(f"/customers/{doomed}", 202), Case(f"/customers/{nobody}", 404)],
        ("get", "/requests/{requestId}"): [Case(f"/requests/req-{uuid.uuid4().hex}", 404)],  # done ones: test_privacy
        # Decisions (a customer who bought B in segment A: tests/e2e/test_decisions.py); no profile: a new visitor.
        ("get", "/customers/{customerId}/decisions"): [
            Case(f"/customers/{who}/decisions?placement=home-hero&page=/", 200),
            Case(f"/customers/{nobody}/decisions?placement=home-hero", 200),
            Case(f"/customers/{who}/decisions?placement=no-such", 404),
            Case(f"/customers/{who}/decisions", 400)],
        ("get", "/me/decisions"): [Case("/me/decisions?placement=home-hero", 200, headers=(("X-Local-User", who),)),
                                   Case("/me/decisions?placement=home-hero", 403),
                                   Case("/me/decisions?placement=no-such", 404, headers=(("X-Local-User", who),))],
        **lifecycle_cases(who, nobody),
    }


def lifecycle_cases(who: str, nobody: str) -> dict[tuple[str, str], list[Case]]:
    """A segment of its own, that nobody qualifies for (so its backfill moves no one), saved and deleted; the
    whole lifecycle with its jobs is tests/e2e/test_segment_lifecycle.py."""
    json_body = (("Content-Type", "application/json"),)
    segment = f"e2e-routes-{uuid.uuid4().hex[:8]}"
    valid = json.dumps({"id": segment, "name": "Nobody", "condition": {"rfm": {"metric": "revenue", "gt": 1e9}}})
    invalid = json.dumps({"id": segment, "name": "Broken", "condition": {"rfm": {"metric": "height", "gt": 1}}})
    return {
        ("post", "/segments:validate"): [Case("/segments:validate", 200, valid.encode(), json_body),
                                         Case("/segments:validate", 422, invalid.encode(), json_body)],
        ("post", "/segments/{segmentId}:preview"): [
            Case(f"/segments/{segment}:preview", 200, valid.encode(), json_body),
            Case(f"/segments/{segment}:preview", 422, invalid.encode(), json_body)],
        ("put", "/segments/{segmentId}"): [Case(f"/segments/{segment}?deliver=none", 201, valid.encode(), json_body),
                                           Case(f"/segments/{segment}", 422, invalid.encode(), json_body)],
        ("get", "/segments/{segmentId}/versions"): [Case(f"/segments/{segment}/versions", 200),
                                                    Case(f"/segments/{nobody}/versions", 404)],
        ("get", "/segments/{segmentId}/history"): [Case("/segments/cart-abandoners/history?days=7", 200),
                                                   Case("/segments/cart-abandoners/history?days=0", 400)],
        ("get", "/jobs/{jobId}"): [Case(f"/jobs/{uuid.uuid4().hex}", 404)],  # a started one: test_segment_lifecycle
        ("get", "/customers/{customerId}/explain"): [
            Case(f"/customers/{who}/explain?segment=cart-abandoners", 200),
            Case(f"/customers/{who}/explain?segment={nobody}", 404),
            Case(f"/customers/{nobody}/explain?segment=cart-abandoners", 404)],
        ("delete", "/segments/{segmentId}"): [Case(f"/segments/{segment}", 202), Case(f"/segments/{nobody}", 404)],
        **model_cases(),
    }


def model_cases() -> dict[tuple[str, str], list[Case]]:
    """The computed traits' models (trained or not yet: the list answers either way) and starting a job: a
    percentiles job, which the local stack's schedule runs anyway (the traits job: tests of the jobs)."""
    json_body = (("Content-Type", "application/json"),)
    return {
        ("get", "/models"): [Case("/models", 200)],
        ("get", "/models/{name}"): [Case("/models/weather", 404), Case("/models/Clusters", 400)],
        ("post", "/jobs"): [Case("/jobs", 202, json.dumps({"kind": "percentiles"}).encode(), json_body),
                            Case("/jobs", 400, json.dumps({"kind": "weather"}).encode(), json_body),
                            Case("/jobs", 415, b"kind=traits", (("Content-Type", "text/plain"),))],
    }


def test_every_documented_route_answers_json_with_a_documented_status(stack: Running, sample_customer: str,
                                                                     doomed_customer: str) -> None:
    status, headers, raw = call(stack, "GET", Case("/openapi.json", 200))
    assert status == 200 and headers.get("Content-Type") == "application/json"
    document: dict[str, Any] = json.loads(raw)
    documented = {(method, path): operation for path, operations in document["paths"].items()
                  for method, operation in operations.items()}
    table = cases(sample_customer, doomed_customer)
    assert set(table) == set(documented), "each documented route needs its cases here, and only those"
    answered = []
    for (method, route), route_cases in table.items():
        for case in route_cases:
            status, headers, raw = call(stack, method.upper(), case)
            answered.append((method.upper(), case.path, status))
            assert status == case.status, (method, case.path, status, raw[:300])
            assert str(status) in documented[(method, route)]["responses"], (method, route, status)
            assert headers.get("Content-Type") == "application/json", (method, case.path, headers)
            json.loads(raw)  # every answer, success or problem, is a JSON body
    assert len(answered) == sum(len(c) for c in table.values())


def test_the_local_only_and_unknown_routes_answer_json_too(stack: Running) -> None:
    for path, expected in (("/health", 200), ("/no/such/route", 404)):
        status, headers, raw = call(stack, "GET", Case(path, expected))
        assert status == expected and headers.get("Content-Type") == "application/json"
        json.loads(raw)
