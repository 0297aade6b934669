"""The id map in DynamoDB: identifier digest -> the customer it belongs to (see cdp.core.identity).

A plain-record table (one small item per merged id or indexed email address), so a pynamodb model
describes its items; the model is bound to the table's name at cold start, not at import. A link is
written with a condition, so two merges can never point one id at two customers.
"""

from __future__ import annotations

from collections.abc import Sequence

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError, PynamoDBException
from pynamodb.models import Model

from cdp.aws.plain_records import bind_table
from cdp.ports import ConflictError, TransientError


class IdentityLinkItem(Model):
    """One identifier (as its digest) and the canonical customer it now belongs to, with how it got there."""

    class Meta:
        table_name = "identity-map"  # replaced by bind_identity_map

    digest = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()  # customer or email
    canonical = UnicodeAttribute()
    linked_at = NumberAttribute()
    message_id = UnicodeAttribute(null=True)  # the message that merged it (the merge audit)


def bind_identity_map(table_name: str, region: str | None = None, host: str | None = None) -> type[IdentityLinkItem]:
    """The model of one deployment's table."""
    return bind_table(IdentityLinkItem, table_name, region, host)


class DynamoIdentityMap:
    def __init__(self, model: type[IdentityLinkItem]) -> None:
        self.model = model

    def links(self, digests: Sequence[str]) -> dict[str, str]:
        """digest -> canonical customer, for the digests that have a link (BatchGetItem, 100 keys a call)."""
        try:
            return {item.digest: item.canonical for item in self.model.batch_get(list(digests))}
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
        """Point a lookup identifier at ``canonical`` whatever it pointed at (an address can change hands)."""
        try:
            self.model(digest, kind=kind, canonical=canonical, linked_at=at).save()
        except PynamoDBException as error:
            raise TransientError(f"writing the id map failed: {type(error).__name__}") from error
