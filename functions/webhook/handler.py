"""Webhook list sync: segment events from this integration's queue, added to and removed from a provider's lists.

Configuration (validated at cold start): ``TARGETS`` (segment -> list id), ``OPTIONS`` (``url``,
``batch_size``, ``include_email``; see ``cdp.integrations.webhook``), ``SECRET_ARN`` (a secret holding
``{"signing_secret": "..."}``), ``LEDGER_TABLE``, ``DEAD_LETTER_QUEUE_URL``, ``PROFILES_TABLE`` (each
customer's consent is read from it at delivery, and with ``include_email`` the email trait) and
``CONSENT_POLICY``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.core.consent import ConsentPolicy
from cdp.integrations.http import seconds_left
from cdp.integrations.webhook import ProfileReader, WebhookLists, deliver_batch
from cdp.pipeline.fanout import CustomerPermissions, DeadLetters, DeliveryLedger, run_batch
from cdp.wiring import assemble

logger = Logger(service="cdp-webhook")
metrics = Metrics(namespace="cdp", service="webhook")


@dataclass(frozen=True)
class Dependencies:
    destination: WebhookLists
    ledger: DeliveryLedger
    dead_letters: DeadLetters
    profiles: ProfileReader | None  # only with include_email
    permissions: CustomerPermissions | None = None  # None: consent is not checked (tests, tools)
    policy: ConsentPolicy = field(default_factory=ConsentPolicy)


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built
    (a given ``destination`` reads no secret)."""
    import boto3

    from cdp.aws.dynamo import DynamoProfileStore
    from cdp.aws.ledger import delivery_stores
    from cdp.aws.permissions import DynamoCustomerPermissions
    from cdp.aws.secrets import read_secret
    from cdp.config import WebhookConfig
    from cdp.integrations.http import UrllibTransport
    from cdp.integrations.webhook import signing_secret

    config = WebhookConfig.from_env(os.environ)
    destination, table = config.destination, config.profiles_table

    def lists() -> WebhookLists:
        secret = read_secret(boto3.client("secretsmanager"), destination.secret_id("the signing secret"))
        return WebhookLists(destination.targets, config.options, signing_secret(secret), UrllibTransport())

    ledger, dead_letters = delivery_stores(destination, "webhook")
    return assemble(Dependencies, overrides, destination=lists, ledger=lambda: ledger,
                    dead_letters=lambda: dead_letters,
                    profiles=lambda: DynamoProfileStore(boto3.client("dynamodb"), table) if table else None,
                    permissions=lambda: DynamoCustomerPermissions(boto3.client("dynamodb"),
                                                                  destination.consent_table()),
                    policy=lambda: destination.consent or ConsentPolicy())


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    # Dead letters get the original bodies: deliver_batch's enriched ones hold emails.
    return run_batch(event, lambda messages: deliver_batch(messages, deps.destination, deps.ledger, deps.profiles,
                                                           deps.permissions, deps.policy),
                     deps.dead_letters, seconds_left(context), metrics, logger)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
