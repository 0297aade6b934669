"""The messages of an accepted request, completed as Segment completes them and checked one by one.

The collector fills in what an SDK leaves out: ``messageId`` when absent (downstream dedupe needs one),
``receivedAt``, ``context.ip`` from the request, and the type of a single-message route. ``timestamp`` is
corrected for the sender's clock skew as Segment does it: with the device's ``sentAt``,
``timestamp = receivedAt - (sentAt - originalTimestamp)``, and the device's own time is kept as
``originalTimestamp``; a message with no time at all gets ``receivedAt``. A batch's ``context`` and
``integrations`` apply to every message in it (a message's own keys win).

Each message is then checked by the same rules as the ingest (:func:`cdp.core.events.parse_record`) on the
bytes that go on the stream, so a message the collector accepts is one the ingest can apply, and a message
that can never be applied is rejected here with its reason, without losing the rest of the batch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cdp.collector.request import TrackingRequest
from cdp.core.events import InvalidEvent, json_type, parse_record


@dataclass(frozen=True)
class StreamEntry:
    """A message ready for the stream: its bytes and its partition key, the customer id the ingest uses."""

    data: bytes
    partition_key: str


@dataclass(frozen=True)
class RejectedMessage:
    """A message that can never be applied: where it was in the request, why, and what was received."""

    index: int
    field: str
    reason: str
    data: bytes

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


@dataclass
class Prepared:
    entries: list[StreamEntry] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)


def iso(moment: float) -> str:
    """Milliseconds, UTC, with Z: what Segment writes in receivedAt."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _moment(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def complete(message: dict[str, Any], request: TrackingRequest, received_at: float, source_ip: str | None,
             new_id: Callable[[], str]) -> dict[str, Any]:
    """A copy of the message with what the collector adds; nothing the sender gave is overwritten except
    ``timestamp``, which is corrected for skew (the sent value is kept as ``originalTimestamp``)."""
    completed = dict(message)
    completed.pop("writeKey", None)  # a key sent inside a batch's message is not kept either
    if request.route != "batch":
        completed["type"] = request.route
    if completed.get("messageId") in (None, ""):
        completed["messageId"] = new_id()
    completed["receivedAt"] = iso(received_at)
    if request.context and isinstance(completed.get("context", {}), dict):
        completed["context"] = {**request.context, **completed.get("context", {})}
    if request.integrations and isinstance(completed.get("integrations", {}), dict):
        completed["integrations"] = {**request.integrations, **completed.get("integrations", {})}
    context = completed.get("context")
    if source_ip and (context is None or (isinstance(context, dict) and "ip" not in context)):
        completed["context"] = {**(context or {}), "ip": source_ip}
    _correct_skew(completed, message.get("sentAt", request.sent_at), received_at)
    return completed


def _correct_skew(message: dict[str, Any], sent_at: object, received_at: float) -> None:
    device_time = message.get("timestamp", message.get("originalTimestamp"))
    if device_time is None:
        message["timestamp"] = iso(received_at)
        return
    happened, sent = _moment(device_time), _moment(sent_at)
    if happened is None or sent is None:
        return  # an unreadable time is the ingest's to refuse, with its reason; an unreadable sentAt is ignored
    message.setdefault("originalTimestamp", device_time)
    message["timestamp"] = iso(received_at - (sent - happened))


def prepare(request: TrackingRequest, received_at: float, source_ip: str | None,
            new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> Prepared:
    """Every message of the request, completed and checked: stream entries, in order, and the rejected."""
    prepared = Prepared()
    for index, message in enumerate(request.messages):
        if not isinstance(message, dict):
            reason = f"must be a JSON object, not {json_type(message)}"
            prepared.rejected.append(RejectedMessage(index, "message", reason, _raw(message)))
            continue
        try:
            data = json.dumps(complete(message, request, received_at, source_ip, new_id), ensure_ascii=False,
                              separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            reason = "contains an unpaired UTF-16 surrogate escape, which is not text"
            prepared.rejected.append(RejectedMessage(index, "message", reason, _raw(message)))
            continue
        try:
            event = parse_record(data)
        except InvalidEvent as error:
            prepared.rejected.append(RejectedMessage(index, error.field, error.reason, data))
            continue
        prepared.entries.append(StreamEntry(data, event.customer_id))
    return prepared


def _raw(message: object) -> bytes:
    """What was received, for the quarantine (ASCII escapes keep any unpaired surrogate as it was sent)."""
    return json.dumps(message, separators=(",", ":")).encode("ascii")
