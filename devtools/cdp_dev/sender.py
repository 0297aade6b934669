"""Putting Segment-spec messages on the stream: PutRecords in chunks, partitioned by customer id."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import IO, Any

from cdp.aws.kinesis import chunks

ATTEMPTS = 8


@dataclass
class SendReport:
    sent: int = 0
    unreadable: list[int] = field(default_factory=list)  # line numbers


def partition_key(line: bytes) -> str | None:
    """The customer id (userId, else anonymousId): all of a customer's events go to one shard, in order."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # nested past the interpreter's limit: reported as unreadable
        return None
    if not isinstance(message, dict):
        return None
    key = message.get("userId") or message.get("anonymousId")
    return str(key)[:256] if isinstance(key, (str, int)) and not isinstance(key, bool) and key != "" else None


def send_lines(kinesis: Any, stream: str, lines: list[bytes], progress: IO[str] | None = None) -> SendReport:
    """Send every line that names a customer; the ingest function validates the rest of the message."""
    report = SendReport()
    records: list[tuple[bytes, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key = partition_key(line)
        if key is None:
            report.unreadable.append(number)
            continue
        records.append((line, key))
    for chunk in chunks(records):
        put_all(kinesis, stream, chunk)
        report.sent += len(chunk)
        if progress is not None:
            width = 30
            done = report.sent * width // len(records)
            progress.write(f"\r[{'#' * done}{'.' * (width - done)}] {report.sent}/{len(records)}")
            progress.flush()
    if progress is not None:
        progress.write("\n")
    return report


def put_all(kinesis: Any, stream: str, chunk: list[tuple[bytes, str]]) -> None:
    """One PutRecords call; the records it refused (throttled) are sent again after a back-off."""
    pending = chunk
    for attempt in range(ATTEMPTS):
        response = kinesis.put_records(StreamName=stream, Records=[{"Data": d, "PartitionKey": k} for d, k in pending])
        pending = [record for record, result in zip(pending, response["Records"], strict=True)
                   if result.get("ErrorCode")]
        if not pending:
            return
        time.sleep(min(0.1 * 2 ** attempt, 3.0))  # throttled: back off and resend only those
    raise RuntimeError(f"{len(pending)} records were still refused by the stream after {ATTEMPTS} tries")
