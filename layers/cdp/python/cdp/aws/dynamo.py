"""DynamoDB adapters: the profile store and the members index, on the low-level client.

The profile item is a compact encoding of its own (packed binary counters, short
attribute names), so it maps straight onto DynamoDB types with boto3's serializer.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from cdp.aws.errors import domain_error
from cdp.changes import MembershipChange, members_partition
from cdp.ports import ConflictError, TransientError
from cdp.profile import Profile

BATCH_GET_LIMIT = 100
UNPROCESSED_ATTEMPTS = 5
EXITED_MEMBER_TTL = 7 * 86400

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
    """A table stream image as Lambda delivers it, where binary values arrive as base64 text."""
    return deserialise_item({key: _binary_from_base64(value) for key, value in image.items()})


def _binary_from_base64(value: dict[str, Any]) -> dict[str, Any]:
    (kind, inner), = value.items()
    if kind == "B" and isinstance(inner, str):
        return {"B": base64.b64decode(inner)}
    if kind == "BS":
        return {"BS": [base64.b64decode(v) if isinstance(v, str) else v for v in inner]}
    if kind == "M":
        return {"M": {k: _binary_from_base64(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [_binary_from_base64(v) for v in inner]}
    return value


class DynamoProfileStore:
    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table_name = table_name

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        """BatchGetItem, 100 keys per call, resending unprocessed keys with back-off."""
        profiles: dict[str, Profile] = {}
        unique = list(dict.fromkeys(customer_ids))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            keys = [{"customer_id": {"S": cid}} for cid in unique[start:start + BATCH_GET_LIMIT]]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(UNPROCESSED_ATTEMPTS):
                try:
                    response = self.client.batch_get_item(RequestItems=request)
                except Exception as error:
                    raise domain_error(error) from error
                for raw in response.get("Responses", {}).get(self.table_name, []):
                    profile = Profile.from_item(deserialise_item(raw))
                    profiles[profile.customer_id] = profile
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
            else:
                raise TransientError(f"{len(request[self.table_name]['Keys'])} keys stayed unprocessed")
        return profiles

    def save(self, profile: Profile, expected_version: int) -> None:
        """PutItem conditional on the version read (or on absence for a new profile)."""
        condition: dict[str, Any]
        if expected_version == 0:
            condition = {"ConditionExpression": "attribute_not_exists(customer_id)"}
        else:
            condition = {"ConditionExpression": "v = :expected",
                         "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}}}
        try:
            self.client.put_item(TableName=self.table_name, Item=serialise_item(profile.to_item()), **condition)
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
        return Profile.from_item(deserialise_item(item)) if item else None


class DynamoMembersIndex:
    """segment#shard -> customer, with the membership version; exits leave a tombstone that expires."""

    def __init__(self, client: Any, table_name: str, shards: int) -> None:
        self.client = client
        self.table_name = table_name
        self.shards = shards

    def record(self, change: MembershipChange) -> None:
        item: dict[str, Any] = {
            "segment_shard": {"S": members_partition(change.segment_id, change.customer_id, self.shards)},
            "customer_id": {"S": change.customer_id},
            "v": {"N": str(change.version)},
            "since": {"N": str(change.at)},
        }
        if change.kind == "exited":
            item["exited_at"] = {"N": str(change.at)}
            item["expires_at"] = {"N": str(change.at + EXITED_MEMBER_TTL)}
        try:
            self.client.put_item(
                TableName=self.table_name, Item=item,
                ConditionExpression="attribute_not_exists(customer_id) OR v < :v",
                ExpressionAttributeValues={":v": {"N": str(change.version)}},
            )
        except Exception as error:
            mapped = domain_error(error)
            if isinstance(mapped, ConflictError):
                return  # a newer version is already there: this change is old news
            raise mapped from error
