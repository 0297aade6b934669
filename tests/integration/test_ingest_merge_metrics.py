"""The ingest handler's identity metrics under moto, as CloudWatch would receive them (EMF on stdout).

``Merges`` counts ids merged into a customer, ``EventsRedirected`` events for a merged id applied to its canonical
customer, and ``MergesRefused`` the merges not made, one document per ``reason`` (``known``, ``limit``,
``deleted``): a fixed word, never an id or an address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
from cdp.core.identity import customer_digest
from cdp.pipeline.identity import Identity

from .support import REGION, Stack, failures, ingest_handler, iso, kinesis_envelope

IDENTITY_TABLE = "cdp-identity"


@pytest.fixture
def id_map(stack: Stack) -> DynamoIdentityMap:
    boto3.client("dynamodb", region_name=REGION).create_table(
        TableName=IDENTITY_TABLE, KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    return DynamoIdentityMap(bind_identity_map(IDENTITY_TABLE, REGION))


@pytest.fixture
def out(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    ingest_handler.metrics.clear_metrics()  # a store every instance shares; the Lambda decorator flushes it
    capsys.readouterr()
    yield capsys
    ingest_handler.metrics.clear_metrics()


def emitted(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The EMF documents printed since the last call, the batch metrics flushed as the decorator would."""
    ingest_handler.metrics.flush_metrics()
    printed = capsys.readouterr().out
    assert "anon-" not in printed and "user-" not in printed and "@example.com" not in printed  # counts, no ids
    lines = printed.splitlines()
    return [doc for doc in (json.loads(line) for line in lines if line.startswith("{")) if "_aws" in doc]


def value(documents: list[dict[str, Any]], metric: str) -> float:
    [document] = [doc for doc in documents if metric in doc and "reason" not in doc]
    return float(sum(document[metric]))


def refused(documents: list[dict[str, Any]]) -> dict[str, float]:
    return {doc["reason"]: float(sum(doc["MergesRefused"])) for doc in documents if "MergesRefused" in doc}


def track(at: float, message_id: str, user: str | None = None, anonymous: str | None = None) -> dict[str, Any]:
    ids = {k: v for k, v in (("userId", user), ("anonymousId", anonymous)) if v}
    return {"type": "track", "event": "Product Viewed", "messageId": message_id, "timestamp": iso(at),
            "properties": {"product_id": "p1", "price": 10.0}, **ids}


def identify(at: float, message_id: str, user: str, anonymous: str) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "anonymousId": anonymous, "messageId": message_id,
            "timestamp": iso(at), "traits": {"email": f"{user}@example.com"}}


def test_merges_redirected_events_and_each_refusal_reason_are_emitted(
        stack: Stack, id_map: DynamoIdentityMap, out: pytest.CaptureFixture[str]) -> None:
    at = stack.clock.now() - 600
    identity = Identity(id_map, max_merges=1)

    def ingest(*messages: dict[str, Any]) -> dict[str, Any]:
        return stack.ingest(kinesis_envelope(list(messages)), identity=identity)

    assert failures(ingest(track(at, "v-1", anonymous="anon-1"), track(at, "v-2", user="user-2"))) == []
    first = emitted(out)
    assert value(first, "Merges") == 0 and refused(first) == {}

    assert failures(ingest(identify(at + 1, "identify-1", "user-1", "anon-1"))) == []
    merged = emitted(out)
    assert (value(merged, "Merges"), value(merged, "EventsRedirected"), refused(merged)) == (1, 0, {})

    assert failures(ingest(track(at + 2, "late-1", anonymous="anon-1"))) == []  # the old anonymousId, later
    late = emitted(out)
    assert (value(late, "Merges"), value(late, "EventsRedirected")) == (0, 1)
    assert stack.profile("user-1").counter("Product Viewed").count == 2

    id_map.bury(customer_digest("anon-3"), at, "request-3", int(at) + 86_400)  # a deleted visitor
    assert failures(ingest({"type": "alias", "previousId": "user-2", "userId": "user-1", "messageId": "alias-2",
                            "timestamp": iso(at + 3)},  # two known customers: refused
                           identify(at + 3, "identify-9", "user-1", "anon-9"),  # user-1 holds its one merge
                           identify(at + 3, "identify-3", "user-1", "anon-3"))) == []
    refusals = emitted(out)
    assert value(refusals, "Merges") == 0
    assert refused(refusals) == {"known": 1, "limit": 1, "deleted": 1}
    for document in refusals:
        if "MergesRefused" in document:
            assert ["service", "reason"] in document["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
            assert document["service"] == "ingest"
    assert stack.profile("user-1").merges[0][0] == "anon-1" and len(stack.profile("user-1").merges) == 1
