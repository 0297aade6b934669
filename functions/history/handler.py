"""History: once a day (00:05 UTC), each enabled segment's size into the segment history, and as metrics.

Metrics (namespace cdp, service history): ``SegmentSize`` and ``SegmentSizeChangePercent`` (against the day
before) per segment, and, when SEGMENT_SWING_PERCENT is set, ``SegmentsSwinging``: how many segments moved by
more than that in a day (the stack's optional alarm watches it). A size that could not be recorded fails the
run after every other segment is done, so the schedule retries it (setting a size again is harmless).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.config import HistoryConfig
from cdp.core.catalogue import load_catalogue
from cdp.core.clock import Clock, WallClock
from cdp.pipeline.history import SegmentSizes, SizeHistory, Snapshot, take_snapshot
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.wiring import assemble

NAMESPACE = "cdp"
SERVICE = "history"
logger = Logger(service="cdp-history")
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


@dataclass(frozen=True)
class Dependencies:
    live: LiveCatalogue
    members: SegmentSizes
    history: SizeHistory
    clock: Clock
    swing_percent: float | None = None  # SEGMENT_SWING_PERCENT; None: SegmentsSwinging is not published


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built."""
    import boto3

    from cdp.aws.definitions import live_part
    from cdp.aws.history import DynamoSegmentHistory
    from cdp.aws.members import DynamoMembersIndex

    config = HistoryConfig.from_env(os.environ)
    client = boto3.client("dynamodb")
    return assemble(
        Dependencies, overrides,
        live=live_part(overrides, lambda: load_catalogue(config.catalogue_path)),
        members=lambda: DynamoMembersIndex(client, config.members_table, config.member_shards),
        history=lambda: DynamoSegmentHistory(client, config.history_table),
        clock=WallClock,
        swing_percent=lambda: config.swing_percent,
    )


class SnapshotIncomplete(Exception):
    """Some sizes were not recorded: the run fails (after the others are), so the schedule retries it."""


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    deps.live.refresh()
    segment_ids = sorted(deps.live.catalogue.segments)  # the enabled ones
    snapshot = take_snapshot(segment_ids, deps.members, deps.history, deps.clock.now(), deps.swing_percent)
    record_metrics(snapshot, deps.swing_percent)
    if snapshot.swinging:
        logger.warning("segment sizes moved by more than the swing threshold in a day",
                       extra={"segments": snapshot.swinging, "percent": deps.swing_percent})
    if snapshot.failed or snapshot.uncompared:
        logger.error("segment sizes not recorded", extra={"segments": sorted(snapshot.failed),
                                                          "reasons": sorted(set(snapshot.failed.values())),
                                                          "comparison": snapshot.uncompared})
        raise SnapshotIncomplete(f"{len(snapshot.failed)} of {len(segment_ids)} segment sizes not recorded"
                                 + (f"; {snapshot.uncompared}" if snapshot.uncompared else ""))
    return {"day": snapshot.day, "segments": len(snapshot.segments), "swinging": snapshot.swinging}


def record_metrics(snapshot: Snapshot, swing_percent: float | None) -> None:
    if swing_percent is not None:
        metrics.add_metric(name="SegmentsSwinging", unit=MetricUnit.Count, value=len(snapshot.swinging))
    if is_metrics_disabled():  # as Metrics does; single_metric itself would print anyway
        return
    for segment in snapshot.segments:
        dimensions = {"service": SERVICE, "segment": segment.segment_id}
        with single_metric(name="SegmentSize", unit=MetricUnit.Count, value=segment.size, namespace=NAMESPACE,
                           default_dimensions=dimensions):
            pass
        if segment.change_percent is not None:
            with single_metric(name="SegmentSizeChangePercent", unit=MetricUnit.Percent,
                               value=segment.change_percent, namespace=NAMESPACE, default_dimensions=dimensions):
                pass


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
