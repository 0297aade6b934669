"""The delivery ledger on DynamoDB: one item per (destination, segment, customer), written conditionally.

Every item carries ``customer`` (the customer id, or its pseudonym when pseudonymous indexes are on: then
the customer part of the key is the pseudonym too), the partition key of the table's keys-only index
``customer``, so that a deletion finds every row of a customer; a deleted customer's exit forgets its row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from cdp.aws.dead_letters import SqsDeadLetters
from cdp.aws.dynamo import batch_get
from cdp.aws.errors import domain_error
from cdp.config import DestinationConfig
from cdp.core.pseudonyms import PlainIds, Pseudonyms
from cdp.pipeline.fanout import EXITED, LedgerEntry
from cdp.ports import ConflictError

DEFAULT_EXIT_DAYS = 30  # past any queue's retention: a late event older than this cannot arrive
CUSTOMER_INDEX = "customer"
# A change of the same version may follow one recorded (a consent change after its membership change), in step order.
NEWER = "attribute_not_exists(delivery) OR v < :v"
NEWER_STEP = "attribute_not_exists(delivery) OR v < :v OR (v = :v AND (attribute_not_exists(st) OR st < :st))"


def delivery_stores(config: DestinationConfig, source: str) -> tuple[DynamoDeliveryLedger, SqsDeadLetters]:
    """The ledger and dead-letter queue an integration function is configured with (reads the pseudonym key,
    when there is one)."""
    import os

    import boto3

    from cdp.aws.pseudonyms import pseudonyms_from_env

    return (DynamoDeliveryLedger(boto3.client("dynamodb"), config.ledger_table, config.ledger_exit_days,
                                 pseudonyms_from_env(os.environ)),
            SqsDeadLetters(boto3.client("sqs"), config.dead_letter_queue_url, source))


def ledger_key(destination: str, key: tuple[str, str]) -> str:
    segment_id, customer_id = key
    return f"{destination}\x1f{segment_id}\x1f{customer_id}"


class DynamoDeliveryLedger:
    """Keys are (segment, customer id) as the pure fanout code has them; the customer part is stored as its
    pseudonym, applied here so that code never sees one."""

    def __init__(self, client: Any, table_name: str, exit_days: int = DEFAULT_EXIT_DAYS,
                 pseudonyms: Pseudonyms | None = None) -> None:
        self.client = client
        self.table_name = table_name
        self.exit_days = exit_days  # LEDGER_EXIT_DAYS: an exit's item expires after this
        self.pseudonyms = pseudonyms or PlainIds()

    def stored(self, key: tuple[str, str]) -> tuple[str, str]:
        """The key as stored: (segment, the customer's pseudonym)."""
        return key[0], self.pseudonyms.pseudonym(key[1])

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        wanted = {ledger_key(destination, self.stored(key)): key for key in keys}
        items = batch_get(self.client, self.table_name, [{"delivery": {"S": k}} for k in wanted], consistent=True)
        found = {}
        for item in items:
            key = wanted.get(item["delivery"]["S"])
            if key is not None:
                found[key] = LedgerEntry(int(item["v"]["N"]), item["kind"]["S"], item["event_id"]["S"],
                                         json.loads(item["ids"]["S"]) if "ids" in item else {},
                                         item["st"]["S"] if "st" in item else "")
        return found

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        values = {":v": {"N": str(entry.version)}}
        if entry.step:
            values[":st"] = {"S": entry.step}
        item = entry_item(destination, self.stored(key), entry, self.exit_days)
        return self._put(item, NEWER_STEP if entry.step else NEWER, values)

    def forget(self, destination: str, key: tuple[str, str]) -> None:
        """Delete the row (a deleted customer's); deleting a row that is not there is no error."""
        try:
            self.client.delete_item(TableName=self.table_name,
                                    Key={"delivery": {"S": ledger_key(destination, self.stored(key))}})
        except Exception as error:
            raise domain_error(error) from error

    def _put(self, item: dict[str, Any], condition: str, values: dict[str, Any]) -> bool:
        return conditional_put(self.client, self.table_name, item, condition, values)


def conditional_put(client: Any, table_name: str, item: dict[str, Any], condition: str,
                    values: dict[str, Any] | None = None) -> bool:
    """A conditional PutItem; False when the condition failed (something newer is there)."""
    extra = {"ExpressionAttributeValues": values} if values else {}
    try:
        client.put_item(TableName=table_name, Item=item, ConditionExpression=condition, **extra)
    except Exception as error:
        mapped = domain_error(error)
        if isinstance(mapped, ConflictError):
            return False
        raise mapped from error
    return True


def entry_item(destination: str, key: tuple[str, str], entry: LedgerEntry,
               exit_days: int = DEFAULT_EXIT_DAYS) -> dict[str, Any]:
    """The ledger item of one entry; an exit's expires once no late event can arrive any more."""
    item: dict[str, Any] = {"delivery": {"S": ledger_key(destination, key)}, "v": {"N": str(entry.version)},
                            "kind": {"S": entry.kind}, "event_id": {"S": entry.event_id},
                            "customer": {"S": key[1]}}
    if entry.identifiers:
        item["ids"] = {"S": json.dumps(dict(entry.identifiers), sort_keys=True)}
    if entry.step:
        item["st"] = {"S": entry.step}
    if entry.kind == EXITED:
        item["expires_at"] = {"N": str(int(time.time()) + exit_days * 86400)}
    return item
