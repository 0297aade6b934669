"""`cdp import` against Kinesis (moto): order per customer, resends of throttled records, and the report of
what the ingest applied and quarantined, read from a local stack's /health (here a fake ingest behind it)."""

from __future__ import annotations

import io
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from cdp.core.events import InvalidEvent, parse_record
from cdp_dev import cli
from cdp_dev.importer import HealthTotals, ImportOptions, run_import
from cdp_dev.order_history import HistoryShape, write_history
from cdp_dev.targets import LocalStackInfo, register

from .support import REGION

STREAM = "cdp-events"


def history(tmp_path: Path, orders: int = 300, customers: int = 100, extra: list[dict[str, Any]] | None = None
            ) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "history.jsonl"
    with path.open("w") as out:
        write_history(HistoryShape(orders, customers, 3, seed=11, end=datetime(2026, 10, 1, tzinfo=UTC)), out)
        for message in extra or []:
            out.write(json.dumps(message) + "\n")
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def read_stream(kinesis: Any, stream: str = STREAM) -> list[dict[str, Any]]:
    """Every record on the stream, shard by shard, in each shard's order."""
    found = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            found += [json.loads(r["Data"]) for r in page["Records"]]
            iterator = page.get("NextShardIterator") if page["Records"] else None
    return found


def order_per_customer(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    order: defaultdict[str, list[str]] = defaultdict(list)
    for message in messages:
        order[str(message.get("userId") or message.get("anonymousId"))].append(message["messageId"])
    return dict(order)


@pytest.fixture
def kinesis() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("kinesis", region_name=REGION)
        client.create_stream(StreamName=STREAM, ShardCount=2)
        yield client


def test_every_record_arrives_once_in_file_order_per_customer(kinesis: Any, tmp_path: Path) -> None:
    path, messages = history(tmp_path)
    printed: list[str] = []
    code = run_import(str(path), kinesis, STREAM, None, ImportOptions(quiet=True), printed.append)
    assert code == 0, printed
    arrived = read_stream(kinesis)
    assert len(arrived) == len(messages) == 400
    assert order_per_customer(arrived) == order_per_customer(messages)
    assert any("2 open shard(s)" in p and "2,000 records/s" in p for p in printed)


class Throttling:
    """A Kinesis client that refuses the first send of some records as a shard over its limit would."""

    def __init__(self, client: Any, every: int) -> None:
        self.client, self.every = client, every
        self.sends: defaultdict[str, int] = defaultdict(int)
        self.refused = 0

    def describe_stream_summary(self, **request: Any) -> Any:
        return self.client.describe_stream_summary(**request)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        passed: list[dict[str, Any]] = []
        results: list[dict[str, Any] | None] = []
        for number, record in enumerate(Records):
            message_id = json.loads(record["Data"])["messageId"]
            self.sends[message_id] += 1
            if self.sends[message_id] == 1 and number % self.every == 0:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException",
                                "ErrorMessage": "Rate exceeded for shard shardId-000000000000"})
                self.refused += 1
            else:
                results.append(None)
                passed.append(record)
        accepted = iter(self.client.put_records(StreamName=StreamName, Records=passed)["Records"] if passed else [])
        merged = [result or next(accepted) for result in results]
        return {"FailedRecordCount": sum("ErrorCode" in r for r in merged), "Records": merged}


def test_throttled_records_are_resent_and_still_arrive_in_order(kinesis: Any, tmp_path: Path) -> None:
    path, messages = history(tmp_path)
    throttling = Throttling(kinesis, every=3)
    printed: list[str] = []
    waits: list[float] = []  # the back-offs, recorded rather than slept
    code = run_import(str(path), throttling, STREAM, None, ImportOptions(quiet=True), printed.append,
                      sleep=waits.append)
    assert code == 0, printed
    assert throttling.refused > 100
    assert 0.1 in waits and max(waits) == 5.0  # backs off, doubling, to its ceiling while throttled
    arrived = read_stream(kinesis)
    assert sorted(m["messageId"] for m in arrived) == sorted(m["messageId"] for m in messages)
    assert order_per_customer(arrived) == order_per_customer(messages)
    assert any(f"ProvisionedThroughputExceededException {throttling.refused:,}" in p
               and f"{throttling.refused:,} resent" in p for p in printed)


class FakeIngest:
    """Reads the stream as the ingest function would and keeps its cumulative totals: quarantines what
    ``parse_record`` refuses, counts a repeated messageId as a duplicate, applies the rest."""

    def __init__(self, kinesis: Any, stream: str = STREAM, applied: int = 0) -> None:
        self.kinesis, self.stream = kinesis, stream
        self.totals = {"records": applied, "applied": applied, "duplicates": 0, "quarantined": 0, "retried": 0}
        self.seen: set[str] = set()
        self.iterators: dict[str, str] = {}
        self.lock = threading.Lock()

    def poll(self) -> dict[str, int]:
        with self.lock:
            for shard in self.kinesis.list_shards(StreamName=self.stream)["Shards"]:
                iterator = self.iterators.get(shard["ShardId"]) or self.kinesis.get_shard_iterator(
                    StreamName=self.stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
                    "ShardIterator"]
                page = self.kinesis.get_records(ShardIterator=iterator, Limit=200)  # a batch per poll
                self.iterators[shard["ShardId"]] = page["NextShardIterator"]
                for record in page["Records"]:
                    self.apply(record["Data"])
            return dict(self.totals)

    def apply(self, data: bytes) -> None:
        self.totals["records"] += 1
        try:
            event = parse_record(data)
        except InvalidEvent:
            self.totals["quarantined"] += 1
            return
        name = "duplicates" if event.message_id in self.seen else "applied"
        self.seen.add(event.message_id)
        self.totals[name] += 1


@contextmanager
def health_endpoint(ingest: FakeIngest, aws_endpoint: str = "") -> Iterator[str]:
    """A local stack's GET /health, with the cumulative ingest totals."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "aws_endpoint": aws_endpoint, "ingest": ingest.poll()}).encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


QUARANTINED = [{"type": "track", "event": "Order Completed", "messageId": f"bad-{n}", "userId": f"cust-00000{n}",
                "timestamp": "2026-10-01T00:00:00Z", "properties": {"order_id": f"x{n}", "revenue": -1}}
               for n in range(1, 4)]  # a negative revenue: refused (an order without one is worth 0)
DUPLICATES = [{"type": "track", "event": "Product Viewed", "messageId": "same", "userId": "cust-000002",
               "timestamp": "2026-10-01T00:00:01Z", "properties": {"product_id": "p"}}] * 3


def test_the_report_counts_what_the_ingest_applied_and_quarantined(kinesis: Any, tmp_path: Path) -> None:
    path, messages = history(tmp_path, extra=[*QUARANTINED, *DUPLICATES])
    ingest = FakeIngest(kinesis, applied=5_000)  # what the stack had applied before: not counted
    printed: list[str] = []
    with health_endpoint(ingest) as api:
        code = run_import(str(path), kinesis, STREAM, HealthTotals(api),
                          ImportOptions(quiet=True, wait=60, poll_interval=0.05), printed.append)
    assert code == 0, printed
    assert f"applied {len(messages) - 5:,}, duplicates 2, quarantined 3 of {len(messages):,} sent" in "\n".join(
        printed)
    assert any(p.startswith("rate over the first 10%") for p in printed)


def test_cdp_import_finds_the_local_stack_and_reports_its_totals(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path, messages = history(tmp_path, orders=120, customers=40, extra=QUARANTINED)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://{}:{}".format(*server.get_host_and_port())
        kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="local", aws_secret_access_key="local")
        kinesis.create_stream(StreamName=STREAM, ShardCount=1)
        kinesis.get_waiter("stream_exists").wait(StreamName=STREAM)
        with health_endpoint(FakeIngest(kinesis), aws_endpoint=endpoint) as api:
            monkeypatch.setenv("CDP_STATE_DIR", str(tmp_path / "state"))
            register(LocalStackInfo(endpoint, api, STREAM, "", "us-east-1", 4242), tmp_path / "state")
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = cli.main(["import", str(path), "--quiet", "--wait", "60"])
    finally:
        server.stop()
    assert code == 0, err.getvalue()
    assert f"importing into the local stack at {endpoint}, stream {STREAM}" in err.getvalue()
    assert f"applied {len(messages) - 3:,}, duplicates 0, quarantined 3 of {len(messages):,} sent" in out.getvalue()
