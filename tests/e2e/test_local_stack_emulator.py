"""The local stack's replacements of moto's methods answer exactly as moto's own do, and its ingest totals add
up each invocation's batch result."""

from __future__ import annotations

import json
import types
from collections import Counter
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.events.utils import EventTemplateParser
from moto.kinesis.models import Shard
from moto.sqs.exceptions import QueueDoesNotExist
from moto.sqs.models import Message, SQSBackend

from cdp.pipeline.changes import ChangesResult
from cdp.pipeline.ingest import BatchResult
from cdp_dev import emulator
from cdp_dev.local_stack import ChangeTotals, IngestTotals, drop_oldest, observe_batches


def filled_shard(records: int) -> Shard:
    shard = Shard(0, 0, 2 ** 128)
    for number in range(records):
        shard.put_record(f"customer-{number % 7}", f"data-{number}", None)  # type: ignore[arg-type]
    return shard


def read_all(shard: Shard, get: Any, limit: int | None) -> list[tuple[list[int], int, int]]:
    """Every page from the start, as a poller reads them (each from the last sequence returned)."""
    pages, after = [], "0"
    while True:
        records, last, behind = get(shard, after, limit)
        pages.append(([r.sequence_number for r in records], last, behind))
        if not records:
            return pages
        after = str(last)


@pytest.mark.parametrize(("records", "limit"), [(0, 10), (1, 10), (25, 10), (30, 10), (7, None), (12, 0)])
def test_kinesis_lookups_read_the_same_pages_as_moto(records: int, limit: int | None) -> None:
    shard = filled_shard(records)
    original = Shard.get_records if Shard.get_records is not emulator.shard_records_after \
        else emulator.ORIGINAL_GET_RECORDS
    assert read_all(shard, emulator.shard_records_after, limit) == read_all(shard, original, limit)


def test_kinesis_lookups_read_from_any_position_and_past_the_end() -> None:
    shard = filled_shard(20)
    original = Shard.get_records if Shard.get_records is not emulator.shard_records_after \
        else emulator.ORIGINAL_GET_RECORDS
    for after, limit in [("5", 3), ("19", 5), ("20", 5), ("400", 1), ("0", 100)]:
        mine, theirs = emulator.shard_records_after(shard, after, limit), original(shard, after, limit)
        assert ([r.sequence_number for r in mine[0]], mine[1]) == ([r.sequence_number for r in theirs[0]], theirs[1])


def test_kinesis_lookups_number_new_records_as_moto_does() -> None:
    emulator.install_kinesis_lookups()
    shard = filled_shard(5)
    assert [int(shard.put_record("k", "d", None)) for _ in range(3)] == [6, 7, 8]  # type: ignore[arg-type]
    assert (shard.get_min_sequence_number(), shard.get_max_sequence_number()) == (1, 8)
    assert (Shard(1, 0, 1).get_min_sequence_number(), Shard(1, 0, 1).get_max_sequence_number()) == (0, 0)


def test_an_event_renders_the_same_through_the_compiled_paths() -> None:
    event = {"version": "0", "id": "e-1", "detail-type": "Segment Entered", "source": "cdp.segments",
             "account": "123456789012", "time": 1790000000, "region": "us-east-1", "resources": [],
             "detail": {"segment": {"id": "vip"}, "customer_id": "c-1"}, "ingestion-time": 1790000000}
    before = EventTemplateParser.parse(None, {}, event)  # type: ignore[arg-type]
    emulator.install_event_path_cache()
    emulator.install_event_path_cache()  # installing twice wraps once
    custom = {"InputTemplate": '{"who": "<who>", "segment": "<segment>"}',
              "InputPathsMap": {"who": "$.detail.customer_id", "segment": "$.detail.segment.id"}}
    assert EventTemplateParser.parse(None, {}, event) == before  # type: ignore[arg-type]
    assert EventTemplateParser.parse(None, {}, event) == before  # type: ignore[arg-type]
    assert EventTemplateParser.parse(custom["InputTemplate"], custom["InputPathsMap"], event) == {  # type: ignore[arg-type]
        "who": "c-1", "segment": "vip"}
    assert json.loads(json.dumps(before))["detail"] == event["detail"]


def moto_retention_check() -> Any:
    own = SQSBackend.is_message_valid_based_on_retention_period
    return own if own is not emulator.message_within_retention else emulator.ORIGINAL_RETENTION_CHECK


@pytest.mark.parametrize("age_seconds", [0, 59, 61, 86400 * 5])
@pytest.mark.parametrize("retention", [None, "60", "345600"])
def test_the_retention_check_answers_as_moto_does(age_seconds: int, retention: str | None) -> None:
    backend = SQSBackend("us-east-1", "123456789012")
    attributes: dict[str, Any] = {"MessageRetentionPeriod": retention} if retention else {}
    backend.create_queue("q", **attributes)
    message = Message("m-1", "body")
    message.mark_sent()
    message.sent_timestamp -= age_seconds * 1000  # type: ignore[operator,assignment]
    assert emulator.message_within_retention(backend, "q", message) == moto_retention_check()(backend, "q", message)
    for check in (emulator.message_within_retention, moto_retention_check()):
        with pytest.raises(QueueDoesNotExist):
            check(backend, "missing", message)


def test_a_receive_with_the_retention_check_installed_returns_what_moto_returns() -> None:
    emulator.install_queue_retention_check()
    emulator.install_queue_retention_check()  # installing twice keeps moto's own as the original
    assert emulator.ORIGINAL_RETENTION_CHECK is not emulator.message_within_retention
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        for number in range(12):
            sqs.send_message(QueueUrl=url, MessageBody=f"m-{number}")
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in received] == [f"m-{number}" for number in range(10)]


SENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("q", "plain", {}),
    ("q", "attributes", {"message_attributes": {"kind": {"data_type": "String", "string_value": "x"}}}),
    ("q", "delayed", {"delay_seconds": 5}),
    ("q", "not delayed", {"delay_seconds": 0}),
    ("q", "text delay", {"delay_seconds": "7"}),
    ("slow", "queue delay", {}),
    ("q", "with ids", {"deduplication_id": "d-1", "group_id": "g-1", "system_attributes": {"AWSTraceHeader": "t"}}),
    ("q", "too late", {"delay_seconds": 901}),
    ("q", "x" * 1_100_000, {}),
    ("missing", "no queue", {}),
    ("f.fifo", "fifo", {"group_id": "g-1", "deduplication_id": "d-1"}),
    ("f.fifo", "fifo again", {"group_id": "g-1", "deduplication_id": "d-1"}),
    ("f.fifo", "fifo without group", {}),
    ("c.fifo", "content deduplicated", {"group_id": "g-2"}),
]


def delay_of(message: Any) -> int:
    """The seconds a message was delayed by when it was sent."""
    return round((message.delayed_until - message.sent_timestamp) / 1000) if message.delayed_until else 0


def sent(send: Any) -> list[Any]:
    """What each of :data:`SENDS` leaves behind through ``send``: the message's fields and the queue's, or the
    error raised."""
    from moto.moto_api._internal import mock_random

    mock_random.seed(15)
    backend = SQSBackend("us-east-1", "123456789012")
    backend.create_queue("q")
    backend.create_queue("slow", DelaySeconds="3")
    backend.create_queue("f.fifo", FifoQueue="true")
    backend.create_queue("c.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    outcomes: list[Any] = []
    for queue, body, options in SENDS:
        try:
            message = send(backend, queue, body, **options)
        except Exception as error:  # the error is the outcome compared
            outcomes.append((type(error).__name__, str(error)))
            continue
        fields = {name: value for name, value in vars(message).items()
                  if name not in ("sent_timestamp", "visible_at", "delayed_until")}
        outcomes.append((fields, message.delayed, message.visible, delay_of(message),
                         [m.id for m in backend.get_queue(queue)._messages]))
    return outcomes


def test_a_send_to_a_standard_queue_leaves_what_moto_leaves() -> None:
    emulator.install_standard_queue_send()  # a FIFO queue's send goes to moto's own, kept on install
    mine, theirs = sent(emulator.send_to_standard_queue), sent(emulator.ORIGINAL_SEND_MESSAGE)
    assert mine == theirs
    assert [type(outcome[0]) for outcome in mine].count(dict) == 10
    assert mine[7][0] == "InvalidParameterValue" and mine[9][0] == "QueueDoesNotExist"


def test_sends_through_the_installed_replacement_arrive_as_through_moto() -> None:
    emulator.install_standard_queue_send()
    emulator.install_standard_queue_send()  # installing twice keeps moto's own as the original
    assert emulator.ORIGINAL_SEND_MESSAGE is not emulator.send_to_standard_queue
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="one")
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": f"e{n}", "MessageBody": f"m-{n}"} for n in range(3)])
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in received] == ["one", "m-0", "m-1", "m-2"]


def test_the_feed_keeper_drops_the_oldest_waiting_messages_down_to_what_it_keeps() -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="feed")["QueueUrl"]
        for number in range(25):
            sqs.send_message(QueueUrl=url, MessageBody=f"m-{number}")
        in_flight = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)["Messages"]
        assert drop_oldest(sqs, url, 10) == 13  # 23 waiting, 2 in flight: untouched, not counted
        assert drop_oldest(sqs, url, 10) == 0
        left = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            left += [m["Body"] for m in batch]
        assert left == [f"m-{number}" for number in range(15, 25)]
        assert [m["Body"] for m in in_flight] == ["m-0", "m-1"]


def test_ingest_totals_add_up_each_invocations_batch_result() -> None:
    totals = IngestTotals()
    results = iter([BatchResult(applied=3, duplicates=1, failed=["9"]),
                    BatchResult(applied=1, quarantined=Counter({"properties.order_id": 2}))])
    module = types.SimpleNamespace(ingest_batch=lambda records, *rest: next(results))
    observe_batches(module, "ingest_batch", totals.add)
    observe_batches(module, "ingest_batch", totals.add)  # a second stack in the process counts once, not twice
    assert module.ingest_batch(["a", "b", "c", "d", "e"], "engine").applied == 3
    module.ingest_batch(["f", "g", "h"], "engine")
    assert totals.as_json() == {"records": 8, "applied": 4, "duplicates": 1, "quarantined": 2, "retried": 1}


def test_change_totals_count_published_transitions_and_retries() -> None:
    totals = ChangeTotals()
    module = types.SimpleNamespace(publish_changes=lambda records, *rest: ChangesResult(
        failed=["s-2"], published=[object(), object()]))  # type: ignore[list-item]
    observe_batches(module, "publish_changes", totals.add)
    module.publish_changes(["s-1", "s-2", "s-3"])
    assert totals.as_json() == {"records": 3, "published": 2, "retried": 1}


ITEM = {"pk": {"S": "c-1"}, "text": {"S": ""}, "count": {"N": "12.50"}, "blob": {"B": b"\x00\xffz"},
        "names": {"SS": ["a", "b"]}, "numbers": {"NS": ["1", "2.5"]}, "blobs": {"BS": [b"x", b"\x01"]},
        "nothing": {"NULL": True}, "yes": {"BOOL": True}, "no": {"BOOL": False}, "empty_map": {"M": {}},
        "empty_list": {"L": []}, "nested": {"M": {"a": {"L": [{"N": "1"}, {"M": {"b": {"S": "deep"}}},
                                                             {"L": []}, {"NULL": True}]}, "c": {"BOOL": False}}}}


def raw_bodies() -> list[bytes]:
    """The emulator's raw JSON answers to each read of an item."""
    bodies: list[bytes] = []
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        session.events.register("before-parse.*.*", lambda response_dict, **_: bodies.append(response_dict["body"]))
        dynamodb = session.client("dynamodb")
        dynamodb.create_table(
            TableName="t", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
        dynamodb.put_item(TableName="t", Item=ITEM)
        dynamodb.put_item(TableName="t", Item={**ITEM, "count": {"N": "13"}}, ReturnValues="ALL_OLD")
        del bodies[:]
        dynamodb.get_item(TableName="t", Key={"pk": {"S": "c-1"}})
        dynamodb.batch_get_item(RequestItems={"t": {"Keys": [{"pk": {"S": "c-1"}}, {"pk": {"S": "none"}}]}})
        dynamodb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "c-1"}})
        dynamodb.scan(TableName="t")
    return bodies


def test_attribute_values_are_written_byte_for_byte_as_moto_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core.serialize import BaseJSONSerializer

    emulator.install_attribute_value_writer()
    emulator.install_attribute_value_writer()  # installing twice keeps moto's own as the original
    assert emulator.ORIGINAL_SERIALIZE_STRUCTURE is not emulator.serialize_structure
    mine = raw_bodies()
    monkeypatch.setattr(BaseJSONSerializer, "_serialize_type_structure", emulator.ORIGINAL_SERIALIZE_STRUCTURE)
    theirs = raw_bodies()
    assert len(mine) == 4 and all(b'"deep"' in body for body in mine)
    assert mine == theirs


def test_an_attribute_value_of_other_members_is_left_to_moto() -> None:
    for odd in ({}, {"X": "1"}, {"S": "a", "other": 1}, {"M": {"a": {"Q": 1}}}, "text"):
        with pytest.raises(emulator.NotPlain):
            emulator.plain_attribute_value(None, odd)


def indexed_table(dynamodb: Any, range_key: bool) -> None:
    """A table with a sparse due-style index (all attributes), a KEYS_ONLY one and one without a sort key."""
    keys = [{"AttributeName": "pk", "KeyType": "HASH"}] + ([{"AttributeName": "sk", "KeyType": "RANGE"}]
                                                          if range_key else [])
    names = ["pk", "ds", "nd", "grp"] + (["sk"] if range_key else [])
    dynamodb.create_table(
        TableName="t", KeySchema=keys, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "N" if name == "nd" else "S"}
                              for name in names],
        GlobalSecondaryIndexes=[
            {"IndexName": "due", "KeySchema": [{"AttributeName": "ds", "KeyType": "HASH"},
                                               {"AttributeName": "nd", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "ALL"}},
            {"IndexName": "keys", "KeySchema": [{"AttributeName": "ds", "KeyType": "HASH"},
                                                {"AttributeName": "nd", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}},
            {"IndexName": "group", "KeySchema": [{"AttributeName": "grp", "KeyType": "HASH"}],
             "Projection": {"ProjectionType": "ALL"}}])
    for number in range(60):
        item: dict[str, Any] = {"pk": {"S": f"c-{number % 23:02}"}, "note": {"S": "x" * (number % 5)}}
        if range_key:
            item["sk"] = {"S": f"s-{number % 3}"}
        if number % 4:  # sparse: a quarter of the items are not in the due indexes
            item |= {"ds": {"S": f"{number % 3}"}, "nd": {"N": str(1000 + (number * 37) % 50)}}
        if number % 5 == 0:
            item["grp"] = {"S": f"g-{number % 2}"}
        dynamodb.put_item(TableName="t", Item=item)


INDEX_QUERIES: list[dict[str, Any]] = [
    {"IndexName": "due", "KeyConditionExpression": "ds = :s AND nd <= :u",
     "ExpressionAttributeValues": {":s": {"S": "1"}, ":u": {"N": "1030"}}, "Limit": 4},
    {"IndexName": "due", "KeyConditionExpression": "ds = :s AND nd <= :u",
     "ExpressionAttributeValues": {":s": {"S": "2"}, ":u": {"N": "2000"}}, "Limit": 3, "ScanIndexForward": False},
    {"IndexName": "keys", "KeyConditionExpression": "ds = :s AND nd BETWEEN :a AND :b",
     "ExpressionAttributeValues": {":s": {"S": "0"}, ":a": {"N": "1010"}, ":b": {"N": "1040"}}, "Limit": 2},
    {"IndexName": "due", "KeyConditionExpression": "ds = :s",
     "ExpressionAttributeValues": {":s": {"S": "1"}, ":o": {"S": "xx"}}, "FilterExpression": "note = :o"},
    {"IndexName": "due", "KeyConditionExpression": "ds = :s", "ProjectionExpression": "pk, nd",
     "ExpressionAttributeValues": {":s": {"S": "0"}}, "Limit": 5},
    {"IndexName": "due", "KeyConditionExpression": "ds = :s", "ExpressionAttributeValues": {":s": {"S": "9"}}},
    {"IndexName": "group", "KeyConditionExpression": "grp = :g", "ExpressionAttributeValues": {":g": {"S": "g-0"}},
     "Limit": 2},
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "c-03"}}, "Limit": 1},
]


def every_page(range_key: bool) -> list[Any]:
    """Each of :data:`INDEX_QUERIES` paged to the end (each page from the last page's LastEvaluatedKey)."""
    pages: list[Any] = []
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        indexed_table(dynamodb, range_key)
        for query in INDEX_QUERIES:
            start: dict[str, Any] = {}
            while True:
                page = dynamodb.query(TableName="t", **query, **start)
                page.pop("ResponseMetadata")
                pages.append(page)
                if "LastEvaluatedKey" not in page:
                    break
                start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
    return pages


@pytest.mark.parametrize("range_key", [False, True])
def test_an_index_query_pages_exactly_as_moto_does(monkeypatch: pytest.MonkeyPatch, range_key: bool) -> None:
    from moto.dynamodb.models.table import Table

    emulator.install_index_query()
    emulator.install_index_query()  # installing twice keeps moto's own as the original
    assert emulator.ORIGINAL_QUERY is not emulator.query_index_partition
    mine = every_page(range_key)
    monkeypatch.setattr(Table, "query", emulator.ORIGINAL_QUERY)
    theirs = every_page(range_key)
    assert mine == theirs
    assert len(mine) > len(INDEX_QUERIES) and any(page["Count"] == 0 for page in mine)
    assert any(set(item) == {"pk", "ds", "nd"} | ({"sk"} if range_key else set())
               for page in mine for item in page["Items"])  # the KEYS_ONLY index's projection


def built(init: Any, attrs: dict[str, Any]) -> Any:
    """An item built by ``init`` (moto's ``Item.__init__`` or its replacement): its keys and attributes in order,
    or the error raised."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    item: Any = Item.__new__(Item)
    try:
        init(item, DynamoType({"S": "c-1"}), None, attrs)
    except Exception as error:  # the error is the outcome compared
        return type(error).__name__
    assert type(item.attrs) is LimitedSizeDict
    return item.hash_key, item.range_key, list(item.attrs.items())


def test_an_item_is_built_as_moto_builds_it() -> None:
    from moto.dynamodb.models.dynamo_type import Item

    emulator.install_item_builder()
    emulator.install_item_builder()  # installing twice keeps moto's own as the original
    assert emulator.ORIGINAL_ITEM_INIT is not emulator.build_item and Item.__init__ is emulator.build_item
    near = 405000 - len("pk") - len("c-1") - len("big")
    cases: list[dict[str, Any]] = [ITEM, {}, {"pk": {"S": "c-1"}, "big": {"S": "x" * near}},
             {"pk": {"S": "c-1"}, "big": {"S": "x" * (near + 1)}},
             {"big": {"S": "x" * 404500}, "more": {"L": [{"S": "y" * 500}, {"N": "12345"}]}, "after": {"S": "z"}},
             {"pk": {"S": "c-1"}, "list": {"L": [{"M": {"k": {"SS": ["a", "bb"]}}}] * 120000}}, {"bad": {"Q": "1"}}]
    outcomes = [(built(emulator.build_item, case), built(emulator.ORIGINAL_ITEM_INIT, case)) for case in cases]
    assert all(mine == theirs for mine, theirs in outcomes)
    assert [mine for mine, _ in outcomes].count("ItemSizeTooLarge") == 3
    assert outcomes[2][0] != "ItemSizeTooLarge"
