"""The data subject requests table: one item per deletion or export request, its status and its audit record.

A plain-record table, so a pynamodb model describes its items, bound to the table's name at cold start. An item
holds no personal data beyond the request id and the customer's digest (SHA-256 of the id, as the id map keys it),
and expires after the request retention (TTL ``expires_at``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pynamodb.attributes import MapAttribute, NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist, PynamoDBException
from pynamodb.models import Model

from cdp.aws.plain_records import bind_table
from cdp.ports import PrivacyRequest, TransientError


class RequestItem(Model):
    class Meta:
        table_name = "requests"  # replaced by bind_requests

    request_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()  # delete | export
    status = UnicodeAttribute()  # pending | running | done | failed
    customer_digest = UnicodeAttribute()
    created_at = NumberAttribute()
    updated_at = NumberAttribute()
    counts: MapAttribute[str, int] = MapAttribute(default=dict)  # type: ignore[no-untyped-call]  # per store
    reason = UnicodeAttribute(null=True)
    expires_at = TTLAttribute(null=True)


def bind_requests(table_name: str, region: str | None = None, host: str | None = None) -> type[RequestItem]:
    return bind_table(RequestItem, table_name, region, host)


class DynamoPrivacyRequests:
    def __init__(self, model: type[RequestItem]) -> None:
        self.model = model

    def create(self, request: PrivacyRequest) -> None:
        item = self.model(request.request_id, kind=request.kind, status=request.status,
                          customer_digest=request.customer_digest, created_at=request.created_at,
                          updated_at=request.updated_at, counts=dict(request.counts), reason=request.reason or None,
                          expires_at=datetime.fromtimestamp(request.expires_at, UTC) if request.expires_at else None)
        try:
            item.save(condition=self.model.request_id.does_not_exist())
        except PynamoDBException as error:
            raise TransientError(f"writing the request failed: {type(error).__name__}") from error

    def get(self, request_id: str) -> PrivacyRequest | None:
        try:
            item = self.model.get(request_id, consistent_read=True)
        except DoesNotExist:
            return None
        except PynamoDBException as error:
            raise TransientError(f"reading the request failed: {type(error).__name__}") from error
        counts = (item.counts.as_dict() if isinstance(item.counts, MapAttribute)  # type: ignore[no-untyped-call]
                  else dict(item.counts or {}))
        return PrivacyRequest(item.request_id, item.kind, item.status, item.customer_digest, float(item.created_at),
                              float(item.updated_at), {k: int(v) for k, v in counts.items()}, item.reason or "",
                              int(item.expires_at.timestamp()) if item.expires_at else 0)

    def update(self, request_id: str, status: str, counts: dict[str, int], reason: str, at: float) -> None:
        """The status and reason set, the counts added to the stored ones (one read, one write: only the request's
        own job updates it, one pass at a time)."""
        stored = self.get(request_id)
        if stored is None:
            return  # expired, or never recorded: nothing to report to
        total = {store: stored.counts.get(store, 0) + counts.get(store, 0) for store in {*stored.counts, *counts}}
        item = self.model(request_id, kind=stored.kind, status=status, customer_digest=stored.customer_digest,
                          created_at=stored.created_at, updated_at=at, counts=total, reason=reason or None,
                          expires_at=datetime.fromtimestamp(stored.expires_at, UTC) if stored.expires_at else None)
        try:
            item.save()
        except PynamoDBException as error:
            raise TransientError(f"writing the request failed: {type(error).__name__}") from error
