"""Email (Amazon SES): a templated email when a customer enters a segment, from this integration's queue.

The rules (templates, overlap, consent, frequency cap, at most once) are in ``cdp.integrations.email``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.core.clock import Clock, WallClock
from cdp.core.consent import ConsentPolicy
from cdp.integrations.email import (
    UNKNOWN_OUTCOME,
    EmailLedger,
    EmailOptions,
    EmailSender,
    FrequencyCapStore,
    ProfileReader,
    deliver_emails,
)
from cdp.pipeline.fanout import DeadLetters, DeliveryResult, batch_response, queue_messages, settle
from cdp.wiring import assemble

logger = Logger(service="cdp-email")
metrics = Metrics(namespace="cdp", service="email")

SES_CONNECT_TIMEOUT = 5
SES_READ_TIMEOUT = 15


@dataclass(frozen=True)
class Dependencies:
    templates: Mapping[str, str]  # segment id -> SES template name
    profiles: ProfileReader
    ledger: EmailLedger
    cap: FrequencyCapStore
    sender: EmailSender
    dead_letters: DeadLetters
    options: EmailOptions
    clock: Clock = field(default_factory=WallClock)
    policy: ConsentPolicy = field(default_factory=ConsentPolicy)  # CONSENT_POLICY: the use "email"


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import; the configuration is validated first."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment (validated first: :class:`~cdp.config.EmailConfig`); a part given
    by name is used instead and never built."""
    from cdp.config import EmailConfig

    config = EmailConfig.from_env(os.environ)
    destination, options = config.destination, config.options

    import boto3
    from botocore.config import Config

    from cdp.aws.dead_letters import SqsDeadLetters
    from cdp.aws.dynamo import DynamoProfileStore
    from cdp.aws.pseudonyms import pseudonyms_from_env
    from cdp.aws.ses import DynamoEmailLedger, DynamoFrequencyCap, SesEmailSender

    dynamodb = boto3.client("dynamodb")
    pseudonyms = pseudonyms_from_env(os.environ)  # the ledger's and cap's customer ids: read at cold start
    # No botocore retries for SES: a resent request whose first answer was lost could send twice.
    ses = boto3.client("ses", config=Config(retries={"mode": "standard", "total_max_attempts": 1},
                                            connect_timeout=SES_CONNECT_TIMEOUT, read_timeout=SES_READ_TIMEOUT))
    return assemble(
        Dependencies, overrides,
        templates=lambda: dict(destination.targets),
        profiles=lambda: DynamoProfileStore(dynamodb, config.profiles_table),
        ledger=lambda: DynamoEmailLedger(dynamodb, destination.ledger_table, destination.ledger_exit_days, pseudonyms),
        cap=lambda: DynamoFrequencyCap(dynamodb, destination.ledger_table, pseudonyms),
        sender=lambda: SesEmailSender(ses, options.source, options.configuration_set),
        dead_letters=lambda: SqsDeadLetters(boto3.client("sqs"), destination.dead_letter_queue_url, "email"),
        options=lambda: options,
        clock=WallClock,  # the frequency cap counts emails as their readers get them: in wall time
        policy=lambda: destination.consent or ConsentPolicy(),
    )


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    messages = queue_messages(event)
    result = deliver_emails(messages, deps.templates, deps.profiles, deps.ledger, deps.cap, deps.sender,
                            deps.clock.now(), deps.options, deps.policy)
    retry = settle(messages, result, deps.dead_letters)
    record_metrics(result, len(retry))
    return batch_response(retry)


def record_metrics(result: DeliveryResult, retried: int) -> None:
    lost = sum(1 for _, reason in result.skipped if reason.startswith((UNKNOWN_OUTCOME, "not sent and not retried")))
    for name, value in (("Sent", len(result.delivered)), ("Skipped", len(result.skipped)),
                        ("Refused", len(result.refused)), ("Retried", retried), ("NotRetried", lost),
                        ("NoProfile", result.no_profile), ("Forgotten", result.forgotten),
                        ("BackfillSuppressed", result.suppressed)):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    # Reasons and segment ids only: never an email address.
    if result.skipped:
        logger.info("emails not sent", extra={"skipped": dict(Counter(reason for _, reason in result.skipped))})
    if result.refused or result.retry or lost:
        logger.warning("deliveries not made", extra={"refused": sorted(set(result.refused.values())),
                                                     "retried": sorted(set(result.retry.values())),
                                                     "not_retried": lost})


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
