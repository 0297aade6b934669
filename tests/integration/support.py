"""Helpers for the integration tests: envelopes, the moto stack, the stream and bus readers, request counting.

The package's ``__init__`` sets the environment first; this module loads the handler modules from their files
(cdp_dev.handlers).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp.aws.dynamo import DynamoDueIndex, DynamoProfileStore, deserialise_item
from cdp.aws.eventbridge import EventBridgePublisher
from cdp.aws.members import DynamoMembersIndex
from cdp.aws.quarantine import S3Quarantine
from cdp.core.catalogue import Catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.pipeline.parallel import request_pool
from cdp_dev.emulator import serialise_table_stream_appends
from cdp_dev.handlers import load_handler
from cdp_dev.lambda_events import SAMPLE_REGION, SAMPLE_STREAM_ARN, sample_kinesis_record, stream_envelope

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
SEGMENTS = ROOT / "segments"
REGION = SAMPLE_REGION
PROFILES_TABLE = "cdp-profiles"
MEMBERS_TABLE = "cdp-members"
DUE_INDEX = "due"
QUARANTINE_BUCKET = "cdp-quarantine"
BUS_NAME = "cdp-bus"
QUEUE_NAME = "cdp-segment-events"
MEMBER_SHARDS = 16
DEFINITIONS_TABLE = "cdp-definitions"
WRITE_POOL = request_pool(4, "test-profile-writes")  # profile writes go out concurrently, as in Lambda
KINESIS_ARN = SAMPLE_STREAM_ARN

serialise_table_stream_appends()  # as the local stack's emulator does

ingest_handler = load_handler(ROOT, "ingest")
changes_handler = load_handler(ROOT, "changes")
timers_handler = load_handler(ROOT, "timers")


# ---- envelopes --------------------------------------------------------------------------------


def load_envelope(relative: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EVENTS / relative).read_text())
    return document


def kinesis_record(number: int, message: dict[str, Any] | bytes, batch: int = 0, shard: int = 0) -> dict[str, Any]:
    """Record ``number`` of the sample stream (as events/make_envelopes.py makes them), keyed by its customer."""
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    key = str(message.get("userId") or message.get("anonymousId")) if isinstance(message, dict) else "unknown"
    return sample_kinesis_record(number, data, key, batch=batch, shard=shard)


_puts = itertools.count(1)


def kinesis_envelope(messages: Iterable[dict[str, Any] | bytes], first: int = 1, shard: int = 0) -> dict[str, Any]:
    """A batch of new records: as on a real stream, their sequence numbers are above every earlier
    envelope's in the shard (ingest keeps a per-shard watermark), and ordered by ``first`` within it."""
    batch = next(_puts)
    return {"Records": [kinesis_record(n, m, batch=batch, shard=shard) for n, m in enumerate(messages, start=first)]}


def decoded_messages(envelope: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Each record's message, or None when it is not base64 JSON."""
    out: list[dict[str, Any] | None] = []
    for record in envelope["Records"]:
        try:
            out.append(json.loads(base64.b64decode(record["kinesis"]["data"], validate=True)))
        except ValueError:
            out.append(None)
    return out


def event_time(message: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(message.get("timestamp") or message["originalTimestamp"])).timestamp()


def last_event_time(envelope: dict[str, Any]) -> float:
    return max(event_time(m) for m in decoded_messages(envelope) if isinstance(m, dict) and "timestamp" in m)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat().replace("+00:00", "Z")


def failures(response: dict[str, Any]) -> list[str]:
    """The item identifiers of a Powertools partial-batch response, in order."""
    assert set(response) == {"batchItemFailures"}, response
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


# ---- messages ---------------------------------------------------------------------------------


def track(customer_id: str, name: str, timestamp: float, message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": customer_id, "messageId": message_id,
            "timestamp": iso(timestamp), "properties": properties}


def identify(customer_id: str, timestamp: float, message_id: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": customer_id, "messageId": message_id, "timestamp": iso(timestamp),
            "traits": traits}


def sequences_of(envelope: dict[str, Any], customer_id: str) -> list[str]:
    """The sequence numbers of the envelope's records whose message belongs to the customer."""
    return [record["kinesis"]["sequenceNumber"] for record, message in
            zip(envelope["Records"], decoded_messages(envelope), strict=True)
            if isinstance(message, dict) and (message.get("userId") or message.get("anonymousId")) == customer_id]


def customers_of(envelope: dict[str, Any]) -> set[str]:
    return {str(m.get("userId") or m.get("anonymousId")) for m in decoded_messages(envelope) if isinstance(m, dict)}


# ---- failure injection ------------------------------------------------------------------------


class InjectedError:
    """Makes a real client answer chosen calls with an AWS error, from its ``before-call`` event.

    ``when`` receives the call's request parameters (the serialised JSON body, decoded) and says whether
    to fail it; ``limit`` caps how many calls fail. A failed call never reaches moto, as a throttled
    request never reaches the table, and botocore's own retries do not see it.
    """

    def __init__(self, client: Any, operation: str, code: str, when: Any = None, status: int = 400,
                 limit: int | None = None) -> None:
        self.code, self.status, self.when, self.limit = code, status, when, limit
        self.injected = 0
        self.client = client
        self.event = f"before-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"
        # On the generic event, after the request counter: a more specific event would run before it.
        client.meta.events.register("before-call", self._maybe_fail, unique_id=f"inject-{id(self)}")

    def _maybe_fail(self, event_name: str, params: dict[str, Any], **_: Any) -> Any:
        if event_name != self.event or (self.limit is not None and self.injected >= self.limit):
            return None
        if self.when is not None:
            body = params.get("body") or b"{}"
            if not self.when(json.loads(body.decode() if isinstance(body, bytes) else body)):
                return None
        self.injected += 1
        http = type("InjectedResponse", (), {"status_code": self.status, "headers": {}, "content": b""})()
        parsed = {"Error": {"Code": self.code, "Message": "injected by the test"},
                  "ResponseMetadata": {"HTTPStatusCode": self.status}}
        return http, parsed

    def remove(self) -> None:
        self.client.meta.events.unregister("before-call", unique_id=f"inject-{id(self)}")


# ---- the event schema ---------------------------------------------------------------------------


def detail_validator() -> Any:
    """events/schemas/segment-membership.v1.json, with formats (date-time) checked."""
    from jsonschema import Draft202012Validator

    schema = json.loads((EVENTS / "schemas" / "segment-membership.v1.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# ---- request counting -------------------------------------------------------------------------


class RequestCounter:
    """Counts API calls by service and operation name, from each client's ``before-call`` event."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()

    def register(self, client: Any) -> Any:
        client.meta.events.register("before-call", self._count)
        return client

    def _count(self, event_name: str, **_: Any) -> None:
        _before_call, service, operation = event_name.split(".", 2)
        self.calls[(service, operation)] += 1

    def of(self, service: str) -> dict[str, int]:
        """Calls by operation for one service, by botocore's service id: dynamodb, dynamodb-streams, s3,
        eventbridge, sqs."""
        return {op: n for (svc, op), n in self.calls.items() if svc == service}

    def reset(self) -> None:
        self.calls.clear()


# ---- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    dynamodb: Any
    streams: Any
    s3: Any
    events: Any
    sqs: Any
    counter: RequestCounter
    clock: FixedClock
    catalogue: Catalogue
    stream_arn: str
    queue_url: str
    _after: dict[str, str] = field(default_factory=dict)

    # stores and deps

    def store(self, client: Any | None = None) -> DynamoProfileStore:
        return DynamoProfileStore(client or self.dynamodb, PROFILES_TABLE)

    def ingest_deps(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {"engine": Engine(self.catalogue), "store": self.store(),
                                  "quarantine": S3Quarantine(self.s3, QUARANTINE_BUCKET), "clock": self.clock,
                                  "pool": WRITE_POOL}
        values.update(overrides)
        return ingest_handler.Dependencies(**values)

    def changes_deps(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {"catalogue": self.catalogue,
                                  "index": DynamoMembersIndex(self.dynamodb, MEMBERS_TABLE, MEMBER_SHARDS),
                                  "publisher": EventBridgePublisher(self.events, sleep=lambda _: None),
                                  "bus_name": BUS_NAME}
        values.update(overrides)
        return changes_handler.Dependencies(**values)

    def timers_deps(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {"engine": Engine(self.catalogue), "store": self.store(),
                                  "index": DynamoDueIndex(self.dynamodb, PROFILES_TABLE, DUE_INDEX),
                                  "clock": self.clock, "pool": WRITE_POOL}
        values.update(overrides)
        return timers_handler.Dependencies(**values)

    # running the handlers

    def ingest(self, envelope: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        response: dict[str, Any] = ingest_handler.handle(envelope, None, self.ingest_deps(**overrides))
        return response

    def changes(self, envelope: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        response: dict[str, Any] = changes_handler.handle(envelope, None, self.changes_deps(**overrides))
        return response

    def timers(self, event: dict[str, Any], context: Any = None, **overrides: Any) -> dict[str, Any]:
        response: dict[str, Any] = timers_handler.handle(event, context, self.timers_deps(**overrides))
        return response

    # reading state

    def profile_item(self, customer_id: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(TableName=PROFILES_TABLE, Key={"customer_id": {"S": customer_id}},
                                      ConsistentRead=True).get("Item")
        return deserialise_item(item) if item else None

    def profile(self, customer_id: str) -> Any:
        profile = self.store().get(customer_id)
        assert profile is not None, f"no profile for {customer_id}"
        return profile

    def scan(self, table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self.dynamodb.scan(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(items, key=lambda i: json.dumps(i, sort_keys=True, default=repr))

    def members(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(segment, customer) -> the members index item (plain values)."""
        rows = {}
        for raw in self.scan(MEMBERS_TABLE):
            item = deserialise_item(raw)
            if str(item["segment_shard"]).endswith("#size"):
                continue  # a shard's size item, not a membership
            rows[(str(item["segment_shard"]).split("#")[0], str(item["customer_id"]))] = item
        return rows

    def quarantined(self) -> list[dict[str, Any]]:
        """Every quarantined record, from every object under quarantine/."""
        lines: list[dict[str, Any]] = []
        listing = self.s3.list_objects_v2(Bucket=QUARANTINE_BUCKET, Prefix="quarantine/")
        for obj in listing.get("Contents", []):
            body = self.s3.get_object(Bucket=QUARANTINE_BUCKET, Key=obj["Key"])["Body"].read().decode()
            lines += [json.loads(line) for line in body.splitlines() if line]
        return lines

    def quarantine_keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=QUARANTINE_BUCKET, Prefix="quarantine/")
        return [obj["Key"] for obj in listing.get("Contents", [])]

    # the table stream, as the changes function receives it

    def stream_records(self) -> list[dict[str, Any]]:
        """Every stream record written since the last call (boto3's shapes).

        Sequence numbers must rise within a shard: a repeated one fails here rather than being read forever.
        """
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]
        records: list[dict[str, Any]] = []
        for shard in shards:
            shard_id = shard["ShardId"]
            after = self._after.get(shard_id)
            kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
            if after:
                kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
            else:
                kwargs.update(ShardIteratorType="TRIM_HORIZON")
            iterator = self.streams.get_shard_iterator(**kwargs)["ShardIterator"]
            while iterator:
                page = self.streams.get_records(ShardIterator=iterator, Limit=1000)
                if not page["Records"]:
                    break
                for record in page["Records"]:
                    sequence = record["dynamodb"]["SequenceNumber"]
                    assert after is None or int(sequence) > int(after), (
                        f"the table stream gave sequence number {sequence} after {after}")
                    after = sequence
                records += page["Records"]
                self._after[shard_id] = sequence
                iterator = page.get("NextShardIterator")
        return records

    def stream_envelope(self) -> dict[str, Any]:
        """New stream records wrapped as the Lambda DynamoDB stream event (JSON: binary as base64 text)."""
        envelope: dict[str, Any] = json.loads(json.dumps(stream_envelope(self.stream_records(), region=REGION,
                                                                         stream_arn=self.stream_arn)))
        return envelope

    # the bus, through the rule's queue

    def drain_events(self) -> list[dict[str, Any]]:
        """Every EventBridge event delivered to the queue since the last call; ``detail`` parsed."""
        caught: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                             WaitTimeSeconds=0, VisibilityTimeout=30).get("Messages", [])
            if not batch:
                break
            for message in batch:
                event = json.loads(message["Body"])
                if isinstance(event.get("detail"), str):
                    event["detail"] = json.loads(event["detail"])
                caught.append(event)
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return caught

    def pipeline(self, envelope: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """Kinesis envelope -> ingest -> table stream -> changes -> events on the queue."""
        ingest_response = self.ingest(envelope)
        changes_response = self.changes(self.stream_envelope())
        return ingest_response, changes_response, self.drain_events()


def create_ledger_table(ddb: Any, name: str) -> None:
    """The delivery ledger as cdk/fanout.py defines it: keyed by delivery, with the keys-only index ``customer``."""
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "delivery", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "delivery", "AttributeType": "S"},
                                           {"AttributeName": "customer", "AttributeType": "S"}],
                     GlobalSecondaryIndexes=[{"IndexName": "customer",
                                              "KeySchema": [{"AttributeName": "customer", "KeyType": "HASH"}],
                                              "Projection": {"ProjectionType": "KEYS_ONLY"}}])


def create_definitions_table(ddb: Any, name: str = DEFINITIONS_TABLE) -> None:
    """The definitions store as cdk/catalogue.py defines it: keyed by segment id and version."""
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "segment_id", "KeyType": "HASH"},
                                {"AttributeName": "version", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "segment_id", "AttributeType": "S"},
                                           {"AttributeName": "version", "AttributeType": "N"}])


def create_resources(ddb: Any, s3: Any, events: Any, sqs: Any) -> tuple[str, str]:
    table = ddb.create_table(
        TableName=PROFILES_TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "customer_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "customer_id", "AttributeType": "S"},
                              {"AttributeName": "ds", "AttributeType": "S"},
                              {"AttributeName": "nd", "AttributeType": "N"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        GlobalSecondaryIndexes=[{"IndexName": DUE_INDEX,
                                 "KeySchema": [{"AttributeName": "ds", "KeyType": "HASH"},
                                               {"AttributeName": "nd", "KeyType": "RANGE"}],
                                 "Projection": {"ProjectionType": "KEYS_ONLY"}}],
    )
    stream_arn = table["TableDescription"]["LatestStreamArn"]
    ddb.create_table(
        TableName=MEMBERS_TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "segment_shard", "KeyType": "HASH"},
                   {"AttributeName": "customer_id", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "segment_shard", "AttributeType": "S"},
                              {"AttributeName": "customer_id", "AttributeType": "S"}],
    )
    s3.create_bucket(Bucket=QUARANTINE_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    events.create_event_bus(Name=BUS_NAME)
    queue_url = sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="cdp-segments-to-queue", EventBusName=BUS_NAME,
                    EventPattern=json.dumps({"source": ["cdp.segments"]}))
    events.put_targets(Rule="cdp-segments-to-queue", EventBusName=BUS_NAME,
                       Targets=[{"Id": "queue", "Arn": queue_arn}])
    return stream_arn, queue_url
