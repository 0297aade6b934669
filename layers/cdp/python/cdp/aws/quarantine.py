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
    first = records[0]
    day = datetime.fromtimestamp(first.at, UTC).strftime("%Y/%m/%d")
    return f"{PREFIX}/{day}/{first.source.replace(':', '-')}-{first.sequence}.jsonl"


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
