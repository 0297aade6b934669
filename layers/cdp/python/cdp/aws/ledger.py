"""The delivery ledger on DynamoDB: one item per (destination, segment, customer), written conditionally."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from cdp.aws.dead_letters import SqsDeadLetters
from cdp.aws.dynamo import batch_get
from cdp.aws.errors import domain_error
from cdp.config import DestinationConfig
from cdp.pipeline.fanout import EXITED, LedgerEntry
from cdp.ports import ConflictError

EXITED_TTL = 30 * 86400  # past any queue's retention: a late event older than this cannot arrive


def delivery_stores(config: DestinationConfig, source: str) -> tuple[DynamoDeliveryLedger, SqsDeadLetters]:
    """The ledger and dead-letter queue an integration function is configured with."""
    import boto3

    return (DynamoDeliveryLedger(boto3.client("dynamodb"), config.ledger_table),
            SqsDeadLetters(boto3.client("sqs"), config.dead_letter_queue_url, source))


def ledger_key(destination: str, key: tuple[str, str]) -> str:
    segment_id, customer_id = key
    return f"{destination}\x1f{segment_id}\x1f{customer_id}"


class DynamoDeliveryLedger:
    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table_name = table_name

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        wanted = {ledger_key(destination, key): key for key in keys}
        items = batch_get(self.client, self.table_name, [{"delivery": {"S": k}} for k in wanted], consistent=True)
        found = {}
        for item in items:
            key = wanted.get(item["delivery"]["S"])
            if key is not None:
                found[key] = LedgerEntry(int(item["v"]["N"]), item["kind"]["S"], item["event_id"]["S"],
                                         json.loads(item["ids"]["S"]) if "ids" in item else {})
        return found

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        return self._put(entry_item(destination, key, entry), "attribute_not_exists(delivery) OR v < :v",
                         {":v": {"N": str(entry.version)}})

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


def entry_item(destination: str, key: tuple[str, str], entry: LedgerEntry) -> dict[str, Any]:
    """The ledger item of one entry; an exit's expires once no late event can arrive any more."""
    item: dict[str, Any] = {"delivery": {"S": ledger_key(destination, key)}, "v": {"N": str(entry.version)},
                            "kind": {"S": entry.kind}, "event_id": {"S": entry.event_id}}
    if entry.identifiers:
        item["ids"] = {"S": json.dumps(dict(entry.identifiers), sort_keys=True)}
    if entry.kind == EXITED:
        item["expires_at"] = {"N": str(int(time.time()) + EXITED_TTL)}
    return item
