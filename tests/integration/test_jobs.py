"""The job engine's adapters under moto, and a whole percentiles job through the jobs function's own steps."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from cdp.aws.jobs import DynamoJobStore, DynamoProfileScan, S3JobResults, StepFunctionsJobRunner, bind_jobs
from cdp.core.profile import Profile
from cdp.pipeline.jobs import DONE, Job
from cdp_dev.handlers import load_handler
from cdp_dev.local_jobs import InProcessJobRunner

from .support import DEFINITIONS_TABLE, PROFILES_TABLE, REGION, ROOT, SEGMENTS, Stack, create_definitions_table

JOBS_TABLE = "cdp-jobs"
RESULTS_BUCKET = "cdp-job-results"
jobs_handler = load_handler(ROOT, "jobs")


def seed(stack: Stack, revenues: dict[str, float]) -> None:
    store = stack.store()
    for customer_id, revenue in revenues.items():
        profile = Profile(customer_id)
        profile.orders, profile.revenue = (1, round(revenue * 100)) if revenue else (0, 0)
        profile.created_at = profile.updated_at = int(stack.clock.now()) - 3600
        profile.version = 1
        store.save(profile, 0)


def create_jobs_table(stack: Stack) -> DynamoJobStore:
    stack.dynamodb.create_table(TableName=JOBS_TABLE, BillingMode="PAY_PER_REQUEST",
                                KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
                                AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}])
    return DynamoJobStore(bind_jobs(JOBS_TABLE, REGION))


def jobs_function(stack: Stack, monkeypatch: pytest.MonkeyPatch, page_size: int) -> tuple[Any, InProcessJobRunner]:
    """The jobs function built from its environment over every store a job needs, with jobs run in process."""
    create_jobs_table(stack)
    create_definitions_table(stack.dynamodb)
    stack.s3.create_bucket(Bucket=RESULTS_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    for name, value in {"PROFILES_TABLE": PROFILES_TABLE, "JOBS_TABLE": JOBS_TABLE,
                        "JOB_RESULTS_BUCKET": RESULTS_BUCKET, "DEFINITIONS_TABLE": DEFINITIONS_TABLE,
                        "CATALOGUE_PATH": str(SEGMENTS), "JOB_SCAN_SEGMENTS": "3", "JOB_PAGE_SIZE": str(page_size),
                        "AWS_REGION": REGION, "CDP_WRITE_CONCURRENCY": "1"}.items():
        monkeypatch.setenv(name, value)
    built: list[Any] = []
    runner = InProcessJobRunner(lambda: built[0].job_engine(), workers=2, background=False)
    built.append(jobs_handler.build(clock=stack.clock, runner=runner))
    return built[0], runner


@pytest.mark.parametrize("total", [1, 4, 7])
def test_the_parallel_scan_segments_cover_every_profile_exactly_once(stack: Stack, total: int) -> None:
    revenues = {f"c{i:03d}": float(i) for i in range(60)}
    seed(stack, revenues)
    scan = DynamoProfileScan(stack.dynamodb, PROFILES_TABLE)
    seen: list[str] = []
    for segment in range(total):
        cursor = None
        while True:
            page = scan.page(segment, total, cursor, 5)
            seen += [profile.customer_id for profile in page.profiles]
            assert all(p.revenue == revenues[p.customer_id] * 100 for p in page.profiles)
            cursor = page.cursor
            if cursor is None:
                break
    assert sorted(seen) == sorted(revenues)
    assert scan.approximate_count() == 60


def test_an_item_that_is_not_a_profile_is_skipped_and_counted_not_a_failed_scan(stack: Stack) -> None:
    seed(stack, {"c001": 10.0, "c002": 20.0})
    stack.dynamodb.put_item(TableName=PROFILES_TABLE, Item={"customer_id": {"S": "hand-edited"},
                                                           "m": {"S": "not a map"}, "v": {"N": "1"}})
    page = DynamoProfileScan(stack.dynamodb, PROFILES_TABLE).page(0, 1, None, 100)
    assert sorted(p.customer_id for p in page.profiles) == ["c001", "c002"] and page.unreadable == 1


def test_the_job_store_adds_counts_atomically_and_keeps_the_rest(stack: Stack) -> None:
    jobs = create_jobs_table(stack)
    jobs.create(Job("j1", "backfill", "queued", 100.0, 100.0, {"deliver": "none"}, ["evaluate"]))

    def add() -> None:
        for _ in range(5):
            jobs.add_counts("j1", {"scanned": 10, "entered": 1}, 1, 101.0)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobs.update("j1", 102.0, status="running", phase="evaluate", result={"thresholds": [1.5]}, reason="")
    job = jobs.get("j1")
    assert job is not None
    assert job.counts["scanned"] == 200 and job.counts["entered"] == 20 and job.counts["written"] == 0
    assert job.segments_done == 20
    assert (job.status, job.phase, job.result, job.options, job.updated_at) == (
        "running", "evaluate", {"thresholds": [1.5]}, {"deliver": "none"}, 102.0)
    item = stack.dynamodb.get_item(TableName=JOBS_TABLE, Key={"job_id": {"S": "j1"}})["Item"]
    assert int(item["expires_at"]["N"]) == 100 + 30 * 86_400
    assert jobs.get("missing") is None


def test_partial_results_are_gzip_json_objects_read_back_per_phase(stack: Stack) -> None:
    stack.s3.create_bucket(Bucket=RESULTS_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    results = S3JobResults(stack.s3, RESULTS_BUCKET)
    results.put("j1", "collect", "00000-000000", {"values": {"revenue": [[1.5, 2]]}})
    results.put("j1", "collect", "00001-000000", {"values": {"revenue": [[3.0, 1]]}})
    results.put("j2", "collect", "00000-000000", {"values": {}})
    assert sorted(json.dumps(p) for p in results.parts("j1", "collect")) == sorted(
        [json.dumps({"values": {"revenue": [[1.5, 2]]}}), json.dumps({"values": {"revenue": [[3.0, 1]]}})])
    head = stack.s3.head_object(Bucket=RESULTS_BUCKET, Key="jobs/j1/collect/00000-000000.json.gz")
    assert head["ContentEncoding"] == "gzip"


def test_a_job_started_twice_is_one_execution(stack: Stack, session: Any) -> None:
    client = session.client("stepfunctions")
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    arn = client.create_state_machine(name="cdp-test-jobs", definition=json.dumps(definition),
                                      roleArn="arn:aws:iam::123456789012:role/jobs")["stateMachineArn"]
    runner = StepFunctionsJobRunner(client, arn)
    runner.start("job-1")
    runner.start("job-1")
    executions = client.list_executions(stateMachineArn=arn)["executions"]
    assert [e["name"] for e in executions] == ["job-1"]
    started = client.describe_execution(executionArn=executions[0]["executionArn"])
    assert json.loads(started["input"]) == {"job_id": "job-1", "finished": ""}


def test_the_scheduled_percentiles_job_stores_statistics_and_fills_premium_customers(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    revenues = {f"c{i:03d}": float((i * 37) % 500) for i in range(45)}
    seed(stack, revenues)
    deps, runner = jobs_function(stack, monkeypatch, page_size=4)
    answer = jobs_handler.handle({"step": "schedule"}, None, deps)
    job = deps.job_store.get(answer["id"])
    assert job is not None and job.status == DONE, runner.errors
    ordered = sorted(revenues.values())
    threshold = ordered[math.ceil(0.8 * len(ordered)) - 1]
    expected = {cid for cid, revenue in revenues.items() if revenue > max(0.0, threshold)}
    members = {cid for cid in revenues
               if "premium-customers" in (stack.store().get(cid) or Profile(cid)).memberships}
    assert members == expected and job.counts["entered"] >= len(expected)
    stored = deps.definitions.population()
    assert stored is not None and stored.threshold("revenue", 20) == threshold
    assert next(t for t in job.result["thresholds"] if t["segment_id"] == "premium-customers")["new"] == threshold


def test_the_schedule_starts_no_scan_when_no_segment_reads_population_statistics(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "buyers.yaml").write_text("id: buyers\nname: Buyers\ncondition: {rfm: {metric: orders, gt: 0}}\n")
    seed(stack, {"c001": 10.0})
    create_jobs_table(stack)
    for name, value in {"PROFILES_TABLE": PROFILES_TABLE, "JOBS_TABLE": JOBS_TABLE,
                        "JOB_RESULTS_BUCKET": RESULTS_BUCKET, "CATALOGUE_PATH": str(tmp_path),
                        "AWS_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DEFINITIONS_TABLE", raising=False)
    started: list[str] = []

    class Recording:
        def start(self, job_id: str) -> None:
            started.append(job_id)

    deps = jobs_handler.build(clock=stack.clock, runner=Recording())
    answer = jobs_handler.handle({"step": "schedule"}, None, deps)
    assert answer == {"skipped": "no enabled segment reads population statistics"} and started == []
