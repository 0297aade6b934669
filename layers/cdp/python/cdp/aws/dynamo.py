"""DynamoDB adapters: the profile store and the members index, on the low-level client.

The profile item is a compact encoding of its own (packed binary counters, short
attribute names), so it maps straight onto DynamoDB types with boto3's serializer.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from cdp.aws.errors import domain_error
from cdp.core.profile import Profile
from cdp.pipeline.changes import MembershipChange, members_partition
from cdp.pipeline.timers import DueEntry, DuePage
from cdp.ports import ConflictError, InvalidCursor, TransientError

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
        profiles = (Profile.from_item(deserialise_item(raw))
                    for raw in batch_get(self.client, self.table_name, keys, consistent=True))
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


def _encode_cursor(shard: int, after: str) -> str:
    raw = json.dumps([shard, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, shards: int) -> tuple[int, str]:
    try:
        shard, after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise InvalidCursor("cursor: is not a cursor returned by this listing") from None
    if not isinstance(shard, int) or not isinstance(after, str) or not 0 <= shard < shards:
        raise InvalidCursor("cursor: is not a cursor returned by this listing")
    return shard, after


class DynamoMembersIndex:
    """``segment#NN`` -> customer, with the membership version; exits leave a tombstone that expires.

    Each shard also has a size item (``segment#NN#size``), changed in the same transaction as the
    membership, so a segment's size is one BatchGetItem of its shards' size items and a redelivered
    change (whose condition fails) never counts twice.
    """

    def __init__(self, client: Any, table_name: str, shards: int) -> None:
        self.client = client
        self.table_name = table_name
        self.shards = shards

    def record(self, change: MembershipChange) -> None:
        partition = members_partition(change.segment_id, change.customer_id, self.shards)
        item: dict[str, Any] = {
            "segment_shard": {"S": partition},
            "customer_id": {"S": change.customer_id},
            "v": {"N": str(change.version)},
            "since": {"N": str(change.at)},
        }
        if change.kind == "exited":
            item["exited_at"] = {"N": str(change.at)}
            item["expires_at"] = {"N": str(change.at + EXITED_MEMBER_TTL)}
        put = {"TableName": self.table_name, "Item": item,
               "ConditionExpression": "attribute_not_exists(customer_id) OR v < :v",
               "ExpressionAttributeValues": {":v": {"N": str(change.version)}}}
        size = {"TableName": self.table_name,
                "Key": {"segment_shard": {"S": f"{partition}#size"}, "customer_id": {"S": "#"}},
                "UpdateExpression": "ADD members :delta",
                "ExpressionAttributeValues": {":delta": {"N": "1" if change.kind == "entered" else "-1"}}}
        try:
            self.client.transact_write_items(TransactItems=[{"Put": put}, {"Update": size}])
        except Exception as error:
            reasons = getattr(error, "response", {}).get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return  # a newer version is already there: this change is old news
            mapped = domain_error(error)
            if isinstance(mapped, ConflictError):
                return
            raise mapped from error

    def size(self, segment_id: str) -> int:
        """Current members: the sum of the shards' size items, in one BatchGetItem (16 keys by default)."""
        keys = [{"segment_shard": {"S": f"{segment_id}#{shard:02d}#size"}, "customer_id": {"S": "#"}}
                for shard in range(self.shards)]
        items = batch_get(self.client, self.table_name, keys)
        total = sum(int(item.get("members", {}).get("N", "0")) for item in items)
        return max(total, 0)

    def page(self, segment_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` current members in a stable order (shard, then customer id), and the next cursor."""
        shard, after = _decode_cursor(cursor, self.shards) if cursor else (0, "")
        members: list[dict[str, Any]] = []
        stretch = 0
        while shard < self.shards and len(members) < limit:
            # DynamoDB applies Limit before the filter, so leave room for some exit tombstones; the page
            # stops at `limit` members and the cursor points just after the last one returned.
            room = limit - len(members)
            reach = min(1000, (room + 10) * 4 ** stretch)  # grows while a shard yields tombstones
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "segment_shard = :p",
                "FilterExpression": "attribute_not_exists(exited_at)",
                "ExpressionAttributeValues": {":p": {"S": f"{segment_id}#{shard:02d}"}},
                "Limit": reach,
            }
            if after:
                request["ExclusiveStartKey"] = {"segment_shard": {"S": f"{segment_id}#{shard:02d}"},
                                                "customer_id": {"S": after}}
            try:
                response = self.client.query(**request)
            except Exception as error:
                raise domain_error(error) from error
            items = response.get("Items", [])
            for item in items[:room]:
                members.append({"customer_id": item["customer_id"]["S"], "since": int(item["since"]["N"])})
                after = item["customer_id"]["S"]
            if len(items) > room:
                break  # stopped inside this query's items: resume after the last one returned
            last = response.get("LastEvaluatedKey")
            if last:
                after = last["customer_id"]["S"]
                stretch += 1
            else:
                shard, after, stretch = shard + 1, "", 0
        return members, (None if shard >= self.shards else _encode_cursor(shard, after))


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
