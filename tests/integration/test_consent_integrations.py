"""Consent per customer at delivery, through each integration function under moto: the function built from its
environment (PROFILES_TABLE, CONSENT_POLICY, LEDGER_TABLE ...), consent read from the profiles table with the real
adapter (the ``cs`` attribute the profile store writes), the real DynamoDB ledger with its ``customer`` index.
The platform (Meta, Google, the webhook receiver) is the in-memory one of tests/unit/test_consent_delivery.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cdp.core.profile import Profile
from cdp.pipeline.fanout import ENTERED, EXITED
from cdp_dev.handlers import load_handler
from tests.integration.support import create_ledger_table
from tests.unit.test_consent_delivery import (
    CART,
    GRANTED,
    POLICY,
    TARGETS,
    WITHDRAWN,
    Platform,
    Sender,
    email_hash,
    make_destination,
    msg,
)
from tests.unit.test_fanout import ROOT

REGION = "eu-west-1"
LEDGER_TABLE, PROFILES_TABLE = "cdp-ledger", "cdp-profiles"


@dataclass
class Aws:
    dynamodb: Any
    queue_url: str

    def save(self, customer: str, categories: dict[str, bool] | None, unsubscribed: str = "") -> None:
        from cdp.aws.dynamo import DynamoProfileStore

        store = DynamoProfileStore(self.dynamodb, PROFILES_TABLE)
        current = store.get(customer)
        profile = current or Profile(customer)
        profile.traits = {"email": f"{customer}@example.com"}
        if categories is not None:
            profile.consent.record(categories, float(profile.version + 1), "browser", f"m{profile.version}")
        if unsubscribed:
            profile.consent.unsubscribe(9.0, unsubscribed)
        expected = profile.version
        profile.version += 1
        store.save(profile, expected)

    def delete(self, customer: str) -> None:
        self.dynamodb.delete_item(TableName=PROFILES_TABLE, Key={"customer_id": {"S": customer}})

    def ledger_customers(self) -> list[str]:
        """Who the ledger holds delivery rows of, through its ``customer`` index (as a deletion finds them; the
        email frequency cap's rows are there too, one per customer emailed, and left out here)."""
        items = self.dynamodb.scan(TableName=LEDGER_TABLE, IndexName="customer")["Items"]
        return sorted(item["customer"]["S"] for item in items if not item["delivery"]["S"].startswith("email-cap"))

    def ledger_item(self, namespace: str, customer: str) -> dict[str, Any] | None:
        from cdp.aws.ledger import ledger_key

        item: dict[str, Any] | None = self.dynamodb.get_item(TableName=LEDGER_TABLE, ConsistentRead=True, Key={
            "delivery": {"S": ledger_key(namespace, (CART, customer))}}).get("Item")
        return item


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(TableName=PROFILES_TABLE, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "customer_id", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "customer_id", "AttributeType": "S"}])
        create_ledger_table(dynamodb, LEDGER_TABLE)
        queue_url = boto3.client("sqs", region_name=REGION).create_queue(QueueName="cdp-dead-letters")["QueueUrl"]
        for name, value in {"LEDGER_TABLE": LEDGER_TABLE, "DEAD_LETTER_QUEUE_URL": queue_url,
                            "PROFILES_TABLE": PROFILES_TABLE, "LEDGER_EXIT_DAYS": "9",
                            "CONSENT_POLICY": json.dumps(POLICY.as_json())}.items():
            monkeypatch.setenv(name, value)
        yield Aws(dynamodb, queue_url)


def envelope(*messages: tuple[str, str]) -> dict[str, Any]:
    return {"Records": [{"messageId": message_id, "body": body} for message_id, body in messages]}


@pytest.mark.parametrize("name", ["meta", "google", "webhook"])
def test_every_consent_path_through_the_function(aws: Aws, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from cdp.aws.ledger import DynamoDeliveryLedger
    from cdp.aws.permissions import DynamoCustomerPermissions

    monkeypatch.setenv("TARGETS", json.dumps(TARGETS[name]))
    monkeypatch.setenv("OPTIONS", json.dumps({"url": "https://hooks.example.com/lists"} if name == "webhook" else
                                             {"customer_id": "1234567890"} if name == "google" else {}))
    handler = load_handler(ROOT, name)
    platform = Platform()
    deps = handler.build(destination=make_destination(name, platform))
    assert isinstance(deps.permissions, DynamoCustomerPermissions) and isinstance(deps.ledger, DynamoDeliveryLedger)
    assert deps.policy == POLICY and deps.ledger.exit_days == 9
    target = TARGETS[name][CART]
    namespace = f"{name}:{target}"

    def run(*messages: tuple[str, str]) -> dict[str, Any]:
        response: dict[str, Any] = handler.handle(envelope(*messages), None, deps)
        handler.metrics.clear_metrics()
        return response

    try:
        aws.save("ann", GRANTED)
        aws.save("bob", WITHDRAWN)
        # granted -> added; denied -> not added (a consent exit); no profile -> nothing, no ledger row
        assert run(msg(ENTERED, "ann"), msg(ENTERED, "bob"), msg(ENTERED, "gone")) == {"batchItemFailures": []}
        assert platform.members(target) == {email_hash("ann")}
        assert aws.ledger_customers() == ["ann", "bob"]
        bob = aws.ledger_item(namespace, "bob")
        assert bob is not None and bob["kind"]["S"] == EXITED and bob["customer"]["S"] == "bob"
        assert "expires_at" in bob

        # withdrawn (Segment Consent Changed) -> removed, with a ledger exit at the membership's version
        aws.save("ann", WITHDRAWN)
        run(msg(ENTERED, "ann", consent_change=True, at="2026-10-09T10:00:00Z"))
        assert platform.members(target) == set()
        ann = aws.ledger_item(namespace, "ann")
        assert ann is not None and (ann["kind"]["S"], ann["v"]["N"], ann["st"]["S"]) == (
            EXITED, "1", "2026-10-09T10:00:00Z")

        # re-granted -> added back
        aws.save("ann", GRANTED)
        run(msg(ENTERED, "ann", consent_change=True, at="2026-10-09T11:00:00Z"))
        assert platform.members(target) == {email_hash("ann")}

        # deleted -> removed, and the ledger rows are gone; a replay of the old entry brings nobody back
        aws.delete("ann")
        run(msg(EXITED, "ann", 2, clause="deleted"))
        run(msg(ENTERED, "ann"))
        assert platform.members(target) == set()
        assert aws.ledger_item(namespace, "ann") is None and aws.ledger_customers() == ["bob"]
    finally:
        handler.dependencies.cache_clear()


def test_the_functions_need_the_profiles_table(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdp.config import ConfigError

    monkeypatch.setenv("TARGETS", json.dumps(TARGETS["meta"]))
    monkeypatch.delenv("PROFILES_TABLE")
    handler = load_handler(ROOT, "meta")
    with pytest.raises(ConfigError, match="PROFILES_TABLE"):
        handler.build(destination=make_destination("meta", Platform()))
    monkeypatch.setenv("PROFILES_TABLE", PROFILES_TABLE)
    monkeypatch.setenv("CONSENT_POLICY", '{"uses": {"fax": []}}')
    with pytest.raises(ConfigError, match="CONSENT_POLICY"):
        handler.build(destination=make_destination("meta", Platform()))


def test_email_consent_paths_through_the_function(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARGETS", json.dumps({CART: "cart-reminder"}))
    monkeypatch.setenv("OPTIONS", json.dumps({"source": "Shop <shop@example.com>"}))
    handler = load_handler(ROOT, "email")
    sender = Sender()
    deps = handler.build(sender=sender)
    assert deps.policy == POLICY

    def run(*messages: tuple[str, str]) -> None:
        handler.handle(envelope(*messages), None, deps)
        handler.metrics.clear_metrics()

    aws.save("ann", GRANTED)
    aws.save("bob", WITHDRAWN)
    aws.save("cat", GRANTED, unsubscribed="unsubscribed")
    aws.save("dan", GRANTED, unsubscribed="spam")
    run(*(msg(ENTERED, c) for c in ("ann", "bob", "cat", "dan", "gone")))
    assert sender.sent == ["ann"]  # denied, unsubscribed, spam and no profile: no email
    assert aws.ledger_customers() == ["ann", "bob", "cat", "dan"]  # nothing of the customer with no profile

    run(msg(ENTERED, "ann", consent_change=True, at="2026-10-09T10:00:00Z"))  # a consent change never emails
    aws.delete("ann")
    run(msg(EXITED, "ann", 2, clause="deleted"))
    run(msg(ENTERED, "ann"))  # an archive replay
    assert sender.sent == ["ann"]
    assert aws.ledger_item("email", "ann") is None and "ann" not in aws.ledger_customers()
