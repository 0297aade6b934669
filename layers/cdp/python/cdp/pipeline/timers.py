"""Deadlines that pass with no new event: the due index and the sweep that re-evaluates those customers.

Every stored profile with a deadline carries ``nd`` (its next deadline, Unix seconds) and ``ds``
(its due shard, ``00``..``31`` from a hash of the customer id). The due index is keyed
``(ds, nd)`` and holds only those profiles, so the sweep reads, per shard, exactly the customers
whose deadline has passed, oldest first, and nobody else.

Why 32 shards: a DynamoDB partition (a GSI's too) takes about 1,000 writes/s. When a million
customers fall due in the same minute, the sweep rewrites a million profiles, and each rewrite
moves an index entry. Spread over 32 shards that is about 520 index writes/s per shard at one
minute's pace, inside the limit; one key would need 16,700/s. An idle sweep costs 32 queries,
whatever the table's size.

The index is the work queue: a re-evaluated profile gets a later deadline (or none) and leaves
the due range, so a run that stops early hands the rest to the next run by doing nothing at all,
and nothing is skipped. The index is eventually consistent, so each due customer is read again
(strongly consistent) and skipped when it is no longer due.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from cdp.core.clock import Clock
from cdp.core.engine import Engine, Transition
from cdp.core.profile import DUE_SHARDS, Profile, due_shard
from cdp.pipeline.parallel import each
from cdp.pipeline.write import WriteOutcome, write_profile
from cdp.ports import ProfileStore, TransientError

__all__ = ["DUE_SHARDS", "DueEntry", "DueIndex", "DuePage", "SweepResult", "due_shard", "shard_groups", "sweep"]

PAGE_SIZE = 100  # one BatchGetItem of profiles per page


@dataclass(frozen=True, slots=True)
class DueEntry:
    customer_id: str
    due_at: int


@dataclass(frozen=True, slots=True)
class DuePage:
    entries: list[DueEntry]
    cursor: object | None  # where the next page of this shard starts; None when the shard is done


class DueIndex(Protocol):
    def due(self, shard: str, until: int, limit: int, cursor: object | None) -> DuePage:
        """Up to ``limit`` customers of ``shard`` whose next deadline is at or before ``until``, oldest first."""
        ...


@dataclass
class SweepResult:
    due: int = 0  # index entries read
    reevaluated: int = 0  # due profiles re-evaluated and written
    stale: int = 0  # index entries whose profile had already moved on
    transitioned: int = 0  # customers with at least one transition
    written: int = 0
    conflicts: int = 0
    pages: int = 0
    unfinished: bool = False  # stopped early: the next run carries on
    failures: list[str] = field(default_factory=list)  # reasons only, never identifiers
    delays: list[float] = field(default_factory=list)  # seconds from each deadline to its re-evaluation
    transitions: list[Transition] = field(default_factory=list)

    @property
    def delay_p50(self) -> float:
        ordered = sorted(self.delays)
        return ordered[len(ordered) // 2] if ordered else 0.0

    @property
    def delay_max(self) -> float:
        return max(self.delays, default=0.0)


def shard_groups(workers: int) -> list[list[int]]:
    """The due shards split into ``workers`` disjoint groups, one per concurrent sweep."""
    return [list(range(DUE_SHARDS))[start::workers] for start in range(workers)]


def sweep(index: DueIndex, store: ProfileStore, engine: Engine, clock: Clock, *,
          page_size: int = PAGE_SIZE, has_time: Callable[[], bool] = lambda: True,
          shards: Sequence[int] = range(DUE_SHARDS), rotation: int = 0, pool: Executor | None = None) -> SweepResult:
    """Re-evaluate every customer now due in ``shards``, shard by shard, while ``has_time()`` says there is time.

    Concurrent sweeps take disjoint ``shards``. ``rotation`` moves where a run starts, so that when
    runs keep stopping early no shard waits behind the others. With a ``pool``, the writes of a page
    go out concurrently (see :mod:`cdp.pipeline.parallel`).
    """
    result = SweepResult()
    now = clock.now()
    until = int(now)
    order = list(shards)
    for step in range(len(order)):
        shard = f"{order[(rotation + step) % len(order)]:02d}"
        cursor: object | None = None
        while True:
            if not has_time():
                result.unfinished = True
                return result
            try:
                page = index.due(shard, until, page_size, cursor)
            except TransientError as error:
                result.failures.append(f"due index could not be read: {error}")
                result.unfinished = True
                break
            result.pages += 1
            result.due += len(page.entries)
            if page.entries:
                _reevaluate(page.entries, store, engine, now, result, pool)
            if page.cursor is None:
                break
            cursor = page.cursor
    return result


def _reevaluate(entries: Sequence[DueEntry], store: ProfileStore, engine: Engine, now: float,
                result: SweepResult, pool: Executor | None) -> None:
    try:
        profiles = store.load([entry.customer_id for entry in entries])
    except TransientError as error:
        result.failures.append(f"profiles could not be loaded: {error}")
        result.unfinished = True
        return
    writes = each(lambda entry: _reevaluate_customer(entry.customer_id, profiles.get(entry.customer_id), store,
                                                     engine, now), entries, pool)
    for write, acted_on, transitions in writes:
        _account(write, acted_on, transitions, now, result)


def _reevaluate_customer(customer_id: str, profile: Profile | None, store: ProfileStore, engine: Engine,
                         now: float) -> tuple[WriteOutcome, list[int], list[Transition]]:
    """Evaluate one due customer at ``now`` and write the profile; not written when its deadline moved on.

    Returns the write, the deadline of each profile evaluated (the last one the written one's) and
    the transitions of the last evaluation. Touches nothing shared, so it runs on any thread.
    """
    acted_on: list[int] = []
    transitions: list[Transition] = []

    def evaluate(current: Profile) -> bool:
        deadline = current.next_deadline
        if deadline is None or deadline > now:
            return False  # a newer write already moved the deadline on
        acted_on.append(deadline)
        transitions[:] = engine.evaluate(current, now, set())
        return True

    return write_profile(store, customer_id, profile, evaluate), acted_on, transitions


def _account(write: WriteOutcome, acted_on: list[int], transitions: list[Transition], now: float,
             result: SweepResult) -> None:
    result.conflicts += write.conflicts
    if write.failed:
        result.failures.append(write.reason)
        result.unfinished = True
    elif not write.written:
        result.stale += 1
    else:
        result.written += 1
        result.reevaluated += 1
        result.delays.append(now - acted_on[-1])  # behind the deadline this write acted on
        if transitions:
            result.transitioned += 1
            result.transitions += transitions
