"""Meta Custom Audiences: segment events from this integration's queue, added to and removed from audiences."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.integrations.http import seconds_left
from cdp.pipeline.fanout import BatchDelivery, run_batch
from cdp.wiring import assemble

logger = Logger(service="cdp-meta")
metrics = Metrics(namespace="cdp", service="meta")
Dependencies = BatchDelivery


@cache
def dependencies() -> BatchDelivery:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> BatchDelivery:
    """The dependencies from the environment; a part given by name is used instead and never built
    (a given ``destination`` reads no secret)."""
    import boto3

    from cdp.aws.ledger import delivery_stores
    from cdp.aws.permissions import DynamoCustomerPermissions
    from cdp.aws.secrets import read_secret
    from cdp.config import ConfigError, DestinationConfig
    from cdp.core.consent import ConsentPolicy
    from cdp.integrations.http import UrllibTransport
    from cdp.integrations.meta import MetaAudiences

    config = DestinationConfig.from_env(os.environ)

    def audiences() -> MetaAudiences:
        secret = read_secret(boto3.client("secretsmanager"), config.secret_id("the Meta access token"))
        token = secret.get("access_token")
        if not isinstance(token, str) or not token:
            raise ConfigError("the Meta secret must hold {\"access_token\": \"...\"}")
        built = MetaAudiences(config.targets, token, UrllibTransport())
        built.api_version = config.api_version or built.api_version
        built.base_url = config.base_url or built.base_url
        return built

    ledger, dead_letters = delivery_stores(config, "meta")
    return assemble(BatchDelivery, overrides, destination=audiences, ledger=lambda: ledger,
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
