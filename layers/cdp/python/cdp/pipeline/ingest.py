"""Ingest: one stream batch folded into profiles with one conditional write per changed customer.

Pure orchestration over the ports: decode and validate every record, quarantine the ones
that can never succeed, load all profiles of the batch at once, fold and evaluate per
customer, and write each changed profile once with optimistic locking. The result says
which records must be retried (``failed``), so the handler can return a partial-batch
response.

Each profile keeps, per stream shard, the highest sequence number of its records that were
handled (a watermark, see ``Profile.delivered``): a record at or below it is a duplicate
without folding, however many records came since (a Lambda retry of any volume). A record
put back on the stream (a redrive) has a new sequence number and is deduplicated by its
message id.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field

from cdp.core.clock import Clock, wall_time
from cdp.core.engine import Engine, Outcome, Transition, future_reason
from cdp.core.events import Event, InvalidEvent, parse_record
from cdp.core.profile import Profile
from cdp.ports import ConflictError, ProfileStore, Quarantine, QuarantinedRecord, TransientError

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
    shard: str = ""  # the stream shard it came from; sequence numbers are ordered within a shard only


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
    # Refused before any clock observes it: an event stamped far ahead (2999) would otherwise move an
    # event-time clock, and every profile it evaluates, into the future for good. Event-time replays
    # are in the past of the wall clock, so wall time plus the allowed skew bounds both modes.
    horizon = wall_time(clock) + engine.max_future_skew
    decoded = [(record, InvalidEvent("timestamp", future_reason(engine.max_future_skew))
                if isinstance(parsed, Event) and parsed.timestamp > horizon else parsed) for record, parsed in decoded]
    observe = getattr(clock, "observe", None)  # an event-time clock follows the events it sees
    if observe is not None:
        for _, parsed in decoded:
            if isinstance(parsed, Event):
                observe(parsed.timestamp)
    now = clock.now()
    for record, parsed in decoded:
        if isinstance(parsed, InvalidEvent):
            poison.append(QuarantinedRecord(record.source, record.sequence, record.partition_key,
                                            record.data, str(parsed), parsed.field, now, record.shard))
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
            # At or below the shard's watermark: handled already, a duplicate without folding.
            pending = [event for record, event in items if not profile.delivered(record.shard, record.sequence)]
            outcome = engine.apply(profile, pending, now)
            outcome.duplicates += len(items) - len(pending)
            if not outcome.changed:
                break
            _advance_watermarks(profile, items, outcome, now)
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
                                                record.data, reason, field_name, now, record.shard))

    if poison:
        try:
            quarantine.put(poison)
            result.quarantined.update(bad.field for bad in poison)
        except TransientError as error:
            for bad in poison:
                result.failure_reasons[bad.sequence] = f"quarantine unavailable: {error}"
    result.failed = [r.sequence for r in records if r.sequence in result.failure_reasons]
    return result


def _advance_watermarks(profile: Profile, items: Sequence[tuple[StreamRecord, Event]], outcome: Outcome,
                        now: float) -> None:
    """Raise the customer's watermark of each shard to the highest sequence number handled in this write.

    Called only when the profile is written, so the watermark lands with the effects of its records.
    It stops below a rejected record: that one is quarantined after the write, and if the quarantine
    fails it is retried, so it must be evaluated again (records after it are deduplicated by id).
    """
    rejected = {id(event) for event, _ in outcome.rejected}
    stop: dict[str, int] = {}
    for record, event in items:
        if id(event) in rejected and record.shard and record.sequence.isdigit():
            stop[record.shard] = min(stop.get(record.shard, int(record.sequence)), int(record.sequence))
    for record, _ in items:
        limit = stop.get(record.shard)
        if limit is None or (record.sequence.isdigit() and int(record.sequence) < limit):
            profile.mark_delivered(record.shard, record.sequence, now)
