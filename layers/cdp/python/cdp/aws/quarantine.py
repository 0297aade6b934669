"""The quarantine: records that can never be applied, one JSON Lines object per batch in S3."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cdp.aws.errors import domain_error
from cdp.ports import QuarantinedRecord

PREFIX = "quarantine"


def object_key(records: Sequence[QuarantinedRecord]) -> str:
    """``quarantine/YYYY/MM/DD/<stream>-<shard>-<first sequence>.jsonl``: one object per batch.

    A batch comes from one shard, and sequence numbers are unique within a shard only (moto's, for
    one, overlap across shards), so the shard is part of the key.
    """
    first = records[0]
    day = datetime.fromtimestamp(first.at, UTC).strftime("%Y/%m/%d")
    stream = first.source.split(":", 1)[-1]
    parts = [stream, first.shard, first.sequence] if first.shard else [stream, first.sequence]
    return f"{PREFIX}/{day}/{'-'.join(part.replace('/', '-') for part in parts)}.jsonl"


class S3Quarantine:
    """S3 rather than SQS: a record can be up to 1 MB (SQS takes 256 KB), and one object per batch
    costs one request however many records it holds. Operators list the prefix and redrive."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        body = "\n".join(json.dumps(record.as_json(), separators=(",", ":")) for record in records) + "\n"
        try:
            self.client.put_object(Bucket=self.bucket, Key=object_key(records), Body=body.encode(),
                                   ContentType="application/x-ndjson")
        except Exception as error:
            raise domain_error(error) from error
