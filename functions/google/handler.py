"""Google Ads Customer Match: segment events from this integration's queue, added to and removed from user lists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.fanout import (
    DeadLetters,
    DeliveryLedger,
    DeliveryResult,
    Destination,
    batch_response,
    deliver,
    queue_messages,
    report,
    settle,
)
from cdp.http import seconds_left, time_limit

logger = Logger(service="cdp-google")
metrics = Metrics(namespace="cdp", service="google")


@dataclass(frozen=True)
class Dependencies:
    destination: Destination
    ledger: DeliveryLedger
    dead_letters: DeadLetters


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import; a ConfigError says what to fix."""
    import boto3

    from cdp.aws.dead_letters import SqsDeadLetters
    from cdp.aws.ledger import DynamoDeliveryLedger
    from cdp.aws.secrets import read_secret
    from cdp.config import ConfigError, DestinationConfig
    from cdp.http import UrllibTransport
    from cdp.integrations.google import GoogleCustomerMatch

    config = DestinationConfig.from_env(os.environ)
    if not config.secret_arn:
        raise ConfigError("environment variable SECRET_ARN is required (the Google Ads credentials)")
    secret = read_secret(boto3.client("secretsmanager"), config.secret_arn)
    user_lists = GoogleCustomerMatch.from_settings(config.targets, config.options, secret, UrllibTransport(),
                                                   api_version=config.api_version, base_url=config.base_url)
    return Dependencies(user_lists, DynamoDeliveryLedger(boto3.client("dynamodb"), config.ledger_table),
                        SqsDeadLetters(boto3.client("sqs"), config.dead_letter_queue_url, "google"))


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    messages = queue_messages(event)
    with time_limit(seconds_left(context)):  # give rows back rather than time out
        result = deliver(messages, deps.destination, deps.ledger)
    retry = settle(messages, result, deps.dead_letters)
    record_metrics(result, len(retry))
    return batch_response(retry)


def record_metrics(result: DeliveryResult, retried: int) -> None:
    report(result, retried, lambda name, value: metrics.add_metric(name=name, unit=MetricUnit.Count, value=value),
           lambda message, extra: logger.warning(message, extra=extra))


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
