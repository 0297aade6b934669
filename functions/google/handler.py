"""Google Ads Customer Match: segment events from this integration's queue, added to and removed from user lists."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.integrations.http import seconds_left
from cdp.pipeline.fanout import BatchDelivery, run_batch
from cdp.wiring import assemble

logger = Logger(service="cdp-google")
metrics = Metrics(namespace="cdp", service="google")
Dependencies = BatchDelivery


@cache
def dependencies() -> BatchDelivery:
    """Built on the first invocation (cold start), not at import; a ConfigError says what to fix."""
    return build()


def build(**overrides: Any) -> BatchDelivery:
    """The dependencies from the environment; a part given by name is used instead and never built
    (a given ``destination`` reads no secret)."""
    import boto3

    from cdp.aws.ledger import delivery_stores
    from cdp.aws.permissions import DynamoCustomerPermissions
    from cdp.aws.secrets import read_secret
    from cdp.config import DestinationConfig
    from cdp.core.consent import ConsentPolicy
    from cdp.integrations.google import GoogleCustomerMatch
    from cdp.integrations.http import UrllibTransport

    config = DestinationConfig.from_env(os.environ)

    def user_lists() -> GoogleCustomerMatch:
        secret = read_secret(boto3.client("secretsmanager"), config.secret_id("the Google Ads credentials"))
        return GoogleCustomerMatch.from_settings(config.targets, config.options, secret, UrllibTransport(),
                                                 api_version=config.api_version, base_url=config.base_url,
                                                 consent_default=(config.consent or ConsentPolicy()).default)

    ledger, dead_letters = delivery_stores(config, "google")
    return assemble(BatchDelivery, overrides, destination=user_lists, ledger=lambda: ledger,
                    dead_letters=lambda: dead_letters,
                    # consent is checked per customer at delivery, from the profiles table
                    permissions=lambda: DynamoCustomerPermissions(boto3.client("dynamodb"), config.consent_table()),
                    policy=lambda: config.consent or ConsentPolicy())


def handle(event: dict[str, Any], context: LambdaContext | None, deps: BatchDelivery) -> dict[str, Any]:
    return run_batch(event, deps.deliver, deps.dead_letters, seconds_left(context), metrics, logger)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
