"""The events stream: PutRecords within its limits (500 records and 5 MB per call), in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from cdp.aws.errors import domain_error

MAX_RECORDS = 500  # PutRecords limit per call
MAX_BYTES = 5 * 1024 * 1024  # per call, data and partition keys together

Record = tuple[bytes, str]  # data, partition key


def chunks(records: Sequence[Record]) -> Iterator[list[Record]]:
    """The records in order, in chunks of one PutRecords call each: at most MAX_RECORDS and MAX_BYTES."""
    chunk: list[Record] = []
    size = 0
    for data, key in records:
        if chunk and (len(chunk) == MAX_RECORDS or size + len(data) + len(key) > MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((data, key))
        size += len(data) + len(key)
    if chunk:
        yield chunk


class KinesisEventStream:
    """cdp.ports.EventStream over one Kinesis stream."""

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream

    def put(self, entries: Sequence[Record]) -> list[str | None]:
        errors: list[str | None] = []
        for chunk in chunks(entries):
            try:
                response = self.client.put_records(
                    StreamName=self.stream, Records=[{"Data": data, "PartitionKey": key} for data, key in chunk])
            except Exception as error:
                raise domain_error(error) from error
            errors += [result.get("ErrorCode") or None for result in response["Records"]]
        return errors
