"""The job engine's AWS adapters: the jobs table (pynamodb), the profiles' parallel scan, the results bucket and
the Step Functions runner (see :mod:`cdp.pipeline.jobs`).

The jobs table holds one plain item per job (hash ``job_id``), expiring ``JOB_DAYS`` after it was created (TTL
``expires_at``). Its counts are number attributes of their own, so every worker adds to them with one UpdateItem
``ADD``: concurrent scan segments never overwrite each other's. No item holds personal data: options, counts,
thresholds and reasons only.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from pynamodb.attributes import ListAttribute, NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist, PynamoDBException
from pynamodb.models import Model

from cdp.aws.errors import domain_error
from cdp.aws.plain_records import bind_table
from cdp.aws.profile_item import decode_profile
from cdp.config import ConfigError
from cdp.pipeline.jobs import COUNTS, JOB_DAYS, Job, JobRunner, JobStore, ScanPage
from cdp.ports import TransientError

RESULTS_PREFIX = "jobs"


class JobItem(Model):
    class Meta:
        table_name = "jobs"  # replaced by bind_jobs

    job_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()
    status = UnicodeAttribute()
    created_at = NumberAttribute()
    updated_at = NumberAttribute()
    options = UnicodeAttribute(default="{}")  # JSON
    phases = ListAttribute(of=UnicodeAttribute, default=list)
    phase = UnicodeAttribute(default="")
    segments_total = NumberAttribute(default=0)
    segments_done = NumberAttribute(default=0)
    result = UnicodeAttribute(default="{}")  # JSON
    reason = UnicodeAttribute(null=True)
    expires_at = TTLAttribute(null=True)
    scanned = NumberAttribute(default=0)
    evaluated = NumberAttribute(default=0)
    written = NumberAttribute(default=0)
    entered = NumberAttribute(default=0)
    exited = NumberAttribute(default=0)
    conflicts = NumberAttribute(default=0)
    failed = NumberAttribute(default=0)
    unreadable = NumberAttribute(default=0)


def bind_jobs(table_name: str, region: str | None = None, host: str | None = None) -> type[JobItem]:
    return bind_table(JobItem, table_name, region, host)


def _transient(error: PynamoDBException, what: str) -> TransientError:
    return TransientError(f"{what} failed: {type(error).__name__}")


class DynamoJobStore:
    """:class:`cdp.pipeline.jobs.JobStore` on the jobs table."""

    def __init__(self, model: type[JobItem]) -> None:
        self.model = model

    def create(self, job: Job) -> None:
        item = self.model(job.job_id, kind=job.kind, status=job.status, created_at=job.created_at,
                          updated_at=job.updated_at, options=json.dumps(job.options), phases=list(job.phases),
                          phase=job.phase, segments_total=job.segments_total, segments_done=job.segments_done,
                          result=json.dumps(job.result), reason=job.reason or None,
                          expires_at=datetime.fromtimestamp(job.created_at + JOB_DAYS * 86_400, UTC))
        for name in COUNTS:
            setattr(item, name, int(job.counts.get(name, 0)))
        try:
            item.save(condition=self.model.job_id.does_not_exist())
        except PynamoDBException as error:
            raise _transient(error, "recording the job") from error

    def get(self, job_id: str) -> Job | None:
        try:
            item = self.model.get(job_id, consistent_read=True)
        except DoesNotExist:
            return None
        except PynamoDBException as error:
            raise _transient(error, "reading the job") from error
        return Job(item.job_id, item.kind, item.status, float(item.created_at), float(item.updated_at),
                   json.loads(item.options or "{}"), [str(p) for p in item.phases or []], item.phase or "",
                   int(item.segments_total or 0), int(item.segments_done or 0),
                   {name: int(getattr(item, name) or 0) for name in COUNTS}, json.loads(item.result or "{}"),
                   item.reason or "")

    def add_counts(self, job_id: str, counts: Mapping[str, int], segments_done: int, at: float) -> None:
        model = self.model
        actions: list[Any] = [getattr(model, name).add(int(value)) for name, value in counts.items()
                              if name in COUNTS and value]
        if segments_done:
            actions.append(model.segments_done.add(segments_done))
        actions.append(model.updated_at.set(at))
        self._update(job_id, actions)

    def update(self, job_id: str, at: float, **changes: Any) -> None:
        model = self.model
        actions: list[Any] = [model.updated_at.set(at)]
        for name, value in changes.items():
            if name in ("result", "options"):
                actions.append(getattr(model, name).set(json.dumps(value)))
            elif name == "reason":
                actions.append(model.reason.set(str(value)) if value else model.reason.remove())
            elif name in ("status", "phase", "phases", "segments_total", "segments_done"):
                actions.append(getattr(model, name).set(value))
            else:
                raise TypeError(f"a job has no field {name!r} to set")
        self._update(job_id, actions)

    def _update(self, job_id: str, actions: list[Any]) -> None:
        try:
            self.model(job_id).update(actions=actions, condition=self.model.job_id.exists())
        except PynamoDBException as error:
            raise _transient(error, "updating the job") from error


class DynamoProfileScan:
    """:class:`cdp.pipeline.jobs.ProfileScan` on the profiles table: Scan with ``Segment``/``TotalSegments``.

    Eventually consistent (half the read cost): a job's writes are conditional on the version read, and a
    conflict reloads the profile strongly consistent before evaluating it again."""

    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table_name = table_name

    def page(self, segment: int, total: int, cursor: object | None, limit: int) -> ScanPage:
        request: dict[str, Any] = {"TableName": self.table_name, "Segment": segment, "TotalSegments": total,
                                   "Limit": limit}
        if cursor:
            request["ExclusiveStartKey"] = cursor
        try:
            response = self.client.scan(**request)
        except Exception as error:
            raise domain_error(error) from error
        profiles, unreadable = [], 0
        for item in response.get("Items", []):
            try:
                profiles.append(decode_profile(item))
            except (KeyError, TypeError, ValueError, AttributeError):
                unreadable += 1  # not a profile item (foreign, or edited by hand): one item never stops a job
        return ScanPage(profiles, response.get("LastEvaluatedKey"), unreadable)

    def approximate_count(self) -> int:
        try:
            table = self.client.describe_table(TableName=self.table_name)["Table"]
        except Exception as error:
            raise domain_error(error) from error
        return int(table.get("ItemCount", 0))


class S3JobResults:
    """:class:`cdp.pipeline.jobs.JobResults`: ``jobs/<job id>/<phase>/<part>.json.gz``, gzip JSON; the bucket
    expires them after a week (a job is long done by then)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, job_id: str, phase: str, part: str, document: dict[str, Any]) -> None:
        body = gzip.compress(json.dumps(document, separators=(",", ":")).encode())
        try:
            self.client.put_object(Bucket=self.bucket, Key=f"{RESULTS_PREFIX}/{job_id}/{phase}/{part}.json.gz",
                                   Body=body, ContentType="application/json", ContentEncoding="gzip")
        except Exception as error:
            raise domain_error(error) from error

    def parts(self, job_id: str, phase: str) -> Iterator[dict[str, Any]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{RESULTS_PREFIX}/{job_id}/{phase}/")
            for page in pages:
                for entry in page.get("Contents", []):
                    body = self.client.get_object(Bucket=self.bucket, Key=entry["Key"])["Body"].read()
                    yield json.loads(gzip.decompress(body))
        except TransientError:
            raise
        except Exception as error:
            raise domain_error(error) from error


class StepFunctionsJobRunner:
    """:class:`cdp.pipeline.jobs.JobRunner`: one execution of the jobs state machine per job, named by its id,
    so starting a job twice starts it once."""

    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self.client = client
        self.state_machine_arn = state_machine_arn

    def start(self, job_id: str) -> None:
        try:
            self.client.start_execution(stateMachineArn=self.state_machine_arn, name=job_id,
                                        input=json.dumps({"job_id": job_id, "finished": ""}))
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
            if code == "ExecutionAlreadyExists":
                return
            raise domain_error(error) from error


def job_store(env: Mapping[str, str]) -> DynamoJobStore | None:
    """The jobs table ``JOBS_TABLE`` names; None when it is unset (jobs are not configured)."""
    table = env.get("JOBS_TABLE", "").strip()
    if not table:
        return None
    return DynamoJobStore(bind_jobs(table, env.get("AWS_REGION") or None))


def job_runner(env: Mapping[str, str]) -> StepFunctionsJobRunner | None:
    """The state machine ``JOBS_STATE_MACHINE_ARN`` names; None when it is unset."""
    import boto3

    arn = env.get("JOBS_STATE_MACHINE_ARN", "").strip()
    if not arn:
        return None
    if not arn.startswith("arn:"):
        raise ConfigError("environment variable JOBS_STATE_MACHINE_ARN must be a state machine ARN")
    return StepFunctionsJobRunner(boto3.client("stepfunctions"), arn)


def jobs_from_env(env: Mapping[str, str] | None = None) -> tuple[JobStore, JobRunner] | None:
    """The job store and runner (None when ``JOBS_TABLE`` is unset); a ConfigError when the table is set without
    ``JOBS_STATE_MACHINE_ARN``."""
    env = os.environ if env is None else env
    store = job_store(env)
    if store is None:
        return None
    runner = job_runner(env)
    if runner is None:
        raise ConfigError("environment variable JOBS_STATE_MACHINE_ARN is required with JOBS_TABLE")
    return store, runner
