"""``make bench``: every figure of the benchmark harness in one run, each against its target.

    python -m bench.run [--quick]

Prints a table and writes bench/out/latest.json. bench/README.md says how each figure is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LAMBDA_MEMORY_MB = 512  # the stack's default memory_mb
INGEST_MEMORY_MB = 1769  # the stack's default ingest_memory_mb (one vCPU)
WRITE_CONCURRENCY = 16  # the ingest's and timers' default CDP_WRITE_CONCURRENCY
COLD_IMPORT_RATIO = 2.0  # a handler's init import against a bare ``import boto3``, same run
COLLECTOR_MEMORY_MB = 512  # the stack's default collector_memory_mb
COLLECTOR_SHAPES = {"browser": "analytics_js", "server": "analytics_python"}  # cost shape -> measured shape
COLLECTOR_BROWSER_SHARE = 0.8  # the stated mix: 80% of events from browsers, 20% from servers

# The figures the README reported before this harness measured real-shaped traffic (bench/README.md).
PREVIOUS = {"core_us_per_event": 27.9, "usd_per_million_events": 0.76, "transitions_per_event": 0.11}


def cost_models(figures: dict[str, Any]) -> dict[str, Any]:
    """US dollars per million events for each traffic shape, from the counts and CPU times of this run."""
    from bench import pipeline_model, pseudonyms

    handler = figures["ingest_handler"]["by_segments"]["16"]
    client_s = max(0.0, handler["handler_cpu_us_per_event"] - handler["core_us_per_event"]) / 1e6
    timers_s = statistics.mean(d["cpu_us_per_due_customer"] for d in figures["timers"]["due"]) / 1e6
    core_s = {"bench": figures["core"]["us_per_event_catalogue"] / 1e6,
              "real_shaped": figures["real_traffic"]["us_per_event"]["16"] / 1e6}
    models: dict[str, Any] = {}
    for shape, measured in figures["traffic"].items():
        if not isinstance(measured, dict):
            continue
        for published in ("all", "routed"):
            for integrations in (False, True):
                counts = measured["counts"] if published == "all" else measured["counts_consumed"]
                model = pipeline_model.cost(
                    counts, ingest_cpu_s_per_event=core_s.get(shape, core_s["real_shaped"]),
                    client_cpu_s_per_write=client_s, changes_cpu_s_per_record=measured["changes_cpu_s_per_record"],
                    timers_cpu_s_per_due=timers_s, memory_mb=LAMBDA_MEMORY_MB, concurrency=WRITE_CONCURRENCY,
                    integrations_enabled=integrations, ingest_memory_mb=INGEST_MEMORY_MB)
                key = f"{shape}.published_{published}" + (".integrations" if integrations else "")
                models[key] = model
    real = models["real_shaped.published_all"]
    models["fixed_monthly_usd"] = pipeline_model.fixed_monthly(
        1_000_000, real["assumptions"]["mean_item_bytes"], 30e6, 30e6 * real["per_event"]["bus_entries"], 4)
    traits = figures["traits_job"]["cost"]["1,000,000"]  # daily: periodic whatever the traffic
    models["fixed_monthly_usd"]["traits job: a daily run (1,000,000 profiles, bench/traits_job.py)"] = \
        traits["usd_per_month"]
    models["fixed_monthly_usd.pseudonymous_indexes"] = pipeline_model.pseudonym_fixed_monthly()
    pseudonymous = figures["pseudonyms"]  # per event at the real-shaped traffic's measured transitions
    pseudonymous.update(pseudonyms.per_event(pseudonymous["usd_per_million_ids"], real["per_event"]["transitions"]))
    models["collector"] = collector_costs(figures["collector"])
    return models


def collector_costs(collector: dict[str, Any]) -> dict[str, Any]:
    """The collector's US dollars per million events: browsers (one per request), servers (100), the mix."""
    from bench import pipeline_model

    models: dict[str, Any] = {}
    for shape, measured in COLLECTOR_SHAPES.items():
        row = collector["shapes"][measured]
        models[shape] = pipeline_model.collector_cost(
            cpu_s_per_request=row["cpu_s_per_request"], messages_per_request=row["messages_per_request"],
            api_units_per_request=row["api_gateway_units_per_request"], memory_mb=COLLECTOR_MEMORY_MB)
        models[shape]["assumptions"]["measured_shape"] = measured
    models["mix"] = pipeline_model.collector_mix(models["browser"], models["server"], COLLECTOR_BROWSER_SHARE)
    return models


def measure(quick: bool) -> dict[str, Any]:
    from bench import (
        backfill,
        cold_import,
        collector,
        core_speed,
        cost,
        decisions,
        e2e_latency,
        identity,
        ingest_handler,
        local_import,
        models,
        pipeline_requests,
        profile_codec,
        profile_size,
        pseudonyms,
        real_traffic,
        timers_sweep,
        traits_job,
    )
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
    figures["real_traffic"] = real_traffic.measure(300 if quick else 1000, 3, old_workload=False)
    figures["ingest_handler"] = ingest_handler.measure(quick)
    figures["collector"] = collector.measure(quick)
    figures["codec"] = profile_codec.measure(20_000 if quick else 50_000)
    engine = Engine(load_catalogue(ROOT / "segments"))
    figures["profile.bytes_typical"] = item_size(profile_size.typical_profile(engine).to_item())
    heavy, _ = profile_size.heavy_profile(engine, 100_000 if quick else 1_000_000)
    figures["profile.bytes_1m_events"] = item_size(heavy.to_item())
    figures["pipeline"] = pipeline_requests.measure()
    figures["timers"] = timers_sweep.measure((1_000, 10_000) if quick else (1_000, 10_000, 100_000))
    figures["traffic"] = cost.measure(quick)
    figures["cold_import_ms"] = cold_import.measure(3 if quick else 5)
    figures["e2e"] = e2e_latency.measure(60 if quick else 200)
    figures["local_import"] = local_import.measure(quick)
    figures["identity"] = identity.measure(200 if quick else 400)
    figures["pseudonyms"] = pseudonyms.measure(quick)
    figures["backfill"] = backfill.measure(1_000 if quick else 4_000)
    figures["decisions"] = decisions.measure(300 if quick else 1_000)
    figures["models"] = models.measure(models.QUICK_CUSTOMERS if quick else 1_500)
    figures["traits_job"] = traits_job.measure(600 if quick else 1_000, (5_000,) if quick else (20_000,))
    return figures


def _check(name: str, value: Any, target: str, met: bool) -> tuple[str, Any, str, bool]:
    return name, value, target, met


def _reported(name: str, value: Any) -> tuple[str, Any, str, bool]:
    """A figure with no numeric target: met when it was measured (a finite number above zero)."""
    measured = isinstance(value, int | float) and math.isfinite(value) and value > 0
    return name, value, "reported", measured


def summarise(figures: dict[str, Any]) -> dict[str, Any]:
    ingest = figures["pipeline"]["ingest"]
    cold = figures["cold_import_ms"]
    real = figures["real_traffic"]
    handler = figures["ingest_handler"]
    shard = handler["shard"]["by_memory_mb"][str(INGEST_MEMORY_MB)]
    costs = figures["cost"]
    imported = figures["local_import"]
    found, predicted = figures["models"]["clusters"], figures["models"]["predictions"]
    collected = figures["collector"]["shapes"]
    collector_costs = costs["collector"]
    summary: dict[str, Any] = {
        "ingest.requests_per_event": {k: v["requests_per_event"] for k, v in ingest.items()},
        "core.us_per_event": figures["core"]["us_per_event"],
        "core.json_floor_us_per_event": figures["core"]["json_floor_us_per_event"],
        "real.core_us_per_event": real["us_per_event"], "real.json_floor_us_per_event": real["json_floor_us_per_event"],
        "real.handler_to_core": {k: v["handler_to_core"] for k, v in handler["by_segments"].items()},
        "shard.events_per_second": {m: r["events_per_second"] for m, r in handler["shard"]["by_memory_mb"].items()},
        "shard.best_events_per_second_per_dollar_mb": handler["shard"]["best_events_per_second_per_dollar_mb"],
        "profile.bytes_typical": figures["profile.bytes_typical"],
        "profile.bytes_1m_events": figures["profile.bytes_1m_events"],
        "cold_import_ms": cold,
        "cost.usd_per_million_events": {k: v["usd_per_million_events"] for k, v in costs.items()
                                        if "usd_per_million_events" in v},
        "collector.requests_per_cpu_second": {k: v["requests_per_cpu_second"] for k, v in collected.items()},
        "collector.messages_per_cpu_second": {k: v["messages_per_cpu_second"] for k, v in collected.items()},
        "collector.cpu_us_per_message": {k: v["cpu_us_per_message"] for k, v in collected.items()},
        "collector.json_floor_us_per_message": figures["collector"]["json_floor_us_per_message"],
        "collector.handler_to_json_floor": {k: v["handler_to_json_floor"] for k, v in collected.items()},
        "collector.pure_to_json_floor": {k: v["pure_to_json_floor"] for k, v in collected.items()},
        "cost.collector_usd_per_million_events": {k: v["usd_per_million_events"]
                                                  for k, v in collector_costs.items()},
        "previous": PREVIOUS,
        "local_import": {k: imported[k] for k in ("events", "seconds", "events_per_s", "last_to_first")},
        "identity.requests_per_merge": figures["identity"]["requests_per_merge"],
        "identity.requests_per_event_after_merge": figures["identity"]["requests_per_event_after_merge"],
        "identity.profile_bytes_after_100_merges": figures["identity"]["profile_bytes_after_100_merges"]["bytes"],
        "pseudonyms.hmac_us_per_id": figures["pseudonyms"]["hmac_us_per_id"],
        "pseudonyms.hmac_to_plain": figures["pseudonyms"]["hmac_to_plain"],
        "pseudonyms.usd_per_million_events": figures["pseudonyms"]["usd_per_million_events"],
        "pseudonyms.fixed_monthly_usd": sum(costs["fixed_monthly_usd.pseudonymous_indexes"].values()),
    }
    floor = cold["boto3_floor"]
    bench_cost = costs["bench.published_all"]["usd_per_million_events"]
    real_cost = costs["real_shaped.published_all"]["usd_per_million_events"]
    with_collector = real_cost + collector_costs["browser"]["usd_per_million_events"]
    summary["cost.real_shaped_plus_collector_browser"] = with_collector
    merged_bytes = figures["identity"]["profile_bytes_after_100_merges"]["bytes"]
    pseudonymous = figures["pseudonyms"]
    traits = {**figures["traits_job"]["cost"]["1,000,000"], **figures["traits_job"]["runs"]["next_day"]}
    traits_training = figures["traits_job"]["training"]
    checks = [
        _check("ingest requests / floor (batch 100, 20 customers)", ingest["batch100_customers20"]["ratio_to_floor"],
               "<= 1.05", ingest["batch100_customers20"]["ratio_to_floor"] <= 1.05),
        _check("ingest requests / floor (batch 100, 100 customers)", ingest["batch100_customers100"]["ratio_to_floor"],
               "<= 1.05", ingest["batch100_customers100"]["ratio_to_floor"] <= 1.05),
        _check("core / json floor, bench workload, 50 segments",
               figures["core"]["us_per_event"]["50"] / figures["core"]["json_floor_us_per_event"], "<= 10",
               figures["core"]["us_per_event"]["50"] / figures["core"]["json_floor_us_per_event"] <= 10),
        *[_check(f"core / json floor, real-shaped, {n} segments", real["ratio_to_json_floor"][n], "<= 10",
                 real["ratio_to_json_floor"][n] <= 10) for n in ("16", "50")],
        _check("core 200 segments / core 50 segments, real-shaped", real["ratio_200_to_50"], "<= 2",
               real["ratio_200_to_50"] <= 2),
        *[_check(f"whole ingest handler / core, real-shaped, {n} segments", v["handler_to_core"], "<= 3",
                 v["handler_to_core"] <= 3) for n, v in handler["by_segments"].items()],
        _check(f"events/s per shard at parallelization 1, {INGEST_MEMORY_MB} MB (modelled)",
               shard["events_per_second"], ">= 1000", shard["events_per_second"] >= 1000),
        *[_reported(f"collector requests/s of one core, {name}", row["requests_per_cpu_second"])
          for name, row in collected.items()],
        *[_reported(f"collector handler per message / json.loads, {name}", row["handler_to_json_floor"])
          for name, row in collected.items()],
        *[_reported(f"pure collector per message / json.loads, {name}", row["pure_to_json_floor"])
          for name, row in collected.items()],
        _check("profile bytes, typical", figures["profile.bytes_typical"], "<= 2048",
               figures["profile.bytes_typical"] <= 2048),
        _check("profile bytes, 1M events", figures["profile.bytes_1m_events"], "<= 20480",
               figures["profile.bytes_1m_events"] <= 20480),
        _check("DynamoDB reads per GET profile", figures["pipeline"]["api"]["dynamodb_reads_per_get_profile"], "== 1",
               figures["pipeline"]["api"]["dynamodb_reads_per_get_profile"] == 1),
        *[_check(f"cold import / boto3 import, {name}", value / floor, f"<= {COLD_IMPORT_RATIO}",
                 value / floor <= COLD_IMPORT_RATIO) for name, value in cold.items() if name != "boto3_floor"],
        _check("timers requests per due customer, spread 1k..100k",
               figures["timers"]["requests_per_due_customer_spread"], "<= 1.10",
               figures["timers"]["requests_per_due_customer_spread"] <= 1.10),
        _check("timers idle requests constant over table size", figures["timers"]["requests_idle"],
               "same at every size", figures["timers"]["requests_idle_constant"]),
        _check("local e2e p95 ms", figures["e2e"]["p95_ms"], "< 1000",
               figures["e2e"]["p95_ms"] is not None and figures["e2e"]["p95_ms"] < 1000),
        _check("cost USD per million events, bench workload", bench_cost, "<= 0.40", bench_cost <= 0.40),
        _check("cost USD per million events, real-shaped", real_cost, "<= 2.00", real_cost <= 2.00),
        _reported("cost USD per million events, real-shaped + collector (browser)", with_collector),
        _check("identity: extra requests per event after a merge (an id-map read per event would be 1)",
               figures["identity"]["extra_requests_per_event_after_merge"], "<= 0.05",
               figures["identity"]["extra_requests_per_event_after_merge"] <= 0.05),
        _reported("identity: requests per merge (profile puts + id-map puts)",
                  sum(figures["identity"]["requests_per_merge"].values())),
        _check("identity: profile bytes after 100 merges", merged_bytes, "<= 40960", merged_bytes <= 40960),
        _reported("pseudonymous indexes: HMAC per stored id / plain id, CPU", pseudonymous["hmac_to_plain"]),
        _reported("pseudonymous indexes: added USD per million events, real-shaped, 4 integrations",
                  pseudonymous["usd_per_million_events"]),
        _reported("backfill: profiles/s per worker (jobs function, 512 MB, waits included)",
                  figures["backfill"]["profiles_per_second_per_worker"]),
        _reported("backfill: CPU per profile / decoding it", figures["backfill"]["to_decode_floor"]),
        _reported("backfill: requests per profile (scan pages + writes)", figures["backfill"]["requests_per_profile"]),
        _reported("backfill: USD per million profiles", figures["backfill"]["cost"]["usd_per_million_profiles"]),
        _check("backfill: profiles a rerun of the same job writes", figures["backfill"]["rerun"]["written"], "== 0",
               figures["backfill"]["rerun"]["written"] == 0),
        _reported("decisions: µs per decision p50, in process", figures["decisions"]["decide_us"]["p50"]),
        _reported("decisions: µs per decision p99, in process", figures["decisions"]["decide_us"]["p99"]),
        _reported("decisions: µs per profile read p50 (decode of the stored item)",
                  figures["decisions"]["read_us"]["p50"]),
        _reported("traits job: USD a month, daily at 1M profiles", traits["usd_per_month"]),
        _reported("traits job: USD a month, daily at 10M profiles", figures["traits_job"]["cost"]["10,000,000"][
            "usd_per_month"]),
        _reported("traits job: share of profiles a run one day later rewrites", traits["written_share"]),
        _reported("traits job: training CPU s at the 20,000-row sample", traits_training["default_sample_s"]),
        _reported("traits job: minutes a run takes at 10M profiles, 16 segments",
                  figures["traits_job"]["cost"]["10,000,000"]["run_minutes_at_16_segments"]),
        _check("models: clusters' adjusted Rand index (k = 4) / unscaled k-means'", found["configured_k4"]["ari"],
               f"> {found['baseline_unscaled_kmeans_ari']}",
               found["configured_k4"]["ari"] > found["baseline_unscaled_kmeans_ari"]),
        _check("models: churn AUC on the time split / the last period's rate", predicted["auc"],
               f"> {predicted['baseline_auc']}", (predicted["auc"] or 0) > (predicted["baseline_auc"] or 1)),
        _check("models: expected orders MAE on the time split / the last period's", predicted["mae"],
               f"< {predicted['baseline_mae']}", (predicted["mae"] or 1e9) < (predicted["baseline_mae"] or 0)),
        _check(f"local stack: {imported['orders']:,}-order history applied, seconds", imported["seconds"], "<= 600",
               imported["seconds"] <= 600),
        _check("local stack: rate over the last 10% / the first 10%", imported["last_to_first"], ">= 0.8",
               imported["last_to_first"] >= 0.8),
    ]
    summary["targets"] = [{"figure": name, "value": value, "target": target, "met": bool(met)}
                          for name, value, target, met in checks]
    return summary


def collector_assumption(model: dict[str, Any]) -> str:
    given = model["assumptions"]
    if "browser_share_of_events" in given:
        return f"{given['browser_share_of_events']:.0%} of events from browsers, the rest from servers"
    return (f"{given['messages_per_request']:g} per request, {given['cpu_ms_per_request']:.2f} ms CPU, "
            f"{given['billed_ms']:.0f} ms billed at {given['memory_mb']} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark and check each figure against its target.")
    parser.add_argument("--quick", action="store_true", help="smaller runs (100k-event profile, 60 e2e events)")
    args = parser.parse_args(argv)
    figures = measure(args.quick)
    figures["cost"] = cost_models(figures)
    for shape in figures["traffic"].values():  # the counts, per event, instead of the simulation's objects
        if isinstance(shape, dict):
            shape["counts"], shape["counts_consumed"] = (shape["counts"].per_event(),
                                                         shape["counts_consumed"].per_event())
    summary = summarise(figures)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps({**summary, "details": figures}, indent=2, default=str))
    width = max(len(t["figure"]) for t in summary["targets"])
    print(f"{'figure':<{width}}  {'measured':>12}  {'target':<20} result")
    for target in summary["targets"]:
        value = target["value"]
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{target['figure']:<{width}}  {shown:>12}  {target['target']:<20} {'pass' if target['met'] else 'MISS'}")
    for shape in ("bench.published_all", "real_shaped.published_all"):
        model = figures["cost"][shape]
        print(f"\n{shape}: USD per million events, by line (transitions per event "
              f"{model['per_event']['transitions']:.3f}):")
        for line, usd in model["lines"].items():
            print(f"  {line:<72} {usd:8.4f}")
    for shape, model in figures["cost"]["collector"].items():
        print(f"\ncollector, {shape}: USD per million events, by line "
              f"({collector_assumption(model)}):")
        for line, usd in model["lines"].items():
            print(f"  {line:<72} {usd:8.4f}")
        print(f"  {'total':<72} {model['usd_per_million_events']:8.4f}")
    print(f"\nreal-shaped + collector (browser): {summary['cost.real_shaped_plus_collector_browser']:.4f} "
          "USD per million events")
    print("\nfixed monthly (USD):")
    for line, usd in figures["cost"]["fixed_monthly_usd"].items():
        print(f"  {line:<72} {usd:8.2f}")
    print("\nwith pseudonymous_indexes, add a month (USD):")
    for line, usd in figures["cost"]["fixed_monthly_usd.pseudonymous_indexes"].items():
        print(f"  {line:<72} {usd:8.2f}")
    print(f"\nwritten: {OUT / 'latest.json'}")
    return 0 if all(t["met"] for t in summary["targets"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
