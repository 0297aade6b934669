"""In-memory adapters of the ports, for unit tests, simulations and the benchmark harness.

They keep what DynamoDB would keep (the stored item, its version condition, the sparse due
index ordered by deadline) and count the requests the DynamoDB adapters would send for the
same calls, so a simulation can report requests per customer without an emulator.
"""

from __future__ import annotations

import bisect
import pickle
from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cdp.core.profile import Profile
from cdp.pipeline.fanout import LedgerEntry
from cdp.pipeline.timers import DueEntry, DuePage
from cdp.ports import ConflictError

BATCH_GET_LIMIT = 100


class StoredItems(Mapping[str, dict[str, Any]]):
    """The stored items by customer id, decoded on access."""

    def __init__(self, encoded: dict[str, bytes]) -> None:
        self._encoded = encoded

    def __getitem__(self, customer_id: str) -> dict[str, Any]:
        return dict(pickle.loads(self._encoded[customer_id]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._encoded)

    def __len__(self) -> int:
        return len(self._encoded)


class MemoryProfileStore:
    """Profiles as stored items, with the same conditional write as the DynamoDB store.

    Items are kept encoded, as a database keeps them outside the process: reading one decodes a
    fresh copy, and a million stored profiles do not sit in the process as live objects.
    """

    def __init__(self) -> None:
        self._encoded: dict[str, bytes] = {}
        self.items = StoredItems(self._encoded)
        self.requests: Tally[str] = Tally()
        self._due: dict[str, list[tuple[int, str]]] = {}  # shard -> sorted (deadline, customer id)

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        unique = list(dict.fromkeys(customer_ids))
        self.requests["BatchGetItem"] += -(-len(unique) // BATCH_GET_LIMIT)
        return {cid: Profile.from_item(self.item(cid) or {}) for cid in unique if cid in self._encoded}

    def item(self, customer_id: str) -> dict[str, Any] | None:
        """The stored item of a customer, decoded."""
        return self.items.get(customer_id)

    def save(self, profile: Profile, expected_version: int) -> None:
        self.requests["PutItem"] += 1
        stored = self.item(profile.customer_id)
        if (int(stored["v"]) if stored else 0) != expected_version:
            raise ConflictError(profile.customer_id)
        self.put(profile.to_item())

    def put(self, item: dict[str, Any]) -> None:
        """Store an item as it is, unconditionally (for seeding a simulation)."""
        old = self.item(item["customer_id"])
        if old is not None and "ds" in old:
            entries = self._due[old["ds"]]
            del entries[bisect.bisect_left(entries, (old["nd"], old["customer_id"]))]
        if "ds" in item:
            bisect.insort(self._due.setdefault(item["ds"], []), (item["nd"], item["customer_id"]))
        self._encoded[item["customer_id"]] = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


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


class MemoryDeliveryLedger:
    """The delivery ledger in memory, with the DynamoDB ledger's conditional write."""

    def __init__(self) -> None:
        self.entries_by_key: dict[tuple[str, str, str], LedgerEntry] = {}

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        found = {key: self.entries_by_key.get((destination, *key)) for key in keys}
        return {key: entry for key, entry in found.items() if entry is not None}

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        current = self.entries_by_key.get((destination, *key))
        if current is not None and current.version >= entry.version:
            return False
        self.entries_by_key[(destination, *key)] = entry
        return True


class MemoryDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str]] = []  # (body, reason)

    def put(self, body: str, reason: str) -> None:
        self.letters.append((body, reason))
