"""Ingest: one stream batch folded into profiles with one conditional write per changed customer.

Pure orchestration over the ports: decode and validate every record, quarantine the ones
that can never succeed, load all profiles of the batch at once, fold and evaluate per
customer, and write each changed profile once with optimistic locking. The result says
which records must be retried (``failed``), so the handler can return a partial-batch
response.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field

from cdp.clock import Clock
from cdp.engine import Engine, Transition
from cdp.events import Event, InvalidEvent, parse_record
from cdp.ports import ConflictError, ProfileStore, Quarantine, QuarantinedRecord, TransientError
from cdp.profile import Profile

MAX_WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class StreamRecord:
    """One record as the stream delivered it. When it could not be decoded, ``decode_error`` says why
    and ``data`` holds what was received, so the quarantine still keeps it whole."""

    sequence: str
    partition_key: str
    data: bytes
    source: str = "kinesis"
    decode_error: str = ""


@dataclass
class BatchResult:
    failed: list[str] = field(default_factory=list)  # sequence numbers to retry, in batch order
    failure_reasons: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    conflicts: int = 0
    beyond_retention: int = 0
    customers_written: int = 0
    quarantined: Tally[str] = field(default_factory=Tally)  # by field
    transitions: list[Transition] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # seconds from event time to application


def ingest_batch(records: Sequence[StreamRecord], engine: Engine, store: ProfileStore,
                 quarantine: Quarantine, clock: Clock) -> BatchResult:
    result = BatchResult()
    poison: list[QuarantinedRecord] = []
    by_customer: dict[str, list[tuple[StreamRecord, Event]]] = {}
    decoded: list[tuple[StreamRecord, Event | InvalidEvent]] = []
    for record in records:
        try:
            if record.decode_error:
                raise InvalidEvent("data", record.decode_error)
            decoded.append((record, parse_record(record.data)))
        except InvalidEvent as error:
            decoded.append((record, error))
    observe = getattr(clock, "observe", None)  # an event-time clock follows the events it sees
    if observe is not None:
        for _, parsed in decoded:
            if isinstance(parsed, Event):
                observe(parsed.timestamp)
    now = clock.now()
    for record, parsed in decoded:
        if isinstance(parsed, InvalidEvent):
            poison.append(QuarantinedRecord(record.source, record.sequence, record.partition_key,
                                            record.data, str(parsed), parsed.field, now))
        else:
            by_customer.setdefault(parsed.customer_id, []).append((record, parsed))

    def fail(items: Sequence[tuple[StreamRecord, Event]], reason: str) -> None:
        for record, _ in items:
            result.failure_reasons[record.sequence] = reason

    try:
        profiles = store.load(list(by_customer)) if by_customer else {}
    except TransientError as error:
        profiles = {}
        for items in by_customer.values():
            fail(items, f"profiles could not be loaded: {error}")
        by_customer = {}

    for customer_id, items in by_customer.items():
        events = [event for _, event in items]
        profile = profiles.get(customer_id) or Profile(customer_id)
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            expected = profile.version
            outcome = engine.apply(profile, events, now)
            if not outcome.changed:
                break
            profile.version = expected + 1
            try:
                store.save(profile, expected)
                result.customers_written += 1
                break
            except ConflictError:
                result.conflicts += 1
                if attempt == MAX_WRITE_ATTEMPTS:
                    fail(items, f"profile changed concurrently {MAX_WRITE_ATTEMPTS} times")
                    break
                try:
                    profile = store.load([customer_id]).get(customer_id) or Profile(customer_id)
                except TransientError as error:
                    fail(items, f"profile could not be reloaded: {error}")
                    break
            except TransientError as error:
                fail(items, f"profile could not be written: {error}")
                break
        if items[0][0].sequence in result.failure_reasons:
            continue
        result.applied += outcome.applied
        result.duplicates += outcome.duplicates
        result.beyond_retention += outcome.beyond_retention
        result.transitions += outcome.transitions
        result.lags += [now - event.timestamp for event in events]
        rejected = {id(event): reason for event, reason in outcome.rejected}
        for record, event in items:
            reason = rejected.get(id(event))
            if reason is not None:
                field_name = reason.split(":", 1)[0]
                poison.append(QuarantinedRecord(record.source, record.sequence, record.partition_key,
                                                record.data, reason, field_name, now))

    if poison:
        try:
            quarantine.put(poison)
            result.quarantined.update(bad.field for bad in poison)
        except TransientError as error:
            for bad in poison:
                result.failure_reasons[bad.sequence] = f"quarantine unavailable: {error}"
    result.failed = [r.sequence for r in records if r.sequence in result.failure_reasons]
    return result
