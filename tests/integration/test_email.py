"""functions/email/handler.py under moto: SES v1, the ledger and profiles tables, the dead-letter queue.

The rules of cdp.integrations.email, with memory fakes, are unit tests (tests/unit/test_email.py).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from cdp.core.clock import FixedClock
from cdp.core.profile import Profile
from cdp.integrations.email import NAMESPACE, CapRecord, Send, reserve_slot
from cdp.pipeline.fanout import ENTERED, EXITED, LedgerEntry
from cdp_dev.handlers import load_handler
from tests.email_support import ADDRESS, CART, DAY, HOUR, OFFER, OPTIONS, ROOT, SAMPLE, TEMPLATES, T, bus_event, message

email_handler = load_handler(ROOT, "email")
REGION = "eu-west-1"
LEDGER_TABLE, PROFILES_TABLE = "cdp-ledger", "cdp-profiles"


@dataclass
class Aws:
    dynamodb: Any
    ses: Any
    sqs: Any
    dead_letter_url: str
    deps: Any
    clock: FixedClock
    log: io.StringIO

    def handle(self, envelope: dict[str, Any], deps: Any = None) -> list[str]:
        response = email_handler.handle(envelope, None, deps or self.deps)
        assert set(response) == {"batchItemFailures"}
        return [item["itemIdentifier"] for item in response["batchItemFailures"]]

    def sent(self) -> list[Any]:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.ses.models import ses_backends

        backend = ses_backends[DEFAULT_ACCOUNT_ID][REGION]
        assert backend.sent_message_count == len(backend.sent_messages)
        return list(backend.sent_messages)

    def dead_letters(self) -> list[tuple[str, str]]:
        response = self.sqs.receive_message(QueueUrl=self.dead_letter_url, MaxNumberOfMessages=10,
                                            MessageAttributeNames=["All"])
        return [(m["Body"], m["MessageAttributes"]["reason"]["StringValue"]) for m in response.get("Messages", [])]

    def item(self, key: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self.dynamodb.get_item(TableName=LEDGER_TABLE,
                                                             Key={"delivery": {"S": key}}).get("Item")
        return item


def sqs_envelope(*messages: tuple[str, str]) -> dict[str, Any]:
    return {"Records": [{"messageId": message_id, "receiptHandle": f"handle-{message_id}", "body": body,
                         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                         "eventSource": "aws:sqs", "awsRegion": REGION,
                         "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:cdp-email"}
                        for message_id, body in messages]}


def inject_ses_error(client: Any, code: str, limit: int, status: int = 400) -> None:
    """Answer the next ``limit`` SendTemplatedEmail calls with an SES error; they never reach moto."""
    left = [limit]

    def fail(params: Any, **_: Any) -> Any:
        if left[0] <= 0:
            return None
        left[0] -= 1
        http = type("Injected", (), {"status_code": status, "headers": {}, "content": b""})()
        return http, {"Error": {"Code": code, "Message": "injected for frank@example.com"},
                      "ResponseMetadata": {"HTTPStatusCode": status}}

    client.meta.events.register("before-call.ses.SendTemplatedEmail", fail)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    import boto3
    from moto import mock_aws

    from cdp.aws.dead_letters import SqsDeadLetters
    from cdp.aws.dynamo import DynamoProfileStore
    from cdp.aws.ses import DynamoEmailLedger, DynamoFrequencyCap, SesEmailSender

    for name, value in {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(name, value)
    stream = io.StringIO()
    log_handler = logging.StreamHandler(stream)
    log_handler.setFormatter(email_handler.logger.registered_formatter)
    logging.getLogger("cdp-email").addHandler(log_handler)
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        dynamodb, ses, sqs = session.client("dynamodb"), session.client("ses"), session.client("sqs")
        ses.verify_email_identity(EmailAddress="shop@example.com")
        for template in sorted(set(TEMPLATES.values())):
            ses.create_template(Template={"TemplateName": template, "SubjectPart": "Hello {{first_name}}",
                                          "TextPart": "Your {{segment_name}} email", "HtmlPart": "<p>Hi</p>"})
        for table, key in ((LEDGER_TABLE, "delivery"), (PROFILES_TABLE, "customer_id")):
            dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                  KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                                  AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}])
        dead_letter_url = sqs.create_queue(QueueName="cdp-email-dead-letters")["QueueUrl"]
        profiles = DynamoProfileStore(dynamodb, PROFILES_TABLE)
        for customer_id, traits in (("frank", {"email": "Frank@Example.com", "first_name": "Frank"}),
                                    ("grace", {"email": "grace@example.com", "unsubscribed": True})):
            profile = Profile(customer_id)
            profile.version, profile.traits = 1, traits
            profiles.save(profile, 0)
        clock = FixedClock(T)
        deps = email_handler.Dependencies(
            TEMPLATES, profiles, DynamoEmailLedger(dynamodb, LEDGER_TABLE), DynamoFrequencyCap(dynamodb, LEDGER_TABLE),
            SesEmailSender(ses, OPTIONS.source, sleep=lambda _: None),
            SqsDeadLetters(sqs, dead_letter_url, "email"), OPTIONS, clock)
        yield Aws(dynamodb, ses, sqs, dead_letter_url, deps, clock, stream)
    logging.getLogger("cdp-email").removeHandler(log_handler)


def assert_no_address_logged(aws: Aws) -> None:
    output = aws.log.getvalue()
    assert not ADDRESS.search(output), output


def test_moto_the_sample_envelope_sends_once(aws: Aws) -> None:
    envelope = json.loads(SAMPLE.read_text())
    assert aws.handle(envelope) == []
    [sent] = aws.sent()
    assert sent.template == "cart-reminder" and sent.source == OPTIONS.source
    assert sent.destinations == {"ToAddresses": ["frank@example.com"]}
    assert json.loads(sent.template_data) == {"segment_id": CART, "segment_name": "Cart abandoners",
                                              "first_name": "Frank", "customer_id": "frank"}
    ledger = aws.item(f"email\x1f{CART}\x1ffrank")
    assert ledger is not None and ledger["v"] == {"N": "2"} and ledger["kind"] == {"S": ENTERED}
    cap = aws.item("email-cap\x1ffrank")
    assert cap is not None and cap["sends"]["L"][0]["L"][1] == {"S": "5d1c0f8f3a4b4c6e9e0a7f2b1c3d4e5f"}
    aws.clock.advance(2 * DAY)
    assert aws.handle(envelope) == [] and len(aws.sent()) == 1  # redelivered: nothing more
    assert_no_address_logged(aws)


def test_moto_throttling_is_retried_with_the_claim_and_slot_released(aws: Aws) -> None:
    inject_ses_error(aws.ses, "Throttling", limit=3)  # every attempt of the first send
    envelope = sqs_envelope(message("m1", "frank", CART))
    assert aws.handle(envelope) == ["m1"] and aws.sent() == []
    ledger = aws.item(f"email\x1f{CART}\x1ffrank")
    assert ledger is not None and ledger["v"] == {"N": "0"}  # the released claim's placeholder
    cap = aws.item("email-cap\x1ffrank")
    assert cap is not None and cap["sends"] == {"L": []}
    assert aws.handle(envelope) == [] and len(aws.sent()) == 1
    assert aws.handle(envelope) == [] and len(aws.sent()) == 1
    assert aws.dead_letters() == []
    assert_no_address_logged(aws)


def test_moto_throttling_that_clears_within_the_send_is_not_retried(aws: Aws) -> None:
    inject_ses_error(aws.ses, "MaxSendingRateExceeded", limit=2)
    assert aws.handle(sqs_envelope(message("m1", "frank", CART))) == [] and len(aws.sent()) == 1


def test_moto_a_rejected_message_goes_to_the_dead_letters_without_the_address(aws: Aws) -> None:
    from cdp.aws.ses import SesEmailSender

    # moto rejects an unverified sender with "Email address not verified <the source>".
    deps = replace(aws.deps, sender=SesEmailSender(aws.ses, "Other <other@unverified.example>"))
    body = bus_event("frank", CART)
    assert aws.handle(sqs_envelope(("m1", body)), deps) == [] and aws.sent() == []
    assert aws.dead_letters() == [(body, "email refused: SES MessageRejected")]
    cap = aws.item("email-cap\x1ffrank")
    assert cap is not None and cap["sends"] == {"L": []}  # the slot was given back
    assert_no_address_logged(aws)
    assert "email refused: SES MessageRejected" in aws.log.getvalue()


def test_moto_a_paused_account_is_retried(aws: Aws) -> None:
    inject_ses_error(aws.ses, "AccountSendingPausedException", limit=1)
    assert aws.handle(sqs_envelope(message("m1", "frank", CART))) == ["m1"]
    assert aws.dead_letters() == [] and aws.sent() == []


def test_moto_the_cap_spans_segments_and_unsubscribed_customers_get_nothing(aws: Aws) -> None:
    assert aws.handle(sqs_envelope(message("m1", "frank", CART, version=2), message("m2", "grace", CART))) == []
    aws.clock.advance(HOUR)
    assert aws.handle(sqs_envelope(message("m3", "frank", OFFER, version=3))) == []
    assert [m.template for m in aws.sent()] == ["cart-reminder"]
    aws.clock.advance(DAY)
    assert aws.handle(sqs_envelope(message("m4", "frank", CART, kind=EXITED, version=4))) == []
    assert aws.handle(sqs_envelope(message("m5", "frank", CART, version=5))) == []
    assert [m.template for m in aws.sent()] == ["cart-reminder", "cart-reminder"]
    assert "frequency cap reached (1 per 24h)" in aws.log.getvalue()
    assert "unsubscribed (trait unsubscribed)" in aws.log.getvalue()
    assert_no_address_logged(aws)


def test_moto_the_cap_and_release_writes_are_conditional(aws: Aws) -> None:
    from cdp.aws.ses import DynamoEmailLedger, DynamoFrequencyCap

    cap = DynamoFrequencyCap(aws.dynamodb, LEDGER_TABLE)
    assert cap.read("ada") == CapRecord((), 0)
    assert cap.write("ada", [Send(T, "e1")], 0, T + DAY)
    assert not cap.write("ada", [Send(T, "e2")], 0, T + DAY)  # a concurrent first write lost
    assert cap.read("ada") == CapRecord((Send(T, "e1"),), 1)
    assert not reserve_slot(cap, "ada", "e3", T + HOUR, OPTIONS)
    assert reserve_slot(cap, "ada", "e1", T + HOUR, OPTIONS)  # its own slot
    ledger = DynamoEmailLedger(aws.dynamodb, LEDGER_TABLE)
    claim = LedgerEntry(2, ENTERED, "claim", {})
    assert ledger.record(NAMESPACE, (CART, "ada"), claim)
    assert ledger.record(NAMESPACE, (CART, "ada"), LedgerEntry(3, EXITED, "newer", {}))
    assert not ledger.release(NAMESPACE, (CART, "ada"), claim, None)  # newer stays
    assert ledger.entries(NAMESPACE, [(CART, "ada")]) == {(CART, "ada"): LedgerEntry(3, EXITED, "newer", {})}
