"""Privacy: deletion jobs from the privacy queue, each pass run by :func:`cdp.pipeline.privacy.run_job`.

Configuration (validated at cold start, :class:`cdp.config.PrivacyConfig`): ``PROFILES_TABLE``, ``MEMBERS_TABLE``,
``IDENTITY_TABLE``, ``REQUESTS_TABLE``, ``QUARANTINE_BUCKET``, ``PRIVACY_QUEUE_URL``, ``LEDGER_TABLE`` (empty
without integrations), ``MEMBER_SHARDS``, ``VERIFY_DELAY_SECONDS`` (default 60), ``TOMBSTONE_RETENTION_DAYS``.
A job that fails is retried (partial batch response) and, after the queue's receives, kept on its dead-letter
queue. Metrics: ``DeletionPasses``, ``DeletionsDone``, ``DeletionsFailed``; logs carry request ids only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import Clock, WallClock
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.pipeline.privacy import DONE, FAILED, Erasure, InvalidJob, run_job
from cdp.wiring import assemble

logger = Logger(service="cdp-privacy")
metrics = Metrics(namespace="cdp", service="privacy")


@dataclass(frozen=True)
class Dependencies:
    erasure: Erasure
    clock: Clock
    live: LiveCatalogue | None = None  # adds the catalogue's segments to the erasure's (members rows); None: none


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built."""
    import boto3

    from cdp.aws.definitions import live_part
    from cdp.aws.erasure import DynamoCustomerStores, SqsPrivacyJobs
    from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
    from cdp.aws.pseudonyms import pseudonyms_from_env
    from cdp.aws.requests import DynamoPrivacyRequests, bind_requests
    from cdp.config import PrivacyConfig

    config = PrivacyConfig.from_env(os.environ)
    region = os.environ.get("AWS_REGION")
    folder = cache(lambda: load_catalogue(config.catalogue_path))
    live = live_part(overrides, folder)

    def erasure() -> Erasure:
        stores = DynamoCustomerStores(boto3.client("dynamodb"), boto3.client("s3"),
                                      profiles_table=config.profiles_table, members_table=config.members_table,
                                      ledger_table=config.ledger_table, quarantine_bucket=config.quarantine_bucket,
                                      pseudonyms=pseudonyms_from_env(os.environ))
        return Erasure(DynamoPrivacyRequests(bind_requests(config.requests_table, region)),
                       SqsPrivacyJobs(boto3.client("sqs"), config.queue_url),
                       DynamoIdentityMap(bind_identity_map(config.identity_table, region)), stores,
                       sorted(folder().all_segments), config.member_shards,
                       config.tombstone_days, config.verify_delay_seconds)

    return assemble(Dependencies, overrides, erasure=erasure, clock=WallClock, live=live)


def current_erasure(deps: Dependencies) -> Erasure:
    """The erasure over every segment of the catalogue in hand (refreshed) as well as the deployed folder's, and
    every segment the store ever held: a segment made at runtime has members rows too, and a deleted one's rows
    outlive it."""
    if deps.live is None:
        return deps.erasure
    deps.live.refresh()
    head = deps.live.state.head
    segment_ids = sorted({*deps.erasure.segment_ids, *deps.live.catalogue.all_segments, *(head.ever if head else ())})
    return replace(deps.erasure, segment_ids=segment_ids)


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    erasure = current_erasure(deps)

    def run(record: SQSRecord) -> None:
        try:
            message = json.loads(record.body)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            logger.error("a privacy job message that is not a JSON object is dropped")
            return
        try:
            status = run_job(erasure, message, deps.clock.now())
        except InvalidJob as error:
            logger.error("an invalid privacy job message is dropped", extra={"reason": str(error)})
            return
        metrics.add_metric(name="DeletionPasses", unit=MetricUnit.Count, value=1)
        if status in (DONE, FAILED):
            metrics.add_metric(name="DeletionsDone" if status == DONE else "DeletionsFailed", unit=MetricUnit.Count,
                               value=1)
            logger.info("deletion finished", extra={"request_id": message.get("request_id"), "status": status})

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event=event, record_handler=run, processor=processor, context=context))


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
