"""The members index on DynamoDB: one item per (segment, customer), and size counters per members shard.

Layout (one table, keyed ``segment_shard`` / ``customer_id``):

- a membership: ``segment#NN`` / customer id, with ``v`` (the profile version of the change) and ``since``;
  an exit keeps the item as a tombstone (``exited_at``, and ``expires_at`` 7 days on, for the table's TTL);
- a size counter: ``segment#NN#size`` / ``#``, whose ``members`` is the shard's current member count. A
  segment's size is the sum over its shards: one BatchGetItem of ``member_shards`` keys.

Exact sizes without transactions. A membership write is a PutItem conditional on the version
(``attribute_not_exists(customer_id) OR v < :v``) that returns the item it replaced. Its size delta is
``member(new) - member(replaced)``, and it is counted only when the write took effect: a redelivered change
(same version) or an older one arriving after a newer one (reordering, a redrive) fails its condition and
counts nothing. The changes function sums a batch's deltas per segment and sends one ``ADD`` per touched
segment, to the counter of one of its shards, right after the batch's membership writes (retried in process
with back-off). Over any order of
deliveries each counter is therefore the telescoping sum of member(after) - member(before) over the writes
that took effect: the number of current members.

What is not exact: the counter update is a second request, after the membership writes. If the invocation
dies between a membership write taking effect and the ``ADD`` that counts it (a timeout, running out of
memory, the sandbox stopped), or the ``ADD`` still fails after its in-process retries, that delta is lost:
the redelivered record finds the membership already written, so it counts nothing again. The shard's size
is then off by at most the deltas of that one batch for that counter, until it is recounted. The changes
function reports such a loss (``MemberSizeUpdatesLost``, with the segment ids in the log). Nothing else can
drift the sizes: duplicates, retries from a failed record, bisected batches and late versions are exact.

A tombstone expires 7 days after the exit. A change older than the exit that arrives after that (beyond the
table stream's 24-hour retention, so only if replayed by hand) would be written, and counted, again.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from cdp.aws.dynamo import batch_get
from cdp.aws.errors import domain_error
from cdp.core.pseudonyms import PlainIds, Pseudonyms
from cdp.pipeline.changes import MembershipChange, members_partition
from cdp.ports import ConflictError, InvalidCursor, TransientError

EXITED_MEMBER_TTL = 7 * 86400
SIZE_ATTEMPTS = 6  # in-process attempts of a size counter update: up to about 1.5 s of back-off
MEMBERSHIP_CONDITION = "attribute_not_exists(customer_id) OR v < :v"


def size_key(counter: str) -> dict[str, Any]:
    """The key of a shard's size item; ``counter`` is the shard's partition, ``segment#NN``."""
    return {"segment_shard": {"S": f"{counter}#size"}, "customer_id": {"S": "#"}}


def was_member(item: dict[str, Any] | None) -> bool:
    """Whether a stored membership item (DynamoDB attribute values) is a current member, not a tombstone."""
    return bool(item) and "exited_at" not in item  # type: ignore[operator]


def encode_cursor(shard: int, after: str) -> str:
    raw = json.dumps([shard, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, shards: int) -> tuple[int, str]:
    try:
        shard, after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise InvalidCursor("cursor: is not a cursor returned by this listing") from None
    if not isinstance(shard, int) or not isinstance(after, str) or not 0 <= shard < shards:
        raise InvalidCursor("cursor: is not a cursor returned by this listing")
    return shard, after


class DynamoMembersIndex:
    """``segment#NN`` -> customer, with the membership version; exits leave a tombstone that expires.

    Thread-safe over a thread-safe client (boto3 clients are): the changes function sends a batch's writes
    from a pool. An item's ``customer_id`` is the customer's pseudonym (the id itself unless pseudonymous
    indexes are on); the shard is still chosen by the customer id, so every writer and reader agrees on it.
    """

    def __init__(self, client: Any, table_name: str, shards: int,
                 sleep: Callable[[float], None] = time.sleep, pseudonyms: Pseudonyms | None = None) -> None:
        self.client = client
        self.table_name = table_name
        self.shards = shards
        self.sleep = sleep
        self.pseudonyms = pseudonyms or PlainIds()

    # ---- the changes function's writes -------------------------------------------------------------------

    def write(self, change: MembershipChange) -> int:
        """Write the membership if it is newer than the stored one; the size delta it made (+1, -1 or 0)."""
        item: dict[str, Any] = {
            "segment_shard": {"S": self.size_counter(change)},
            "customer_id": {"S": self.pseudonyms.pseudonym(change.customer_id)},
            "v": {"N": str(change.version)},
            "since": {"N": str(change.at)},
        }
        if change.kind == "exited":
            item["exited_at"] = {"N": str(change.at)}
            item["expires_at"] = {"N": str(change.at + EXITED_MEMBER_TTL)}
        try:
            response = self.client.put_item(
                TableName=self.table_name, Item=item, ConditionExpression=MEMBERSHIP_CONDITION,
                ExpressionAttributeValues={":v": {"N": str(change.version)}}, ReturnValues="ALL_OLD")
        except Exception as error:
            mapped = domain_error(error)
            if isinstance(mapped, ConflictError):
                return 0  # this version or a newer one is already there: old news, counted when it was written
            raise mapped from error
        return int(change.kind == "entered") - int(was_member(response.get("Attributes")))

    def size_counter(self, change: MembershipChange) -> str:
        """The size counter a change counts in: its members shard, ``segment#NN``."""
        return members_partition(change.segment_id, change.customer_id, self.shards)

    def add_size(self, counter: str, delta: int) -> None:
        """One ``ADD`` to a shard's size, resent with back-off while DynamoDB throttles or faults."""
        for attempt in range(SIZE_ATTEMPTS):
            try:
                self.client.update_item(TableName=self.table_name, Key=size_key(counter),
                                        UpdateExpression="ADD members :delta",
                                        ExpressionAttributeValues={":delta": {"N": str(delta)}})
                return
            except Exception as error:
                mapped = domain_error(error)
                if not isinstance(mapped, TransientError) or attempt + 1 == SIZE_ATTEMPTS:
                    raise mapped from error
            self.sleep(min(0.05 * 2 ** attempt, 0.8))

    def record(self, change: MembershipChange) -> None:
        """Write one change and count it at once (seeding, single changes); batches use write and add_size."""
        delta = self.write(change)
        if delta:
            self.add_size(self.size_counter(change), delta)

    # ---- the API's reads ---------------------------------------------------------------------------------

    def size(self, segment_id: str) -> int:
        """Current members: the sum of the shards' size items, in one BatchGetItem (16 keys by default)."""
        keys = [size_key(f"{segment_id}#{shard:02d}") for shard in range(self.shards)]
        items = batch_get(self.client, self.table_name, keys)
        total = sum(int(item.get("members", {}).get("N", "0")) for item in items)
        return max(total, 0)

    def page(self, segment_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` current members in a stable order (shard, then stored id), and the next cursor. Each
        member is ``customer_id`` and ``since``; with pseudonymous indexes it is ``member`` (the pseudonym, which
        names no one) instead of ``customer_id``."""
        field = "member" if self.pseudonyms.pseudonymous else "customer_id"
        shard, after = decode_cursor(cursor, self.shards) if cursor else (0, "")
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
                members.append({field: item["customer_id"]["S"], "since": int(item["since"]["N"])})
                after = item["customer_id"]["S"]
            if len(items) > room:
                break  # stopped inside this query's items: resume after the last one returned
            last = response.get("LastEvaluatedKey")
            if last:
                after = last["customer_id"]["S"]
                stretch += 1
            else:
                shard, after, stretch = shard + 1, "", 0
        return members, (None if shard >= self.shards else encode_cursor(shard, after))
