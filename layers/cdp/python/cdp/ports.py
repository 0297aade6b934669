"""The small interfaces the core talks to AWS through, and the domain errors adapters raise.

Adapters for DynamoDB, S3 and EventBridge live in ``cdp.aws``; tests use in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
        """Point a lookup identifier (an email address) at a customer, replacing what it pointed at."""
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
