"""The requests of one batch, sent side by side over a bounded pool of threads.

A stream batch touches up to a hundred customers, and each changed one costs a conditional
write: sent one after another, the round trips add up (about 100 x 5 ms per batch, which holds
a shard near 50 events per second whatever the CPU does). A pool of threads overlaps the waits;
the CPU work still takes turns, so the pool is sized for waiting, not for cores.

The work of one item (one customer) stays on one thread from its read to its last write, so a
customer's own order holds. Results come back in the order of the items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def each(function: Callable[[Item], Result], items: Sequence[Item], pool: Executor | None) -> list[Result]:
    """``function`` applied to every item, concurrently over ``pool`` (in turn without one), in item order."""
    if pool is None or len(items) < 2:
        return [function(item) for item in items]
    return list(pool.map(function, items))


def request_pool(workers: int, name: str) -> Executor | None:
    """A pool of ``workers`` threads for one function's requests; None for one worker (no threads at all)."""
    if workers <= 1:
        return None
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
