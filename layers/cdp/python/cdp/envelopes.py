"""Lambda event envelopes, checked before a batch is handled.

An event source mapping always delivers ``{"Records": [...]}`` with each record's body and
sequence number. An event without them (``{}``, ``Records: null``, a record without ``kinesis``)
did not come from the mapping, and none of its records can be reported as a batch item failure,
so the whole invocation fails with :class:`MalformedEnvelope`, which says what is wrong and never
what the event held.
"""

from __future__ import annotations

from typing import Any

from cdp.core.events import json_type


class MalformedEnvelope(ValueError):
    """The invocation's event is not the envelope its event source mapping delivers."""


def batch_records(event: object, source: str, body: str, sequence: str) -> list[dict[str, Any]]:
    """The records of a stream event, each an object with its ``body`` object and its ``sequence`` string."""
    if not isinstance(event, dict):
        raise MalformedEnvelope(f"the event must be a {source} batch object with Records, not {json_type(event)}")
    records = event.get("Records")
    if not isinstance(records, list):
        what = "is missing" if "Records" not in event else f"must be an array, not {json_type(records)}"
        raise MalformedEnvelope(f"Records: {what}; this is not a {source} batch")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise MalformedEnvelope(f"Records[{index}]: must be an object, not {json_type(record)}")
        inner = record.get(body)
        if not isinstance(inner, dict):
            what = "is missing" if body not in record else f"must be an object, not {json_type(inner)}"
            raise MalformedEnvelope(f"Records[{index}].{body}: {what}; this is not a {source} record")
        number = inner.get(sequence)
        if not isinstance(number, str) or not number:
            raise MalformedEnvelope(f"Records[{index}].{body}.{sequence}: is required (a non-empty string)")
    return records


def kinesis_records(event: object) -> list[dict[str, Any]]:
    return batch_records(event, "Kinesis", "kinesis", "sequenceNumber")


def table_stream_records(event: object) -> list[dict[str, Any]]:
    return batch_records(event, "DynamoDB stream", "dynamodb", "SequenceNumber")
