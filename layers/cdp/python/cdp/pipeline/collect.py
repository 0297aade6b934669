"""The collector: a Tracking API request answered once its messages are durably on the stream.

Pure orchestration over the ports. A request is read and refused with its documented status (400, 401,
405, 413, 415), or its messages are completed and checked one by one. The valid ones go on the stream
with ``PutRecords``; records the stream refuses are sent again with back-off while the request's time
budget lasts. Only when every one is stored are the rejected messages put in the quarantine (so an SDK
retry after a failure never quarantines them twice) and the answer is 200, saying how many were rejected
and why. Otherwise the answer is 429 (the stream throttled) or 503, with ``Retry-After``, and the SDK
sends the batch again: the records already stored are then duplicates, which the ingest drops by
``messageId``.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdp.collector.keys import KeyCache, key_digest
from cdp.collector.messages import Prepared, StreamEntry, prepare
from cdp.collector.request import HttpRequest, Refused, read_request
from cdp.ports import EventStream, Quarantine, QuarantinedRecord, TransientError

THROTTLED = "ProvisionedThroughputExceededException"
RETRY_AFTER_SECONDS = 1
MAX_BACKOFF_SECONDS = 1.0
MAX_ERRORS_LISTED = 20  # the answer lists this many rejected messages; the count is always exact


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class CollectResult:
    """What one request did, for the metrics."""

    source: str = ""
    accepted: int = 0
    rejected: Tally[str] = field(default_factory=Tally)  # by field
    refused: str = ""  # the field a refused request named
    stream_retries: int = 0


@dataclass(frozen=True)
class Collector:
    keys: KeyCache
    stream: EventStream
    quarantine: Quarantine
    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    budget_seconds: float = 6.0  # of the SDKs' 10-15 s request timeouts, leaving room to answer


def collect(request: HttpRequest, collector: Collector, request_id: str) -> tuple[Answer, CollectResult]:
    result = CollectResult()
    started = collector.now()
    try:
        tracking = read_request(request)
        key = collector.keys.find(key_digest(tracking.write_key), started)
        if key is None or not key.valid_at(started):
            raise Refused(401, "writeKey", "is not a valid write key of any source (unknown, expired or revoked)")
    except Refused as refused:
        result.refused = refused.field
        return Answer(refused.status, refused.body()), result
    result.source = key.source
    prepared = prepare(tracking, started, request.source_ip)
    failure = _store(prepared.entries, collector, started, result)
    if failure is not None:
        return failure, result
    if prepared.rejected:
        try:
            collector.quarantine.put([_quarantined(key.source, request_id, r.index, r.data, r.reason, r.field,
                                                   started) for r in prepared.rejected])
        except TransientError:
            return _unavailable(503, "quarantine", "could not keep the rejected messages; send again"), result
    result.accepted = len(prepared.entries)
    result.rejected.update(r.field for r in prepared.rejected)
    return Answer(200, _accepted(prepared)), result


def _store(entries: list[StreamEntry], collector: Collector, started: float, result: CollectResult) -> Answer | None:
    """Every entry on the stream, retrying the refused ones with back-off within the budget; None when all
    are stored, else the answer that makes the SDK send the batch again."""
    pending = [(entry.data, entry.partition_key) for entry in entries]
    if not pending:
        return None
    attempt, codes = 0, Tally[str]()
    while pending:
        try:
            errors = collector.stream.put(pending)
        except TransientError:
            errors = ["ServiceUnavailable"] * len(pending)
        codes = Tally(code for code in errors if code)
        pending = [record for record, code in zip(pending, errors, strict=True) if code]
        if not pending:
            return None
        wait = min(0.05 * 2 ** attempt, MAX_BACKOFF_SECONDS)
        if collector.now() + wait - started > collector.budget_seconds:
            break
        collector.sleep(wait)
        attempt += 1
        result.stream_retries += len(pending)
    status = 429 if set(codes) == {THROTTLED} else 503
    message = ("is at its write capacity; send again" if status == 429
               else "could not store every message; send again")
    return _unavailable(status, "stream", f"{message} ({len(pending):,} of {len(entries):,} not stored)")


def _unavailable(status: int, what: str, message: str) -> Answer:
    return Answer(status, Refused(status, what, message).body(), {"Retry-After": str(RETRY_AFTER_SECONDS)})


def _accepted(prepared: Prepared) -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "accepted": len(prepared.entries), "rejected": len(prepared.rejected)}
    if prepared.rejected:
        body["errors"] = [r.as_json() for r in prepared.rejected[:MAX_ERRORS_LISTED]]
    return body


def _quarantined(source: str, request_id: str, index: int, data: bytes, reason: str, field_path: str,
                 at: float) -> QuarantinedRecord:
    return QuarantinedRecord(source=f"collector:{source}", sequence=f"{request_id}-{index}", partition_key="",
                             data=data, reason=reason, field=field_path, at=at)
