"""AWS requests per event through the real handlers on an in-process emulator (moto), counted with a
botocore hook, against the floor the design allows; plus the item sizes and serialisation time the
cost model needs.

    python bench/pipeline_requests.py

Floor for ingest: one BatchGetItem per 100 customers in the batch plus one PutItem per changed customer.
Ingest makes no EventBridge request at all: the profile table's stream is the outbox, and the changes
function publishes. Its requests are counted per transition.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cdp_dev.handlers import load_handler
from cdp_dev.lambda_events import kinesis_record, stream_record

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
PROFILES, MEMBERS, BUCKET, BUS = "bench-profiles", "bench-members", "bench-quarantine", "bench-bus"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:123456789012:stream/bench-events"


class Requests:
    """Requests by (service, operation), from each client's before-call event."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def watch(self, client: Any) -> Any:
        client.meta.events.register("before-call", lambda event_name, **_: self.calls.update(
            [event_name.split(".", 2)[2]]))
        return client

    def take(self) -> dict[str, int]:
        taken = dict(self.calls)
        self.calls.clear()
        return taken


def kinesis_envelope(records: list[bytes], start: int) -> dict[str, Any]:
    return {"Records": [kinesis_record(r, json.loads(r)["userId"], str(start + n), arrival=time.time(),
                                       stream_arn=STREAM_ARN, region=REGION) for n, r in enumerate(records)]}


def stream_envelope(streams: Any, arn: str, after: dict[str, str]) -> dict[str, Any]:
    out = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        kwargs: dict[str, Any] = {"StreamArn": arn, "ShardId": shard["ShardId"]}
        kwargs.update({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after[shard["ShardId"]]}
                      if shard["ShardId"] in after else {"ShardIteratorType": "TRIM_HORIZON"})
        iterator = streams.get_shard_iterator(**kwargs)["ShardIterator"]
        found = []
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break
            found += page["Records"]
            iterator = page.get("NextShardIterator")
        for record in found:
            out.append(stream_record(record, region=REGION, stream_arn=arn))
            after[shard["ShardId"]] = record["dynamodb"]["SequenceNumber"]
    return {"Records": out}


def measure() -> dict[str, Any]:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION,
                       "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled", "POWERTOOLS_METRICS_DISABLED": "true",
                       "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"})
    import boto3
    from moto import mock_aws

    from bench.core_speed import workload
    from cdp.aws.dynamo import DynamoProfileStore, deserialise_item, serialise_item
    from cdp.aws.eventbridge import EventBridgePublisher
    from cdp.aws.members import DynamoMembersIndex
    from cdp.aws.quarantine import S3Quarantine
    from cdp.core.catalogue import load_catalogue
    from cdp.core.clock import EventClock
    from cdp.core.engine import Engine
    from cdp.core.profile import item_size

    ingest, changes, api = (load_handler(ROOT, name) for name in ("ingest", "changes", "api"))
    catalogue = load_catalogue(ROOT / "segments")
    with mock_aws():
        requests = Requests()
        dynamodb = requests.watch(boto3.client("dynamodb", region_name=REGION))
        events = requests.watch(boto3.client("events", region_name=REGION))
        s3 = boto3.client("s3", region_name=REGION)
        streams = boto3.client("dynamodbstreams", region_name=REGION)
        stream_arn = dynamodb.create_table(
            TableName=PROFILES, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "customer_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t}
                                  for n, t in (("customer_id", "S"), ("ds", "S"), ("nd", "N"))],
            GlobalSecondaryIndexes=[{"IndexName": "due", "Projection": {"ProjectionType": "KEYS_ONLY"},
                                     "KeySchema": [{"AttributeName": "ds", "KeyType": "HASH"},
                                                   {"AttributeName": "nd", "KeyType": "RANGE"}]}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )["TableDescription"]["LatestStreamArn"]
        dynamodb.create_table(
            TableName=MEMBERS, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "segment_shard", "KeyType": "HASH"},
                       {"AttributeName": "customer_id", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "segment_shard", "AttributeType": "S"},
                                  {"AttributeName": "customer_id", "AttributeType": "S"}])
        s3.create_bucket(Bucket=BUCKET)
        events.create_event_bus(Name=BUS)
        requests.take()
        clock = EventClock()
        ingest_deps = ingest.Dependencies(Engine(catalogue), DynamoProfileStore(dynamodb, PROFILES),
                                          S3Quarantine(s3, BUCKET), clock)
        changes_deps = changes.Dependencies(catalogue, DynamoMembersIndex(dynamodb, MEMBERS, 16),
                                            EventBridgePublisher(events), BUS)
        after: dict[str, str] = {}
        figures: dict[str, Any] = {"ingest": {}, "changes": {}}
        sequence = 0
        transitions = 0
        changes_requests: Counter[str] = Counter()
        for label, customers, per_customer in (("batch100_customers20", 20, 5), ("batch100_customers100", 100, 1),
                                               ("batch100_customers20_again", 20, 5)):
            again = label.endswith("again")
            records = [r for batch in workload(customers, per_customer, seed=11 if again else 7,
                                               prefix="twenty" if customers == 20 else "hundred") for r in batch]
            if again:  # the same customers, new events: existing profiles
                records = [r.replace(b'"messageId": "', b'"messageId": "again-') for r in records]
            response = ingest.handle(kinesis_envelope(records, sequence), None, ingest_deps)
            sequence += len(records)
            assert response == {"batchItemFailures": []}, response
            counted = requests.take()
            floor = -(-customers // 100) + customers
            figures["ingest"][label] = {"events": len(records), "customers": customers, "requests": counted,
                                        "requests_per_event": sum(counted.values()) / len(records),
                                        "floor_requests_per_event": floor / len(records),
                                        "ratio_to_floor": sum(counted.values()) / floor}
            envelope = stream_envelope(streams, stream_arn, after)
            changes.handle(envelope, None, changes_deps)
            counted = requests.take()
            changes_requests.update(counted)
            made = sum(len((r["dynamodb"].get("NewImage") or {}).get("tx", {}).get("L", []))
                       for r in envelope["Records"])
            figures["ingest"][label]["transitions_per_event"] = made / len(records)
            transitions += made
        figures["changes"] = {"transitions": transitions, "requests": dict(changes_requests),
                              "requests_per_transition": sum(changes_requests.values()) / max(transitions, 1)}

        items = [deserialise_item(i) for i in dynamodb.scan(TableName=PROFILES)["Items"]]
        requests.take()
        figures["profile_item_bytes_mean"] = sum(item_size(i) for i in items) / len(items)
        started = time.process_time()
        for _ in range(20):
            for item in items:
                deserialise_item(serialise_item(item))
        figures["serialise_us_per_profile"] = (time.process_time() - started) / (20 * len(items)) * 1e6

        api.configure(api.Dependencies(catalogue, DynamoProfileStore(dynamodb, PROFILES),
                                       DynamoMembersIndex(dynamodb, MEMBERS, 16), clock, "sub"))
        event = json.loads((ROOT / "events" / "api" / "get-customer.json").read_text())
        customer = items[0]["customer_id"]
        event.update(path=f"/customers/{customer}", pathParameters={"customer_id": customer})
        response = api.app.resolve(event, None)
        assert response["statusCode"] == 200, response
        counted = requests.take()
        figures["api"] = {"get_profile_requests": counted, "requests_per_get_profile": sum(counted.values()),
                          "dynamodb_reads_per_get_profile": sum(v for k, v in counted.items() if "Get" in k)}
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(measure(), indent=2))
