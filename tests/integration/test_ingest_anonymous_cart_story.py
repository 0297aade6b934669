"""The segment story of issue 17 end to end under moto: an anonymous cart becomes the known customer's email.

A visitor adds to cart as ``anon-5``, then logs in: an ``identify`` with ``userId`` ``ada``, the ``anonymousId``
and the email merges the visitor into Ada. 48 hours later the timers sweep puts Ada (the known id, never the
visitor) into ``cart-abandoners`` with the visitor's cart, the changes function publishes the entry, and the email
function sends Ada one cart reminder. Handlers run as deployed: ingest, changes, timers, email.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from cdp.aws.dead_letters import SqsDeadLetters
from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
from cdp.aws.ses import DynamoEmailLedger, DynamoFrequencyCap, SesEmailSender
from cdp.integrations.email import EmailOptions
from cdp.pipeline.identity import Identity
from cdp_dev.handlers import load_handler

from .support import (
    REGION,
    ROOT,
    Stack,
    create_ledger_table,
    detail_validator,
    failures,
    iso,
    kinesis_envelope,
    load_envelope,
)

email_handler = load_handler(ROOT, "email")
IDENTITY_TABLE, LEDGER_TABLE = "cdp-identity", "cdp-ledger"
CART, CART_WAIT = "cart-abandoners", 48 * 3600
TEMPLATES = {CART: "cart-reminder"}


@pytest.fixture
def identity(stack: Stack) -> Identity:
    stack.dynamodb.create_table(
        TableName=IDENTITY_TABLE, KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    return Identity(DynamoIdentityMap(bind_identity_map(IDENTITY_TABLE, REGION)))


def email_deps(stack: Stack) -> Any:
    ses = boto3.client("ses", region_name=REGION)
    ses.verify_email_identity(EmailAddress="shop@example.com")
    ses.create_template(Template={"TemplateName": "cart-reminder", "SubjectPart": "Your cart, {{first_name}}",
                                  "TextPart": "Still thinking?", "HtmlPart": "<p>Still thinking?</p>"})
    create_ledger_table(stack.dynamodb, LEDGER_TABLE)
    dead_letters = stack.sqs.create_queue(QueueName="cdp-email-dead-letters")["QueueUrl"]
    return email_handler.Dependencies(
        TEMPLATES, stack.store(), DynamoEmailLedger(stack.dynamodb, LEDGER_TABLE),
        DynamoFrequencyCap(stack.dynamodb, LEDGER_TABLE), SesEmailSender(ses, "Shop <shop@example.com>",
                                                                         sleep=lambda _: None),
        SqsDeadLetters(stack.sqs, dead_letters, "email"), EmailOptions(source="Shop <shop@example.com>"),
        stack.clock)


def sent() -> list[Any]:
    return list(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages)


def changes_to_bus(stack: Stack) -> list[dict[str, Any]]:
    assert failures(stack.changes(stack.stream_envelope())) == []
    return stack.drain_events()


def as_queue(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The bus events as the email function's queue delivers them."""
    return {"Records": [{"messageId": f"msg-{n}", "receiptHandle": f"rh-{n}", "body": json.dumps(event),
                         "attributes": {}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:cdp-email", "awsRegion": REGION}
                        for n, event in enumerate(events)]}


def changes_of(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return sorted((e["detail"]["customer_id"], e["detail"]["segment"]["id"], e["detail"]["change"],
                   e["detail"]["clause"]["path"]) for e in events)


def test_an_anonymous_cart_becomes_the_known_customers_abandonment_email(stack: Stack, identity: Identity) -> None:
    emails = email_deps(stack)
    t0 = stack.clock.now()
    added = {"type": "track", "event": "Product Added", "anonymousId": "anon-5", "messageId": "add-1",
             "timestamp": iso(t0), "properties": {"product_id": "sku-9", "price": 24.5, "quantity": 2}}
    assert failures(stack.ingest(kinesis_envelope([added], shard=1), identity=identity)) == []
    before = changes_to_bus(stack)
    assert ("anon-5", "potential-abandoners", "entered", "condition.absence") in changes_of(before)

    stack.clock.set(t0 + 60)
    login = {"type": "identify", "userId": "ada", "anonymousId": "anon-5", "messageId": "login-1",
             "timestamp": iso(t0 + 60), "traits": {"email": "Ada@Example.com", "first_name": "Ada"}}
    assert failures(stack.ingest(kinesis_envelope([login], shard=0), identity=identity)) == []
    merged = changes_to_bus(stack)
    assert ("anon-5", "potential-abandoners", "exited", "merged") in changes_of(merged)
    assert ("ada", "potential-abandoners", "entered", "merged") in changes_of(merged)
    [anon_exit] = [e for e in merged if e["detail"]["customer_id"] == "anon-5"
                   and e["detail"]["segment"]["id"] == "potential-abandoners"]
    assert anon_exit["detail"]["merged_into"] == "ada"  # what the audience integrations keep the known side by
    validator = detail_validator()
    for event in before + merged:
        validator.validate(event["detail"])  # merged_into is in the schema, on the merge's exits only
    assert all("merged_into" not in e["detail"] for e in before + merged if e["detail"]["customer_id"] == "ada")
    assert failures(email_handler.handle(as_queue(before + merged), None, emails)) == [] and sent() == []

    # The deadline is the visitor's add, carried to Ada by the merge: 48 h after it, the sweep moves her.
    item = stack.profile_item("ada")
    assert item is not None and int(item["nd"]) == int(t0) + CART_WAIT
    stack.clock.set(t0 + CART_WAIT)
    summary = stack.timers(load_envelope("eventbridge/schedule.json"))
    assert (summary["due"], summary["transitioned"]) == (1, 1)
    swept = changes_to_bus(stack)
    assert changes_of(swept) == [("ada", CART, "entered", "condition.absence"),
                                 ("ada", "potential-abandoners", "exited", "condition.absence")]
    ada = stack.profile("ada")
    assert ada.cart == {"sku-9": [2, 2450, int(t0)]}  # the cart the visitor built
    assert stack.profile("anon-5").merged_into == "ada" and stack.profile("anon-5").memberships == {}

    assert not [c for c in changes_of(before + merged + swept) if c[0] == "anon-5" and c[1] == CART]

    assert failures(email_handler.handle(as_queue(swept), None, emails)) == []
    [email] = sent()
    assert email.template == "cart-reminder" and email.destinations == {"ToAddresses": ["ada@example.com"]}
    assert json.loads(email.template_data) == {"segment_id": CART, "segment_name": "Cart abandoners",
                                               "first_name": "Ada", "customer_id": "ada"}
    assert failures(email_handler.handle(as_queue(swept), None, emails)) == [] and len(sent()) == 1  # redelivered
