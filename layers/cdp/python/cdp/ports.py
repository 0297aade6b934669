"""The small interfaces the core talks to AWS through, and the domain errors adapters raise.

Adapters for DynamoDB, S3 and EventBridge live in ``cdp.aws``; tests use in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cdp.core.population import PopulationStats
from cdp.core.profile import Profile


class ConflictError(Exception):
    """The profile changed since it was read (optimistic locking): reload and retry."""


class TransientError(Exception):
    """Throttling, a timeout or a service fault: retry later, never drop."""


class ProfileStore(Protocol):
    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        """The stored profiles among these ids (absent ids have none yet)."""
        ...

    def save(self, profile: Profile, expected_version: int) -> None:
        """Write the profile if its stored version is still ``expected_version`` (0: not stored yet)."""
        ...


class ProfileLookup(ProfileStore, Protocol):
    """A profile store that also reads one profile by itself (the API's reads)."""

    def get(self, customer_id: str) -> Profile | None:
        """The stored profile, strongly consistent; None when the customer has none."""
        ...


class IdentityMap(Protocol):
    """Identifier digest -> the customer it belongs to (see :mod:`cdp.core.identity`)."""

    def links(self, digests: Sequence[str]) -> dict[str, str]:
        """The customer of each digest that has one (batched reads). Raises :class:`TransientError`."""
        ...

    def link(self, digest: str, kind: str, canonical: str, at: float, message_id: str | None) -> None:
        """Point a merged id at its customer, unless it already points at another (:class:`ConflictError`);
        linking it again to the same customer changes nothing."""
        ...

    def index(self, digest: str, kind: str, canonical: str, at: float) -> None:
        """Point a lookup identifier (an email address) at a customer, replacing what it pointed at, unless the
        identifier is a deleted customer's (a tombstone is never overwritten)."""
        ...

    def read(self, digests: Sequence[str]) -> MapRead:
        """The links and the tombstones among these digests, in the same batched reads as :meth:`links`."""
        ...


@dataclass(frozen=True)
class MapRead:
    """One read of the id map: digest -> customer for the links, digest -> deletion time for the tombstones."""

    links: dict[str, str]
    tombstones: dict[str, float]


class Tombstones(Protocol):
    """The deleted customers' marks in the id map (see :mod:`cdp.pipeline.privacy`)."""

    def bury(self, digest: str, deleted_at: float, request_id: str, expires_at: int, owner: str | None = None) -> bool:
        """Replace what the digest held with a tombstone, or move an older tombstone forward to this deletion;
        whether it wrote. With ``owner``, an entry pointing at another customer is left alone."""
        ...

    def digests_of(self, customer_id: str) -> list[str]:
        """Every id-map entry that points at this customer (its merged ids and email addresses)."""
        ...


class InvalidCursor(ValueError):
    """A listing cursor that the index did not make."""


class MemberListing(Protocol):
    """A segment's current members, as the API lists and counts them."""

    def size(self, segment_id: str) -> int:
        """How many customers are members now."""
        ...

    def page(self, segment_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` members (``customer_id``, ``since``) in a stable order, and the cursor of the next
        page (None after the last); raises :class:`InvalidCursor` for a cursor it did not make."""
        ...


@dataclass(frozen=True)
class QuarantinedRecord:
    """A record that can never be applied, kept whole with the reason, for an operator to redrive."""

    source: str  # e.g. "kinesis:<shard or stream>"
    sequence: str
    partition_key: str
    data: bytes
    reason: str
    field: str
    at: float
    shard: str = ""  # the stream shard: sequence numbers are unique within a shard only

    def as_json(self) -> dict[str, Any]:
        import base64

        return {"source": self.source, "shard": self.shard, "sequence": self.sequence,
                "partition_key": self.partition_key, "data": base64.b64encode(self.data).decode(),
                "reason": self.reason, "field": self.field, "at": self.at}


class Quarantine(Protocol):
    def put(self, records: Sequence[QuarantinedRecord]) -> None: ...


class Publisher(Protocol):
    def publish(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        """Send bus entries; returns the indexes of entries that still failed after resending."""
        ...


class EventStream(Protocol):
    """The events stream the collector writes to (Kinesis in AWS)."""

    def put(self, entries: Sequence[tuple[bytes, str]]) -> list[str | None]:
        """Put ``(data, partition key)`` records, in order; returns each one's error code (None: stored
        durably). Raises :class:`TransientError` when the stream could not be asked at all."""
        ...


@dataclass
class PrivacyRequest:
    """A data subject request and its audit record: the request id and the customer's digest only, never an id."""

    request_id: str
    kind: str  # delete | export
    status: str  # pending | running | done | failed
    customer_digest: str
    created_at: float
    updated_at: float
    counts: dict[str, int]
    reason: str = ""
    expires_at: int = 0


class PrivacyRequests(Protocol):
    def create(self, request: PrivacyRequest) -> None: ...

    def get(self, request_id: str) -> PrivacyRequest | None: ...

    def update(self, request_id: str, status: str, counts: dict[str, int], reason: str, at: float) -> None:
        """Set the status, add ``counts`` to the stored ones, and the reason."""
        ...


class PrivacyJobs(Protocol):
    def send(self, message: dict[str, Any], delay_seconds: int = 0) -> None:
        """Queue a deletion job (raises :class:`TransientError`)."""
        ...


@dataclass(frozen=True)
class LedgerRow:
    """One delivery-ledger item of a customer: ``delivery`` is its key (destination, segment, customer)."""

    delivery: str
    kind: str  # entered | exited | "" (a row that is not a membership, e.g. the email frequency cap)
    version: int


class CustomerStores(Protocol):
    """Where a customer's data lives, as deletion erases and export reads it. Each call is idempotent."""

    def delete_profile(self, customer_id: str) -> bool:
        """Delete the profile item; whether there was one."""
        ...

    def member_rows(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """The members-index items among these keys (partition, customer), each True when a current member."""
        ...

    def delete_member_row(self, key: tuple[str, str]) -> bool: ...

    def ledger_rows(self, customer_id: str) -> list[LedgerRow]:
        """The delivery-ledger rows of the customer (through the ledger's ``customer`` index)."""
        ...

    def delete_ledger_row(self, delivery: str) -> bool: ...

    def scrub_quarantine(self, needles: Sequence[str]) -> int:
        """Remove every quarantined record that mentions any of ``needles`` from every version of every object;
        the number of records removed (counted once per object)."""
        ...


# ---- segment definitions at runtime, and the jobs that evaluate them over every profile ------------------

@dataclass(frozen=True)
class SegmentVersion:
    """One stored version of a segment definition. Every version is kept; ``definition`` None: deleted."""

    segment_id: str
    version: int  # 1, 2, ... per segment
    definition: dict[str, Any] | None
    author: str
    at: float
    catalogue_version: int  # the catalogue version the change that wrote it made


@dataclass(frozen=True)
class CatalogueHead:
    """The catalogue's current state: one small item, the only read a function makes to learn of a change."""

    version: int  # 0: nothing stored yet (the store is seeded from the YAML folder)
    segments: dict[str, int]  # segment id -> its current version (deleted segments absent)
    stats_version: int = 0  # moves each time population statistics are stored
    updated_at: float = 0.0
    ever: tuple[str, ...] = ()  # every segment id the store has held, deleted ones too (their rows outlive them)


@dataclass(frozen=True)
class SegmentChange:
    """A change to commit: a segment's new definition, or None to delete it."""

    segment_id: str
    definition: dict[str, Any] | None


class DefinitionStore(Protocol):
    """Versioned segment definitions, the population statistics and the computed traits' models (DynamoDB in AWS)."""

    def head(self) -> CatalogueHead:
        """The catalogue head (one GetItem). Raises :class:`TransientError`."""
        ...

    def current(self, head: CatalogueHead) -> list[SegmentVersion]:
        """The versions ``head.segments`` names (batched reads)."""
        ...

    def history(self, segment_id: str) -> list[SegmentVersion]:
        """Every version of one segment, oldest first (deletions included)."""
        ...

    def commit(self, changes: Sequence[SegmentChange], author: str, at: float, expected: int) -> CatalogueHead:
        """Write a new version of each changed segment and move the head from ``expected`` to ``expected + 1``,
        in one transaction (at most 99 changes); :class:`ConflictError` when the head is no longer at ``expected``."""
        ...

    def population(self) -> PopulationStats | None:
        """The stored population statistics (None: never computed)."""
        ...

    def put_population(self, stats: PopulationStats) -> CatalogueHead:
        """Store population statistics and move ``stats_version`` on, unless the stored ones were computed at the
        same time or later (then nothing changes)."""
        ...

    def put_models(self, documents: Mapping[str, Mapping[str, Any]]) -> CatalogueHead:
        """Store the computed traits' model documents (model name -> document, see :mod:`cdp.core.traits`),
        replacing those models' stored ones and keeping the others, and move ``stats_version`` on in the same
        write, unless a stored one of these models was trained later (then nothing changes).
        :meth:`population` returns them in ``PopulationStats.models``."""
        ...
