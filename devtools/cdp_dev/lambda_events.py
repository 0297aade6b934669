"""Events as Lambda hands them to a function: Kinesis records and table stream records.

One builder of each, for everything that makes them: the local stack's event source mappings, the sample
envelopes (events/make_envelopes.py), the integration tests and the benchmarks.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import datetime
from typing import Any

SAMPLE_REGION = "eu-west-1"
SAMPLE_STREAM_ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/cdp-events"
SAMPLE_ROLE_ARN = "arn:aws:iam::123456789012:role/cdp-ingest"
SAMPLE_ARRIVAL = 1790000000.0  # the sample records' arrival time (2026-09-21), record n arriving n seconds later


def kinesis_record(data: bytes, partition_key: str, sequence_number: str, *, arrival: float,
                   shard_id: str = "shardId-000000000000", stream_arn: str = SAMPLE_STREAM_ARN,
                   region: str = SAMPLE_REGION, role_arn: str = SAMPLE_ROLE_ARN) -> dict[str, Any]:
    """One Kinesis record as Lambda delivers it: the data base64-encoded, ``eventID`` "<shard id>:<sequence>"."""
    return {
        "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": partition_key, "sequenceNumber": sequence_number,
                    "data": base64.b64encode(data).decode(), "approximateArrivalTimestamp": arrival},
        "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": f"{shard_id}:{sequence_number}",
        "eventName": "aws:kinesis:record", "invokeIdentityArn": role_arn,
        "awsRegion": region, "eventSourceARN": stream_arn,
    }


def sample_kinesis_record(number: int, data: bytes, partition_key: str, *, batch: int = 0,
                          shard: int = 0) -> dict[str, Any]:
    """Record ``number`` of put ``batch`` on shard ``shard`` of the sample stream (cdp-events in eu-west-1).

    Its sequence number has the 56 digits of a real one and orders as a real one does: by batch, then by number.
    """
    sequence = f"4963{batch:012d}{number:040d}"
    return kinesis_record(data, partition_key, sequence, arrival=SAMPLE_ARRIVAL + number,
                          shard_id=f"shardId-{shard:012d}")


def lambda_json(value: Any) -> Any:
    """A boto3 value as Lambda's JSON has it: binary as base64 text, times as epoch seconds."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, dict):
        return {k: lambda_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [lambda_json(v) for v in value]
    return value


def stream_record(record: dict[str, Any], *, region: str, stream_arn: str) -> dict[str, Any]:
    """A DynamoDB stream record as boto3's ``get_records`` returns it, as Lambda delivers it to a function."""
    converted: dict[str, Any] = lambda_json(record)
    return {**converted, "awsRegion": region, "eventSourceARN": stream_arn}


def stream_envelope(records: Iterable[dict[str, Any]], *, region: str, stream_arn: str) -> dict[str, Any]:
    """The Lambda event of a batch of table stream records."""
    return {"Records": [stream_record(record, region=region, stream_arn=stream_arn) for record in records]}
