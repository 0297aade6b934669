"""Bad input never crashes a batch (issue 13), end to end over the local stack: one batch on the stream
with each bad input among good events; the good ones are applied (the profile, over the API) and the
quarantine bucket on the emulator holds each bad record with its specific reason. Then a hand-edited
profile item on the table fails only its own stream record, and API errors never repeat an id."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.e2e.conftest import Running, wait_for

MARKER = "leak.me@example.com"
DEEP = "message: is nested more than 32 levels deep; the limit is 32"
AMOUNT = "must be at most 1,000,000,000,000"
STORED = ("holds a number DynamoDB cannot store: whole numbers have at most 38 digits, and numbers are finite and"
          " zero or from 1e-130 to below 1e+126 in magnitude")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def message(customer: str, tag: str, kind: str = "track", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "userId": customer, "messageId": f"{tag}-{uuid.uuid4().hex[:8]}",
                            "timestamp": iso(time.time() - 5), "context": {"library": {"name": "analytics.js"}}}
    if kind == "track":
        body["event"] = "Product Viewed"
    body.update(fields)
    return body


def deep(customer: str, levels: int) -> tuple[str, bytes]:
    body = message(customer, "deep", properties={"x": "HERE"})
    data = json.dumps(body).replace('"HERE"', '{"a":' * levels + "1" + "}" * levels).encode()
    return body["messageId"], data


def put_batch(stack: Running, records: list[bytes], partition_key: str) -> None:
    """One PutRecords call, one partition key: one shard, so the ingest function gets them as one batch."""
    kinesis = stack.client("kinesis")
    stream = stack.health["resources"]["streams"][0]
    response = kinesis.put_records(StreamName=stream, Records=[{"Data": data, "PartitionKey": partition_key}
                                                               for data in records])
    assert response["FailedRecordCount"] == 0, response


def quarantine_lines(stack: Running) -> list[tuple[str, dict[str, Any]]]:
    """(object key, line) for every quarantined record on the emulator."""
    s3 = stack.client("s3")
    bucket = next(b for b in stack.health["resources"]["buckets"] if "quarantine" in b)
    lines = []
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/").get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
        lines += [(item["Key"], json.loads(line)) for line in body.splitlines() if line]
    return lines


def quarantined(stack: Running, message_ids: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]] | None:
    """The quarantined (key, line) of each message id once all are there (a line is found by its payload)."""
    found = {}
    for key, line in quarantine_lines(stack):
        data = base64.b64decode(line["data"])
        for name, message_id in message_ids.items():
            if message_id.encode() in data:
                found[name] = (key, line)
    return found if len(found) == len(message_ids) else None


def profile(stack: Running, customer: str, views: int) -> dict[str, Any] | None:
    status, body = stack.get(f"/customers/{customer}")
    if status != 200:
        return None
    counts = {c["key"]: c["lifetime"] for c in body["counters"]}
    return body if counts.get("Product Viewed", 0) >= views else None


def test_one_batch_with_every_bad_input_applies_the_good_and_quarantines_each_bad_with_its_reason(
        stack: Running) -> None:
    who = f"e2e-bad-{uuid.uuid4().hex[:8]}"
    now = time.time()
    bad: dict[str, dict[str, Any]] = {
        "revenue": message(who, "revenue", event="Order Completed", properties={"order_id": "o-1", "revenue": 1e40}),
        "price": message(who, "price", event="Product Added", properties={"product_id": "p-1", "price": 1e40}),
        "quantity": message(who, "quantity", event="Product Added",
                            properties={"product_id": "p-1", "price": 1, "quantity": 10**40}),
        "trait": message(who, "trait", kind="identify", traits={"score": 10**40}),
        "future": message(who, "future", timestamp="2999-01-01T00:00:00Z"),
        "past": message(who, "past", timestamp="1999-12-31T23:59:59Z"),
        "marker": message(who, "marker", timestamp=MARKER),
    }
    deep_id, deep_data = deep(who, 1000)
    assert 5_000 < len(deep_data) < 7_000
    good = [message(who, f"good-{n}", timestamp=iso(now - 30 + n)) for n in range(3)]
    records = [json.dumps(good[0]).encode(), deep_data, *(json.dumps(m).encode() for m in bad.values()),
               json.dumps(good[1]).encode(), json.dumps(good[2]).encode(),
               json.dumps(message(who, "trait-ok", kind="identify", traits={"plan": "gold"})).encode()]

    put_batch(stack, records, who)

    applied = wait_for(lambda: profile(stack, who, 3), timeout=30)
    assert {c["key"]: c["lifetime"] for c in applied["counters"]}["Product Viewed"] == 3
    assert applied["traits"] == {"plan": "gold"}
    assert applied["cart"]["items"] == [] and applied["rfm"]["orders"] == 0  # the bad order and adds: none
    lines = wait_for(lambda: quarantined(stack, {"deep": deep_id, **{k: m["messageId"] for k, m in bad.items()}}),
                     timeout=30)
    reasons = {name: (line["field"], line["reason"]) for name, (_, line) in lines.items()}
    assert reasons == {
        "deep": ("message", DEEP),
        "revenue": ("properties.revenue", f"properties.revenue: {AMOUNT}"),
        "price": ("properties.price", f"properties.price: {AMOUNT}"),
        "quantity": ("properties.quantity", "properties.quantity: must be a whole number from 1 to 10,000"),
        "trait": ("traits.score", f"traits.score: {STORED}"),
        "future": ("timestamp", "timestamp: is more than 300 s in the future"),
        "past": ("timestamp", "timestamp: is before 2000-01-01T00:00:00Z, the earliest accepted"),
        "marker": ("timestamp", "timestamp: is not an ISO 8601 timestamp"),
    }
    assert all(MARKER not in line["reason"] for _, line in lines.values())
    # one batch, one object: quarantine/YYYY/MM/DD/<stream>-<shard>-<first sequence>.jsonl
    keys = {key for key, _ in lines.values()}
    assert len(keys) == 1
    (key,) = keys
    shard = lines["deep"][1]["shard"]
    assert shard.startswith("shardId-") and f"-{shard}-" in key and key.endswith(".jsonl")
    health = stack.get("/health")[1]
    assert health["status"] == "ok" and not [e for e in health["errors"] if e.startswith("ingest")], health["errors"]


def shard_keys(stack: Running) -> dict[str, str]:
    """A partition key that lands on each shard of the stream (by the MD5 hash ranges)."""
    kinesis = stack.client("kinesis")
    shards = kinesis.describe_stream(StreamName=stack.health["resources"]["streams"][0])["StreamDescription"]["Shards"]
    keys: dict[str, str] = {}
    for n in range(10_000):
        candidate = f"e2e-shard-{uuid.uuid4().hex[:6]}-{n}"
        point = int(hashlib.md5(candidate.encode()).hexdigest(), 16)
        for shard in shards:
            low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
            if low <= point <= high and shard["ShardId"] not in keys:
                keys[shard["ShardId"]] = candidate
        if len(keys) == len(shards):
            break
    return keys


def test_each_shards_quarantined_batch_is_its_own_object(stack: Running) -> None:
    keys = shard_keys(stack)
    assert len(keys) >= 2
    sent = {}
    for shard, customer in keys.items():
        poison = message(customer, "no-such-type", type="purchase")
        sent[shard] = poison["messageId"]
        put_batch(stack, [json.dumps(poison).encode()], customer)

    lines = wait_for(lambda: quarantined(stack, sent), timeout=30)

    assert {shard: line["shard"] for shard, (_, line) in lines.items()} == {shard: shard for shard in keys}
    assert len({key for key, _ in lines.values()}) == len(keys)
    for shard, (key, line) in lines.items():
        assert f"-{shard}-{line['sequence']}.jsonl" in key
        assert line["reason"] == "type: must be one of track, identify, page, screen, alias, group"


def test_a_hand_edited_profile_item_fails_only_its_own_stream_record(stack: Running) -> None:
    dynamodb, sqs = stack.client("dynamodb"), stack.client("sqs")
    table = stack.health["environment"]["ingest"]["PROFILES_TABLE"]
    queue = next(q for q in stack.health["resources"]["queues"] if "changes" in q.lower() and "fail" in q.lower())
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    foreign = f"e2e-foreign-{uuid.uuid4().hex[:8]}"
    dynamodb.put_item(TableName=table, Item={"customer_id": {"S": foreign}, "v": {"N": "1"},
                                             "m": {"S": MARKER}})  # a string where a map belongs
    who = f"e2e-after-{uuid.uuid4().hex[:8]}"
    put_batch(stack, [json.dumps(message(who, "add", event="Product Added",
                                         properties={"product_id": "p1", "price": 20})).encode()], who)

    # The other records proceed: the good customer's segment entry is published.
    status = wait_for(lambda: (lambda r: r[1] if r[0] == 200 and r[1]["segments"] else None)(
        stack.get(f"/customers/{who}/segments")), timeout=30)
    assert "potential-abandoners" in [s["id"] for s in status["segments"]]

    # The foreign record, after its retries, goes to the changes function's on-failure queue.
    def given_up() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       VisibilityTimeout=0).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    batches = wait_for(given_up, timeout=40)
    assert all("DDBStreamBatchInfo" in batch for batch in batches)
    health = stack.get("/health")[1]
    assert health["components"]["table stream->changes"] == "running"
    assert not [e for e in health["errors"] if e.startswith("changes")], health["errors"]


def test_api_errors_never_repeat_the_customer_id(stack: Running) -> None:
    status, body = stack.get(f"/customers/{MARKER}")
    assert status == 404 and body["code"] == "not_found"
    assert MARKER not in json.dumps(body)
    status, body = stack.get(f"/customers/{MARKER}/nothing/here")
    assert status == 404 and MARKER not in json.dumps(body)
