"""Ingest: Kinesis batches of Segment-spec messages folded into profiles, with a partial-batch response.

Metrics per batch: the totals, ``EventsRejected`` per field that quarantined a record, and
``EventsWithSpecGaps`` per spec field that applied events lacked (``properties.order_id``, say). Identity:
``Merges`` (ids merged into a customer), ``MergesRefused`` per ``reason`` (``known``: both customers known by
user id, ``limit``: the customer holds the most merged ids, ``deleted``: an id of a deleted customer),
``EventsRedirected`` (events for a merged id applied to its canonical customer), ``MergedProfilesAbsorbed``,
``EmailsIndexed`` and ``IdentityMapReads``.
"""

from __future__ import annotations

import base64
import binascii
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.config import IngestConfig
from cdp.core.catalogue import load_catalogue
from cdp.core.clock import Clock, clock_from_env
from cdp.core.engine import Engine
from cdp.envelopes import MalformedEnvelope, kinesis_records
from cdp.pipeline.identity import Identity
from cdp.pipeline.ingest import BatchResult, StreamRecord, ingest_batch
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.pipeline.parallel import request_pool
from cdp.ports import ProfileStore, Quarantine
from cdp.wiring import assemble

NAMESPACE = "cdp"
logger = Logger(service="cdp-ingest")
metrics = Metrics(namespace=NAMESPACE, service="ingest")


@dataclass(frozen=True)
class Dependencies:
    engine: Engine
    store: ProfileStore
    quarantine: Quarantine
    clock: Clock
    pool: Executor | None = None  # the profile writes of a batch in flight at once; None: one after another
    identity: Identity | None = None  # the id map and merge rules; None: every id is its own customer
    live: LiveCatalogue | None = None  # refreshed at each invocation; None: the engine's catalogue stays


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built
    (the local stack gives its shared clock: ``build(clock=...)``)."""
    import boto3
    from botocore.config import Config

    from cdp.aws.definitions import live_part
    from cdp.aws.dynamo import DynamoProfileStore
    from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
    from cdp.aws.quarantine import S3Quarantine

    config = IngestConfig.from_env(os.environ)
    live = live_part(overrides, lambda: load_catalogue(config.catalogue_path))
    # One connection per write in flight, so the pool never waits for a connection. The adapters build
    # every request themselves, so botocore's parameter check would only repeat work on the hot path.
    dynamodb = Config(max_pool_connections=max(10, config.write_concurrency), parameter_validation=False)
    return assemble(
        Dependencies, overrides,
        engine=lambda: Engine(live().catalogue, live().stats, max_future_skew=config.max_future_skew,
                              consent_policy=config.consent_policy, retention_days=config.retention_days),
        store=lambda: DynamoProfileStore(boto3.client("dynamodb", config=dynamodb), config.profiles_table),
        quarantine=lambda: S3Quarantine(boto3.client("s3"), config.quarantine_bucket),
        clock=lambda: clock_from_env(config.clock, config.max_future_skew),
        pool=lambda: request_pool(config.write_concurrency, "cdp-ingest-writes"),
        identity=lambda: Identity(
            DynamoIdentityMap(bind_identity_map(config.identity_table, os.environ.get("AWS_REGION"))),
            merge_known=config.merge_known, after_deletion=config.after_deletion),
        live=live,
    )


class RecordNotApplied(Exception):
    """Raised for a record that must be retried; Powertools turns it into a batch item failure."""


def stream_record(raw: dict[str, Any]) -> StreamRecord:
    kinesis = raw["kinesis"]  # there: checked with the envelope
    source = str(raw.get("eventSourceARN") or "kinesis").rsplit("/", 1)[-1]
    received = str(kinesis.get("data", ""))
    try:
        data, problem = base64.b64decode(received, validate=True), ""
    except (binascii.Error, ValueError):
        data, problem = received.encode(), "is not valid base64"
    shard = str(raw.get("eventID", "")).split(":", 1)[0]  # eventID is "<shard id>:<sequence number>"
    return StreamRecord(str(kinesis.get("sequenceNumber", "")), str(kinesis.get("partitionKey", "")), data,
                        f"kinesis:{source}", problem, shard)


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    try:
        raw_records = kinesis_records(event)
    except MalformedEnvelope as error:
        # No record in it can be reported on its own: the invocation fails, saying why (never what it held).
        logger.error("malformed Kinesis envelope; the invocation fails", extra={"reason": str(error)})
        raise
    if not raw_records:
        return {"batchItemFailures": []}
    newer = None
    if deps.live is not None:
        deps.live.update(deps.engine)  # a head read at most every CATALOGUE_CHECK_SECONDS, not one per event
        newer = partial(deps.live.update, deps.engine, force=True)  # a profile a newer catalogue evaluated

    result = ingest_batch([stream_record(r) for r in raw_records], deps.engine, deps.store,
                          deps.quarantine, deps.clock, deps.pool, identity=deps.identity, newer_catalogue=newer)
    record_metrics(result)
    failed = result.failure_reasons

    def check(record: KinesisStreamRecord) -> None:
        reason = failed.get(record.kinesis.sequence_number)
        if reason is not None:
            raise RecordNotApplied(reason)

    processor = BatchProcessor(event_type=EventType.KinesisDataStreams, raise_on_entire_batch_failure=False)
    response = process_partial_response(event=event, record_handler=check, processor=processor, context=context)
    return dict(response)


def record_metrics(result: BatchResult) -> None:
    identity = result.identity
    for name, value in (("EventsApplied", result.applied), ("EventsDuplicate", result.duplicates),
                        ("EventsQuarantined", sum(result.quarantined.values())),
                        ("EventsBeyondRetention", result.beyond_retention), ("ProfileConflicts", result.conflicts),
                        ("ProfilesWritten", result.customers_written), ("RecordsRetried", len(result.failed)),
                        ("Merges", identity.merges), ("EventsRedirected", identity.forwarded),
                        ("MergedProfilesAbsorbed", identity.absorbed), ("EmailsIndexed", identity.emails_indexed),
                        ("IdentityMapReads", identity.map_reads),
                        ("EventsOfDeletedCustomers", result.deleted_customers)):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    if result.lags:
        metrics.add_metric(name="LagSeconds", unit=MetricUnit.Seconds, value=max(result.lags))
    # By field name or refusal reason only: both are fixed words (never a value), so the dimensions stay few and
    # hold no data.
    for name, dimension, tally in (("EventsRejected", "field", result.quarantined),
                                   ("EventsWithSpecGaps", "field", result.spec_gaps),
                                   ("MergesRefused", "reason", identity.refused)):
        for word, count in tally.items():
            if is_metrics_disabled():  # as Metrics does; single_metric itself would print anyway
                continue
            with single_metric(name=name, unit=MetricUnit.Count, value=count, namespace=NAMESPACE,
                               default_dimensions={"service": "ingest", dimension: word}):
                pass
    if identity.merges or identity.refused or identity.absorbed:
        # Counts only: which ids were merged is in the profiles (their merged ids), never in the logs.
        logger.info("identity merges", extra={"merges": identity.merges, "refused": dict(identity.refused),
                                              "absorbed": identity.absorbed, "redirected": identity.forwarded})
    if result.failed:
        # Reasons only: no payloads or identifiers, so no personal data reaches the logs.
        logger.warning("records to retry", extra={"count": len(result.failed),
                                                   "reasons": sorted(set(result.failure_reasons.values()))})


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
