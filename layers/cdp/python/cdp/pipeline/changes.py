"""Changes: membership transitions read from the profile table's stream, as bus events and index updates.

The ingest path never publishes; the table's stream is the outbox. A write that
succeeded always yields its events here, and a retried batch, which writes nothing
new, yields none. Every event's id is derived from (customer, segment, kind,
profile version), so a redelivered stream record produces the same ids.

A write that changes the customer's consent (its preferences or its unsubscribe) while they are in
segments yields one ``Segment Consent Changed`` per segment they were in before and are in after (the
detail of a ``Segment Entered``, with ``change`` ``consent``), so that each integration can decide again
whether it may hold the customer. These change no membership: the members index never sees them.
A deleted profile (a REMOVE record, no new image) leaves its segments with the clause ``deleted``.

A transition written by a backfill job carries a delivery mark, the sixth element of its ``tx`` entry:
``audiences`` (only the ad-audience integrations act on it) or ``none`` (no integration does); without one
it is ``all``. The event's ``delivery`` says which, and :mod:`cdp.pipeline.fanout` honours it.

The members index is written without transactions: each membership write is conditional on its version
and yields the size delta it made, and a batch's deltas go out as one update per size counter right after
its membership writes (what that leaves inexact is described in :mod:`cdp.aws.members`). The same deltas
give the segment history its entries and exits: one update per (segment, day) a batch touched
(:mod:`cdp.pipeline.history`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdp.core.catalogue import Catalogue, primary_segment
from cdp.core.identifiers import hashed_identifiers
from cdp.pipeline.history import DayCount, HistoryLog, day_counts
from cdp.ports import Publisher, TransientError

SCHEMA_VERSION = "1"
SOURCE = "cdp.segments"
DETAIL_TYPES = {"entered": "Segment Entered", "exited": "Segment Exited", "consent": "Segment Consent Changed"}
CONSENT_CHANGED = "consent"  # the kind (and clause) of a consent change of a member
DELETED = "deleted"  # the clause of the exits of a deleted profile
MERGED_INTO_CLAUSE = "merged"  # the clause of a merge's changes; its exits name the canonical customer
MEMBER_SHARDS = 16  # members index partitions per segment; see members_partition
DELIVER_ALL = "all"
DELIVERY_MODES = (DELIVER_ALL, "audiences", "none")  # who may act on a change; see the module docstring


@dataclass(frozen=True)
class MembershipChange:
    customer_id: str
    segment_id: str
    kind: str  # entered | exited | consent (a member whose consent changed: no membership changes)
    at: int
    version: int
    clause: str
    reason: str
    delivery: str = DELIVER_ALL  # all | audiences | none: the integrations that may act on it (backfills mark it)

    @property
    def event_id(self) -> str:
        key = f"{self.customer_id}\x1f{self.segment_id}\x1f{self.kind}\x1f{self.version}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]


def members_partition(segment_id: str, customer_id: str, shards: int = MEMBER_SHARDS) -> str:
    """The members index partition of one membership: ``segment#NN``.

    A segment's members are spread over ``shards`` partitions by a hash of the customer id,
    so a segment with millions of members is never one hot key (each partition takes
    1,000 writes/s). Listing reads the shards in order.
    """
    digest = hashlib.blake2b(customer_id.encode(), digest_size=4).digest()
    return f"{segment_id}#{int.from_bytes(digest, 'big') % shards:02d}"


class InvalidImage(ValueError):
    """A table stream image without the shapes of a profile item: a foreign item, or one edited by hand."""


LATEST_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z, the last moment an event's time can be given as


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_time(value: object) -> bool:
    return _is_number(value) and 0 <= value <= LATEST_TIME  # type: ignore[operator]


def check_image(image: Mapping[str, Any] | None, which: str) -> None:
    """Raise :class:`InvalidImage`, naming the attribute and the rule (never its value), unless ``image``
    has the shapes :func:`diff` and :func:`bus_entry` read."""
    if image is None:
        return
    if not isinstance(image.get("customer_id"), str):
        raise InvalidImage(f"{which} image: customer_id must be a string")
    if "v" in image and not _is_number(image["v"]):
        raise InvalidImage(f"{which} image: v must be a number")
    if "ua" in image and not _is_time(image["ua"]):
        raise InvalidImage(f"{which} image: ua must be a time (Unix seconds)")
    members = image.get("m")
    if members is not None:
        if not isinstance(members, Mapping):
            raise InvalidImage(f"{which} image: m must be a map of segment id to member-since time")
        if not all(_is_time(since) for since in members.values()):
            raise InvalidImage(f"{which} image: m must map each segment id to a time (member since)")
    traits = image.get("t")
    if traits is not None and not isinstance(traits, Mapping):
        raise InvalidImage(f"{which} image: t must be a map of trait name to value")
    _check_consent(image.get("cs"), which)
    _check_transitions(image.get("tx"), which)


def _check_transitions(transitions: object, which: str) -> None:
    """The ``tx`` attribute: [segment, kind, time, clause, reason], and a backfill's delivery mark sixth."""
    if transitions is None:
        return
    if not (isinstance(transitions, list) and all(
            isinstance(t, list) and len(t) >= 5 and _is_time(t[2]) for t in transitions)):
        raise InvalidImage(f"{which} image: tx must be a list of [segment, kind, time, clause, reason]")
    if any(len(t) > 5 and t[5] not in DELIVERY_MODES for t in transitions):
        raise InvalidImage(f"{which} image: a tx delivery mark must be one of {', '.join(DELIVERY_MODES)}")


def _check_consent(consent: object, which: str) -> None:
    """The ``cs`` attribute: a map whose categories (``c``) map names to true/false, unsubscribed (``u``) a time."""
    if consent is None:
        return
    if not isinstance(consent, Mapping):
        raise InvalidImage(f"{which} image: cs must be a map (the customer's consent)")
    categories = consent.get("c")
    if categories is not None and not (isinstance(categories, Mapping)
                                       and all(isinstance(v, bool) for v in categories.values())):
        raise InvalidImage(f"{which} image: cs.c must map each consent category to true or false")
    if consent.get("u") is not None and not _is_time(consent["u"]):
        raise InvalidImage(f"{which} image: cs.u must be a time (Unix seconds)")


def _consent_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether the preferences or the unsubscribe differ (a restatement that moves only the time does not)."""
    before, after = old.get("cs") or {}, new.get("cs") or {}
    return (dict(before.get("c") or {}) != dict(after.get("c") or {})
            or before.get("u") != after.get("u"))


def _delivery(transition: Sequence[Any] | None) -> str:
    """The delivery mark of a ``tx`` entry: its sixth element when a backfill wrote one, else ``all``."""
    return str(transition[5]) if transition is not None and len(transition) > 5 else DELIVER_ALL


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[MembershipChange]:
    """Membership changes between two images of a profile item (plain Python values), then a consent change
    for each segment the customer stays in when their consent changed. Each entry and exit carries the
    delivery mark of its ``tx`` entry (a deleted profile's exits, and consent changes, go to everyone)."""
    before = dict((old or {}).get("m") or {})
    after = dict((new or {}).get("m") or {})
    image = new or old or {}
    customer_id = str(image.get("customer_id", ""))
    version = int((new or {}).get("v", 0)) or int((old or {}).get("v", 0)) + 1
    reasons = {str(t[0]): t for t in (new or {}).get("tx") or []}
    moment = int((new or {}).get("ua", 0)) or int((old or {}).get("ua", 0))
    changes = []
    for segment_id in sorted(after.keys() - before.keys()):
        why = reasons.get(segment_id)
        changes.append(MembershipChange(customer_id, segment_id, "entered", int(after[segment_id]), version,
                                        str(why[3]) if why else "", str(why[4]) if why else "", _delivery(why)))
    for segment_id in sorted(before.keys() - after.keys()):
        why = reasons.get(segment_id)
        if new is None:
            clause, reason = DELETED, "the profile was deleted"
        else:
            clause, reason = (str(why[3]), str(why[4])) if why else ("", "")
        at = int(why[2]) if why else moment
        changes.append(MembershipChange(customer_id, segment_id, "exited", at, version, clause, reason,
                                        DELIVER_ALL if new is None else _delivery(why)))
    if old is not None and new is not None and _consent_changed(old, new):
        changes += [MembershipChange(customer_id, segment_id, CONSENT_CHANGED, moment, version, CONSENT_CHANGED,
                                     "consent changed") for segment_id in sorted(before.keys() & after.keys())]
    return changes


def bus_entry(change: MembershipChange, new: Mapping[str, Any] | None, catalogue: Catalogue,
              bus_name: str) -> dict[str, Any]:
    """The PutEvents entry for one change. The detail follows events/schemas/segment-membership.v1.json."""
    segment = catalogue.all_segments.get(change.segment_id)
    memberships = (new or {}).get("m") or {}
    primary = primary_segment(catalogue, memberships)
    detail = {
        "schema_version": SCHEMA_VERSION,
        "event_id": change.event_id,
        "customer_id": change.customer_id,
        "segment": {"id": change.segment_id, "name": segment.name if segment else change.segment_id},
        "change": change.kind,
        "at": datetime.fromtimestamp(change.at, UTC).isoformat().replace("+00:00", "Z"),
        "membership_version": change.version,
        "clause": {"path": change.clause, "reason": change.reason},
        "primary_segment": primary.id if primary else None,
        "segments": sorted(memberships),
        "identifiers": hashed_identifiers(dict((new or {}).get("t") or {})),
        "delivery": change.delivery,
    }
    if change.kind == "exited" and change.clause == MERGED_INTO_CLAUSE and (new or {}).get("mt"):
        # The customer this one was merged into: the audience integrations keep what that customer holds.
        detail["merged_into"] = str((new or {}).get("mt"))
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPES[change.kind],
        "Detail": json.dumps(detail, separators=(",", ":")),
        "EventBusName": bus_name,
        "Resources": [],
        "Time": datetime.fromtimestamp(change.at, UTC),
    }


class MembersIndex(Protocol):
    """The members index as the changes function writes it: a batch's memberships, then its size deltas."""

    def write(self, change: MembershipChange) -> int:
        """Write the membership unless this version or a newer one is stored; the size delta the write made
        (+1, -1, or 0 when it took no effect). Raises :class:`TransientError` when it should be retried."""
        ...

    def size_counter(self, change: MembershipChange) -> str:
        """The size counter of the change's members shard; a batch adds a segment's whole delta to the
        counter of its first change that took effect."""
        ...

    def add_size(self, counter: str, delta: int) -> None:
        """Add ``delta`` to one size counter, resending in process while the store throttles."""
        ...


@dataclass(frozen=True)
class TableChange:
    """One table stream record: its id (for the partial-batch response) and the two images."""

    record_id: str
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None
    problem: str = ""  # why its images could not be read: the record fails and goes to its failure path


@dataclass
class ChangesResult:
    failed: list[str] = field(default_factory=list)
    failure_reasons: dict[str, str] = field(default_factory=dict)
    applied: list[MembershipChange] = field(default_factory=list)  # every change of the records that succeeded
    published: list[MembershipChange] = field(default_factory=list)  # those of them put on the bus
    sizes_lost: dict[str, int] = field(default_factory=dict)  # size counter -> delta it could not be given
    # (segment, day) -> the entries and exits the history could not be given
    history_lost: dict[tuple[str, str], DayCount] = field(default_factory=dict)


Owned = tuple[str, MembershipChange]  # (stream record id, change)
ENTRIES_PER_CALL = 10  # PutEvents' limit


def publish_changes(records: Sequence[TableChange], catalogue: Catalogue, index: MembersIndex,
                    publisher: Publisher, bus_name: str, *, concurrency: int = 1,
                    published_segments: frozenset[str] | None = None,
                    history: HistoryLog | None = None) -> ChangesResult:
    """Update the members index and publish the changes; report the records to retry.

    Requests go out over ``concurrency`` threads in two rounds: every membership write of the batch (the
    changes of one membership in version order), then one size update per touched segment together with
    the PutEvents calls. A record whose membership write or bus entry failed is reported; the others
    proceed. ``published_segments`` limits the bus to the transitions of those segments (None: all); the
    members index gets every transition (and no consent change). With ``history``, the entries and exits that
    took effect go to it with the size updates, one update per (segment, day); one that fails is only
    reported in ``history_lost`` (history is monitoring: best effort, never a reason to retry a batch).
    """
    result = ChangesResult()
    owned = _read_changes(records, result)
    images = {record.record_id: record.new for record in records}
    memberships = [(rid, change) for rid, change in owned if change.kind != CONSENT_CHANGED]
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="changes") as pool:
        deltas, effects, unexpected = _write_memberships(memberships, index, pool, result)
        # A write that failed for a reason other than throttling fails the invocation (after the sizes are
        # counted, as the retried batch will not count them again), so nothing is published before it.
        done = [] if unexpected else [(rid, change) for rid, change in owned if rid not in result.failure_reasons]
        sent = [(rid, change) for rid, change in done
                if published_segments is None or change.segment_id in published_segments]
        entries = [bus_entry(change, images[rid], catalogue, bus_name) for rid, change in sent]
        counting = {counter: pool.submit(index.add_size, counter, delta)
                    for counter, delta in deltas.items() if delta}
        days = _count_days(effects, history, pool)
        calls = [(start, pool.submit(publisher.publish, entries[start:start + ENTRIES_PER_CALL]))
                 for start in range(0, len(entries), ENTRIES_PER_CALL)]
        for counter, future in counting.items():
            if future.exception() is not None:
                result.sizes_lost[counter] = deltas[counter]
        result.history_lost = {key: count for key, (count, future) in days.items() if future.exception() is not None}
        failed_entries = _failed_entries(calls)
    if unexpected is not None:
        raise unexpected
    for position, (record_id, _change) in enumerate(sent):
        if position in failed_entries:
            result.failure_reasons.setdefault(record_id, "EventBridge did not accept the event after resending")
    result.applied = [change for record_id, change in owned if record_id not in result.failure_reasons]
    result.published = [change for record_id, change in sent if record_id not in result.failure_reasons]
    result.failed = [r.record_id for r in records if r.record_id in result.failure_reasons]
    return result


def _read_changes(records: Sequence[TableChange], result: ChangesResult) -> list[Owned]:
    """The membership changes of every readable record; a foreign or hand-edited one fails alone."""
    owned: list[Owned] = []
    for record in records:
        try:
            if record.problem:
                raise InvalidImage(record.problem)
            check_image(record.old, "old")
            check_image(record.new, "new")
        except InvalidImage as error:
            result.failure_reasons[record.record_id] = f"not a profile item: {error}"
            continue
        owned += [(record.record_id, change) for change in diff(record.old, record.new)]
    return owned


def _count_days(effects: Sequence[tuple[MembershipChange, int]], history: HistoryLog | None,
                pool: Executor) -> dict[tuple[str, str], tuple[DayCount, Future[None]]]:
    """One history update per (segment, day) among the writes that took effect, submitted to the pool."""
    if history is None:
        return {}
    return {(segment_id, day): (count, pool.submit(history.add_changes, segment_id, day, count.entered, count.exited))
            for (segment_id, day), count in day_counts(effects).items()}


def _write_memberships(owned: Sequence[Owned], index: MembersIndex, pool: Executor, result: ChangesResult,
                       ) -> tuple[dict[str, int], list[tuple[MembershipChange, int]], Exception | None]:
    """Every membership write, concurrently across memberships and in version order within one; the summed
    size delta per counter of the writes that took effect, those writes with their deltas, and the first error
    that is not transient."""
    memberships: dict[tuple[str, str], list[Owned]] = {}
    for record_id, change in owned:
        memberships.setdefault((change.segment_id, change.customer_id), []).append((record_id, change))
    tasks = [pool.submit(_write_in_order, sorted(changes, key=lambda o: o[1].version), index)
             for changes in memberships.values()]
    deltas: dict[str, int] = {}
    effects: list[tuple[MembershipChange, int]] = []
    counters: dict[str, str] = {}  # segment -> the one counter this batch adds its delta to
    unexpected: Exception | None = None
    for task in tasks:
        for record_id, change, outcome in task.result():
            if isinstance(outcome, TransientError):
                result.failure_reasons.setdefault(record_id, f"members index: {outcome}")
            elif isinstance(outcome, Exception):
                unexpected = unexpected or outcome
            elif outcome:
                # A size is the sum of its shards' counters, so a batch's whole delta for a segment can go
                # to one of them: one update per touched segment (the shard of its first change, so the
                # batches spread over the shards), not one per segment and shard.
                counter = counters.setdefault(change.segment_id, index.size_counter(change))
                deltas[counter] = deltas.get(counter, 0) + outcome
                effects.append((change, outcome))
    return deltas, effects, unexpected


def _write_in_order(changes: Sequence[Owned], index: MembersIndex) -> list[tuple[str, MembershipChange,
                                                                                  int | Exception]]:
    outcomes: list[tuple[str, MembershipChange, int | Exception]] = []
    for record_id, change in changes:
        try:
            outcomes.append((record_id, change, index.write(change)))
        except Exception as error:  # sorted out by the caller, once every write has been tried
            outcomes.append((record_id, change, error))
    return outcomes


def _failed_entries(calls: Sequence[tuple[int, Future[list[int]]]]) -> set[int]:
    """Positions of the entries still failing after the publisher's resends; a call that raised, raises."""
    failed: set[int] = set()
    for start, call in calls:
        failed.update(start + position for position in call.result())
    return failed
