"""`cdp redrive`: failed batches re-read from the stream, and quarantined records put back."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.aws.quarantine import S3Quarantine
from cdp.ports import QuarantinedRecord
from cdp_dev.cli import main
from cdp_dev.redrive import redrive_failures, redrive_quarantine

STREAM = "redrive-events"


@pytest.fixture()
def redrive_aws() -> Iterator[dict[str, Any]]:
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        kinesis = boto3.client("kinesis", region_name="eu-west-1")
        kinesis.create_stream(StreamName=STREAM, ShardCount=1)
        arn = kinesis.describe_stream(StreamName=STREAM)["StreamDescription"]["StreamARN"]
        sqs = boto3.client("sqs", region_name="eu-west-1")
        queue_url = sqs.create_queue(QueueName="ingest-failures")["QueueUrl"]
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="quarantine", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield {"kinesis": kinesis, "sqs": sqs, "s3": s3, "queue_url": queue_url, "arn": arn}


def stream_contents(kinesis: Any) -> list[tuple[bytes, str]]:
    shard = kinesis.describe_stream(StreamName=STREAM)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=STREAM, ShardId=shard,
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return [(r["Data"], r["PartitionKey"]) for r in kinesis.get_records(ShardIterator=iterator)["Records"]]


def test_a_failed_batch_is_reread_from_its_shard_and_put_back(redrive_aws: dict[str, Any]) -> None:
    kinesis = redrive_aws["kinesis"]
    put = [kinesis.put_record(StreamName=STREAM, Data=f"record-{n}".encode(), PartitionKey=f"c{n}")
           for n in range(6)]
    # The on-failure destination's record for a batch holding records 1..3.
    info = {"KinesisBatchInfo": {"shardId": put[1]["ShardId"], "startSequenceNumber": put[1]["SequenceNumber"],
                                 "endSequenceNumber": put[3]["SequenceNumber"], "batchSize": 3,
                                 "streamArn": redrive_aws["arn"]}}
    redrive_aws["sqs"].send_message(QueueUrl=redrive_aws["queue_url"], MessageBody=json.dumps(info))

    report = redrive_failures(redrive_aws["sqs"], kinesis, redrive_aws["queue_url"], STREAM)

    assert (report.batches, report.records, report.expired) == (1, 3, 0)
    assert stream_contents(kinesis)[6:] == [(b"record-1", "c1"), (b"record-2", "c2"), (b"record-3", "c3")]
    left = redrive_aws["sqs"].receive_message(QueueUrl=redrive_aws["queue_url"]).get("Messages", [])
    assert left == []  # done with: deleted from the queue


def test_quarantined_records_go_back_whole_and_the_object_moves(redrive_aws: dict[str, Any]) -> None:
    s3 = redrive_aws["s3"]
    payloads = [b'{"type": "track"}', b"\xff\x00 binary that was not JSON"]
    S3Quarantine(s3, "quarantine").put([
        QuarantinedRecord("kinesis:events", f"{n}", f"customer-{n}", data, "type: is required", "type", 1.79e9)
        for n, data in enumerate(payloads)])

    report = redrive_quarantine(s3, redrive_aws["kinesis"], "quarantine", "quarantine/", STREAM)

    assert (report.batches, report.records) == (1, 2)
    assert stream_contents(redrive_aws["kinesis"]) == [(payloads[0], "customer-0"), (payloads[1], "customer-1")]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="quarantine").get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("redriven/quarantine/")


def test_cli_reports_a_missing_stream_in_one_line(redrive_aws: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    redrive_aws["sqs"].send_message(QueueUrl=redrive_aws["queue_url"], MessageBody=json.dumps({
        "KinesisBatchInfo": {"shardId": "shardId-000000000000", "startSequenceNumber": "1",
                             "endSequenceNumber": "2", "streamArn": redrive_aws["arn"].replace(STREAM, "gone")}}))
    code = main(["--region", "eu-west-1", "redrive", "failures", "--queue-url", redrive_aws["queue_url"],
                 "--stream", STREAM])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cdp: error: ") and err.count("\n") == 1
