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

A deleted customer's ids hold tombstones in the id map, which come with the batch's one id-map read: their events
are dropped and counted (``deleted_customers``), never retried, unless ``Identity.after_deletion`` is ``fresh``
and the event happened after the deletion (see :mod:`cdp.pipeline.privacy`).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

from cdp.core.catalogue import fingerprint_version
from cdp.core.clock import Clock, wall_time
from cdp.core.engine import Engine, NewerCatalogue, Outcome, Transition
from cdp.core.events import Event, InvalidEvent, parse_record
from cdp.core.fold import future_reason
from cdp.core.identity import merge_of
from cdp.core.merge import absorb
from cdp.core.profile import Profile
from cdp.pipeline.identity import (
    Identity,
    IdentityResult,
    Resolution,
    complete,
    deletion_drops,
    ids_of,
    index_email,
    merge,
    profiles_to_load,
    resolve_batch,
    snapshots,
)
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
    identity: IdentityResult = field(default_factory=IdentityResult)
    deleted_customers: int = 0  # events dropped because their customer was deleted (a tombstone)


Parsed = tuple[StreamRecord, Event | InvalidEvent]  # a record and its event, or why it is not one
Items = Sequence[tuple[StreamRecord, Event]]  # one customer's records with their events, in batch order
ByCustomer = dict[str, list[tuple[StreamRecord, Event]]]


def ingest_batch(records: Sequence[StreamRecord], engine: Engine, store: ProfileStore,
                 quarantine: Quarantine, clock: Clock, pool: Executor | None = None,
                 identity: Identity | None = None, newer_catalogue: Callable[[], object] | None = None) -> BatchResult:
    """Decode, refuse and quarantine what can never apply, then fold and write each customer once.

    With a ``pool``, the customers' writes go out concurrently (see :mod:`cdp.pipeline.parallel`);
    the result is the same as without one, in the same order. With ``identity``, every id is first
    resolved to its canonical customer and the batch's merges are made (see :mod:`cdp.pipeline.identity`).
    ``newer_catalogue`` is called (once) when a loaded profile was evaluated by a newer catalogue version than the
    engine's, before anything is folded: it gives the engine that catalogue (see
    :mod:`cdp.pipeline.live_catalogue`), which would otherwise defer those profiles' evaluation.
    """
    result = BatchResult()
    # Refused before any clock observes it: an event stamped far ahead (2999) would otherwise move an
    # event-time clock, and every profile it evaluates, into the future for good. Event-time replays
    # are in the past of the wall clock, so wall time plus the allowed skew bounds both modes.
    decoded = _refuse_future(_decode(records), wall_time(clock), engine.max_future_skew)
    _observe(clock, decoded)
    now = clock.now()
    by_customer, poison = _by_customer(decoded, now)
    work = (_plain(by_customer, store, result) if identity is None
            else _resolved(decoded, by_customer, identity, store, now, result))
    if work is not None:
        if newer_catalogue is not None and _evaluated_by_newer(work, engine):
            newer_catalogue()
        poison += _write_all(work, engine, store, now, pool, identity, result)
    _quarantine(poison, quarantine, result)
    result.failed = [r.sequence for r in records if r.sequence in result.failure_reasons]
    return result


@dataclass
class _Customer:
    """One canonical customer's share of the batch: its records, its profile as read, and the frozen profiles
    of ids merged into it that it is to absorb."""

    customer_id: str
    items: list[tuple[StreamRecord, Event]]
    profile: Profile | None
    snapshots: list[Profile] = field(default_factory=list)
    absorbed: int = 0  # of the snapshots, how many the write merged in
    emails_indexed: int = 0


@dataclass
class _Work:
    customers: list[_Customer]
    messages: dict[str, str] = field(default_factory=dict)  # merged id -> the message that merged it


def _plain(by_customer: ByCustomer, store: ProfileStore, result: BatchResult) -> _Work | None:
    """Every customer as its own id says (no id map)."""
    profiles = _load_profiles(store, by_customer, list(by_customer), result)
    if profiles is None:
        return None
    return _Work([_Customer(customer_id, items, profiles.get(customer_id))
                  for customer_id, items in by_customer.items()])


def _resolved(decoded: list[Parsed], by_customer: ByCustomer, identity: Identity, store: ProfileStore, now: float,
              result: BatchResult) -> _Work | None:
    """Every id resolved through the id map, the batch's merges made in batch order, and the records grouped by
    canonical customer. None when the map or the profiles could not be read (every record retries)."""
    try:
        resolution = resolve_batch(identity, ids_of(e for items in by_customer.values() for _, e in items),
                                   result.identity)
    except TransientError as error:
        for items in by_customer.values():
            _fail(result, items, f"the id map could not be read: {error}")
        return None
    by_customer = _drop_deleted(by_customer, identity, resolution, result)
    kept = {id(event) for items in by_customer.values() for _, event in items}
    profiles = _load_profiles(store, by_customer, profiles_to_load(resolution), result)
    if profiles is None:
        return None
    for record, parsed in decoded:
        request = merge_of(parsed) if isinstance(parsed, Event) and id(parsed) in kept else None
        if request is not None:
            reason = merge(identity, request, resolution, profiles, store, now, result.identity)
            if reason is not None:
                result.failure_reasons[record.sequence] = f"merge not made: {reason}"
    stalled = complete(resolution, profiles, store, now, result.identity)
    groups: ByCustomer = {}
    for customer_id, items in by_customer.items():
        root = resolution.root(customer_id)
        if root != customer_id:
            items = [(record, replace(event, customer_id=root)) for record, event in items]
            result.identity.forwarded += len(items)
        groups.setdefault(root, []).extend(items)
    for root, reason in stalled.items():
        _fail(result, groups.pop(root, []), f"merge not completed: {reason}")
    frozen = snapshots(resolution, profiles)
    return _Work([_Customer(root, items, profiles.get(root), frozen.get(root, [])) for root, items in groups.items()],
                 resolution.messages)


def _drop_deleted(by_customer: ByCustomer, identity: Identity, resolution: Resolution,
                  result: BatchResult) -> ByCustomer:
    """The batch without the events of deleted customers (counted): their records are done, never retried."""
    if not resolution.deleted:
        return by_customer
    kept: ByCustomer = {}
    for customer_id, items in by_customer.items():
        remaining = [(record, event) for record, event in items if not deletion_drops(identity, resolution, event)]
        result.deleted_customers += len(items) - len(remaining)
        if remaining:
            kept[customer_id] = remaining
    return kept


def _write_all(work: _Work, engine: Engine, store: ProfileStore, now: float, pool: Executor | None,
               identity: Identity | None, result: BatchResult) -> list[QuarantinedRecord]:
    """Write every customer once; a customer found merged into another meanwhile is written there instead."""
    poison: list[QuarantinedRecord] = []
    pending = work.customers
    for _ in range(MAX_FORWARDS + 1):
        writes = each(lambda customer: _write_customer(customer, engine, store, now, identity, work.messages),
                      pending, pool)
        forwards: dict[str, _Customer] = {}
        for customer, (write, outcome, forward) in zip(pending, writes, strict=True):
            if forward is None:
                poison += _account(customer.items, write, outcome, now, result)
                if write.written:
                    result.identity.absorbed += customer.absorbed
                    result.identity.emails_indexed += customer.emails_indexed
                continue
            result.conflicts += write.conflicts
            target = forwards.setdefault(forward.customer_id, _Customer(forward.customer_id, [], None))
            target.items += forward.items
            target.snapshots += forward.snapshots
            result.identity.forwarded += len(forward.items)
        if not forwards:
            return poison
        pending = list(forwards.values())
        loaded = _load_profiles(store, {c.customer_id: c.items for c in pending}, list(forwards), result)
        if loaded is None:
            return poison
        for customer in pending:
            customer.profile = loaded.get(customer.customer_id)
    for customer in pending:
        _fail(result, customer.items, "the customer was merged concurrently too many times")
    return poison


def _evaluated_by_newer(work: _Work, engine: Engine) -> bool:
    held = engine.catalogue.version
    return any(c.profile is not None and fingerprint_version(c.profile.catalogue) > held for c in work.customers)


MAX_FORWARDS = 3  # times one batch follows a customer merged away while it was being written


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


def _load_profiles(store: ProfileStore, by_customer: ByCustomer, customer_ids: list[str],
                   result: BatchResult) -> dict[str, Profile] | None:
    """The stored profiles, in one load; None when the store failed (all the customers' records retry)."""
    if not customer_ids:
        return {}
    try:
        return store.load(customer_ids)
    except TransientError as error:
        for items in by_customer.values():
            _fail(result, items, f"profiles could not be loaded: {error}")
        return None


def _write_customer(customer: _Customer, engine: Engine, store: ProfileStore, now: float, identity: Identity | None,
                    messages: dict[str, str]) -> tuple[WriteOutcome, Outcome, _Customer | None]:
    """Absorb and fold one customer's share and write the profile once; touches nothing shared, so it runs on any
    thread.

    Returns how the write ended, the fold of the profile as written (or as found, when nothing changed), and,
    when the profile turned out to be merged into another customer, that customer's share to write instead.
    """
    folds: list[Outcome] = []
    items, snapshots = customer.items, customer.snapshots
    email_before = _email(customer.profile) if identity is not None and _may_index(customer) else None

    def fold(current: Profile) -> bool:
        absorbed, merged = absorb(current, snapshots, engine, now, messages) if snapshots else (0, [])
        customer.absorbed = absorbed
        outcome = _fold(current, items, engine, now)
        if absorbed:
            outcome.transitions = merged + outcome.transitions
            current.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in merged] + \
                current.transitions
            outcome.changed = True
        folds.append(outcome)
        if outcome.changed:
            _advance_watermarks(current, items, outcome, now)
            if identity is not None and (absorbed or _may_index(customer)):
                customer.emails_indexed = int(index_email(identity, current, email_before, bool(absorbed), now))
        return outcome.changed

    try:
        write = write_profile(store, customer.customer_id, customer.profile, fold)
    except TransientError as error:  # the id map's email index, written just before the profile
        write = WriteOutcome(customer.profile or Profile(customer.customer_id), error=error,
                             reason=f"the id map could not be written: {error}")
    except NewerCatalogue as error:  # the records are retried once this function holds the newer catalogue
        write = WriteOutcome(customer.profile or Profile(customer.customer_id), error=TransientError(str(error)),
                             reason=str(error))
    away = write.profile
    if not write.failed and away.merged_into is not None:  # merged away meanwhile: write its customer instead
        target = away.merged_into
        return write, Outcome(), _Customer(target, [(r, replace(e, customer_id=target)) for r, e in items], None,
                                           [*snapshots, away])
    return write, folds[-1] if folds else Outcome(), None


def _may_index(customer: _Customer) -> bool:
    """Whether the customer's email address can change in this write: an identify carries one, or a merge."""
    return bool(customer.snapshots) or any(event.type == "identify" and "email" in event.traits
                                           for _, event in customer.items)


def _email(profile: Profile | None) -> str | None:
    email = profile.traits.get("email") if profile is not None else None
    return email if isinstance(email, str) else None


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
