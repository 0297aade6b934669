"""Changes: the profile table's stream turned into members index updates and Segment Entered / Exited events."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.config import ChangesConfig
from cdp.core.catalogue import Catalogue, load_catalogue
from cdp.envelopes import MalformedEnvelope, table_stream_records
from cdp.pipeline.changes import ChangesResult, MembersIndex, TableChange, publish_changes
from cdp.pipeline.history import HistoryLog
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.ports import Publisher
from cdp.wiring import assemble

NAMESPACE = "cdp"
logger = Logger(service="cdp-changes")
metrics = Metrics(namespace=NAMESPACE, service="changes")


@dataclass(frozen=True)
class Dependencies:
    catalogue: Catalogue
    index: MembersIndex
    publisher: Publisher
    bus_name: str
    concurrency: int = 16  # requests in flight at once: membership writes, size updates, PutEvents calls
    published_segments: frozenset[str] | None = None  # the segments whose transitions go on the bus; None: all
    live: LiveCatalogue | None = None  # refreshed at each invocation, replacing ``catalogue``; None: it stays
    history: HistoryLog | None = None  # the segment history's daily entries and exits; None: none kept


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built."""
    import boto3

    from cdp.aws.definitions import live_part
    from cdp.aws.eventbridge import EventBridgePublisher
    from cdp.aws.history import segment_history
    from cdp.aws.members import DynamoMembersIndex
    from cdp.aws.pseudonyms import pseudonyms_from_env

    config = ChangesConfig.from_env(os.environ)
    live = live_part(overrides, lambda: load_catalogue(config.catalogue_path))
    pseudonyms = pseudonyms_from_env(os.environ)  # the members index's ids: one secret read, at cold start
    return assemble(
        Dependencies, overrides,
        catalogue=lambda: live().catalogue,
        index=lambda: DynamoMembersIndex(boto3.client("dynamodb"), config.members_table, config.member_shards,
                                         pseudonyms=pseudonyms),
        publisher=lambda: EventBridgePublisher(boto3.client("events")),
        bus_name=lambda: config.event_bus,
        concurrency=lambda: config.concurrency,
        published_segments=lambda: config.published_segments,
        live=live,
        history=lambda: segment_history(os.environ),  # HISTORY_TABLE; unset: no history
    )


def report_history(result: ChangesResult) -> None:
    """History updates that failed are counted, not retried: the history is monitoring, best effort, and a
    retried batch would not count its (already written) memberships again anyway."""
    if not result.history_lost:
        return
    lost = sum(count.entered + count.exited for count in result.history_lost.values())
    metrics.add_metric(name="HistoryUpdatesLost", unit=MetricUnit.Count, value=lost)
    logger.warning("segment history updates failed; those days' entries and exits are short",
                   extra={"segments": sorted({segment_id for segment_id, _ in result.history_lost}),
                          "changes": lost})


class ChangeNotPublished(Exception):
    """Raised for a stream record that must be retried; Powertools turns it into a batch item failure."""


def table_change(raw: dict[str, Any]) -> TableChange:
    from cdp.aws.dynamo import deserialise_stream_image

    body = raw["dynamodb"]  # there, with its SequenceNumber: checked with the envelope
    sequence = str(body["SequenceNumber"])
    images: dict[str, Any] = {}
    for name in ("OldImage", "NewImage"):
        image = body.get(name)
        try:
            if image is not None and not isinstance(image, dict):
                raise TypeError(name)
            images[name] = deserialise_stream_image(image) if image else None
        except (TypeError, ValueError, AttributeError, ArithmeticError) as error:
            # A foreign or hand-edited item: this record fails alone; the reason names no value.
            return TableChange(sequence, None, None,
                               f"{name} is not a DynamoDB item image ({type(error).__name__})")
    return TableChange(sequence, images["OldImage"], images["NewImage"])


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    try:
        raw_records = table_stream_records(event)
    except MalformedEnvelope as error:
        # No record in it can be reported on its own: the invocation fails, saying why (never what it held).
        logger.error("malformed DynamoDB stream envelope; the invocation fails", extra={"reason": str(error)})
        raise
    if not raw_records:
        return {"batchItemFailures": []}
    changes = [table_change(r) for r in raw_records]
    catalogue = deps.catalogue
    if deps.live is not None:
        deps.live.refresh()  # a head read at most every CATALOGUE_CHECK_SECONDS
        catalogue = deps.live.catalogue
    result = publish_changes(changes, catalogue, deps.index, deps.publisher, deps.bus_name,
                             concurrency=deps.concurrency, published_segments=deps.published_segments,
                             history=deps.history)
    tally = Counter((change.segment_id, change.kind) for change in result.applied)
    for (segment_id, kind), count in tally.items():
        if is_metrics_disabled():  # as Metrics does; single_metric itself would print anyway
            continue
        with single_metric(name=f"Segment{kind.capitalize()}", unit=MetricUnit.Count, value=count,
                           namespace=NAMESPACE, default_dimensions={"service": "changes", "segment": segment_id}):
            pass
    metrics.add_metric(name="TransitionsPublished", unit=MetricUnit.Count, value=len(result.published))
    metrics.add_metric(name="RecordsRetried", unit=MetricUnit.Count, value=len(result.failed))
    if result.sizes_lost:
        # The memberships are written and a retry would not count them again: the sizes need a recount.
        lost = sum(abs(delta) for delta in result.sizes_lost.values())
        metrics.add_metric(name="MemberSizeUpdatesLost", unit=MetricUnit.Count, value=lost)
        logger.error("segment size updates failed after resending; those sizes are off until recounted",
                     extra={"segments": sorted({counter.split("#")[0] for counter in result.sizes_lost}),
                            "members": lost})
    report_history(result)
    if result.failed:
        logger.warning("stream records to retry", extra={"count": len(result.failed),
                                                          "reasons": sorted(set(result.failure_reasons.values()))})

    def check(record: DynamoDBRecord) -> None:
        reason = result.failure_reasons.get(str(record.dynamodb.sequence_number if record.dynamodb else ""))
        if reason is not None:
            raise ChangeNotPublished(reason)

    processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
    response = process_partial_response(event=event, record_handler=check, processor=processor, context=context)
    return dict(response)


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
