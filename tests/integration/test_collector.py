"""The collector function (functions/collector) under moto: HTTP API events in, records on the Kinesis stream.

Each test gets a fresh stream, quarantine bucket and write keys table, and a source "web" with one key made
by cdp.collector.keys.create_source through the DynamoDB key store. The handler is called through
``handle(event, context, deps)`` with ``build()`` from the environment, or with a collector given instead.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.aws.kinesis import KinesisEventStream
from cdp.aws.quarantine import S3Quarantine
from cdp.aws.write_keys import DynamoKeyStore, bind_write_keys
from cdp.collector.keys import KeyCache, create_source
from cdp.pipeline.collect import THROTTLED, Collector
from cdp_dev.handlers import load_handler

from .support import REGION

ROOT = Path(__file__).resolve().parents[2]
STREAM = "cdp-events"
SOURCES = "cdp-write-keys"
BUCKET = "cdp-collector-quarantine"
SHOP = "https://shop.example.com"
SOURCE_IP = "198.51.100.23"

collector_handler = load_handler(ROOT, "collector")


@dataclass
class Aws:
    kinesis: Any
    s3: Any
    key: str

    def deps(self, **overrides: Any) -> Any:
        return collector_handler.build(**overrides)

    def send(self, event: dict[str, Any], deps: Any = None) -> dict[str, Any]:
        response: dict[str, Any] = collector_handler.handle(event, None, deps or self.deps())
        return response

    def records(self) -> list[dict[str, Any]]:
        """Every record on the stream, shard by shard, in order."""
        found: list[dict[str, Any]] = []
        for shard in self.kinesis.list_shards(StreamName=STREAM)["Shards"]:
            iterator = self.kinesis.get_shard_iterator(StreamName=STREAM, ShardId=shard["ShardId"],
                                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while iterator:
                page = self.kinesis.get_records(ShardIterator=iterator, Limit=1000)
                if not page["Records"]:
                    break
                found += page["Records"]
                iterator = page.get("NextShardIterator")
        return found

    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        """(partition key, message) of every record on the stream."""
        return [(record["PartitionKey"], json.loads(record["Data"])) for record in self.records()]

    def quarantined(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for obj in self.s3.list_objects_v2(Bucket=BUCKET, Prefix="quarantine/").get("Contents", []):
            body = self.s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read().decode()
            lines += [json.loads(line) for line in body.splitlines() if line]
        return lines


@pytest.fixture
def aws(session: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    with mock_aws():
        kinesis, s3, dynamodb = (session.client(name) for name in ("kinesis", "s3", "dynamodb"))
        kinesis.create_stream(StreamName=STREAM, ShardCount=1)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        dynamodb.create_table(TableName=SOURCES, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}])
        key = create_source(DynamoKeyStore(bind_write_keys(SOURCES, REGION)), "web", time.time() - 60)
        monkeypatch.setenv("STREAM_NAME", STREAM)
        monkeypatch.setenv("SOURCES_TABLE", SOURCES)
        monkeypatch.setenv("QUARANTINE_BUCKET", BUCKET)
        monkeypatch.setenv("COLLECTOR_ORIGINS", SHOP)
        yield Aws(kinesis, s3, key)


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def http_event(path: str, body: Any = None, headers: dict[str, str] | None = None, method: str = "POST",
               gzipped: bool = False, request_id: str = "Jx3ab-EXAMPLE=") -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event."""
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    if gzipped:
        raw = gzip.compress(raw)
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "collect.example.com",
                    "user-agent": "analytics-python/2.3.0", **(headers or {})},
        "requestContext": {"accountId": "123456789012", "apiId": "c0llect", "domainName": "collect.example.com",
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": SOURCE_IP,
                                    "userAgent": "analytics-python/2.3.0"},
                           "requestId": request_id, "routeKey": "$default", "stage": "$default",
                           "time": "20/Oct/2026:12:00:00 +0000", "timeEpoch": 1792497600000},
        "body": base64.b64encode(raw).decode() if gzipped else raw.decode(),
        "isBase64Encoded": gzipped,
    }


def answer(response: dict[str, Any]) -> dict[str, Any]:
    assert response["headers"]["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(response["body"])
    return body


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def moment(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


# ---- single messages --------------------------------------------------------------------------------


def test_track_with_basic_auth_lands_on_the_stream_completed(aws: Aws) -> None:
    sent = {"type": "track", "event": "Product Viewed", "userId": "alice", "messageId": "m-track-1",
            "timestamp": iso(time.time() - 5), "properties": {"product_id": "p-1"}}
    before = time.time()
    response = aws.send(http_event("/v1/track", sent, {"authorization": basic(aws.key)}))
    assert response["statusCode"] == 200
    assert answer(response) == {"success": True, "accepted": 1, "rejected": 0}
    [(partition_key, message)] = aws.messages()
    assert partition_key == "alice"
    assert {k: message[k] for k in sent} == sent
    assert message["context"] == {"ip": SOURCE_IP}
    assert message["receivedAt"].endswith("Z")
    assert before - 0.001 <= moment(message["receivedAt"]) <= time.time()


def test_identify_and_page_with_the_write_key_in_the_body(aws: Aws) -> None:
    identify = {"userId": "bob", "traits": {"plan": "pro"}, "writeKey": aws.key, "messageId": "m-i"}
    page = {"anonymousId": "anon-7", "name": "Home", "writeKey": aws.key, "messageId": "m-p",
            "context": {"ip": "203.0.113.5"}}
    for path, body in (("/v1/identify", identify), ("/v1/p", page)):
        response = aws.send(http_event(path, body, {"content-type": "text/plain;charset=UTF-8"}))
        assert response["statusCode"] == 200, response
    (bob_key, bob), (anon_key, anon) = aws.messages()
    assert (bob_key, bob["type"], bob["messageId"], bob["traits"]) == ("bob", "identify", "m-i", {"plan": "pro"})
    assert bob["timestamp"] == bob["receivedAt"]  # no time sent
    assert (anon_key, anon["type"], anon["context"]["ip"]) == ("anon-7", "page", "203.0.113.5")


# ---- batches ----------------------------------------------------------------------------------------


def test_gzipped_batch_with_skew_correction(aws: Aws) -> None:
    # The device clock is an hour fast; each event happened some seconds before the batch was sent.
    device_now = float(int(time.time())) + 3600
    sent_at = iso(device_now)
    messages: list[dict[str, Any]] = [{"type": "track", "event": "Clicked", "userId": f"user-{n}",
                                       "messageId": f"m-{n}", "timestamp": iso(device_now - 10 * n)} for n in range(5)]
    batch = {"batch": messages, "sentAt": sent_at,
             "context": {"library": {"name": "analytics-python", "version": "2.3.0"}}}
    response = aws.send(http_event("/v1/batch", batch, {"authorization": basic(aws.key), "content-encoding": "gzip"},
                                   gzipped=True))
    assert response["statusCode"] == 200, response
    assert answer(response)["accepted"] == 5
    stored = aws.messages()
    assert [key for key, _ in stored] == [f"user-{n}" for n in range(5)]
    for n, (_, message) in enumerate(stored):
        assert message["originalTimestamp"] == messages[n]["timestamp"]
        assert message["context"]["library"]["name"] == "analytics-python"
        assert message["context"]["ip"] == SOURCE_IP
        # timestamp = receivedAt - (sentAt - originalTimestamp), i.e. 10 n seconds before receivedAt
        assert moment(message["receivedAt"]) - moment(message["timestamp"]) == pytest.approx(10 * n, abs=0.0011)


def test_a_rejected_message_lands_in_the_quarantine_with_its_reason(aws: Aws) -> None:
    batch = {"batch": [{"type": "track", "event": "Ok", "userId": "alice", "messageId": "m-ok"},
                       {"type": "track", "event": "No One", "messageId": "m-lost", "properties": {"n": 1}}]}
    response = aws.send(http_event("/v1/b", batch, {"authorization": basic(aws.key)}, request_id="req-q"))
    assert response["statusCode"] == 200
    assert answer(response) == {"success": True, "accepted": 1, "rejected": 1, "errors": [
        {"index": 1, "field": "userId", "reason": "either userId or anonymousId is required"}]}
    assert [m["messageId"] for _, m in aws.messages()] == ["m-ok"]
    [kept] = aws.quarantined()
    assert (kept["source"], kept["sequence"], kept["field"]) == ("collector:web", "req-q-1", "userId")
    assert kept["reason"] == "either userId or anonymousId is required"
    message = json.loads(base64.b64decode(kept["data"]))
    assert (message["messageId"], message["event"], message["properties"]) == ("m-lost", "No One", {"n": 1})


class FlakyKinesis:
    """The moto-backed client, except that its first PutRecords stores only the even-numbered records and
    answers the others as throttled, as Kinesis does for a hot shard."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[int] = []

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(len(Records))
        if len(self.calls) > 1:
            response: dict[str, Any] = self.client.put_records(StreamName=StreamName, Records=Records)
            return response
        kept = [record for n, record in enumerate(Records) if n % 2 == 0]
        stored = iter(self.client.put_records(StreamName=StreamName, Records=kept)["Records"])
        results = [next(stored) if n % 2 == 0 else
                   {"ErrorCode": THROTTLED, "ErrorMessage": "Rate exceeded for shard shardId-000000000000"}
                   for n in range(len(Records))]
        return {"FailedRecordCount": len(Records) - len(kept), "Records": results}


def test_a_partial_put_records_failure_is_resent_and_every_record_is_stored_once(aws: Aws) -> None:
    flaky = FlakyKinesis(aws.kinesis)
    keys = KeyCache(DynamoKeyStore(bind_write_keys(SOURCES, REGION)))
    sleeps: list[float] = []
    collector = Collector(keys, KinesisEventStream(flaky, STREAM), S3Quarantine(aws.s3, BUCKET),
                          sleep=sleeps.append)
    batch = {"batch": [{"type": "track", "event": "Clicked", "userId": f"u{n}", "messageId": f"m-{n}"}
                       for n in range(7)]}
    response = aws.send(http_event("/v1/batch", batch, {"authorization": basic(aws.key)}),
                        aws.deps(collector=collector))
    assert response["statusCode"] == 200, response
    assert answer(response) == {"success": True, "accepted": 7, "rejected": 0}
    assert flaky.calls == [7, 3]  # the three refused ones, and only they, were sent again
    assert len(sleeps) == 1
    stored = Counter(m["messageId"] for _, m in aws.messages())
    assert stored == Counter({f"m-{n}": 1 for n in range(7)})
    assert aws.quarantined() == []


# ---- refusals -------------------------------------------------------------------------------------


def test_an_unknown_key_is_401_and_nothing_is_stored(aws: Aws) -> None:
    message = {"type": "track", "event": "E", "userId": "alice"}
    response = aws.send(http_event("/v1/t", message, {"authorization": basic("wk_unknown_0000000000000000")}))
    assert response["statusCode"] == 401
    assert answer(response)["code"] == "unauthorized"
    assert aws.records() == []


def test_a_body_that_is_not_base64_as_it_says_is_400(aws: Aws) -> None:
    event = http_event("/v1/track", None, {"authorization": basic(aws.key)})
    event.update(body="%%% not base64 %%%", isBase64Encoded=True)
    response = aws.send(event)
    assert response["statusCode"] == 400
    assert answer(response)["field"] == "body"


def test_a_get_is_405_and_another_path_404(aws: Aws) -> None:
    assert aws.send(http_event("/v1/track", None, method="GET"))["statusCode"] == 405
    assert aws.send(http_event("/v1/import", {"batch": []}, {"authorization": basic(aws.key)}))["statusCode"] == 404


# ---- CORS -------------------------------------------------------------------------------------------


def test_preflight_for_an_allowed_origin(aws: Aws) -> None:
    response = aws.send(http_event("/v1/batch", method="OPTIONS", headers={"origin": SHOP}))
    assert response["statusCode"] == 204
    assert response["body"] == ""
    headers = response["headers"]
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert headers["Vary"] == "Origin"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type", "content-encoding"} <= {
        h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert aws.records() == []


def test_preflight_for_another_origin_has_no_cors_headers(aws: Aws) -> None:
    response = aws.send(http_event("/v1/batch", method="OPTIONS", headers={"origin": "https://evil.example.net"}))
    assert response["statusCode"] == 204
    assert not any(name.lower().startswith("access-control-") for name in response["headers"])


def test_allow_origin_on_answers_for_allowed_origins_only(aws: Aws) -> None:
    message = {"type": "track", "event": "E", "userId": "alice"}
    allowed = aws.send(http_event("/v1/t", message, {"authorization": basic(aws.key), "origin": SHOP}))
    assert allowed["statusCode"] == 200
    assert allowed["headers"]["Access-Control-Allow-Origin"] == SHOP
    other = aws.send(http_event("/v1/t", message, {"authorization": basic(aws.key),
                                                   "origin": "https://evil.example.net"}))
    assert other["statusCode"] == 200
    assert "Access-Control-Allow-Origin" not in other["headers"]
    refused = aws.send(http_event("/v1/t", message, {"authorization": basic("wk_nope"), "origin": SHOP}))
    assert refused["statusCode"] == 401
    assert refused["headers"]["Access-Control-Allow-Origin"] == SHOP  # so the page can read the refusal


def test_any_origin_when_configured_so(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_ORIGINS", "*")
    response = aws.send(http_event("/v1/batch", method="OPTIONS", headers={"origin": "https://any.example.org"}))
    assert response["headers"]["Access-Control-Allow-Origin"] == "*"


def test_rejected_messages_are_counted_by_field_in_metrics_that_hold_no_values(
        aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    collector_handler.metrics.clear_metrics()
    capsys.readouterr()
    batch = {"batch": [{"type": "track", "event": "Ok", "userId": "alice@example.com", "messageId": "m-1"},
                       {"type": "track", "event": "Lost", "messageId": "m-2", "properties": {"email": "x@y.z"}},
                       {"type": "track", "event": "Lost too", "messageId": "m-3"}]}
    response = aws.send(http_event("/v1/batch", batch, {"authorization": basic(aws.key)}))
    assert answer(response)["rejected"] == 2
    stored = collector_handler.metrics.metric_set
    assert stored["MessagesAccepted"]["Value"] == [1.0]
    assert stored["MessagesRejected"]["Value"] == [2.0]
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_field = [doc for doc in documents if "MessagesRejected" in doc and doc.get("field")]
    assert [(doc["field"], doc["MessagesRejected"]) for doc in by_field] == [("userId", [2.0])]
    text = json.dumps(documents)
    assert "alice@example.com" not in text and "x@y.z" not in text
    collector_handler.metrics.clear_metrics()
