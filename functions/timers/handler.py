"""Timers: every minute, re-evaluate the customers whose next deadline has passed.

Their transitions are written with the profile, like ingest's, and flow out through the table stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.config import ConfigError, TimersConfig
from cdp.core.catalogue import load_catalogue
from cdp.core.clock import Clock, WallClock, clock_from_env
from cdp.core.engine import Engine
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.pipeline.parallel import request_pool
from cdp.pipeline.timers import DUE_SHARDS, DueIndex, SweepResult, sweep
from cdp.ports import ProfileStore
from cdp.wiring import assemble

logger = Logger(service="cdp-timers")
metrics = Metrics(namespace="cdp", service="timers")


@dataclass(frozen=True)
class Dependencies:
    engine: Engine
    store: ProfileStore
    index: DueIndex
    clock: Clock
    page_size: int = 100
    reserve_ms: int = 10_000
    pool: Executor | None = None  # the profile writes of a page in flight at once; None: one after another
    live: LiveCatalogue | None = None  # refreshed at each run; None: the engine's catalogue stays


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built. The local
    stack gives its shared clock (``build(clock=...)``), which the ingest moves: then the sweep runs in event time."""
    import boto3
    from botocore.config import Config

    from cdp.aws.definitions import live_part
    from cdp.aws.dynamo import DynamoDueIndex, DynamoProfileStore

    config = TimersConfig.from_env(os.environ)
    live = live_part(overrides, lambda: load_catalogue(config.catalogue_path))
    client = boto3.client("dynamodb", config=Config(max_pool_connections=max(10, config.write_concurrency),
                                                    parameter_validation=False))
    return assemble(
        Dependencies, overrides,
        engine=lambda: Engine(live().catalogue, live().stats, consent_policy=config.consent_policy,
                              retention_days=config.retention_days),
        store=lambda: DynamoProfileStore(client, config.profiles_table),
        index=lambda: DynamoDueIndex(client, config.profiles_table, config.due_index),
        clock=lambda: sweep_clock(config.clock),
        page_size=lambda: config.page_size,
        reserve_ms=lambda: config.reserve_ms,
        pool=lambda: request_pool(config.write_concurrency, "cdp-timers-writes"),
        live=live,
    )


def sweep_clock(value: str) -> Clock:
    """The clock of ``CDP_CLOCK`` (:attr:`TimersConfig.clock`), which must be wall time: in Lambda nothing
    shares an event clock with the ingest, and one of its own would never move (the sweep sees no events),
    so nothing would fall due. Event time needs a clock given to ``build``."""
    clock = clock_from_env(value)
    if not isinstance(clock, WallClock):
        raise ConfigError("CDP_CLOCK: the timers function runs on wall time; event time needs a shared clock")
    return clock


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    remaining: Callable[[], int] | None = getattr(context, "get_remaining_time_in_millis", None)

    def has_time() -> bool:
        return remaining is None or remaining() > deps.reserve_ms

    shards = sweep_shards(event)
    if deps.live is not None:
        deps.live.update(deps.engine)  # a head read at most every CATALOGUE_CHECK_SECONDS
    # Each minute's run starts at a different shard, so no shard always waits behind the others.
    rotation = int(deps.clock.now() // 60) % len(shards)
    result = sweep(deps.index, deps.store, deps.engine, deps.clock, page_size=deps.page_size,
                   has_time=has_time, shards=shards, rotation=rotation, pool=deps.pool)
    record_metrics(result)
    return {"due": result.due, "reevaluated": result.reevaluated, "stale": result.stale,
            "transitioned": result.transitioned, "transitions": len(result.transitions),
            "unfinished": result.unfinished, "delay_p50_seconds": result.delay_p50,
            "delay_max_seconds": result.delay_max}


def sweep_shards(event: dict[str, Any]) -> list[int]:
    """The shards this run sweeps: the schedule target's ``{"shards": [...]}`` input, or all of them."""
    shards = event.get("shards") if isinstance(event, dict) else None
    if shards is None:
        return list(range(DUE_SHARDS))
    if (not isinstance(shards, list) or not shards
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < DUE_SHARDS for s in shards)):
        raise ValueError(f"shards: must be a non-empty list of due shards 0..{DUE_SHARDS - 1}")
    return sorted(set(shards))


def record_metrics(result: SweepResult) -> None:
    for name, value in (("CustomersDue", result.due), ("CustomersReevaluated", result.reevaluated),
                        ("CustomersTransitioned", result.transitioned), ("ProfileConflicts", result.conflicts),
                        ("SweepUnfinished", int(result.unfinished)), ("SweepFailures", len(result.failures))):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    if result.delays:
        metrics.add_metric(name="DeadlineDelayP50", unit=MetricUnit.Seconds, value=result.delay_p50)
        metrics.add_metric(name="DeadlineDelayMax", unit=MetricUnit.Seconds, value=result.delay_max)
    if result.failures:
        # Reasons only: no identifiers, so no personal data reaches the logs.
        logger.warning("sweep left work for the next run", extra={"reasons": sorted(set(result.failures))})


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
