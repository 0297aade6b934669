"""Webhook list sync: segment events from this integration's queue, added to and removed from a provider's lists.

Configuration (validated at cold start): ``TARGETS`` (segment -> list id), ``OPTIONS`` (``url``,
``batch_size``, ``include_email``; see ``cdp.integrations.webhook``), ``SECRET_ARN`` (a secret holding
``{"signing_secret": "..."}``), ``LEDGER_TABLE``, ``DEAD_LETTER_QUEUE_URL``, and ``PROFILES_TABLE``
when ``include_email`` is on (the email trait is read from the profiles).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.integrations.http import seconds_left
from cdp.integrations.webhook import ProfileReader, WebhookLists, deliver_batch
from cdp.pipeline.fanout import DeadLetters, DeliveryLedger, run_batch
from cdp.wiring import assemble

logger = Logger(service="cdp-webhook")
metrics = Metrics(namespace="cdp", service="webhook")

MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class Dependencies:
    destination: WebhookLists
    ledger: DeliveryLedger
    dead_letters: DeadLetters
    profiles: ProfileReader | None  # only with include_email


def signing_secret(secret: Mapping[str, Any]) -> str:
    """The secret's ``signing_secret``, long enough to be one."""
    from cdp.config import ConfigError

    value = secret.get("signing_secret")
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"the webhook secret must hold {{\"signing_secret\": \"...\"}} of at least "
                          f"{MIN_SECRET_LENGTH} characters")
    return value


def profiles_table(env: Mapping[str, str], include_email: bool) -> str | None:
    """PROFILES_TABLE: required only when the email is sent."""
    from cdp.config import ConfigError

    table = env.get("PROFILES_TABLE", "").strip()
    if include_email and not table:
        raise ConfigError("environment variable PROFILES_TABLE is required when OPTIONS.include_email is true")
    return table if include_email else None


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
    from cdp.aws.secrets import read_secret
    from cdp.config import DestinationConfig
    from cdp.integrations.http import UrllibTransport
    from cdp.integrations.webhook import WebhookOptions

    config = DestinationConfig.from_env(os.environ)
    options = WebhookOptions.parse(config.options)
    table = profiles_table(os.environ, options.include_email)

    def lists() -> WebhookLists:
        secret = signing_secret(read_secret(boto3.client("secretsmanager"), config.secret_id("the signing secret")))
        return WebhookLists(config.targets, options, secret, UrllibTransport())

    ledger, dead_letters = delivery_stores(config, "webhook")
    return assemble(Dependencies, overrides, destination=lists, ledger=lambda: ledger,
                    dead_letters=lambda: dead_letters,
                    profiles=lambda: DynamoProfileStore(boto3.client("dynamodb"), table) if table else None)


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    # Dead letters get the original bodies: deliver_batch's enriched ones hold emails.
    return run_batch(event, lambda messages: deliver_batch(messages, deps.destination, deps.ledger, deps.profiles),
                     deps.dead_letters, seconds_left(context), metrics, logger)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
