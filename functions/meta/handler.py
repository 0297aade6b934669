"""Meta Custom Audiences: segment events from this integration's queue, added to and removed from audiences."""

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

logger = Logger(service="cdp-meta")
metrics = Metrics(namespace="cdp", service="meta")


@dataclass(frozen=True)
class Dependencies:
    destination: Destination
    ledger: DeliveryLedger
    dead_letters: DeadLetters


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    import boto3

    from cdp.aws.dead_letters import SqsDeadLetters
    from cdp.aws.ledger import DynamoDeliveryLedger
    from cdp.aws.secrets import read_secret
    from cdp.config import ConfigError, DestinationConfig
    from cdp.http import UrllibTransport
    from cdp.integrations.meta import MetaAudiences

    config = DestinationConfig.from_env(os.environ)
    token = read_secret(boto3.client("secretsmanager"), config.secret_arn).get("access_token")
    if not isinstance(token, str) or not token:
        raise ConfigError("the Meta secret must hold {\"access_token\": \"...\"}")
    audiences = MetaAudiences(config.targets, token, UrllibTransport())
    audiences.api_version = config.api_version or audiences.api_version
    audiences.base_url = config.base_url or audiences.base_url
    return Dependencies(audiences, DynamoDeliveryLedger(boto3.client("dynamodb"), config.ledger_table),
                        SqsDeadLetters(boto3.client("sqs"), config.dead_letter_queue_url, "meta"))


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
