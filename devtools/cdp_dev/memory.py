"""In-memory adapters of the ports, for unit tests, simulations and the benchmark harness.

They keep what DynamoDB would keep (the stored item, its version condition, the sparse due
index ordered by deadline) and count the requests the DynamoDB adapters would send for the
same calls, so a simulation can report requests per customer without an emulator.
"""

from __future__ import annotations

import bisect
import copy
import pickle
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from cdp.aws.identity_map import TOMBSTONE
from cdp.aws.members import EXITED_MEMBER_TTL, decode_cursor, encode_cursor
from cdp.collector.keys import WriteKey
from cdp.core.profile import Profile
from cdp.pipeline.changes import MEMBER_SHARDS, MembershipChange, members_partition
from cdp.pipeline.fanout import LedgerEntry
from cdp.pipeline.timers import DueEntry, DuePage
from cdp.ports import ConflictError, LedgerRow, MapRead, PrivacyRequest, TransientError

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
        # customer -> (version, due shard, next deadline): what a condition or the due index reads,
        # kept beside the encoded item as a database keeps its keys, so a write decodes nothing
        self._keys: dict[str, tuple[int, str | None, int | None]] = {}
        self.items = StoredItems(self._encoded)
        self.requests: Tally[str] = Tally()
        self._due: dict[str, list[tuple[int, str]]] = {}  # shard -> sorted (deadline, customer id)

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        unique = list(dict.fromkeys(customer_ids))
        self.requests["BatchGetItem"] += -(-len(unique) // BATCH_GET_LIMIT)
        return {cid: Profile.from_item(self.item(cid) or {}) for cid in unique if cid in self._encoded}

    def get(self, customer_id: str) -> Profile | None:
        """One profile, as the API reads it (ProfileLookup)."""
        return self.load([customer_id]).get(customer_id)

    def item(self, customer_id: str) -> dict[str, Any] | None:
        """The stored item of a customer, decoded."""
        return self.items.get(customer_id)

    def save(self, profile: Profile, expected_version: int) -> None:
        self.requests["PutItem"] += 1
        stored = self._keys.get(profile.customer_id)
        if (stored[0] if stored else 0) != expected_version:
            raise ConflictError(profile.customer_id)
        self.put(profile.to_item())

    def put(self, item: dict[str, Any]) -> None:
        """Store an item as it is, unconditionally (for seeding a simulation)."""
        customer_id = item["customer_id"]
        old = self._keys.get(customer_id)
        if old is not None and old[1] is not None:
            entries = self._due[old[1]]
            del entries[bisect.bisect_left(entries, (old[2], customer_id))]
        if "ds" in item:
            bisect.insort(self._due.setdefault(item["ds"], []), (item["nd"], customer_id))
        self._keys[customer_id] = (int(item.get("v", 0)), item.get("ds"), item.get("nd"))
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
        if current is not None and current.order >= entry.order:
            return False
        self.entries_by_key[(destination, *key)] = entry
        return True

    def forget(self, destination: str, key: tuple[str, str]) -> None:
        """Delete the entry (after a deleted customer's remove was sent)."""
        self.entries_by_key.pop((destination, *key), None)


class MemoryDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str]] = []  # (body, reason)

    def put(self, body: str, reason: str) -> None:
        self.letters.append((body, reason))


class MemoryMembersIndex:
    """The members index in memory: the DynamoDB index's version-conditional membership write (which yields
    its size delta), its per-shard size counters and its listing order, counting the requests it would send.

    Thread-safe, as the changes function writes from a pool. ``failing_writes`` and ``failing_counters``
    make chosen requests fail as throttled ones do, before they take effect.
    """

    def __init__(self, shards: int = MEMBER_SHARDS) -> None:
        self.shards = shards
        self.items: dict[tuple[str, str], dict[str, int]] = {}  # (segment#NN, customer id) -> v, since, exited_at
        self.sizes: dict[str, int] = {}  # segment#NN -> members
        self.requests: Tally[str] = Tally()
        self.failing_writes: Callable[[MembershipChange], bool] | None = None
        self.failing_counters: Callable[[str], bool] | None = None
        self._lock = threading.Lock()

    def write(self, change: MembershipChange) -> int:
        partition = self.size_counter(change)
        with self._lock:
            self.requests["PutItem"] += 1
            if self.failing_writes is not None and self.failing_writes(change):
                raise TransientError("ProvisionedThroughputExceededException")
            stored = self.items.get((partition, change.customer_id))
            if stored is not None and stored["v"] >= change.version:
                return 0
            item = {"v": change.version, "since": change.at}
            if change.kind == "exited":
                item.update(exited_at=change.at, expires_at=change.at + EXITED_MEMBER_TTL)
            self.items[(partition, change.customer_id)] = item
        return int(change.kind == "entered") - int(stored is not None and "exited_at" not in stored)

    def size_counter(self, change: MembershipChange) -> str:
        return members_partition(change.segment_id, change.customer_id, self.shards)

    def add_size(self, counter: str, delta: int) -> None:
        with self._lock:
            self.requests["UpdateItem"] += 1
            if self.failing_counters is not None and self.failing_counters(counter):
                raise TransientError("ProvisionedThroughputExceededException")
            self.sizes[counter] = self.sizes.get(counter, 0) + delta

    def record(self, change: MembershipChange) -> None:
        delta = self.write(change)
        if delta:
            self.add_size(self.size_counter(change), delta)

    def size(self, segment_id: str) -> int:
        with self._lock:
            self.requests["BatchGetItem"] += -(-self.shards // BATCH_GET_LIMIT)
            return max(sum(self.sizes.get(f"{segment_id}#{shard:02d}", 0) for shard in range(self.shards)), 0)

    def current(self, segment_id: str) -> set[str]:
        """Every current member of a segment (no request: for checking a simulation)."""
        with self._lock:
            return {customer for (partition, customer), item in self.items.items()
                    if partition.rsplit("#", 1)[0] == segment_id and "exited_at" not in item}

    def page(self, segment_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """As the DynamoDB index lists: by shard, then customer id; one Query per shard visited."""
        shard, after = decode_cursor(cursor, self.shards) if cursor else (0, "")
        members: list[dict[str, Any]] = []
        with self._lock:
            while shard < self.shards and len(members) < limit:
                self.requests["Query"] += 1
                partition = f"{segment_id}#{shard:02d}"
                live = sorted((customer, item["since"]) for (p, customer), item in self.items.items()
                              if p == partition and customer > after and "exited_at" not in item)
                taken = live[:limit - len(members)]
                members += [{"customer_id": customer, "since": since} for customer, since in taken]
                if len(taken) < len(live):
                    after = taken[-1][0]
                    break
                shard, after = shard + 1, ""
        return members, (None if shard >= self.shards else encode_cursor(shard, after))


class MemoryKeyStore:
    """Write keys in a dict (cdp.collector.keys.KeyStore)."""

    def __init__(self, keys: Sequence[WriteKey] = ()) -> None:
        self.keys = {k.digest: k for k in keys}

    def find(self, digest: str) -> WriteKey | None:
        return self.keys.get(digest)

    def keys_of(self, source: str) -> list[WriteKey]:
        return [k for k in self.keys.values() if k.source == source]

    def all_keys(self) -> list[WriteKey]:
        return list(self.keys.values())

    def put(self, key: WriteKey) -> None:
        self.keys[key.digest] = key


class MemoryIdentityMap:
    """The id map in memory (digest -> customer), with the adapter's conditional link and its tombstones (which no
    link or index write replaces); counts its requests."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.reads = 0  # batched reads
        self.writes = 0

    def links(self, digests: Sequence[str]) -> dict[str, str]:
        return self.read(digests).links

    def read(self, digests: Sequence[str]) -> MapRead:
        self.reads += 1
        found = [(digest, self.items[digest]) for digest in digests if digest in self.items]
        return MapRead({d: str(item["canonical"]) for d, item in found if item["kind"] != TOMBSTONE},
                       {d: float(item["linked_at"]) for d, item in found if item["kind"] == TOMBSTONE})

    def link(self, digest: str, kind: str, canonical: str, at: float, message_id: str | None) -> None:
        self.writes += 1
        held = self.items.get(digest)
        if held is not None and held.get("canonical") != canonical:
            raise ConflictError(f"the id is already linked to another customer ({kind})")
        self.items[digest] = {"kind": kind, "canonical": canonical, "linked_at": at, "message_id": message_id}

    def index(self, digest: str, kind: str, canonical: str, at: float) -> None:
        self.writes += 1
        if self.items.get(digest, {}).get("kind") == TOMBSTONE:
            return
        self.items[digest] = {"kind": kind, "canonical": canonical, "linked_at": at, "message_id": None}

    def bury(self, digest: str, deleted_at: float, request_id: str, expires_at: int, owner: str | None = None) -> bool:
        self.writes += 1
        held = self.items.get(digest)
        if held is not None and held.get("kind") == TOMBSTONE and held["linked_at"] >= deleted_at:
            return False
        if held is not None and held.get("kind") != TOMBSTONE and owner is not None and held.get("canonical") != owner:
            return False
        self.items[digest] = {"kind": TOMBSTONE, "linked_at": deleted_at, "request_id": request_id,
                              "expires_at": expires_at}
        return True

    def digests_of(self, customer_id: str) -> list[str]:
        self.reads += 1
        return sorted(d for d, item in self.items.items() if item.get("canonical") == customer_id)


class MemoryPrivacyRequests:
    def __init__(self) -> None:
        self.requests: dict[str, PrivacyRequest] = {}

    def create(self, request: PrivacyRequest) -> None:
        self.requests[request.request_id] = copy.deepcopy(request)

    def get(self, request_id: str) -> PrivacyRequest | None:
        stored = self.requests.get(request_id)
        return copy.deepcopy(stored) if stored is not None else None

    def update(self, request_id: str, status: str, counts: dict[str, int], reason: str, at: float) -> None:
        stored = self.requests.get(request_id)
        if stored is None:
            return
        stored.status, stored.reason, stored.updated_at = status, reason, at
        for store, count in counts.items():
            stored.counts[store] = stored.counts.get(store, 0) + count


class MemoryPrivacyJobs:
    """The privacy queue: messages with their delay, taken in order by the test that runs them."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, Any], int]] = []

    def send(self, message: dict[str, Any], delay_seconds: int = 0) -> None:
        self.messages.append((copy.deepcopy(message), delay_seconds))

    def take(self) -> dict[str, Any] | None:
        return self.messages.pop(0)[0] if self.messages else None


class MemoryCustomerStores:
    """Deletion's and export's view of the in-memory profiles, members index and ledger, and a quarantine of
    JSON-lines objects per key, each a list of versions (the bucket is versioned)."""

    def __init__(self, profiles: MemoryProfileStore, members: MemoryMembersIndex) -> None:
        self.profiles, self.members = profiles, members
        self.ledger: dict[str, dict[str, Any]] = {}  # delivery key -> {customer, kind, v}
        self.quarantine: dict[str, list[str]] = {}  # key -> versions (bodies), oldest first

    def delete_profile(self, customer_id: str) -> bool:
        existed = customer_id in self.profiles._encoded
        self.profiles._encoded.pop(customer_id, None)
        self.profiles._keys.pop(customer_id, None)
        return existed

    def member_rows(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        return {key: "exited_at" not in self.members.items[key] for key in keys if key in self.members.items}

    def delete_member_row(self, key: tuple[str, str]) -> bool:
        return self.members.items.pop(key, None) is not None

    def ledger_rows(self, customer_id: str) -> list[LedgerRow]:
        return sorted((LedgerRow(key, str(row.get("kind", "")), int(row.get("v", 0)))
                       for key, row in self.ledger.items() if row["customer"] == customer_id),
                      key=lambda r: r.delivery)

    def delete_ledger_row(self, delivery: str) -> bool:
        return self.ledger.pop(delivery, None) is not None

    def scrub_quarantine(self, needles: Sequence[str]) -> int:
        from cdp.aws.erasure import mentions

        wanted = {n for n in needles if n} | {n.lower() for n in needles if n}
        removed = 0
        for key, versions in list(self.quarantine.items()):
            lines = [[line for line in body.splitlines() if line.strip()] for body in versions]
            kept = [[line for line in version if not mentions(line, wanted)] for version in lines]
            found = max(len(a) - len(b) for a, b in zip(lines, kept, strict=True))
            if not found:
                continue
            removed += found
            if kept[-1]:
                self.quarantine[key] = ["\n".join(kept[-1]) + "\n"]
            else:
                del self.quarantine[key]
        return removed
