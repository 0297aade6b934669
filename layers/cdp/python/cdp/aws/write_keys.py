"""Write keys in DynamoDB: one item per key, keyed by the key's SHA-256 digest (see cdp.collector.keys).

A plain-record table off the hot path (the collector caches what it reads), so a pynamodb model
describes its items. The model is bound to the table's name at cold start, not at import.
"""

from __future__ import annotations

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import PynamoDBException
from pynamodb.models import Model

from cdp.aws.plain_records import bind_table
from cdp.collector.keys import WriteKey
from cdp.ports import TransientError


class WriteKeyItem(Model):
    """One write key of a source: never the key, only its digest."""

    class Meta:
        table_name = "write-keys"  # replaced by bind_write_keys

    digest = UnicodeAttribute(hash_key=True)
    source = UnicodeAttribute()
    key_id = UnicodeAttribute()
    created_at = NumberAttribute()
    expires_at = NumberAttribute(null=True)
    revoked_at = NumberAttribute(null=True)

    def as_key(self) -> WriteKey:
        return WriteKey(self.digest, self.source, self.key_id, float(self.created_at),
                        None if self.expires_at is None else float(self.expires_at),
                        None if self.revoked_at is None else float(self.revoked_at))


def bind_write_keys(table_name: str, region: str | None = None, host: str | None = None) -> type[WriteKeyItem]:
    """The model of one deployment's table."""
    return bind_table(WriteKeyItem, table_name, region, host)


class DynamoKeyStore:
    """cdp.collector.keys.KeyStore over the write keys table."""

    def __init__(self, model: type[WriteKeyItem]) -> None:
        self.model = model

    def find(self, digest: str) -> WriteKey | None:
        try:
            item = self.model.get(digest, consistent_read=False)
        except self.model.DoesNotExist:
            return None
        except PynamoDBException as error:
            raise TransientError(f"reading a write key failed: {type(error).__name__}") from error
        return item.as_key()

    def keys_of(self, source: str) -> list[WriteKey]:
        # A source has a handful of keys and a deployment a handful of sources: a scan is the whole table.
        return [key for key in self.all_keys() if key.source == source]

    def all_keys(self) -> list[WriteKey]:
        return [item.as_key() for item in self.model.scan(consistent_read=True)]

    def put(self, key: WriteKey) -> None:
        self.model(key.digest, source=key.source, key_id=key.key_id, created_at=key.created_at,
                   expires_at=key.expires_at, revoked_at=key.revoked_at).save()
