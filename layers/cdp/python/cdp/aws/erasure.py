"""A customer's data in the stores a deletion erases and an export reads: profiles, members index, delivery
ledger (through its ``customer`` index) and the quarantine bucket (every object version).

The members index and the ledger may store customers under pseudonyms (cdp.core.pseudonyms): this adapter takes
and gives customer ids, and looks rows up by the customer's pseudonym."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from typing import Any

from cdp.aws.dynamo import batch_get
from cdp.aws.errors import domain_error
from cdp.aws.quarantine import PREFIX
from cdp.core.pseudonyms import PlainIds, Pseudonyms
from cdp.ports import LedgerRow

LEDGER_CUSTOMER_INDEX = "customer"


class DynamoCustomerStores:
    def __init__(self, dynamodb: Any, s3: Any, *, profiles_table: str, members_table: str, ledger_table: str,
                 quarantine_bucket: str, pseudonyms: Pseudonyms | None = None) -> None:
        self.dynamodb, self.s3 = dynamodb, s3
        self.profiles_table, self.members_table = profiles_table, members_table
        self.ledger_table, self.quarantine_bucket = ledger_table, quarantine_bucket
        self.pseudonyms = pseudonyms or PlainIds()

    def _delete(self, table: str, key: dict[str, Any]) -> bool:
        try:
            response = self.dynamodb.delete_item(TableName=table, Key=key, ReturnValues="ALL_OLD")
        except Exception as error:
            raise domain_error(error) from error
        return bool(response.get("Attributes"))

    def delete_profile(self, customer_id: str) -> bool:
        return self._delete(self.profiles_table, {"customer_id": {"S": customer_id}})

    def member_rows(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        stored = {(shard, self.pseudonyms.pseudonym(customer)): (shard, customer) for shard, customer in keys}
        wanted = [{"segment_shard": {"S": shard}, "customer_id": {"S": customer}} for shard, customer in stored]
        try:
            items = batch_get(self.dynamodb, self.members_table, wanted, consistent=True)
        except Exception as error:
            raise domain_error(error) from error
        return {stored[(item["segment_shard"]["S"], item["customer_id"]["S"])]: "exited_at" not in item
                for item in items}

    def delete_member_row(self, key: tuple[str, str]) -> bool:
        return self._delete(self.members_table, {"segment_shard": {"S": key[0]},
                                                 "customer_id": {"S": self.pseudonyms.pseudonym(key[1])}})

    def ledger_rows(self, customer_id: str) -> list[LedgerRow]:
        if not self.ledger_table:
            return []  # no integration is enabled: there is no ledger
        keys: list[dict[str, Any]] = []
        stored = self.pseudonyms.pseudonym(customer_id)
        try:
            pages = self.dynamodb.get_paginator("query").paginate(
                TableName=self.ledger_table, IndexName=LEDGER_CUSTOMER_INDEX,
                KeyConditionExpression="customer = :c", ExpressionAttributeValues={":c": {"S": stored}})
            for page in pages:
                keys += [{"delivery": item["delivery"]} for item in page.get("Items", [])]
            items = batch_get(self.dynamodb, self.ledger_table, keys, consistent=True) if keys else []
        except Exception as error:
            raise domain_error(error) from error
        return sorted((LedgerRow(item["delivery"]["S"], item.get("kind", {}).get("S", ""),
                                 int(item.get("v", {}).get("N", "0"))) for item in items), key=lambda r: r.delivery)

    def delete_ledger_row(self, delivery: str) -> bool:
        return self._delete(self.ledger_table, {"delivery": {"S": delivery}})

    def scrub_quarantine(self, needles: Sequence[str]) -> int:
        """Every object holding a record of the customer is rewritten without it (or deleted when nothing else is
        left), and every older version of it deleted: the bucket is versioned, so an overwrite alone keeps them.
        Reads the whole quarantine (its retention keeps it small); records removed, once per object."""
        wanted = {n for n in needles if n} | {n.lower() for n in needles if n}
        removed = 0
        try:
            for key, versions in self._versions().items():
                removed += self._scrub(key, versions, wanted)
        except Exception as error:
            raise domain_error(error) from error
        return removed

    def _versions(self) -> dict[str, list[dict[str, Any]]]:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.quarantine_bucket,
                                                                           Prefix=f"{PREFIX}/"):
            for version in page.get("Versions", []):
                by_key.setdefault(version["Key"], []).append({**version, "marker": False})
            for marker in page.get("DeleteMarkers", []):
                by_key.setdefault(marker["Key"], []).append({**marker, "marker": True})
        return by_key

    def _scrub(self, key: str, versions: list[dict[str, Any]], wanted: set[str]) -> int:
        latest_kept: list[str] | None = None
        removed, found = 0, False
        for version in versions:
            if version["marker"]:
                continue
            body = self.s3.get_object(Bucket=self.quarantine_bucket, Key=key, VersionId=version["VersionId"])
            lines = [line for line in body["Body"].read().decode("utf-8", "replace").splitlines() if line.strip()]
            kept = [line for line in lines if not mentions(line, wanted)]
            if len(kept) != len(lines):
                found = True
                removed = max(removed, len(lines) - len(kept))
            if version.get("IsLatest"):
                latest_kept = kept
        if not found:
            return 0
        new_version = None
        if latest_kept:
            body = ("\n".join(latest_kept) + "\n").encode()
            put = self.s3.put_object(Bucket=self.quarantine_bucket, Key=key, Body=body,
                                     ContentType="application/x-ndjson")
            new_version = put.get("VersionId")
        for version in versions:
            if version["VersionId"] != new_version:
                self.s3.delete_object(Bucket=self.quarantine_bucket, Key=key, VersionId=version["VersionId"])
        return removed


def mentions(line: str, wanted: set[str]) -> bool:
    """Whether a quarantined record (one JSON line) names any of the wanted ids or addresses: its partition key,
    or any string in its message (the raw text when it is not JSON, which is why some records are there)."""
    try:
        record = json.loads(line)
    except ValueError:
        return any(w in line for w in wanted)
    if not isinstance(record, dict):
        return False
    if str(record.get("partition_key", "")) in wanted:
        return True
    try:
        text = base64.b64decode(str(record.get("data", ""))).decode("utf-8", "replace")
    except ValueError:
        text = str(record.get("data", ""))
    try:
        message = json.loads(text)
    except ValueError:
        return any(w in text for w in wanted)
    return any(s in wanted or s.strip().lower() in wanted for s in _strings(message))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)


class SqsPrivacyJobs:
    """Deletion jobs on the privacy queue (encrypted; it keeps a message a day at most, as it holds raw ids)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client, self.queue_url = client, queue_url

    def send(self, message: dict[str, Any], delay_seconds: int = 0) -> None:
        try:
            self.client.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(message, sort_keys=True),
                                     DelaySeconds=min(900, max(0, delay_seconds)))
        except Exception as error:
            raise domain_error(error) from error
