"""The whole ingest handler on real-shaped traffic, against DynamoDB answered at the HTTP layer.

    python bench/ingest_handler.py [--quick]

The handler (``functions/ingest/handler.py``: envelope, base64, ``ingest_batch``, the boto3 client,
the profile encoding, the partial-batch response) runs in this process on the batches of
``bench/real_traffic.py`` (one event per customer per batch, stored profiles read back), while
``bench/dynamodb_stub.py`` answers in another process. Figures, all from one run:

- CPU per event of the handler (process time, every thread) against the core's (``ingest_batch``
  over profiles held in memory) on the same batches and catalogue: the ratio is the target.
- Wall time per batch with round trips as in a region (the stub waits ``prices.LATENCY_SECONDS``),
  with the writes one after another and with the bounded pool.
- The per-shard rate at parallelization factor 1, modelled from the measured CPU (stretched by the
  vCPU share of each memory setting: 1,769 MB is one vCPU) plus the request waits, and what a
  million events cost in Lambda duration at each memory setting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE = "cdp-profiles"
MEMORY_SETTINGS_MB = (256, 512, 1024, 1769, 3008)
ONE_VCPU_MB = 1769  # Lambda's CPU share grows with memory: one full vCPU at 1,769 MB
POOL = 16  # the ingest's default CDP_WRITE_CONCURRENCY
KINESIS_RECORDS_PER_SHARD_SECOND = 1000


class Stub:
    """``bench/dynamodb_stub.py`` in its own process."""

    def __init__(self, latency: dict[str, float]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.dynamodb_stub", "--latency", json.dumps(latency)],
                                        cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.endpoint = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _environment(endpoint: str) -> None:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_DYNAMODB": endpoint, "PROFILES_TABLE": TABLE, "QUARANTINE_BUCKET": "unused",
                       "CATALOGUE_PATH": str(ROOT / "segments"), "POWERTOOLS_METRICS_DISABLED": "true",
                       "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR",
                       "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"})


def _envelopes(workload: Any) -> list[dict[str, Any]]:
    from cdp_dev.lambda_events import kinesis_record

    return [{"Records": [kinesis_record(r.data, r.partition_key, r.sequence, arrival=0.0, shard_id=r.shard)
                         for r in batch]} for batch in workload.batches]


class HandlerRun:
    """The ingest handler over every batch, its store seeded afresh with the stored items before each run."""

    def __init__(self, endpoint: str, engine: Any, items: list[dict[str, Any]], workload: Any) -> None:
        import boto3

        from bench.real_traffic import LIVE_START, DiscardedQuarantine
        from cdp.aws.dynamo import serialise_item
        from cdp.core.clock import EventClock, FixedClock
        from cdp_dev.handlers import load_handler

        _environment(endpoint)
        self.handler = load_handler(ROOT, "ingest")
        self.seed_client = boto3.client("dynamodb")
        self.seeds = [serialise_item(item) for item in items]
        self.envelopes = _envelopes(workload)
        self.events = sum(len(e["Records"]) for e in self.envelopes)
        self.engine, self.workload = engine, workload
        self.quarantine = DiscardedQuarantine()
        self.start, self.wall = LIVE_START, workload.live_end + 86400
        self.clocks = (EventClock, FixedClock)

    def clock(self) -> Any:
        """A fresh event clock at the start of the measured batches."""
        event_clock, fixed_clock = self.clocks
        return event_clock(self.start, wall=fixed_clock(self.wall))

    def seed(self) -> None:
        for item in self.seeds:
            self.seed_client.put_item(TableName=TABLE, Item=item)

    def run(self, concurrency: int) -> tuple[float, float]:
        """Process seconds (every thread) and wall seconds for all batches."""
        from cdp.pipeline.parallel import request_pool

        self.seed()
        os.environ["CDP_WRITE_CONCURRENCY"] = str(concurrency)
        deps = self.handler.build(engine=self.engine, quarantine=self.quarantine, clock=self.clock(),
                                  pool=request_pool(concurrency, "bench-writes"))
        self.handler.handle(self.envelopes[0], None, deps)  # connections opened, code paths warm
        self.seed()
        deps = self.handler.build(engine=self.engine, quarantine=self.quarantine, clock=self.clock(),
                                  store=deps.store, pool=request_pool(concurrency, "bench-writes"))
        cpu, wall = time.process_time(), time.perf_counter()
        for envelope in self.envelopes:
            response = self.handler.handle(envelope, None, deps)
            self.handler.metrics.clear_metrics()
            assert not response["batchItemFailures"], response
        return time.process_time() - cpu, time.perf_counter() - wall


def shard_model(cpu_per_batch: float, customers_per_batch: int, batch_events: int, concurrency: int,
                latency: dict[str, float], gb_second: float) -> dict[str, Any]:
    """Events/s one shard applies at parallelization factor 1, and Lambda duration cost, per memory setting.

    A batch takes its CPU time stretched by the vCPU share, plus its waits: one BatchGetItem, then
    the writes in rounds of ``concurrency``. (The waits overlap CPU in reality, so this is a floor.)
    """
    waits = latency["BatchGetItem"] + math.ceil(customers_per_batch / concurrency) * latency["PutItem"]
    rows = {}
    for memory in MEMORY_SETTINGS_MB:
        share = min(1.0, memory / ONE_VCPU_MB)  # Python's work runs on one core however many there are
        seconds = cpu_per_batch / share + waits
        duration_usd_per_million = 1e6 / batch_events * seconds * memory / 1024 * gb_second
        rows[str(memory)] = {"vcpu_share": round(share, 3), "batch_seconds": seconds,
                             "events_per_second": batch_events / seconds,
                             "duration_usd_per_million_events": duration_usd_per_million,
                             "events_per_second_per_usd_hour": batch_events / seconds
                             / (memory / 1024 * gb_second * 3600)}
    best = max(rows, key=lambda m: rows[m]["events_per_second_per_usd_hour"])
    return {"waits_per_batch_seconds": waits, "concurrency": concurrency, "by_memory_mb": rows,
            "best_events_per_second_per_dollar_mb": int(best)}


def measure(quick: bool = False, segments: tuple[int, ...] = (16, 50)) -> dict[str, Any]:
    """Every figure of the module docstring; the environment it sets for the handler is restored after."""
    saved = dict(os.environ)
    try:
        return _measure(quick, segments)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _measure(quick: bool, segments: tuple[int, ...]) -> dict[str, Any]:
    from bench import prices, real_traffic
    from cdp.core.engine import Engine

    customers = 300 if quick else 1000
    workload = real_traffic.batches(customers, 2 if quick else 3)
    events = sum(len(b) for b in workload.batches)
    figures: dict[str, Any] = {"events": events, "batches": len(workload.batches), "customers": customers,
                               "by_segments": {}}
    for size in segments:
        engine = Engine(real_traffic.catalogue(size))
        items = real_traffic.stored_items(workload, engine)
        core = real_traffic.core_run(workload, engine, items, repeats=3)
        stub = Stub({})
        try:
            run = HandlerRun(stub.endpoint, engine, items, workload)
            cpu = min(run.run(POOL)[0] for _ in range(3))
        finally:
            stub.close()
        handler_us = cpu / events * 1e6
        figures["by_segments"][str(size)] = {
            "core_us_per_event": core.us_per_event, "handler_cpu_us_per_event": handler_us,
            "handler_to_core": handler_us / core.us_per_event, "transitions_per_event": core.transitions_per_event}
    # Round trips as in a region: the same handler, writes one after another and over the pool.
    latency = {op: prices.LATENCY_SECONDS[op] for op in ("BatchGetItem", "PutItem")}
    engine = Engine(real_traffic.catalogue(segments[-1]))
    items = real_traffic.stored_items(workload, engine)
    stub = Stub(latency)
    try:
        run = HandlerRun(stub.endpoint, engine, items, workload)
        _, sequential_wall = run.run(1)
        cpu, pooled_wall = run.run(POOL)
    finally:
        stub.close()
    batches = len(workload.batches)
    figures["latency_seconds"] = latency
    figures["wall_ms_per_batch"] = {"writes_one_after_another": sequential_wall / batches * 1e3,
                                    f"writes_over_pool_of_{POOL}": pooled_wall / batches * 1e3}
    figures["cpu_ms_per_batch"] = cpu / batches * 1e3
    customers_per_batch = max(len(b) for b in workload.batches)
    figures["shard"] = shard_model(cpu / batches, customers_per_batch, customers_per_batch, POOL, latency,
                                   prices.LAMBDA_ARM_GB_SECOND)
    figures["shard_sequential"] = shard_model(cpu / batches, customers_per_batch, customers_per_batch, 1, latency,
                                              prices.LAMBDA_ARM_GB_SECOND)
    figures["shard"]["kinesis_limit_records_per_second"] = KINESIS_RECORDS_PER_SHARD_SECOND
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The whole ingest handler on real-shaped traffic.")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
