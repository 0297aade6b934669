"""In-memory adapters of the ports, for unit tests, simulations and the benchmark harness.

They keep what DynamoDB would keep (the stored item, its version condition, the sparse due
index ordered by deadline) and count the requests the DynamoDB adapters would send for the
same calls, so a simulation can report requests per customer without an emulator.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

from cdp.due import DueEntry, DuePage
from cdp.ports import ConflictError
from cdp.profile import Profile

BATCH_GET_LIMIT = 100


class MemoryProfileStore:
    """Profiles as stored items, with the same conditional write as the DynamoDB store."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.requests: Tally[str] = Tally()
        self._due: dict[str, list[tuple[int, str]]] = {}  # shard -> sorted (deadline, customer id)

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        unique = list(dict.fromkeys(customer_ids))
        self.requests["BatchGetItem"] += -(-len(unique) // BATCH_GET_LIMIT)
        return {cid: Profile.from_item(self.items[cid]) for cid in unique if cid in self.items}

    def save(self, profile: Profile, expected_version: int) -> None:
        self.requests["PutItem"] += 1
        stored = self.items.get(profile.customer_id)
        if (int(stored["v"]) if stored else 0) != expected_version:
            raise ConflictError(profile.customer_id)
        self._store(profile.to_item())

    def _store(self, item: dict[str, Any]) -> None:
        old = self.items.get(item["customer_id"])
        if old is not None and "ds" in old:
            entries = self._due[old["ds"]]
            del entries[bisect.bisect_left(entries, (old["nd"], old["customer_id"]))]
        if "ds" in item:
            bisect.insort(self._due.setdefault(item["ds"], []), (item["nd"], item["customer_id"]))
        self.items[item["customer_id"]] = item


class MemoryDueIndex:
    """The due index over a :class:`MemoryProfileStore`, read the way the DynamoDB index is queried."""

    def __init__(self, store: MemoryProfileStore) -> None:
        self.store = store

    def due(self, shard: str, until: int, limit: int, cursor: object | None) -> DuePage:
        self.store.requests["Query"] += 1
        entries = self.store._due.get(shard, [])
        start = bisect.bisect_right(entries, cursor) if isinstance(cursor, tuple) else 0
        page = []
        for deadline, customer_id in entries[start:start + limit]:
            if deadline > until:
                break
            page.append(DueEntry(customer_id, deadline))
        more = len(page) == limit  # like DynamoDB: a full page always comes with a cursor
        return DuePage(page, (page[-1].due_at, page[-1].customer_id) if more else None)
