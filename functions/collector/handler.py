"""Collector: Segment's HTTP Tracking API (``POST /v1/batch``, ``/v1/track`` ...) onto the events stream.

Behind an API Gateway HTTP API (payload format 2.0). Thin: the request is read into an
:class:`~cdp.collector.request.HttpRequest`, :func:`cdp.pipeline.collect.collect` answers it, and the answer
goes back with CORS headers for the configured origins.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.collector.keys import KeyCache
from cdp.collector.request import HttpRequest, Refused
from cdp.config import CollectorConfig
from cdp.pipeline.collect import Answer, Collector, CollectResult, collect
from cdp.wiring import assemble

NAMESPACE = "cdp"
logger = Logger(service="cdp-collector")
metrics = Metrics(namespace=NAMESPACE, service="collector")
PREFLIGHT_HEADERS = {"Access-Control-Allow-Methods": "POST, OPTIONS",
                     "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
                     "Access-Control-Max-Age": "86400"}


@dataclass(frozen=True)
class Dependencies:
    collector: Collector
    origins: tuple[str, ...]


@cache
def dependencies() -> Dependencies:
    """Built on the first request (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built."""
    import boto3
    from botocore.config import Config

    from cdp.aws.kinesis import KinesisEventStream
    from cdp.aws.quarantine import S3Quarantine
    from cdp.aws.write_keys import DynamoKeyStore, bind_write_keys

    config = CollectorConfig.from_env(os.environ)

    def collector() -> Collector:
        # botocore's own retries stay short: the collector resends refused records itself, within its budget.
        kinesis = boto3.client("kinesis", config=Config(retries={"mode": "standard", "max_attempts": 2},
                                                        parameter_validation=False))
        keys = DynamoKeyStore(bind_write_keys(config.sources_table, os.environ.get("AWS_REGION")))
        return Collector(KeyCache(keys, ttl=config.key_cache_seconds), KinesisEventStream(kinesis, config.stream_name),
                         S3Quarantine(boto3.client("s3"), config.quarantine_bucket),
                         budget_seconds=config.budget_seconds)

    return assemble(Dependencies, overrides, collector=collector, origins=lambda: config.origins)


def http_request(event: dict[str, Any]) -> HttpRequest:
    """An HTTP API (payload 2.0) event as the collector reads it; a body API Gateway base64-encoded is decoded."""
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, "body", "is not valid base64 as API Gateway delivered it") from None
    else:
        data = body.encode("utf-8")
    return HttpRequest(str(http.get("method", "")).upper(), str(event.get("rawPath") or http.get("path") or ""),
                       headers, data, http.get("sourceIp"))


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    if not origin or not allowed:
        return {}
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin in allowed else {}


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    request_id = str((event.get("requestContext") or {}).get("requestId") or f"local-{time.time_ns()}")
    try:
        request = http_request(event)
    except Refused as refused:
        return response(Answer(refused.status, refused.body()), {})
    cors = cors_headers(request.headers.get("origin"), deps.origins)
    if request.method == "OPTIONS":
        return response(Answer(204, {}), {**cors, **PREFLIGHT_HEADERS} if cors else {})
    answer, result = collect(request, deps.collector, request_id)
    record_metrics(answer, result)
    return response(answer, cors)


def response(answer: Answer, cors: dict[str, str]) -> dict[str, Any]:
    headers = {**answer.headers, **cors}
    if answer.status == 204:
        return {"statusCode": 204, "headers": headers, "body": ""}
    return {"statusCode": answer.status, "headers": {"Content-Type": "application/json", **headers},
            "body": json.dumps(answer.body, separators=(",", ":"))}


def record_metrics(answer: Answer, result: CollectResult) -> None:
    metrics.add_metric(name="MessagesAccepted", unit=MetricUnit.Count, value=result.accepted)
    metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=sum(result.rejected.values()))
    if result.stream_retries:
        metrics.add_metric(name="StreamRecordsRetried", unit=MetricUnit.Count, value=result.stream_retries)
    if answer.status != 200:
        metrics.add_metric(name=f"Requests{answer.status}", unit=MetricUnit.Count, value=1)
        # The status and the field only: never the key or the body.
        log = logger.warning if answer.status >= 500 or answer.status == 429 else logger.info
        field_name = result.refused or answer.body.get("field")
        log("request not accepted", extra={"status": answer.status, "field": field_name})
    if is_metrics_disabled():
        return
    for field_name, count in result.rejected.items():
        with single_metric(name="MessagesRejected", unit=MetricUnit.Count, value=count, namespace=NAMESPACE,
                           default_dimensions={"service": "collector", "field": field_name}):
            pass


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
