"""The cost model's inputs measured in one run: traffic through the whole pipeline, and the changes function's CPU.

    python bench/cost.py [--quick]

Three traffic shapes go through :mod:`bench.pipeline_model`:

- ``bench``: the benchmark's original workload (20 events per customer per batch, new profiles);
- ``real_shaped``: analytics.js-shaped traffic (``bench/real_traffic.py``): each customer's 90-day
  history and then the live events, in time order, at most one event per customer per batch;
- ``order_history``: a generated order export (``cdp history``), replayed in time order the same way.

Each is counted with every segment's transitions on the bus (the default) and with only the
segments the integrations in cdk.json route (``published_segments``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 100


def one_per_customer(records: Iterable[tuple[str, bytes]]) -> list[list[Any]]:
    """Stream batches in the order given: up to 100 records, a new batch when a customer comes again."""
    from cdp.pipeline.ingest import StreamRecord

    batches: list[list[Any]] = [[]]
    seen: set[str] = set()
    for number, (customer, data) in enumerate(records):
        if customer in seen or len(batches[-1]) == BATCH:
            batches.append([])
            seen = set()
        batches[-1].append(StreamRecord(f"{number:021d}", customer, data, shard="shardId-000000000000"))
        seen.add(customer)
    return [batch for batch in batches if batch]


def real_shaped(customers: int) -> list[list[Any]]:
    from bench import real_traffic
    from cdp.core.events import parse_record

    workload = real_traffic.batches(customers, 3)
    messages = [data for sessions in workload.histories.values() for session in sessions for data in session]
    messages += workload.messages
    events = sorted(((parse_record(data), data) for data in messages), key=lambda pair: pair[0].timestamp)
    return one_per_customer((event.customer_id, data) for event, data in events)


def bench_workload(customers: int) -> list[list[Any]]:
    from bench import core_speed
    from cdp.core.events import parse_record
    from cdp.pipeline.ingest import StreamRecord

    per_customer = core_speed.workload(customers, 20)  # one customer's 20 records per list
    batches = []
    for first in range(0, len(per_customer), BATCH // 20):
        records = [data for group in per_customer[first:first + BATCH // 20] for data in group]
        batches.append([StreamRecord(f"{first:08d}{n:04d}", parse_record(d).customer_id, d) for n, d in
                        enumerate(records)])
    return sorted(batches, key=lambda batch: max(parse_record(r.data).timestamp for r in batch))


def order_history(orders: int, customers: int) -> list[list[Any]]:
    from cdp.core.events import parse_record
    from cdp_dev import order_history as history

    shape = history.HistoryShape(orders=orders, customers=customers, months=18, seed=7,
                                 end=datetime(2026, 11, 1, tzinfo=UTC))
    lines = [json.dumps(message).encode() for message in history.history(shape)]
    events = [(parse_record(line), line) for line in lines]
    events.sort(key=lambda pair: pair[0].timestamp)
    return one_per_customer((event.customer_id, data) for event, data in events)


class Publisher:
    def publish(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        return []


def changes_cpu_s_per_record(images: Sequence[tuple[dict[str, Any] | None, dict[str, Any]]], catalogue: Any) -> float:
    """The changes handler's process time per table stream record (decode, diff, index, bus entries), best of 3."""
    from cdp.aws.dynamo import serialise_item
    from cdp_dev.handlers import load_handler
    from cdp_dev.lambda_events import stream_envelope
    from cdp_dev.memory import MemoryMembersIndex

    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    handler = load_handler(ROOT, "changes")
    records = []
    for number, (old, new) in enumerate(images):
        record: dict[str, Any] = {"eventID": f"e{number}", "eventName": "MODIFY" if old else "INSERT",
                                  "eventSource": "aws:dynamodb",
                                  "dynamodb": {"Keys": {"customer_id": {"S": new["customer_id"]}},
                                               "NewImage": serialise_item(new), "SequenceNumber": f"{number:021d}",
                                               "StreamViewType": "NEW_AND_OLD_IMAGES"}}
        if old:
            record["dynamodb"]["OldImage"] = serialise_item(old)
        records.append(record)
    envelopes = [stream_envelope(records[i:i + BATCH], region="us-east-1", stream_arn="arn:aws:dynamodb:us-east-1:"
                                 "000000000000:table/cdp-profiles/stream/2026-01-01T00:00:00.000")
                 for i in range(0, len(records), BATCH)]
    best = float("inf")
    for _ in range(3):
        deps = handler.Dependencies(catalogue=catalogue, index=MemoryMembersIndex(), publisher=Publisher(),
                                    bus_name="cdp-bus")
        started = time.process_time()
        for envelope in envelopes:
            handler.handle(envelope, None, deps)
            handler.metrics.clear_metrics()
        best = min(best, time.process_time() - started)
    return best / max(len(records), 1)


def measure(quick: bool = False) -> dict[str, Any]:
    from bench import pipeline_model, real_traffic
    from cdp.core.catalogue import load_catalogue
    from cdp.core.engine import Engine

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    integrations = pipeline_model.integration_segments(context)
    consumed = set().union(*integrations.values()) if integrations else set()
    shipped = load_catalogue(ROOT / "segments")
    traffic: dict[str, tuple[list[list[Any]], Any]] = {
        "bench": (bench_workload(100 if quick else 300), shipped),
        "real_shaped": (real_shaped(300 if quick else 1000), real_traffic.catalogue(16)),
    }
    traffic["order_history"] = (order_history(7000 if quick else 20_000, 2300 if quick else 6600), shipped)
    figures: dict[str, Any] = {"consumed_segments": sorted(consumed)}
    for name, (batches, catalogue) in traffic.items():
        engine = Engine(catalogue)
        started = time.process_time()
        counts = pipeline_model.simulate(batches, engine, None, integrations)
        consumed_counts = pipeline_model.simulate(batches, Engine(catalogue), consumed, integrations)
        figures[name] = {"events": counts.events, "batches": len(batches), "quarantined": counts.quarantined,
                         "simulated_cpu_s": time.process_time() - started,
                         "counts": counts, "counts_consumed": consumed_counts,
                         "changes_cpu_s_per_record": changes_cpu_s_per_record(counts.store.images, catalogue)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Count every request and transition of three traffic shapes.")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.quick)
    for name, shape in figures.items():
        if isinstance(shape, dict):
            print(name, shape["events"], "events;", json.dumps({k: round(v, 3) for k, v in
                                                                shape["counts"].per_event().items()}))
            print("   changes cpu us/record", round(shape["changes_cpu_s_per_record"] * 1e6, 1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
