"""Jobs: the steps of backfills, population statistics and computed traits (:mod:`cdp.pipeline.jobs`), one function.

The jobs state machine invokes it with ``{"step": "advance" | "work" | "finish" | "fail", "job_id": ...}``; the
schedules with ``{"step": "schedule", "kind": "percentiles" | "traits", "options": {...}}`` (an EventBridge
Scheduled Event, or no kind, is the percentiles schedule), which records a job of that kind and starts its
execution. The traits job trains with scikit-learn, which only this function's models layer holds. A ``work``
step takes pages of its scan segment until ``JOB_RESERVE_MS`` of the invocation are left and returns its cursor,
so no step needs more than one invocation's time.

Configuration: :class:`cdp.config.JobsConfig`; the catalogue is the live one (``DEFINITIONS_TABLE``), so a backfill
evaluates with the version it was started for (a step that does not hold it yet fails, and is retried).
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

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import Clock, clock_from_env
from cdp.core.consent import ConsentPolicy
from cdp.core.engine import Engine
from cdp.pipeline.jobs import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SCAN_SEGMENTS,
    PERCENTILES,
    TRAITS,
    JobEngine,
    JobResults,
    JobRunner,
    JobStore,
    ProfileScan,
    StaleCatalogue,
    job_document,
    reads_stats,
    run_step,
    start_job,
)
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.ports import DefinitionStore, ProfileStore
from cdp.wiring import assemble

logger = Logger(service="cdp-jobs")
metrics = Metrics(namespace="cdp", service="jobs")


@dataclass(frozen=True)
class Dependencies:
    job_store: JobStore
    scan: ProfileScan
    profiles: ProfileStore
    results: JobResults
    definitions: DefinitionStore | None
    live: LiveCatalogue
    runner: JobRunner | None  # None: no state machine (the local stack gives its in-process runner)
    clock: Clock
    scan_segments: int = DEFAULT_SCAN_SEGMENTS
    page_size: int = DEFAULT_PAGE_SIZE
    reserve_ms: int = 60_000
    consent_policy: ConsentPolicy | None = None
    retention_days: int = 0
    pool: Executor | None = None  # a page's profile writes in flight at once

    def engine_for(self, version: int) -> Engine:
        """An engine over the live catalogue, of at least ``version`` (the one a backfill was started for)."""
        live = self.live
        live.refresh()
        if live.catalogue.version < version:
            live.refresh(force=True)
        if live.catalogue.version < version:
            raise StaleCatalogue(f"catalogue version {version} is not readable yet (holding {live.catalogue.version})")
        return Engine(live.catalogue, live.stats, consent_policy=self.consent_policy,
                      retention_days=self.retention_days)

    def job_engine(self) -> JobEngine:
        return JobEngine(self.job_store, self.scan, self.profiles, self.results, self.definitions, self.engine_for,
                         self.clock.now, self.scan_segments, self.page_size, self.pool)


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built. The local
    stack gives its clock and its in-process runner (``build(clock=..., runner=...)``)."""
    import boto3
    from botocore.config import Config

    from cdp.aws.definitions import definition_store, live_catalogue
    from cdp.aws.dynamo import DynamoProfileStore
    from cdp.aws.jobs import DynamoJobStore, DynamoProfileScan, S3JobResults, StepFunctionsJobRunner, bind_jobs
    from cdp.config import JobsConfig
    from cdp.pipeline.parallel import request_pool

    config = JobsConfig.from_env(os.environ)
    region = os.environ.get("AWS_REGION") or None
    client = boto3.client("dynamodb", config=Config(max_pool_connections=max(10, config.write_concurrency)))
    return assemble(
        Dependencies, overrides,
        job_store=lambda: DynamoJobStore(bind_jobs(config.jobs_table, region)),
        scan=lambda: DynamoProfileScan(client, config.profiles_table),
        profiles=lambda: DynamoProfileStore(client, config.profiles_table),
        results=lambda: S3JobResults(boto3.client("s3"), config.results_bucket),
        definitions=lambda: definition_store(os.environ),
        live=lambda: live_catalogue(os.environ, lambda: load_catalogue(config.catalogue_path)),
        runner=lambda: (StepFunctionsJobRunner(boto3.client("stepfunctions"), config.state_machine_arn)
                        if config.state_machine_arn else None),
        clock=lambda: clock_from_env(config.clock),
        scan_segments=lambda: config.scan_segments,
        page_size=lambda: config.page_size,
        reserve_ms=lambda: config.reserve_ms,
        consent_policy=lambda: config.consent_policy,
        retention_days=lambda: config.retention_days,
        pool=lambda: request_pool(config.write_concurrency, "cdp-jobs-writes"),
    )


def scheduled(event: Any) -> bool:
    """The population schedule's invocation (EventBridge Scheduler's input, or a rule's Scheduled Event)."""
    return isinstance(event, dict) and (event.get("step") == "schedule"
                                        or event.get("detail-type") == "Scheduled Event")


def scheduled_kind(event: dict[str, Any]) -> str:
    kind = event.get("kind") or PERCENTILES
    if kind not in (PERCENTILES, TRAITS):
        raise ValueError(f"a schedule starts a percentiles or traits job, not {kind!r}")
    return str(kind)


def start_scheduled(event: dict[str, Any], deps: Dependencies) -> dict[str, Any]:
    """The job a schedule asks for (its options from the schedule's input: the deployment's settings)."""
    kind = scheduled_kind(event)
    if kind == PERCENTILES and not reads_stats(deps.engine_for(0).catalogue):
        # No enabled segment compares against the population: an hourly scan of every profile would buy nothing.
        metrics.add_metric(name="JobsSkipped", unit=MetricUnit.Count, value=1)
        return {"skipped": "no enabled segment reads population statistics"}
    if deps.runner is None:
        raise RuntimeError("no job runner: JOBS_STATE_MACHINE_ARN is not set")
    options = event.get("options") if kind == TRAITS and isinstance(event.get("options"), dict) else {}
    job = start_job(deps.job_store, deps.runner, kind, dict(options or {}), deps.clock.now())
    if job.status == "failed":  # the schedule tries again (its retry policy)
        raise RuntimeError(job.reason)
    metrics.add_metric(name="JobsStarted", unit=MetricUnit.Count, value=1)
    logger.info(f"{kind} job started", extra={"job_id": job.job_id})
    return job_document(job)


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    if scheduled(event):
        return start_scheduled(event, deps)
    remaining: Callable[[], int] | None = getattr(context, "get_remaining_time_in_millis", None)

    def has_time() -> bool:
        return remaining is None or remaining() > deps.reserve_ms

    answer = run_step(deps.job_engine(), event, has_time)
    if event.get("step") == "fail":
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
        logger.warning("job failed", extra={"job_id": event.get("job_id")})
    elif event.get("step") == "advance" and answer.get("done"):
        metrics.add_metric(name="JobsDone", unit=MetricUnit.Count, value=1)
    return answer


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, context, dependencies())
