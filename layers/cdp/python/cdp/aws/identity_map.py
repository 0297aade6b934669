"""The id map in DynamoDB: identifier digest -> the customer it belongs to (see cdp.core.identity).

A plain-record table (one small item per merged id or indexed email address), so a pynamodb model
describes its items; the model is bound to the table's name at cold start, not at import. A link is
written with a condition, so two merges can never point one id at two customers.

A deleted customer's ids hold a **tombstone** instead (kind ``tombstone``: the deletion time and request, no
customer id), expiring after the tombstone retention (TTL ``expires_at``). Links and index entries are written on
condition that no tombstone is there, and :meth:`DynamoIdentityMap.read` returns the tombstones with the links of
the same BatchGetItem. The ``canonical`` index (keys only; tombstones are not in it) finds every entry pointing at
a customer, so a deletion reaches merged ids and old addresses the profile no longer names.
"""

from __future__ import annotations

from collections.abc import Sequence

from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError, PynamoDBException
from pynamodb.indexes import GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from cdp.aws.plain_records import bind_table
from cdp.ports import ConflictError, MapRead, TransientError

TOMBSTONE = "tombstone"
CANONICAL_INDEX = "canonical"


class CanonicalIndex(GlobalSecondaryIndex["IdentityLinkItem"]):  # type: ignore[no-untyped-call]
    class Meta:
        index_name = CANONICAL_INDEX
        projection = KeysOnlyProjection()

    canonical = UnicodeAttribute(hash_key=True)


class IdentityLinkItem(Model):
    """One identifier (as its digest) and the canonical customer it now belongs to, with how it got there."""

    class Meta:
        table_name = "identity-map"  # replaced by bind_identity_map

    digest = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()  # customer, email, or tombstone
    canonical = UnicodeAttribute(null=True)  # none on a tombstone
    linked_at = NumberAttribute()
    message_id = UnicodeAttribute(null=True)  # the message that merged it (the merge audit)
    request_id = UnicodeAttribute(null=True)  # a tombstone's deletion request
    expires_at = TTLAttribute(null=True)  # a tombstone's end (the table's TTL)
    by_canonical = CanonicalIndex()


def bind_identity_map(table_name: str, region: str | None = None, host: str | None = None) -> type[IdentityLinkItem]:
    """The model of one deployment's table."""
    return bind_table(IdentityLinkItem, table_name, region, host)


class DynamoIdentityMap:
    def __init__(self, model: type[IdentityLinkItem]) -> None:
        self.model = model

    def links(self, digests: Sequence[str]) -> dict[str, str]:
        """digest -> canonical customer, for the digests that have a link (BatchGetItem, 100 keys a call)."""
        return self.read(digests).links

    def read(self, digests: Sequence[str]) -> MapRead:
        """The links and the tombstones (digest -> deletion time) among the digests, in the same reads."""
        links: dict[str, str] = {}
        tombstones: dict[str, float] = {}
        try:
            for item in self.model.batch_get(list(digests)):
                if item.kind == TOMBSTONE:
                    tombstones[item.digest] = float(item.linked_at)
                elif item.canonical is not None:
                    links[item.digest] = item.canonical
        except PynamoDBException as error:
            raise TransientError(f"reading the id map failed: {type(error).__name__}") from error
        return MapRead(links, tombstones)

    def bury(self, digest: str, deleted_at: float, request_id: str, expires_at: int, owner: str | None = None) -> bool:
        """Replace the entry with a tombstone, or move an older tombstone forward to this deletion (a customer
        deleted again: events between the two deletions stay dropped); whether it wrote. With ``owner``, an
        entry that points at another customer is left alone (an address that changed hands)."""
        from datetime import UTC, datetime

        model = self.model
        item = model(digest, kind=TOMBSTONE, linked_at=deleted_at, request_id=request_id,
                     expires_at=datetime.fromtimestamp(expires_at, UTC))
        older = model.digest.does_not_exist() | ((model.kind == TOMBSTONE) & (model.linked_at < deleted_at))
        live = model.kind != TOMBSTONE
        if owner is not None:
            live = live & (model.canonical == owner)
        try:
            item.save(condition=older | live)
        except PutError as error:
            if error.cause_response_code == "ConditionalCheckFailedException":
                return False
            raise TransientError(f"writing the id map failed: {error.cause_response_code}") from error
        return True

    def digests_of(self, customer_id: str) -> list[str]:
        """The entries pointing at the customer, through the ``canonical`` index."""
        try:
            return [item.digest for item in self.model.by_canonical.query(customer_id)]
        except PynamoDBException as error:
            raise TransientError(f"reading the id map failed: {type(error).__name__}") from error

    def link(self, digest: str, kind: str, canonical: str, at: float, message_id: str | None) -> None:
        """Point ``digest`` at ``canonical``, unless it already points elsewhere (:class:`ConflictError`);
        linking it again to the same customer (a redelivered merge) changes nothing."""
        item = self.model(digest, kind=kind, canonical=canonical, linked_at=at, message_id=message_id)
        try:
            item.save(condition=self.model.digest.does_not_exist() | (self.model.canonical == canonical))
        except PutError as error:
            if error.cause_response_code == "ConditionalCheckFailedException":
                raise ConflictError(f"the id is already linked to another customer ({kind})") from error
            raise TransientError(f"writing the id map failed: {error.cause_response_code}") from error

    def index(self, digest: str, kind: str, canonical: str, at: float) -> None:
        """Point a lookup identifier at ``canonical`` whatever it pointed at (an address can change hands), unless
        it is a deleted customer's: the tombstone stays, and the address finds no one."""
        try:
            self.model(digest, kind=kind, canonical=canonical, linked_at=at).save(
                condition=self.model.digest.does_not_exist() | (self.model.kind != TOMBSTONE))
        except PutError as error:
            if error.cause_response_code == "ConditionalCheckFailedException":
                return
            raise TransientError(f"writing the id map failed: {error.cause_response_code}") from error
        except PynamoDBException as error:
            raise TransientError(f"writing the id map failed: {type(error).__name__}") from error
