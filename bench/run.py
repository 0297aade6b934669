"""``make bench``: every figure of the benchmark harness in one run, each against its target.

    python -m bench.run [--quick]

Prints a table and writes bench/out/latest.json. bench/README.md says how each figure is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
EVENTS_PER_CUSTOMER_BATCH = 20
BATCH_EVENTS = 100
LAMBDA_GB = 0.5  # the stack's default memory_mb (512)
CHANGES_RECORDS_PER_INVOCATION = 10  # a conservative stream batch at modest traffic


def cost_model(figures: dict[str, Any]) -> dict[str, Any]:
    """US dollars per million events at 20 events per customer per batch, from the measured counts and sizes."""
    from bench import prices

    events = 1_000_000
    customer_batches = events / EVENTS_PER_CUSTOMER_BATCH
    invocations = events / BATCH_EVENTS
    steady = figures["pipeline"]["ingest"]["batch100_customers20_again"]
    transitions = events * steady["transitions_per_event"]
    item_kb = math.ceil(figures["profile.bytes_typical"] / 1024)
    record_bytes = figures["core"]["record_bytes_mean"]
    core_s = figures["core"]["us_per_event_catalogue"] / 1e6
    serialise_s = figures["pipeline"]["serialise_us_per_profile"] / 1e6
    wait = prices.LATENCY_SECONDS
    per_batch_customers = BATCH_EVENTS / EVENTS_PER_CUSTOMER_BATCH
    ingest_seconds = (BATCH_EVENTS * core_s + per_batch_customers * serialise_s
                      + wait["BatchGetItem"] + per_batch_customers * wait["PutItem"])
    changes_invocations = customer_batches / CHANGES_RECORDS_PER_INVOCATION
    changes_seconds = transitions * wait["TransactWriteItems"] + transitions / 10 * wait["PutEvents"]
    due_customers = customer_batches  # assume every customer batch leaves one deadline that later fires
    timers_queries = figures["timers"]["requests_per_due_customer"] - 1 - 1 / 100  # beyond one Put and its read
    lines = {
        "kinesis ingest (records rounded up to 1 KB)": events * prices.KINESIS_ON_DEMAND_INGEST_GB / 1024 ** 2,
        "kinesis retrieval": events * record_bytes / 1024 ** 3 * prices.KINESIS_ON_DEMAND_RETRIEVAL_GB,
        "ingest lambda requests": invocations * prices.LAMBDA_REQUEST,
        "ingest lambda duration": invocations * ingest_seconds * LAMBDA_GB * prices.LAMBDA_ARM_GB_SECOND,
        "profile reads (1 RRU each)": customer_batches * prices.DYNAMODB_READ_REQUEST_UNIT,
        "profile writes (item KB + 2 for the due index)":
            customer_batches * (item_kb + 2) * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "changes lambda": changes_invocations * prices.LAMBDA_REQUEST
                          + changes_seconds * LAMBDA_GB * prices.LAMBDA_ARM_GB_SECOND,
        "members index (transaction: 2 items x 2)": transitions * 4 * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "eventbridge events": transitions * prices.EVENTBRIDGE_CUSTOM_EVENT,
        "eventbridge archive": transitions * 1024 / 1024 ** 3 * prices.EVENTBRIDGE_ARCHIVE_GB,
        "timers sweep (profile read + write + due index)":
            due_customers * ((1 + timers_queries) * prices.DYNAMODB_READ_REQUEST_UNIT
                             + (item_kb + 2) * prices.DYNAMODB_WRITE_REQUEST_UNIT),
        "table stream reads by lambda": 0.0,
    }
    return {"usd_per_million_events": sum(lines.values()), "lines": lines,
            "assumptions": {"events_per_customer_per_batch": EVENTS_PER_CUSTOMER_BATCH,
                            "transitions_per_event": steady["transitions_per_event"],
                            "lambda_memory_gb": LAMBDA_GB, "profile_item_kb": item_kb,
                            "deadlines_fired_per_customer_batch": 1,
                            "latency_seconds": wait, "prices_region": prices.REGION, "prices_taken": prices.TAKEN},
            "fixed_monthly_usd": {"kinesis on-demand stream": 730 * prices.KINESIS_ON_DEMAND_STREAM_HOUR}}


def measure(quick: bool) -> dict[str, Any]:
    from bench import cold_import, core_speed, e2e_latency, pipeline_requests, profile_size, timers_sweep
    from cdp.core.catalogue import load_catalogue
    from cdp.core.engine import Engine
    from cdp.core.events import parse_record
    from cdp.core.profile import Profile, item_size

    figures: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpu": platform.machine()},
                               "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    core = core_speed.measure()
    batches = core_speed.workload(300, 20)
    engine = Engine(load_catalogue(ROOT / "segments"))

    def fold_catalogue() -> None:
        for records in batches:
            parsed = [parse_record(r) for r in records]
            engine.apply(Profile(parsed[0].customer_id), parsed, parsed[-1].timestamp)

    core["us_per_event_catalogue"] = core_speed.best_of(3, fold_catalogue) / (300 * 20) * 1e6
    core["record_bytes_mean"] = sum(len(r) for b in batches for r in b) / (300 * 20)
    figures["core"] = core
    engine = Engine(load_catalogue(ROOT / "segments"))
    figures["profile.bytes_typical"] = item_size(profile_size.typical_profile(engine).to_item())
    heavy, _ = profile_size.heavy_profile(engine, 100_000 if quick else 1_000_000)
    figures["profile.bytes_1m_events"] = item_size(heavy.to_item())
    figures["pipeline"] = pipeline_requests.measure()
    figures["timers"] = timers_sweep.measure((1_000, 10_000) if quick else (1_000, 10_000, 100_000))
    figures["cold_import_ms"] = cold_import.measure(3 if quick else 5)
    figures["e2e"] = e2e_latency.measure(60 if quick else 200)
    return figures


def summarise(figures: dict[str, Any]) -> dict[str, Any]:
    ingest = figures["pipeline"]["ingest"]
    cold = figures["cold_import_ms"]
    summary = {
        "ingest.requests_per_event": {k: v["requests_per_event"] for k, v in ingest.items()},
        "ingest.floor_requests_per_event": {k: v["floor_requests_per_event"] for k, v in ingest.items()},
        "core.us_per_event": figures["core"]["us_per_event"],
        "core.json_floor_us_per_event": figures["core"]["json_floor_us_per_event"],
        "profile.bytes_typical": figures["profile.bytes_typical"],
        "profile.bytes_1m_events": figures["profile.bytes_1m_events"],
        "api.requests_per_get_profile": figures["pipeline"]["api"]["requests_per_get_profile"],
        "cold_import_ms": cold,
        "timers.requests_per_due_customer": figures["timers"]["requests_per_due_customer"],
        "timers.requests_idle": figures["timers"]["requests_idle"],
        "e2e.p50_ms": figures["e2e"]["p50_ms"],
        "e2e.p95_ms": figures["e2e"]["p95_ms"],
        "cost.usd_per_million_events": figures["cost"]["usd_per_million_events"],
    }
    floor = cold["boto3_floor"]
    checks = [
        ("ingest requests / floor (batch 100, 20 customers)", ingest["batch100_customers20"]["ratio_to_floor"],
         "<= 1.05", ingest["batch100_customers20"]["ratio_to_floor"] <= 1.05),
        ("ingest requests / floor (batch 100, 100 customers)", ingest["batch100_customers100"]["ratio_to_floor"],
         "<= 1.05", ingest["batch100_customers100"]["ratio_to_floor"] <= 1.05),
        ("core µs/event, 50 segments / json floor",
         figures["core"]["us_per_event"]["50"] / figures["core"]["json_floor_us_per_event"], "<= 10",
         figures["core"]["us_per_event"]["50"] / figures["core"]["json_floor_us_per_event"] <= 10),
        ("profile bytes, typical", figures["profile.bytes_typical"], "<= 2048",
         figures["profile.bytes_typical"] <= 2048),
        ("profile bytes, 1M events", figures["profile.bytes_1m_events"], "<= 20480",
         figures["profile.bytes_1m_events"] <= 20480),
        ("DynamoDB reads per GET profile", figures["pipeline"]["api"]["dynamodb_reads_per_get_profile"], "== 1",
         figures["pipeline"]["api"]["dynamodb_reads_per_get_profile"] == 1),
        *[(f"cold import ms, {name}", value, f"<= {1.5 * floor + 150:.0f}", value <= 1.5 * floor + 150)
          for name, value in cold.items() if name != "boto3_floor"],
        ("timers requests per due customer, spread 1k..100k", figures["timers"]["requests_per_due_customer_spread"],
         "<= 1.10", figures["timers"]["requests_per_due_customer_spread"] <= 1.10),
        ("timers idle requests constant over table size", figures["timers"]["requests_idle"], "same at every size",
         figures["timers"]["requests_idle_constant"]),
        ("local e2e p95 ms", figures["e2e"]["p95_ms"], "< 1000",
         figures["e2e"]["p95_ms"] is not None and figures["e2e"]["p95_ms"] < 1000),
        ("cost USD per million events", figures["cost"]["usd_per_million_events"], "< 1.00",
         figures["cost"]["usd_per_million_events"] < 1.0),
    ]
    summary["targets"] = [{"figure": name, "value": value, "target": target, "met": bool(met)}
                          for name, value, target, met in checks]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark and check each figure against its target.")
    parser.add_argument("--quick", action="store_true", help="smaller runs (100k-event profile, 60 e2e events)")
    args = parser.parse_args(argv)
    figures = measure(args.quick)
    figures["cost"] = cost_model(figures)
    summary = summarise(figures)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps({**summary, "details": figures}, indent=2, default=str))
    width = max(len(t["figure"]) for t in summary["targets"])
    print(f"{'figure':<{width}}  {'measured':>12}  {'target':<20} result")
    for target in summary["targets"]:
        value = target["value"]
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{target['figure']:<{width}}  {shown:>12}  {target['target']:<20} {'pass' if target['met'] else 'MISS'}")
    print("\ncost per million events, by line (USD):")
    for line, usd in figures["cost"]["lines"].items():
        print(f"  {line:<52} {usd:8.4f}")
    print(f"\nwritten: {OUT / 'latest.json'}")
    return 0 if all(t["met"] for t in summary["targets"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
