"""The delivery ledger on DynamoDB: one item per (destination, segment, customer), written conditionally.

Every item carries ``customer`` (the customer id, or its pseudonym when pseudonymous indexes are on: then
the customer part of the key is the pseudonym too), the partition key of the table's keys-only index
``customer``, so that a deletion finds every row of a customer; a deleted customer's exit forgets its row.

A plain email address sent with an add (the webhook's ``include_email``) is kept, with ``email_days`` set
(``retention.ledger_email_days``), in a companion item of its own (key ``<row>\x1femail``) whose TTL
ends it that many days after the add: DynamoDB cannot expire one attribute of an item. Until then the
removal uses it; after, the removal goes with the hashed identifiers and the customer id only. The
companion goes with the row's exit.
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
from cdp.pipeline.fanout import ENTERED, EXITED, LedgerEntry
from cdp.ports import ConflictError

DEFAULT_EXIT_DAYS = 30  # past any queue's retention: a late event older than this cannot arrive
CUSTOMER_INDEX = "customer"
PLAIN_EMAIL = "email"  # the key of a plain address among a row's identifiers (the webhook's include_email)
COMPANION = "\x1femail"  # appended to a row's key: the item that holds its plain address
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
                                 pseudonyms_from_env(os.environ), config.ledger_email_days),
            SqsDeadLetters(boto3.client("sqs"), config.dead_letter_queue_url, source))


def ledger_key(destination: str, key: tuple[str, str]) -> str:
    segment_id, customer_id = key
    return f"{destination}\x1f{segment_id}\x1f{customer_id}"


class DynamoDeliveryLedger:
    """Keys are (segment, customer id) as the pure fanout code has them; the customer part is stored as its
    pseudonym, applied here so that code never sees one."""

    def __init__(self, client: Any, table_name: str, exit_days: int = DEFAULT_EXIT_DAYS,
                 pseudonyms: Pseudonyms | None = None, email_days: int = 0) -> None:
        self.client = client
        self.table_name = table_name
        self.exit_days = exit_days  # LEDGER_EXIT_DAYS: an exit's item expires after this
        self.pseudonyms = pseudonyms or PlainIds()
        self.email_days = email_days  # LEDGER_EMAIL_DAYS: a plain address is kept this long; 0: with its row

    def stored(self, key: tuple[str, str]) -> tuple[str, str]:
        """The key as stored: (segment, the customer's pseudonym)."""
        return key[0], self.pseudonyms.pseudonym(key[1])

    def entries(self, destination: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], LedgerEntry]:
        wanted = {ledger_key(destination, self.stored(key)): key for key in keys}
        asked = [*wanted, *(row + COMPANION for row in wanted)] if self.email_days else list(wanted)
        items = batch_get(self.client, self.table_name, [{"delivery": {"S": k}} for k in asked], consistent=True)
        addresses = {item["delivery"]["S"].removesuffix(COMPANION): item["email"]["S"] for item in items
                     if item["delivery"]["S"].endswith(COMPANION) and _live(item)}
        found = {}
        for item in items:
            row = item["delivery"]["S"]
            key = wanted.get(row)
            if key is not None:
                identifiers = json.loads(item["ids"]["S"]) if "ids" in item else {}
                if row in addresses:
                    identifiers[PLAIN_EMAIL] = addresses[row]
                found[key] = LedgerEntry(int(item["v"]["N"]), item["kind"]["S"], item["event_id"]["S"],
                                         identifiers, item["st"]["S"] if "st" in item else "")
        return found

    def record(self, destination: str, key: tuple[str, str], entry: LedgerEntry) -> bool:
        values = {":v": {"N": str(entry.version)}}
        if entry.step:
            values[":st"] = {"S": entry.step}
        stored = self.stored(key)
        address = entry.identifiers.get(PLAIN_EMAIL) if self.email_days and entry.kind == ENTERED else None
        kept = entry if address is None else LedgerEntry(
            entry.version, entry.kind, entry.event_id,
            {k: v for k, v in entry.identifiers.items() if k != PLAIN_EMAIL}, entry.step)
        written = self._put(entry_item(destination, stored, kept, self.exit_days),
                            NEWER_STEP if entry.step else NEWER, values)
        if written and address is not None:
            self._put_address(ledger_key(destination, stored), stored[1], address, entry.version)
        elif written and self.email_days and entry.kind == EXITED:
            self._delete(ledger_key(destination, stored) + COMPANION)  # the address goes with the membership
        return written

    def forget(self, destination: str, key: tuple[str, str]) -> None:
        """Delete the row (a deleted customer's), its plain address first; deleting what is not there is no
        error."""
        row = ledger_key(destination, self.stored(key))
        if self.email_days:
            self._delete(row + COMPANION)
        self._delete(row)

    def _put_address(self, row: str, customer: str, address: str, version: int) -> None:
        """The plain address of an add, in its own item that DynamoDB deletes ``email_days`` later. Its kind is
        ``entered``, so a deletion waits for the exit (whose remove uses it) and its ``customer`` finds it."""
        item = {"delivery": {"S": row + COMPANION}, "customer": {"S": customer}, "kind": {"S": ENTERED},
                "v": {"N": str(version)}, "email": {"S": address},
                "expires_at": {"N": str(int(time.time()) + self.email_days * 86400)}}
        try:
            self.client.put_item(TableName=self.table_name, Item=item)
        except Exception as error:
            raise domain_error(error) from error

    def _delete(self, delivery: str) -> None:
        try:
            self.client.delete_item(TableName=self.table_name, Key={"delivery": {"S": delivery}})
        except Exception as error:
            raise domain_error(error) from error

    def _put(self, item: dict[str, Any], condition: str, values: dict[str, Any]) -> bool:
        return conditional_put(self.client, self.table_name, item, condition, values)


def _live(item: dict[str, Any]) -> bool:
    """An item whose TTL has not passed (DynamoDB deletes expired items within days, not at once)."""
    return "expires_at" not in item or int(item["expires_at"]["N"]) > time.time()


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
