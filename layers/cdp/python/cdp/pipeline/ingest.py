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
message id. The watermark covers only records whose partition key is the customer id: Kinesis
and Lambda keep order per partition key (also with a parallelization factor above 1), so only
those arrive in sequence order for the customer; any other record is deduplicated by its id.

A message Segment accepts is applied even without some field of the spec (an ``Order Completed``
without ``order_id``, say: see :mod:`cdp.core.events`). ``spec_gaps`` counts, by field, the applied
events that lacked one, so a producer's gaps show in a metric rather than in lost events.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from cdp.core.clock import Clock, wall_time
from cdp.core.engine import Engine, Outcome, Transition
from cdp.core.events import Event, InvalidEvent, parse_record
from cdp.core.fold import future_reason
from cdp.core.profile import Profile
from cdp.pipeline.parallel import each
from cdp.pipeline.write import WriteOutcome, write_profile
from cdp.ports import ProfileStore, Quarantine, QuarantinedRecord, TransientError


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
    spec_gaps: Tally[str] = field(default_factory=Tally)  # applied events without a spec field, by field


Parsed = tuple[StreamRecord, Event | InvalidEvent]  # a record and its event, or why it is not one
Items = Sequence[tuple[StreamRecord, Event]]  # one customer's records with their events, in batch order
ByCustomer = dict[str, list[tuple[StreamRecord, Event]]]


def ingest_batch(records: Sequence[StreamRecord], engine: Engine, store: ProfileStore,
                 quarantine: Quarantine, clock: Clock, pool: Executor | None = None) -> BatchResult:
    """Decode, refuse and quarantine what can never apply, then fold and write each customer once.

    With a ``pool``, the customers' writes go out concurrently (see :mod:`cdp.pipeline.parallel`);
    the result is the same as without one, in the same order.
    """
    result = BatchResult()
    # Refused before any clock observes it: an event stamped far ahead (2999) would otherwise move an
    # event-time clock, and every profile it evaluates, into the future for good. Event-time replays
    # are in the past of the wall clock, so wall time plus the allowed skew bounds both modes.
    decoded = _refuse_future(_decode(records), wall_time(clock), engine.max_future_skew)
    _observe(clock, decoded)
    now = clock.now()
    by_customer, poison = _by_customer(decoded, now)
    profiles = _load_profiles(store, by_customer, result)
    if profiles is not None:
        customers = list(by_customer.items())
        writes = each(lambda customer: _write_customer(customer[0], customer[1], profiles.get(customer[0]),
                                                       engine, store, now), customers, pool)
        for (_, items), (write, outcome) in zip(customers, writes, strict=True):
            poison += _account(items, write, outcome, now, result)
    _quarantine(poison, quarantine, result)
    result.failed = [r.sequence for r in records if r.sequence in result.failure_reasons]
    return result


def _decode(records: Sequence[StreamRecord]) -> list[Parsed]:
    """Each record with its event, or with why it is not one."""
    decoded: list[Parsed] = []
    for record in records:
        try:
            if record.decode_error:
                raise InvalidEvent("data", record.decode_error)
            decoded.append((record, parse_record(record.data)))
        except InvalidEvent as error:
            decoded.append((record, error))
    return decoded


def _refuse_future(decoded: list[Parsed], wall: float, skew: float) -> list[Parsed]:
    """Events stamped more than ``skew`` seconds ahead of the wall clock, turned into invalid ones."""
    horizon = wall + skew
    return [(record, InvalidEvent("timestamp", future_reason(skew))
             if isinstance(parsed, Event) and parsed.timestamp > horizon else parsed) for record, parsed in decoded]


def _observe(clock: Clock, decoded: list[Parsed]) -> None:
    """An event-time clock follows the events it sees; a wall clock has no ``observe``."""
    observe = getattr(clock, "observe", None)
    if observe is not None:
        for _, parsed in decoded:
            if isinstance(parsed, Event):
                observe(parsed.timestamp)


def _by_customer(decoded: list[Parsed], now: float) -> tuple[ByCustomer, list[QuarantinedRecord]]:
    """The valid events grouped by customer, in batch order, and the invalid records to quarantine."""
    by_customer: ByCustomer = {}
    poison: list[QuarantinedRecord] = []
    for record, parsed in decoded:
        if isinstance(parsed, InvalidEvent):
            poison.append(_quarantined(record, str(parsed), parsed.field, now))
        else:
            by_customer.setdefault(parsed.customer_id, []).append((record, parsed))
    return by_customer, poison


def _quarantined(record: StreamRecord, reason: str, field_name: str, now: float) -> QuarantinedRecord:
    return QuarantinedRecord(record.source, record.sequence, record.partition_key, record.data, reason, field_name,
                             now, record.shard)


def _fail(result: BatchResult, items: Items, reason: str) -> None:
    for record, _ in items:
        result.failure_reasons[record.sequence] = reason


def _load_profiles(store: ProfileStore, by_customer: ByCustomer, result: BatchResult) -> dict[str, Profile] | None:
    """Every customer's stored profile, in one load; None when the store failed (all their records retry)."""
    if not by_customer:
        return {}
    try:
        return store.load(list(by_customer))
    except TransientError as error:
        for items in by_customer.values():
            _fail(result, items, f"profiles could not be loaded: {error}")
        return None


def _write_customer(customer_id: str, items: Items, profile: Profile | None, engine: Engine,
                    store: ProfileStore, now: float) -> tuple[WriteOutcome, Outcome]:
    """Fold one customer's events and write the profile once; touches nothing shared, so it runs on any thread.

    Returns how the write ended and the fold of the profile as written (or as found, when nothing changed).
    """
    folds: list[Outcome] = []

    def fold(current: Profile) -> bool:
        outcome = _fold(current, items, engine, now)
        folds.append(outcome)
        if outcome.changed:
            _advance_watermarks(current, items, outcome, now)
        return outcome.changed

    write = write_profile(store, customer_id, profile, fold)
    return write, folds[-1]


def _account(items: Items, write: WriteOutcome, outcome: Outcome, now: float,
             result: BatchResult) -> list[QuarantinedRecord]:
    """Add one customer's write to the batch result; returns the records its fold rejected."""
    result.conflicts += write.conflicts
    if write.failed:
        _fail(result, items, write.reason)
        return []
    result.customers_written += int(write.written)
    result.applied += outcome.applied
    result.duplicates += outcome.duplicates
    result.beyond_retention += outcome.beyond_retention
    result.transitions += outcome.transitions
    result.spec_gaps.update(outcome.spec_gaps)
    result.lags += [now - event.timestamp for _, event in items]
    rejected = {id(event): reason for event, reason in outcome.rejected}
    return [_quarantined(record, rejected[id(event)], rejected[id(event)].split(":", 1)[0], now)
            for record, event in items if id(event) in rejected]


def _fold(profile: Profile, items: Items, engine: Engine, now: float) -> Outcome:
    """The customer's events folded into the profile. At or below its shard's watermark a record was
    handled already: a duplicate without folding."""
    pending = [event for record, event in items
               if not (_in_customer_order(record, event) and profile.delivered(record.shard, record.sequence))]
    outcome = engine.apply(profile, pending, now)
    outcome.duplicates += len(items) - len(pending)
    return outcome


def _in_customer_order(record: StreamRecord, event: Event) -> bool:
    """Whether the stream orders this record among the customer's own: its partition key is the customer id."""
    return record.partition_key == event.customer_id


def _quarantine(poison: list[QuarantinedRecord], quarantine: Quarantine, result: BatchResult) -> None:
    """Keep the records that can never be applied; when the quarantine is down, they are retried instead."""
    if not poison:
        return
    try:
        quarantine.put(poison)
        result.quarantined.update(bad.field for bad in poison)
    except TransientError as error:
        for bad in poison:
            result.failure_reasons[bad.sequence] = f"quarantine unavailable: {error}"


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
    for record, event in items:
        if not _in_customer_order(record, event):
            continue
        limit = stop.get(record.shard)
        if limit is None or (record.sequence.isdigit() and int(record.sequence) < limit):
            profile.mark_delivered(record.shard, record.sequence, now)
