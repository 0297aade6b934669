"""Segment sizes stay exact under redelivery and reordering, over the in-memory members index.

A random history of profile versions (customers entering and leaving segments) is delivered to the changes
pipeline the way Lambda delivers a table stream, and worse: in batches, with failed records retried from
the first failure, whole batches delivered again, records duplicated within a batch, batches shuffled, and
old records redriven long after newer versions. The final size of every segment must equal the members of
its customers' last versions, and the listing must return exactly those members.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.core.catalogue import build_catalogue
from cdp.pipeline.changes import MembershipChange, TableChange, diff, members_partition, publish_changes
from cdp_dev.memory import MemoryMembersIndex

T = 1_790_000_000
SEGMENTS = ("vip", "browsers", "repeat-buyers", "cart-abandoners", "email-responders")
CATALOGUE = build_catalogue([])


def image(customer: str, version: int, segments: frozenset[str]) -> dict[str, Any]:
    return {"customer_id": customer, "v": version, "ua": T + version, "m": {s: T + version for s in segments}}


@dataclass
class History:
    records: list[TableChange]  # in stream order: each customer's versions in order, customers interleaved
    final: dict[str, set[str]]  # segment -> its members at their customers' last versions


def history(rng: random.Random, customers: int, writes: int) -> History:
    state: dict[str, tuple[int, frozenset[str]]] = {f"c-{n:03d}": (0, frozenset()) for n in range(customers)}
    records = []
    for number in range(writes):
        customer = rng.choice(sorted(state))
        version, before = state[customer]
        after = frozenset(s for s in SEGMENTS if (s in before) != (rng.random() < 0.35))  # flip some
        old = image(customer, version, before) if version else None
        records.append(TableChange(f"{number:08d}", old, image(customer, version + 1, after)))
        state[customer] = (version + 1, after)
    final = {s: {c for c, (_, members) in state.items() if s in members} for s in SEGMENTS}
    return History(records, final)


class Listing(Protocol):
    def size(self, segment_id: str) -> int: ...

    def page(self, segment_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]: ...


class Bus:
    """A publisher that fails chosen events once each, as EventBridge reports failed entries."""

    def __init__(self) -> None:
        self.published: set[str] = set()  # event ids accepted
        self.doomed: set[str] = set()
        self.calls: list[int] = []  # entries per call

    def publish(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        import json

        self.calls.append(len(entries))
        failed = []
        for position, entry in enumerate(entries):
            event_id = json.loads(entry["Detail"])["event_id"]
            if event_id in self.doomed:
                self.doomed.discard(event_id)
                failed.append(position)
            else:
                self.published.add(event_id)
        return failed


@dataclass
class Delivery:
    """Delivers a history to ``publish_changes`` as Lambda would, plus duplicates, shuffles and late redrives.

    ``doom(change)`` makes the next membership write of that change fail as a throttled one does."""

    rng: random.Random
    index: Any
    doom: Callable[[MembershipChange], None]
    concurrency: int = 1
    bus: Bus = field(default_factory=Bus)
    invocations: int = 0

    def invoke(self, records: Sequence[TableChange], faults: bool) -> list[str]:
        offered = list(records)
        if offered and self.rng.random() < 0.2:  # a record twice in one batch
            offered.insert(self.rng.randrange(len(offered) + 1), self.rng.choice(offered))
        if self.rng.random() < 0.15:  # out of order
            self.rng.shuffle(offered)
        changes = [c for r in offered for c in diff(r.old, r.new)]
        if faults and changes and self.rng.random() < 0.3:
            self.doom(self.rng.choice(changes))
        if faults and changes and self.rng.random() < 0.1:
            self.bus.doomed.add(self.rng.choice(changes).event_id)
        self.invocations += 1
        result = publish_changes(offered, CATALOGUE, self.index, self.bus, "bus", concurrency=self.concurrency)
        assert not result.sizes_lost
        return result.failed

    def batch(self, records: Sequence[TableChange], again: bool = True) -> None:
        """One batch until it succeeds: after a failure, Lambda retries from the first failed record."""
        pending = list(records)
        for attempt in range(6):
            failed = set(self.invoke(pending, faults=attempt < 4))  # faults stop, as an outage ends
            if not failed:
                break
            pending = pending[min(n for n, r in enumerate(pending) if r.record_id in failed):]
        else:
            raise AssertionError("a batch kept failing after its faults stopped")
        if again and self.rng.random() < 0.2:  # the whole batch again (a crash after the work, a redrive)
            self.batch(records, again=False)

    def stream(self, records: Sequence[TableChange]) -> None:
        position = 0
        while position < len(records):
            size = self.rng.randint(1, 15)
            self.batch(records[position:position + size])
            position += size
        late = self.rng.sample(list(records), k=len(records) // 3)  # old versions, long after newer ones
        for start in range(0, len(late), 10):
            self.batch(late[start:start + 10])


def listed(index: Listing, segment_id: str, limit: int) -> list[str]:
    members: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = index.page(segment_id, limit, cursor)
        members += [m["customer_id"] for m in page]
        if cursor is None:
            return members


def check_exact(index: Listing, final: dict[str, set[str]], shards: int) -> None:
    for segment_id, members in final.items():
        assert index.size(segment_id) == len(members), segment_id
        listing = listed(index, segment_id, 7)
        assert listing == sorted(members, key=lambda c: (members_partition(segment_id, c, shards), c))


def memory_delivery(rng: random.Random, shards: int, concurrency: int) -> tuple[MemoryMembersIndex, Delivery]:
    index = MemoryMembersIndex(shards)
    doomed: set[str] = set()

    def failing(change: MembershipChange) -> bool:
        if change.event_id in doomed:
            doomed.discard(change.event_id)
            return True
        return False

    index.failing_writes = failing
    return index, Delivery(rng, index, lambda change: doomed.add(change.event_id), concurrency)


@settings(max_examples=40, deadline=None)
@given(rng=st.randoms(use_true_random=False), shards=st.sampled_from([1, 4, 16]), concurrency=st.sampled_from([1, 8]))
def test_sizes_and_listings_are_exact_under_redelivery_and_reordering(rng: random.Random, shards: int,
                                                                     concurrency: int) -> None:
    past = history(rng, customers=rng.randint(1, 30), writes=rng.randint(1, 120))
    index, delivery = memory_delivery(rng, shards, concurrency)

    delivery.stream(past.records)

    check_exact(index, past.final, shards)
    for segment_id, members in past.final.items():
        assert index.current(segment_id) == members
    every = {c.event_id for r in past.records for c in diff(r.old, r.new)}
    assert every <= delivery.bus.published  # every transition reached the bus at least once
    assert max(delivery.bus.calls, default=0) <= 10


def test_the_same_history_delivered_many_ways_ends_in_the_same_sizes() -> None:
    past = history(random.Random(5), customers=25, writes=300)
    ends = []
    for seed in range(6):
        index, delivery = memory_delivery(random.Random(seed), 16, 4)
        delivery.stream(past.records)
        ends.append({s: index.size(s) for s in SEGMENTS})
    assert ends == [{s: len(m) for s, m in past.final.items()}] * 6
    assert any(ends[0].values())


def change(customer: str, segment: str, kind: str, version: int) -> TableChange:
    before = frozenset() if kind == "entered" else frozenset({segment})
    after = frozenset({segment}) if kind == "entered" else frozenset()
    return TableChange(f"{customer}-{version}", image(customer, version - 1, before), image(customer, version, after))


def test_a_batch_sends_one_size_update_per_touched_segment() -> None:
    index = MemoryMembersIndex(shards=2)
    customers = [f"c-{n}" for n in range(20)]
    records = [change(c, "vip", "entered", 1) for c in customers] + [change("c-0", "browsers", "entered", 2)]

    publish_changes(records, CATALOGUE, index, Bus(), "bus", concurrency=4)

    assert {members_partition("vip", c, 2) for c in customers} == {"vip#00", "vip#01"}  # both shards written
    assert dict(index.requests) == {"PutItem": 21, "UpdateItem": 2}
    assert index.size("vip") == 20 and index.size("browsers") == 1


def test_a_redelivered_batch_writes_again_but_counts_nothing() -> None:
    index = MemoryMembersIndex()
    records = [change(f"c-{n}", "vip", "entered", 1) for n in range(5)]
    publish_changes(records, CATALOGUE, index, Bus(), "bus")
    counted = index.requests["UpdateItem"]

    result = publish_changes(records, CATALOGUE, index, Bus(), "bus")

    assert result.failed == [] and len(result.published) == 5  # the events go out again, with the same ids
    assert index.requests["UpdateItem"] == counted
    assert index.size("vip") == 5


def test_two_changes_of_one_membership_in_a_batch_apply_in_version_order() -> None:
    index = MemoryMembersIndex()
    records = [change("ada", "vip", "exited", 3), change("ada", "vip", "entered", 2)]  # newest first

    result = publish_changes(records, CATALOGUE, index, Bus(), "bus", concurrency=8)

    assert result.failed == []
    partition = members_partition("vip", "ada")
    assert index.items[(partition, "ada")]["v"] == 3 and "exited_at" in index.items[(partition, "ada")]
    # Both writes took effect, the entry's +1 and the exit's -1 sum to nothing: no size update at all.
    assert dict(index.requests) == {"PutItem": 2}
    assert index.size("vip") == 0 and index.current("vip") == set()


def test_an_older_version_after_a_newer_one_changes_nothing() -> None:
    index = MemoryMembersIndex()
    publish_changes([change("ada", "vip", "entered", 4)], CATALOGUE, index, Bus(), "bus")
    publish_changes([change("ada", "vip", "exited", 3)], CATALOGUE, index, Bus(), "bus")  # a late redrive

    assert index.size("vip") == 1 and index.current("vip") == {"ada"}


def test_a_failed_membership_write_fails_its_record_only_and_is_counted_on_the_retry() -> None:
    index = MemoryMembersIndex()
    index.failing_writes = lambda c: c.customer_id == "bob"
    records = [change(c, "vip", "entered", 1) for c in ("ada", "bob", "cy")]
    bus = Bus()

    result = publish_changes(records, CATALOGUE, index, bus, "bus", concurrency=4)

    assert result.failed == ["bob-1"]
    assert result.failure_reasons == {"bob-1": "members index: ProvisionedThroughputExceededException"}
    assert {c.customer_id for c in result.published} == {"ada", "cy"} and len(bus.published) == 2
    assert index.size("vip") == 2
    index.failing_writes = None
    assert publish_changes(records[1:], CATALOGUE, index, bus, "bus").failed == []
    assert index.size("vip") == 3


def test_a_size_update_that_keeps_failing_is_reported_and_fails_no_record() -> None:
    """The documented gap: the memberships are written, so a retry would count nothing; it is reported."""
    index = MemoryMembersIndex(shards=1)
    index.failing_counters = lambda counter: counter.startswith("vip#")
    records = [change("ada", "vip", "entered", 1), change("bob", "vip", "entered", 1),
               change("ada", "browsers", "entered", 2)]

    result = publish_changes(records, CATALOGUE, index, Bus(), "bus")

    assert result.failed == [] and len(result.published) == 3
    assert result.sizes_lost == {"vip#00": 2}
    assert index.current("vip") == {"ada", "bob"} and index.size("vip") == 0 and index.size("browsers") == 1


def test_only_the_published_segments_go_on_the_bus_and_the_index_gets_every_transition() -> None:
    index, bus = MemoryMembersIndex(), Bus()
    records = [change("ada", "vip", "entered", 1), change("ada", "browsers", "entered", 2),
               change("bob", "browsers", "entered", 1)]

    result = publish_changes(records, CATALOGUE, index, bus, "bus", published_segments=frozenset({"vip"}))

    assert [(c.customer_id, c.segment_id) for c in result.published] == [("ada", "vip")]
    assert len(result.applied) == 3 and len(bus.published) == 1
    assert index.size("vip") == 1 and index.size("browsers") == 2


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_put_events_go_out_ten_at_a_time_and_a_failed_entry_fails_its_own_record(concurrency: int) -> None:
    index, bus = MemoryMembersIndex(), Bus()
    records = [change(f"c-{n:02d}", "vip", "entered", 1) for n in range(25)]
    doomed = diff(records[17].old, records[17].new)[0]
    bus.doomed.add(doomed.event_id)

    result = publish_changes(records, CATALOGUE, index, bus, "bus", concurrency=concurrency)

    assert sorted(bus.calls) == [5, 10, 10]
    assert result.failed == ["c-17-1"]
    assert result.failure_reasons == {"c-17-1": "EventBridge did not accept the event after resending"}
    assert len(result.published) == 24 and len(bus.published) == 24


def test_the_runtime_never_sends_a_transaction() -> None:
    """Sizes are exact without them (a transaction costs twice the write units, and the emulator copies its
    tables on each one). The one exception is the definitions store: an operator's change of the catalogue moves
    its head and writes the new versions at once, on a table of a few hundred small items, off the event path."""
    from pathlib import Path

    runtime = Path(__file__).resolve().parents[2] / "layers" / "cdp" / "python" / "cdp"
    sending = [str(path.relative_to(runtime)) for path in runtime.rglob("*.py")
               if "transact_write_items" in path.read_text() or "TransactWrite(" in path.read_text()]
    assert sending == ["aws/definitions.py"]
