"""Redrive: put records back on the stream, from the on-failure destination or from the quarantine.

Re-sending is safe: ingest drops message ids it has already applied.

* Failed batches: the event source mapping's on-failure queue holds, per failed batch,
  the shard and the first and last sequence numbers. The records are re-read from the
  stream while it still retains them, and put back with their partition keys.
* Quarantine: each object holds the records of one batch that could never be applied,
  with the reason. After fixing the producer or the definitions, they go back on the
  stream and the object moves to ``redriven/``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PUT_RECORDS_LIMIT = 500


@dataclass
class RedriveReport:
    batches: int = 0
    records: int = 0
    expired: int = 0  # failed batches whose records the stream no longer retains


def put_back(kinesis: Any, stream_name: str, records: list[tuple[bytes, str]], attempts: int = 5) -> int:
    """PutRecords in chunks of 500, resending the records that failed. Returns how many were put."""
    sent = 0
    for start in range(0, len(records), PUT_RECORDS_LIMIT):
        pending = records[start:start + PUT_RECORDS_LIMIT]
        for _ in range(attempts):
            response = kinesis.put_records(StreamName=stream_name, Records=[
                {"Data": data, "PartitionKey": key} for data, key in pending])
            failed = [record for record, result in zip(pending, response["Records"], strict=True)
                      if result.get("ErrorCode")]
            sent += len(pending) - len(failed)
            pending = failed
            if not pending:
                break
        if pending:
            raise RuntimeError(f"{len(pending)} records could not be put back on {stream_name}")
    return sent


def failed_batch_records(kinesis: Any, info: dict[str, Any]) -> Iterator[tuple[bytes, str]]:
    """Re-read one failed batch's records (first to last sequence number) from its shard."""
    stream_arn = info["streamArn"]
    iterator = kinesis.get_shard_iterator(StreamARN=stream_arn, ShardId=info["shardId"],
                                          ShardIteratorType="AT_SEQUENCE_NUMBER",
                                          StartingSequenceNumber=info["startSequenceNumber"])["ShardIterator"]
    last = int(info["endSequenceNumber"])
    while iterator:
        response = kinesis.get_records(ShardIterator=iterator, Limit=1000, StreamARN=stream_arn)
        for record in response["Records"]:
            if int(record["SequenceNumber"]) > last:
                return
            yield bytes(record["Data"]), record["PartitionKey"]
        if not response["Records"] and response.get("MillisBehindLatest", 0) == 0:
            return
        iterator = response.get("NextShardIterator")


def redrive_failures(sqs: Any, kinesis: Any, queue_url: str, stream_name: str,
                     max_batches: int = 1000) -> RedriveReport:
    report = RedriveReport()
    while report.batches < max_batches:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            break
        for message in messages:
            info = json.loads(message["Body"]).get("KinesisBatchInfo")
            if info is None:
                continue  # not a Kinesis failure record; leave it for a person
            try:
                records = list(failed_batch_records(kinesis, info))
            except kinesis.exceptions.InvalidArgumentException:
                report.expired += 1  # trimmed from the stream: cannot be re-read any more
                continue
            report.records += put_back(kinesis, stream_name, records)
            report.batches += 1
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return report


def redrive_quarantine(s3: Any, kinesis: Any, bucket: str, prefix: str, stream_name: str) -> RedriveReport:
    report = RedriveReport()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            records = []
            for line in body.splitlines():
                if line.strip():
                    item = json.loads(line)
                    records.append((base64.b64decode(item["data"]), item["partition_key"] or "unknown"))
            report.records += put_back(kinesis, stream_name, records)
            report.batches += 1
            s3.copy_object(Bucket=bucket, Key="redriven/" + key, CopySource={"Bucket": bucket, "Key": key})
            s3.delete_object(Bucket=bucket, Key=key)
    return report
