"""DynamoDB adapters: the profile store and the due index, on the low-level client (the members index
is in :mod:`cdp.aws.members`).

The profile item is a compact encoding of its own (packed binary counters, short
attribute names) with a fixed shape, so the profile store encodes and decodes its DynamoDB
attribute values directly (:mod:`cdp.aws.profile_item`). The boto3 serializer helpers here
serve other items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from cdp.aws.errors import domain_error
from cdp.aws.profile_item import decode_profile, decode_stream_image, encode_profile
from cdp.core.profile import Profile
from cdp.pipeline.timers import DueEntry, DuePage
from cdp.ports import TransientError

BATCH_GET_LIMIT = 100
UNPROCESSED_ATTEMPTS = 5

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_dynamo(value: Any) -> Any:
    """Python values to what the serializer accepts: floats become Decimals."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    """Deserialised values back to plain Python: Decimals to int or float, Binary to bytes."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Binary):
        return bytes(value.value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [from_dynamo(v) for v in value]
    return value


def serialise_item(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(to_dynamo(value)) for key, value in item.items()}


def deserialise_item(item: dict[str, Any]) -> dict[str, Any]:
    return {key: from_dynamo(_deserializer.deserialize(value)) for key, value in item.items()}


def deserialise_stream_image(image: dict[str, Any]) -> dict[str, Any]:
    """A table stream image as Lambda delivers it (binary values as base64 text): the attributes the
    changes function reads (``customer_id``, ``v``, ``ua``, ``m``, ``t``, ``tx``), as plain Python."""
    return decode_stream_image(image)


def batch_get(client: Any, table: str, keys: list[dict[str, Any]], consistent: bool = False) -> list[dict[str, Any]]:
    """Every item of these keys: BatchGetItem 100 keys at a time, resending unprocessed keys with back-off."""
    items: list[dict[str, Any]] = []
    for start in range(0, len(keys), BATCH_GET_LIMIT):
        request: dict[str, Any] = {table: {"Keys": keys[start:start + BATCH_GET_LIMIT], "ConsistentRead": consistent}}
        for attempt in range(UNPROCESSED_ATTEMPTS):
            try:
                response = client.batch_get_item(RequestItems=request)
            except Exception as error:
                raise domain_error(error) from error
            items += response.get("Responses", {}).get(table, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
        else:
            raise TransientError(f"{len(request[table]['Keys'])} keys stayed unprocessed")
    return items


class DynamoProfileStore:
    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table_name = table_name

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        """BatchGetItem, 100 keys per call, resending unprocessed keys with back-off."""
        keys = [{"customer_id": {"S": cid}} for cid in dict.fromkeys(customer_ids)]
        profiles = (decode_profile(raw) for raw in batch_get(self.client, self.table_name, keys, consistent=True))
        return {profile.customer_id: profile for profile in profiles}

    def save(self, profile: Profile, expected_version: int) -> None:
        """PutItem conditional on the version read (or on absence for a new profile)."""
        condition: dict[str, Any]
        if expected_version == 0:
            condition = {"ConditionExpression": "attribute_not_exists(customer_id)"}
        else:
            condition = {"ConditionExpression": "v = :expected",
                         "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}}}
        try:
            self.client.put_item(TableName=self.table_name, Item=encode_profile(profile), **condition)
        except Exception as error:
            raise domain_error(error) from error

    def get(self, customer_id: str) -> Profile | None:
        """One strongly consistent GetItem: everything a profile read needs."""
        try:
            response = self.client.get_item(TableName=self.table_name, Key={"customer_id": {"S": customer_id}},
                                            ConsistentRead=True)
        except Exception as error:
            raise domain_error(error) from error
        item = response.get("Item")
        return decode_profile(item) if item else None


class DynamoDueIndex:
    """The profiles table's sparse due index, keyed (``ds``, ``nd``): customers by next deadline, per shard."""

    def __init__(self, client: Any, table_name: str, index_name: str) -> None:
        self.client = client
        self.table_name = table_name
        self.index_name = index_name

    def due(self, shard: str, until: int, limit: int, cursor: object | None) -> DuePage:
        request: dict[str, Any] = {
            "TableName": self.table_name, "IndexName": self.index_name, "Limit": limit,
            "KeyConditionExpression": "ds = :shard AND nd <= :until",
            "ExpressionAttributeValues": {":shard": {"S": shard}, ":until": {"N": str(until)}},
        }
        if cursor is not None:
            request["ExclusiveStartKey"] = cursor
        try:
            response = self.client.query(**request)
        except Exception as error:
            raise domain_error(error) from error
        entries = [DueEntry(item["customer_id"]["S"], int(item["nd"]["N"])) for item in response.get("Items", [])]
        return DuePage(entries, response.get("LastEvaluatedKey"))
