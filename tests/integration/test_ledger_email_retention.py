"""The retention of plain email addresses in the delivery ledger (``retention.ledger_email_days``), under moto.

The webhook's ``include_email`` sends a list the customer's plain address with the add, and the ledger keeps
what an add sent so the removal can use it. With ``email_days`` the address lives in a companion item whose
TTL ends it that many days after the add, so no ledger row holds a plain address past the retention.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.aws.ledger import COMPANION, DynamoDeliveryLedger, ledger_key
from cdp.pipeline.fanout import ENTERED, EXITED, LedgerEntry
from tests.integration.support import create_ledger_table

TABLE, REGION = "ledger", "us-east-1"
KEY = ("loyal-customers", "ann")
ADDRESS = "ann@example.com"
ADDED = LedgerEntry(3, ENTERED, "e-3", {"email_sha256": "a" * 64, "email": ADDRESS})


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_ledger_table(client, TABLE)
        yield client


def items(dynamodb: Any) -> dict[str, dict[str, Any]]:
    return {item["delivery"]["S"]: item for item in dynamodb.scan(TableName=TABLE)["Items"]}


def test_with_a_retention_the_address_lives_in_an_item_of_its_own_that_expires(dynamodb: Any) -> None:
    ledger = DynamoDeliveryLedger(dynamodb, TABLE, email_days=30)
    assert ledger.record("webhook:list-loyal", KEY, ADDED)
    row = ledger_key("webhook:list-loyal", KEY)
    stored = items(dynamodb)
    assert ADDRESS not in str(stored[row])  # the row itself holds the hashes only
    companion = stored[row + COMPANION]
    assert companion["email"] == {"S": ADDRESS} and companion["customer"] == {"S": "ann"}
    assert abs(int(companion["expires_at"]["N"]) - (time.time() + 30 * 86400)) < 60
    assert ledger.entries("webhook:list-loyal", [KEY])[KEY] == ADDED  # the removal can still use it


def test_past_its_retention_the_removal_goes_without_the_address(dynamodb: Any) -> None:
    ledger = DynamoDeliveryLedger(dynamodb, TABLE, email_days=30)
    ledger.record("webhook:list-loyal", KEY, ADDED)
    row = ledger_key("webhook:list-loyal", KEY) + COMPANION
    dynamodb.update_item(TableName=TABLE, Key={"delivery": {"S": row}}, UpdateExpression="SET expires_at = :t",
                         ExpressionAttributeValues={":t": {"N": str(int(time.time()) - 1)}})  # TTL not yet run
    assert ledger.entries("webhook:list-loyal", [KEY])[KEY].identifiers == {"email_sha256": "a" * 64}


def test_the_exit_and_the_deletion_take_the_address_with_them(dynamodb: Any) -> None:
    ledger = DynamoDeliveryLedger(dynamodb, TABLE, email_days=30)
    ledger.record("webhook:list-loyal", KEY, ADDED)
    assert ledger.record("webhook:list-loyal", KEY, LedgerEntry(4, EXITED, "e-4", {}))
    assert [k for k in items(dynamodb) if k.endswith(COMPANION)] == []
    ledger.record("webhook:list-loyal", KEY, LedgerEntry(5, ENTERED, "e-5", dict(ADDED.identifiers)))
    ledger.forget("webhook:list-loyal", KEY)
    assert items(dynamodb) == {}


def test_without_a_retention_the_row_keeps_the_address_until_the_exit(dynamodb: Any) -> None:
    ledger = DynamoDeliveryLedger(dynamodb, TABLE)
    ledger.record("webhook:list-loyal", KEY, ADDED)
    (row,) = items(dynamodb).values()
    assert ADDRESS in row["ids"]["S"]
    assert ledger.entries("webhook:list-loyal", [KEY])[KEY] == ADDED
