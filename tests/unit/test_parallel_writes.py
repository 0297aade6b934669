"""The profile writes of one batch go out concurrently, with the same result as one after another."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.profile import Profile
from cdp.pipeline.ingest import StreamRecord, ingest_batch
from cdp.pipeline.parallel import each, request_pool
from cdp.ports import QuarantinedRecord
from cdp_dev.memory import MemoryProfileStore

ENGINE = Engine(load_catalogue(Path(__file__).resolve().parents[2] / "segments"))
T = 1_790_000_000


class Quarantine:
    def __init__(self) -> None:
        self.records: list[QuarantinedRecord] = []

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.records += records


def record(sequence: int, customer: str, name: str, at: int, **extra: Any) -> StreamRecord:
    message = {"type": "track", "event": name, "userId": customer, "messageId": f"m-{sequence}",
               "timestamp": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "properties": extra, "context": {"library": {"name": "analytics.js"}}}
    return StreamRecord(str(sequence), customer, json.dumps(message).encode(), shard="shardId-000000000000")


def batch() -> list[StreamRecord]:
    records = []
    for n in range(60):
        customer = f"c{n % 20}"  # three records per customer, interleaved with the others'
        if n % 7 == 3:
            records.append(record(n, customer, "Order Completed", T - 3600 + n, order_id=f"o{n}", revenue=120.0))
        else:
            records.append(record(n, customer, "Product Added", T - 3600 + n, product_id=f"p{n}", price=20.0))
    records.append(StreamRecord("999", "c1", b"{not json", shard="shardId-000000000000"))
    return records


class SlowStore(MemoryProfileStore):
    """A store whose writes wait until ``expected`` of them are in flight at once (or a second passes)."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(expected, timeout=1.0)
        self.concurrent = 0
        self.most = 0
        self.lock = threading.Lock()

    def save(self, profile: Profile, expected_version: int) -> None:
        with self.lock:
            self.concurrent += 1
            self.most = max(self.most, self.concurrent)
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            pass
        finally:
            with self.lock:
                self.concurrent -= 1
        super().save(profile, expected_version)


def test_concurrent_writes_give_the_same_profiles_and_result_as_sequential_ones() -> None:
    sequential_store, concurrent_store = MemoryProfileStore(), MemoryProfileStore()
    alone = ingest_batch(batch(), ENGINE, sequential_store, Quarantine(), FixedClock(T))
    with ThreadPoolExecutor(8) as pool:
        together = ingest_batch(batch(), ENGINE, concurrent_store, Quarantine(), FixedClock(T), pool)
    assert together.applied == alone.applied == 60
    assert together.customers_written == alone.customers_written == 20
    assert together.transitions == alone.transitions and together.transitions
    assert together.quarantined == alone.quarantined
    assert together.failed == alone.failed == []
    for n in range(20):
        assert concurrent_store.item(f"c{n}") == sequential_store.item(f"c{n}")


def test_the_writes_of_a_batch_are_in_flight_together() -> None:
    store = SlowStore(expected=4)
    with ThreadPoolExecutor(4) as pool:
        result = ingest_batch(batch()[:-1], ENGINE, store, Quarantine(), FixedClock(T), pool)
    assert result.customers_written == 20
    assert store.most == 4


def test_each_keeps_the_order_of_the_items_and_runs_in_turn_without_a_pool() -> None:
    seen: list[int] = []

    def square(n: int) -> int:
        seen.append(n)
        return n * n

    assert each(square, [3, 1, 2], None) == [9, 1, 4]
    assert seen == [3, 1, 2]
    with ThreadPoolExecutor(3) as pool:
        assert each(lambda n: n * 2, list(range(50)), pool) == [n * 2 for n in range(50)]


@pytest.mark.parametrize("workers", [0, 1])
def test_one_worker_means_no_threads(workers: int) -> None:
    assert request_pool(workers, "x") is None


def test_a_pool_has_the_workers_asked_for() -> None:
    pool = request_pool(5, "x")
    assert isinstance(pool, ThreadPoolExecutor)
    assert pool._max_workers == 5
    pool.shutdown()
