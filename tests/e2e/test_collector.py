"""The collector on the local stack: Segment's Tracking API under /v1/ on the API port, sent to with the real
SDKs (analytics-python, RudderStack's Python SDK) and with plain HTTP for the answers they never provoke.

The write key is the local source's, from GET /health. Each test's customer is its own, so the shared stack's
other tests never see these events, nor these tests theirs.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from cdp_dev.local_stack import http_api_event, sample_batches
from tests.e2e.conftest import Running, customer, wait_for


@pytest.fixture(scope="module")
def write_key(stack: Running) -> str:
    key: str = stack.health["collector"]["write_key"]
    return key


def post(stack: Running, path: str, body: bytes, key: str | None = None, *, method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request to the collector: status, headers and the JSON answer (an empty one for 204)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    request = urllib.request.Request(stack.api + path, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, answered = response.read(), response.status, dict(response.headers.items())
    except urllib.error.HTTPError as error:
        raw, status, answered = error.read(), error.code, dict(error.headers.items())
    return status, answered, json.loads(raw) if raw else {}


def message(who: str, event: str = "Product Viewed", **properties: Any) -> dict[str, Any]:
    return {"type": "track", "userId": who, "event": event, "messageId": str(uuid.uuid4()),
            "properties": properties or {"product_id": "p1"}}


def profile_when(stack: Running, who: str, ready: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The customer's profile once ``ready(profile)`` holds."""
    def check() -> dict[str, Any] | None:
        status, body = stack.get(f"/customers/{who}")
        return body if status == 200 and ready(body) else None

    found: dict[str, Any] = wait_for(check, timeout=timeout)
    return found


def counts(profile: dict[str, Any]) -> dict[str, int]:
    return {c["key"]: c["lifetime"] for c in profile["counters"]}


def test_health_names_the_collector_its_local_source_and_the_templates_resources(stack: Running) -> None:
    status, health = stack.get("/health")
    assert status == 200
    collector = health["collector"]
    assert collector["url"] == f"{stack.api}/v1" and collector["source"] == "local"
    assert collector["write_key"].startswith("wk_") and len(collector["write_key"]) > 30
    environment, resources = health["environment"]["collector"], health["resources"]
    assert environment["STREAM_NAME"] == resources["streams"][0]
    assert environment["SOURCES_TABLE"] in resources["tables"] and "WriteKeys" in environment["SOURCES_TABLE"]
    assert environment["QUARANTINE_BUCKET"] in resources["buckets"]
    assert set(health["collected"]) == {"requests", "accepted", "rejected", "refused"}


def test_analytics_python_track_identify_page_and_a_batch_reach_the_profile(stack: Running, write_key: str) -> None:
    from segment.analytics import Client  # type: ignore[import-untyped]

    who, errors = customer(), []
    on_error = lambda error, batch: errors.append(error)  # noqa: E731
    each = Client(write_key, host=stack.api, sync_mode=True, on_error=on_error)  # one request per call
    each.identify(who, {"email": "Ada@Example.com", "plan": "gold"})
    each.track(who, "Product Viewed", {"product_id": "p1", "price": 20})
    each.page(who, "Docs", "Intro", {"url": "https://shop.example/docs"})
    batched = Client(write_key, host=stack.api, upload_size=100, on_error=on_error)  # the SDK's own batches
    for number in range(5):
        batched.track(who, "Product Viewed", {"product_id": f"p{number}"})
    batched.flush()
    batched.join()
    assert errors == []
    profile = profile_when(stack, who, lambda p: counts(p).get("Product Viewed") == 6 and "Page Viewed" in counts(p))
    assert profile["traits"]["plan"] == "gold" and profile["traits"]["email"] == "Ada@Example.com"
    assert counts(profile) == {"Identify": 1, "Product Viewed": 6, "Page Viewed": 1}
    viewed = next(c for c in profile["counters"] if c["key"] == "Product Viewed")
    assert viewed["windows"]["24h"]["count"] == 6  # skew-corrected times: now, not the device's clock


def test_an_analytics_python_order_without_order_id_is_applied_once_through_the_collector(
        stack: Running, write_key: str) -> None:
    from segment.analytics import Client

    who, errors = customer(), []
    client = Client(write_key, host=stack.api, sync_mode=True, on_error=lambda error, batch: errors.append(error))
    client.track(who, "Order Completed", {"revenue": 80.0, "currency": "USD"}, message_id="order-no-id-1")
    assert errors == []
    profile = profile_when(stack, who, lambda p: p["rfm"]["orders"] == 1)
    assert profile["rfm"]["revenue"] == 80.0
    again = {"type": "track", "userId": who, "event": "Order Completed", "messageId": "order-no-id-1",
             "properties": {"revenue": 80.0, "currency": "USD"}}
    status, _, body = post(stack, "/v1/track", json.dumps(again).encode(), write_key)
    assert (status, body["accepted"]) == (200, 1)
    client.track(who, "Product Viewed", {"product_id": "p1"})  # applied after the resent order: a marker
    later = profile_when(stack, who, lambda p: counts(p).get("Product Viewed") == 1)
    assert (later["rfm"]["orders"], later["rfm"]["revenue"]) == (1, 80.0)


def test_rudderstack_gzipped_track_and_identify_reach_the_profile(stack: Running, write_key: str) -> None:
    from rudderstack.analytics import Client  # type: ignore[import-untyped]

    who, errors = customer(), []
    client = Client(write_key, host=stack.api, on_error=lambda error, batch: errors.append(error))
    assert client.gzip is True  # RudderStack's SDK gzips by default: Content-Encoding: gzip
    client.identify(who, {"email": "grace@example.com"})
    client.track(who, "Product Added", {"product_id": "p1", "price": 5})
    client.track(who, "Product Viewed", {"product_id": "p1"})
    client.flush()
    client.join()
    assert errors == []
    profile = profile_when(stack, who, lambda p: len(p["counters"]) >= 3)
    assert profile["traits"]["email"] == "grace@example.com"
    assert counts(profile) == {"Identify": 1, "Product Added": 1, "Product Viewed": 1}
    assert [item["product_id"] for item in profile["cart"]["items"]] == ["p1"]


def test_a_key_of_no_source_is_401_and_an_empty_body_400(stack: Running, write_key: str) -> None:
    body = json.dumps(message(customer())).encode()
    status, _, answer = post(stack, "/v1/track", body, "wk_" + "x" * 32)
    assert status == 401 and answer["code"] == "unauthorized" and answer["field"] == "writeKey"
    status, _, answer = post(stack, "/v1/track", body)
    assert status == 401 and answer["field"] == "writeKey"
    status, _, answer = post(stack, "/v1/batch", b"", write_key)
    assert status == 400 and answer["code"] == "bad_request" and answer["field"] == "body"
    status, _, answer = post(stack, "/v1/track", body, write_key, headers={"Content-Type": "application/xml"})
    assert status == 415 and answer["field"] == "Content-Type"


def test_a_gzip_bomb_a_10_mb_body_and_2501_messages_are_413(stack: Running, write_key: str) -> None:
    bomb = gzip.compress(b'{"batch":[' + b" " * 20_000_000 + b"]}")
    assert len(bomb) < 100_000  # 20 MB of spaces in a few tens of KB
    status, _, answer = post(stack, "/v1/batch", bomb, write_key, headers={"Content-Encoding": "gzip"})
    assert status == 413 and answer["code"] == "payload_too_large" and "inflates past" in answer["message"]
    large = b'{"batch":[{"type":"track","userId":"u","event":"' + b"x" * 10_000_000 + b'"}]}'
    status, _, answer = post(stack, "/v1/batch", large, write_key)
    assert status == 413 and answer["field"] == "body"
    many = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "e"}] * 2_501}).encode()
    assert len(many) < 500 * 1024  # refused for the count, not the size
    status, _, answer = post(stack, "/v1/batch", many, write_key)
    assert status == 413 and answer["field"] == "batch" and "2,501" in answer["message"]


def test_a_message_without_a_user_is_rejected_and_the_rest_of_its_batch_applied(
        stack: Running, write_key: str) -> None:
    who = customer()
    anonymous = {"type": "track", "event": "Product Viewed", "messageId": f"no-user-{who}", "properties": {}}
    batch = [message(who, product_id="p1"), anonymous, message(who, "Product Added", product_id="p2", price=3)]
    status, _, answer = post(stack, "/v1/batch", json.dumps({"batch": batch}).encode(), write_key)
    assert status == 200 and answer["accepted"] == 2 and answer["rejected"] == 1, answer
    (error,) = answer["errors"]
    assert error["index"] == 1 and "userId" in error["field"] + error["reason"]
    profile = profile_when(stack, who, lambda p: len(p["counters"]) >= 2)
    assert counts(profile) == {"Product Viewed": 1, "Product Added": 1}

    s3 = stack.client("s3")
    bucket = stack.health["environment"]["collector"]["QUARANTINE_BUCKET"]

    def quarantined() -> list[dict[str, Any]]:
        found = []
        for item in s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/").get("Contents", []):
            text = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
            lines = [json.loads(line) for line in text.splitlines()]
            found += [line for line in lines if f"no-user-{who}".encode() in base64.b64decode(line["data"])]
        return found

    (kept,) = wait_for(quarantined)
    assert kept["source"] == "collector:local" and kept["field"] == error["field"]


def test_a_browsers_preflight_is_answered_with_cors_headers(stack: Running) -> None:
    status, headers, _ = post(stack, "/v1/batch", b"", method="OPTIONS",
                              headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"  # the local stack's origins: cdk.json's
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]


def test_a_source_made_with_cdp_sources_sends_and_once_revoked_is_refused_within_30_s(stack: Running) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    made = stack.cdp("sources", "create", name)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("wk_") and "only its SHA-256 digest is stored" in made.stderr
    who = customer()
    status, _, answer = post(stack, "/v1/track", json.dumps(message(who)).encode(), key)
    assert status == 200 and answer["accepted"] == 1
    listed = stack.cdp("sources", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:3] == [name, key[:10], "active"] for line in listed.stdout.splitlines())

    revoked = stack.cdp("sources", "revoke", name)
    assert revoked.returncode == 0 and "revoked 1 valid key" in revoked.stdout, revoked.stderr
    began = time.monotonic()

    def refused() -> bool:
        return post(stack, "/v1/track", json.dumps(message(who)).encode(), key)[0] == 401

    wait_for(refused, timeout=35, interval=1)
    assert time.monotonic() - began <= 32  # the collector's key cache: 30 s


def test_the_local_http_api_event_is_payload_2_0() -> None:
    """What the local stack hands the collector: an HTTP API (payload 2.0) event, as API Gateway builds it."""
    event = http_api_event("POST", "/v1/batch?x=1&x=2", [("Content-Type", "application/json"), ("X-A", "1"),
                                                           ("x-a", "2"), ("Cookie", "a=1; b=2")],
                           b'{"batch":[]}', "10.0.0.1", "req-1", now=0)
    assert event["version"] == "2.0" and event["rawPath"] == "/v1/batch" and event["rawQueryString"] == "x=1&x=2"
    assert event["headers"] == {"content-type": "application/json", "x-a": "1,2"}
    assert event["cookies"] == ["a=1", "b=2"] and event["queryStringParameters"] == {"x": "1,2"}
    assert event["requestContext"]["http"] == {"method": "POST", "path": "/v1/batch", "protocol": "HTTP/1.1",
                                               "sourceIp": "10.0.0.1", "userAgent": ""}
    assert event["requestContext"]["requestId"] == "req-1"
    assert event["body"] == '{"batch":[]}' and event["isBase64Encoded"] is False
    zipped = gzip.compress(b"{}")
    encoded = http_api_event("POST", "/v1/t", [("Content-Encoding", "gzip")], zipped, "", "r")
    assert encoded["isBase64Encoded"] is True and base64.b64decode(encoded["body"]) == zipped
    binary = http_api_event("POST", "/v1/t", [], b"\xff\xfe", "", "r")
    assert binary["isBase64Encoded"] is True
    assert "body" not in http_api_event("POST", "/v1/t", [], b"", "", "r")


def test_the_sample_is_sent_in_batches_under_the_limits_without_sent_at() -> None:
    lines = [json.dumps({"userId": f"u{n}", "type": "track", "event": "e", "sentAt": "2026-10-01T00:00:00Z",
                         "properties": {"pad": "x" * 100}}).encode() for n in range(50)] + [b"[1]", b"", b"not json"]
    batches, unreadable = sample_batches(lines, max_bytes=2_000, max_messages=12)
    assert unreadable == 2 and sum(len(b) for b in batches) == 50
    assert all(len(b) <= 12 and len(json.dumps(b)) <= 2_000 + len(b) for b in batches)
    assert [m["userId"] for b in batches for m in b] == [f"u{n}" for n in range(50)]  # in order
    assert not any("sentAt" in m for b in batches for m in b)
