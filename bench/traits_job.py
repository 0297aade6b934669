"""Measures the computed-traits job (kind ``traits``): CPU, requests and bytes per profile, and its daily cost at
1M and 10M profiles.

    python -m bench.traits_job [--profiles 3000] [--quick] [--full]

Stored profiles with an order history (:mod:`cdp_dev.planted_history`, folded day by day in event time by the real
engine and the shipped catalogue, as :mod:`bench.models` does) go through the real job engine
(:class:`cdp.pipeline.jobs.JobEngine`: ``advance``, ``work`` over every scan segment, ``finish``, per phase) on one
thread, the way one Step Functions child execution works one scan segment, with the real trainer
(:mod:`cdp.models`). The scan hands each page over as DynamoDB returns it and decodes it with the Lambda adapter's
decoder; a write encodes the profile as the adapter does (:mod:`bench.backfill`'s table).

Three runs: the first (nearly every profile gets its traits: written), a rerun the same day (a new job, so a new
training sample order and model version: what it rewrites is what the rounding of the traits does not absorb), and
a run one day later in event time with no new events (the daily changed share: recency grows by a day, the models
are retrained). Measured per phase: process CPU per profile of the features and score phases, the training's
absolute CPU seconds at its sample size, Scan requests and read units per profile, profiles written and their write
units, the results objects (S3 PUTs, GETs and bytes), the Step Functions transitions.

The training reads a bounded sample (the job's ``sample`` option, 20,000 by default, at most 200,000), so its time
does not grow with the population. Its fit time at the default sample and above is measured on rows drawn with
replacement from the measured ones, jittered (``fit_sizes``), and extrapolated linearly to the 200,000 maximum.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import prices
from bench.backfill import StoredTable, TableScan, TableStore
from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.profile import Profile
from cdp.pipeline.jobs import DEFAULT_SAMPLE, MAX_SAMPLE, TRAITS, JobEngine, start_job
from cdp.pipeline.traits import ScikitTrainer
from cdp_dev.memory_definitions import InMemoryDefinitionStore
from cdp_dev.memory_jobs import MemoryJobStore
from cdp_dev.planted_history import planted_history

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PROFILES, QUICK_PROFILES = 3_000, 800
FIT_SIZES, QUICK_FIT_SIZES, FULL_FIT_SIZES = (5_000, 20_000), (5_000,), (20_000, 50_000)
SCAN_SEGMENTS = 4  # here; the stack runs job_concurrency segments (below)
JOB_CONCURRENCY = 16  # the stack's scan segments run in parallel
PAGE_ITEMS = 100  # the job engine's page
JOBS_MEMORY_MB = 1769  # the jobs function's memory (cdk/jobs.py): one vCPU
WRITES_IN_FLIGHT = 16  # the jobs function's write pool
INVOCATION_BUDGET_S = 840  # a work invocation hands its cursor on after ~14 of Lambda's 15 minutes
LAMBDA_LIMIT_S = 900
DAY_S = 86_400.0
SCALES = (1_000_000, 10_000_000)
RUNS_PER_MONTH = 30  # daily
# Step Functions Standard state transitions per work invocation (Work, SegmentDone, the Map's own) and per phase
# of the parent (Advance, JobDone, Segments, Finish), as bench/backfill.py counts them.
TRANSITIONS_PER_WORK = 3
TRANSITIONS_PER_PHASE = 4


class CountedResults:
    """The job's partial results and the prediction model's bytes (S3 objects in AWS), kept and counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.puts = self.gets = self.put_bytes = self.get_bytes = 0

    def put(self, job_id: str, phase: str, part: str, document: dict[str, Any]) -> None:
        body = json.dumps(document)
        self.puts += 1
        self.put_bytes += len(body)
        self.objects.setdefault((job_id, phase), {})[part] = json.loads(body)

    def parts(self, job_id: str, phase: str) -> list[dict[str, Any]]:
        found = list(self.objects.get((job_id, phase), {}).values())
        self.gets += len(found)
        self.get_bytes += sum(len(json.dumps(document)) for document in found)
        return found

    def tally(self) -> dict[str, int]:
        return {"puts": self.puts, "gets": self.gets, "put_bytes": self.put_bytes, "get_bytes": self.get_bytes}


class NoRunner:
    def start(self, job_id: str) -> None:
        pass


def stored_profiles(customers: int, seed: int = 1) -> tuple[list[dict[str, Any]], float]:
    """Each planted customer's profile as stored after their history (folded day by day), and the history's end."""
    history = planted_history(customers, seed=seed)
    engine = Engine(load_catalogue(ROOT / "segments"))
    by_customer: dict[str, list[Any]] = {}
    for message in history.events:
        by_customer.setdefault(str(message["userId"]), []).append(normalise(message))
    items = []
    for customer_id, events in by_customer.items():
        profile = Profile(customer_id)
        days = 0
        for _, day in itertools.groupby(events, key=lambda event: int(event.timestamp // DAY_S)):
            batch = list(day)
            engine.apply(profile, batch, batch[-1].timestamp)
            days += 1
        profile.version = days  # one stored write per day with events
        items.append(profile.to_item())
    return items, history.end


def _table_tally(table: StoredTable) -> dict[str, float]:
    return {"scans": table.requests["Scan"], "read_units": table.read_units, "writes": table.requests["PutItem"],
            "write_units": table.write_units, "transitions": table.transitions}


def _difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0) for name in after}


class Run:
    """One traits job over every scan segment on this thread, each phase's work and finish timed and counted."""

    def __init__(self, table: StoredTable, definitions: InMemoryDefinitionStore, now: float) -> None:
        catalogue = load_catalogue(ROOT / "segments")
        self.table, self.now = table, now
        self.results = CountedResults()
        self.jobs = MemoryJobStore()
        self.engine = JobEngine(jobs=self.jobs, scan=TableScan(table), profiles=TableStore(table),
                                results=self.results, definitions=definitions,
                                # as a function's live catalogue gives it: with the statistics and models stored last
                                engine_for=lambda version: Engine(catalogue, stats=definitions.population()),
                                now=lambda: now, scan_segments=SCAN_SEGMENTS, page_size=PAGE_ITEMS,
                                trainer=ScikitTrainer())
        self.phases: dict[str, dict[str, Any]] = {}

    def _work(self, job_id: str, phase: str, total: int, segments: Sequence[int]) -> int:
        works = 0
        for segment in segments:
            cursor: Any = ""
            while True:
                works += 1
                worked = self.engine.work(job_id, phase, segment, total, cursor)
                if worked.done:
                    break
                cursor = worked.cursor
        return works

    def run(self) -> dict[str, Any]:
        job = start_job(self.jobs, NoRunner(), TRAITS, {}, self.now)
        advanced = self.engine.advance(job.job_id)
        while not advanced.done:
            table_before, results_before = _table_tally(self.table), self.results.tally()
            started = time.process_time()
            works = self._work(job.job_id, advanced.phase, advanced.total, advanced.segments)
            worked = time.process_time()
            self.engine.finish(job.job_id, advanced.phase)
            finished = time.process_time()
            self.phases[advanced.phase] = {
                "work_cpu_s": worked - started, "finish_cpu_s": finished - worked, "works": works,
                "table": _difference(_table_tally(self.table), table_before),
                "results": _difference(self.results.tally(), results_before)}
            advanced = self.engine.advance(job.job_id, advanced.phase)
        done = self.jobs.get(job.job_id)
        assert done is not None and done.status == "done", done
        return {"job_id": job.job_id, "counts": dict(done.counts), "result": done.result, "phases": self.phases}


def summary(run: Mapping[str, Any], profiles: int) -> dict[str, Any]:
    """Per-profile figures of one run."""
    phases = run["phases"]
    features, score = phases["features"], phases["score"]
    result = run["result"]
    both = [features, score]
    return {
        "written": int(run["counts"].get("written", 0)),
        "written_share": int(run["counts"].get("written", 0)) / profiles,
        "conflicts": int(run["counts"].get("conflicts", 0)),
        "features_cpu_us_per_profile": features["work_cpu_s"] / profiles * 1e6,
        "score_cpu_us_per_profile": score["work_cpu_s"] / profiles * 1e6,
        "training_cpu_s": features["finish_cpu_s"],
        "training_sample": int(result.get("sample", 0)),
        "scan_requests_per_profile": sum(p["table"]["scans"] for p in both) / profiles,
        "read_units_per_profile": sum(p["table"]["read_units"] for p in both) / profiles,
        "write_units_per_written_profile": score["table"]["write_units"] / max(1, score["table"]["writes"]),
        "transitions": int(score["table"]["transitions"]),
        "results": {name: sum(p["results"][name] for p in both) for name in features["results"]},
        "works": sum(p["works"] for p in both),
        "step_functions_transitions": sum(p["works"] for p in both) * TRANSITIONS_PER_WORK
        + len(both) * TRANSITIONS_PER_PHASE,
        "models": {name: {k: v for k, v in model.items() if k in ("version", "k", "chosen_by", "metrics", "skipped")}
                   for name, model in (result.get("models") or {}).items()},
    }


# ---- the training's time at larger samples -------------------------------------------------------------------


def _jittered(rows: Sequence[Any], size: int, rng: random.Random) -> list[Any]:
    """``size`` rows drawn with replacement, each float figure moved by up to 5% (so k-means sees no duplicates)."""
    def move(features: Any) -> Any:
        if features is None:
            return None
        return replace(features, recency_days=features.recency_days * rng.uniform(0.95, 1.05),
                       monetary=features.monetary * rng.uniform(0.95, 1.05),
                       engagement=features.engagement * rng.uniform(0.95, 1.05))

    drawn = []
    for number in range(size):
        row = rng.choice(rows)
        drawn.append(replace(row, customer_id=f"drawn-{number}", before=move(row.before), earlier=move(row.earlier),
                             now=move(row.now)))
    return drawn


def fit_seconds(items: Sequence[dict[str, Any]], at: float, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """CPU and wall seconds of the two fits (clusters by silhouette, predictions) at each sample size."""
    from cdp.models import fit_clusters, fit_predictions, training_row

    rows = [row for item in items if (row := training_row(Profile.from_item(item), at)) is not None]
    rng = random.Random(7)
    measured = []
    for size in sizes:
        drawn = _jittered(rows, size, rng)
        started, wall = time.process_time(), time.perf_counter()
        fit_clusters([row.now.vector() for row in drawn], version=1, trained_at=int(at))
        clustered = time.process_time()
        fit_predictions(drawn, version=1, trained_at=int(at))
        measured.append({"rows": size, "clusters_cpu_s": clustered - started,
                         "predictions_cpu_s": time.process_time() - clustered,
                         "cpu_s": time.process_time() - started, "wall_s": time.perf_counter() - wall})
    return measured


def sample_row_bytes(results: CountedResults) -> dict[str, float]:
    """A training-sample row's bytes in a features part (JSON) and parsed in the finish's memory (Python)."""
    import tracemalloc

    bodies = [json.dumps(part) for (_, phase), parts in results.objects.items() if phase == "features"
              for part in parts.values()]
    rows = max(1, sum(len(json.loads(body)["sample"]) for body in bodies))
    tracemalloc.start()
    try:
        parsed = [json.loads(body) for body in bodies]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del parsed
    return {"json": sum(len(body) for body in bodies) / rows, "python": held / rows}


def finish_memory_mb(sample: int, parts: int, row_bytes: float) -> float:
    """What the finish holds at once: the bounded heap of ``sample`` rows plus the one part being read (up to
    ``sample`` rows of its own); ``parts`` no longer multiplies it, and is kept for the report's label."""
    return 2 * sample * row_bytes / 2**20


def training_at(sample: int, fits: Sequence[Mapping[str, Any]], measured_s: float, measured_rows: int) -> float:
    """The training's seconds at ``sample`` rows: linear in the rows from the largest fit measured."""
    if fits:
        largest = max(fits, key=lambda fit: fit["rows"])
        return float(largest["cpu_s"]) * sample / int(largest["rows"])
    return measured_s * sample / max(1, measured_rows)


# ---- the cost model ------------------------------------------------------------------------------------------


def cost_at(population: int, first: Mapping[str, Any], daily: Mapping[str, Any], training_s: float,
            item_bytes: float) -> dict[str, Any]:
    """One daily run over ``population`` profiles: US dollars (per run and per month) and its duration."""
    changed = daily["written_share"] * population
    cpu_per_profile = (daily["features_cpu_us_per_profile"] + daily["score_cpu_us_per_profile"]) / 1e6
    pages = daily["scan_requests_per_profile"] * population
    waits = pages * prices.LATENCY_SECONDS["Query"] + math.ceil(changed / WRITES_IN_FLIGHT) * \
        prices.LATENCY_SECONDS["PutItem"]
    scan_lambda_s = cpu_per_profile * population + waits  # one vCPU at 1,769 MB: CPU seconds are seconds
    per_segment_s = scan_lambda_s / 2 / JOB_CONCURRENCY  # per phase and segment (two phases)
    works = 2 * JOB_CONCURRENCY * max(1, math.ceil(per_segment_s / INVOCATION_BUDGET_S))
    bytes_per_part = first["results"]["put_bytes"] / max(1, first["results"]["puts"])
    objects = works // 2 + 1  # a features part per work invocation, the model's bytes
    gets = objects + works // 2  # the finish reads the parts; each score invocation reads the model
    lambda_s = scan_lambda_s + training_s
    lines = {
        "scan_read_units (two scans)": daily["read_units_per_profile"] * population
        * prices.DYNAMODB_READ_REQUEST_UNIT,
        "profile_writes (changed only)": changed * daily["write_units_per_written_profile"]
        * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "lambda_duration (1,769 MB)": lambda_s * JOBS_MEMORY_MB / 1024 * prices.LAMBDA_ARM_GB_SECOND,
        "lambda_requests": (works + 3 * 2) * prices.LAMBDA_REQUEST,
        "step_functions": (works * TRANSITIONS_PER_WORK + 2 * TRANSITIONS_PER_PHASE)
        * prices.STEP_FUNCTIONS_STANDARD_TRANSITION,
        "results_objects (S3)": objects * prices.S3_PUT_REQUEST + gets * prices.S3_GET_REQUEST,
        # the changes function's stream record of each write is in the table stream; each transition adds a
        # members write and a bus entry
        "transitions_downstream": daily["transitions"] / max(1, daily["profiles"]) * population
        * (prices.DYNAMODB_WRITE_REQUEST_UNIT + prices.EVENTBRIDGE_CUSTOM_EVENT),
    }
    per_run = sum(lines.values())
    first_run = per_run + (first["written_share"] - daily["written_share"]) * population \
        * first["write_units_per_written_profile"] * prices.DYNAMODB_WRITE_REQUEST_UNIT
    duration_s = scan_lambda_s / JOB_CONCURRENCY + training_s
    return {"profiles": population, "usd_per_run": per_run, "usd_per_month": per_run * RUNS_PER_MONTH,
            "usd_first_run": first_run, "lines": lines, "changed_profiles_per_run": changed,
            "lambda_gb_s_per_run": lambda_s * JOBS_MEMORY_MB / 1024, "training_s": training_s,
            "run_minutes_at_16_segments": duration_s / 60, "work_invocations": works,
            "segment_phase_minutes": per_segment_s / 60, "results_bytes_per_part": bytes_per_part,
            "mean_item_bytes": item_bytes}


def measure(profiles: int = PROFILES, fit_sizes: Sequence[int] = FIT_SIZES, seed: int = 1) -> dict[str, Any]:
    started = time.perf_counter()
    items, end = stored_profiles(profiles, seed)
    table = StoredTable(items, SCAN_SEGMENTS)
    definitions = InMemoryDefinitionStore()
    runs = {}
    row_bytes: dict[str, float] = {}
    for name, at in (("first", end), ("rerun_same_day", end), ("next_day", end + DAY_S)):
        run = Run(table, definitions, at)
        runs[name] = {**summary(run.run(), profiles), "profiles": profiles}
        row_bytes = row_bytes or sample_row_bytes(run.results)
    fits = fit_seconds(items, end, fit_sizes)
    daily = runs["next_day"]
    training = {
        "measured_cpu_s": daily["training_cpu_s"], "measured_sample": daily["training_sample"],
        "fits": fits,
        "default_sample": DEFAULT_SAMPLE,
        "default_sample_s": training_at(DEFAULT_SAMPLE, fits, daily["training_cpu_s"], daily["training_sample"]),
        "max_sample": MAX_SAMPLE,
        "max_sample_s_extrapolated": training_at(MAX_SAMPLE, fits, daily["training_cpu_s"],
                                                 daily["training_sample"]),
        "lambda_limit_s": LAMBDA_LIMIT_S,
        "sample_row_bytes": row_bytes,
        # the parts the finish reads: one per work invocation of the features phase (16 at these sizes)
        "finish_memory_mb": {f"{sample:,} rows, {JOB_CONCURRENCY} parts": finish_memory_mb(
            sample, JOB_CONCURRENCY, row_bytes["python"]) for sample in (DEFAULT_SAMPLE, MAX_SAMPLE)},
        "memory_mb": JOBS_MEMORY_MB,
    }
    item_bytes = sum(table.sizes.values()) / len(table.sizes)
    costs = {f"{scale:,}": cost_at(scale, runs["first"], daily, training["default_sample_s"], item_bytes)
             for scale in SCALES}
    return {"profiles": profiles, "mean_item_bytes": item_bytes, "scan_segments": SCAN_SEGMENTS, "runs": runs,
            "training": training, "cost": costs,
            "assumptions": {"memory_mb": JOBS_MEMORY_MB, "job_concurrency": JOB_CONCURRENCY,
                            "daily_changed_share": "the next-day run's written share (one day later in event "
                                                   "time, no new events, models retrained)",
                            "training": f"the fit at the default sample ({DEFAULT_SAMPLE:,} rows), once per run, "
                                        "whatever the population",
                            "round_trips": "prices.LATENCY_SECONDS (Query for a Scan page, PutItem 16 in flight)",
                            "runs_per_month": RUNS_PER_MONTH, "prices": f"{prices.REGION} {prices.TAKEN}"},
            "total_s": time.perf_counter() - started}


def table_rows(figures: Mapping[str, Any]) -> list[tuple[str, str]]:
    runs, training = figures["runs"], figures["training"]
    first, rerun, daily = runs["first"], runs["rerun_same_day"], runs["next_day"]
    rows = [
        ("features CPU us/profile (next day)", f"{daily['features_cpu_us_per_profile']:.1f}"),
        ("score CPU us/profile (next day)", f"{daily['score_cpu_us_per_profile']:.1f}"),
        ("training CPU s (sample rows)", f"{daily['training_cpu_s']:.2f} ({daily['training_sample']:,})"),
        ("scan requests / RRU per profile (two scans)",
         f"{daily['scan_requests_per_profile']:.4f} / {daily['read_units_per_profile']:.4f}"),
        ("written: first / rerun same day / next day",
         f"{first['written']:,} / {rerun['written']:,} / {daily['written']:,} of {figures['profiles']:,}"),
        ("WRU per written profile", f"{daily['write_units_per_written_profile']:.2f}"),
        ("S3 PUT / GET / bytes put (first run)",
         f"{first['results']['puts']} / {first['results']['gets']} / {first['results']['put_bytes']:,}"),
        ("Step Functions transitions (this run)", str(daily["step_functions_transitions"])),
    ]
    rows += [(f"fit CPU s at {fit['rows']:,} rows (clusters + predictions)",
              f"{fit['cpu_s']:.1f} ({fit['clusters_cpu_s']:.1f} + {fit['predictions_cpu_s']:.1f})")
             for fit in training["fits"]]
    rows.append((f"training s at {training['max_sample']:,} rows (extrapolated; limit {LAMBDA_LIMIT_S})",
                 f"{training['max_sample_s_extrapolated']:.0f}"))
    rows += [(f"finish memory MB, {name} (of {JOBS_MEMORY_MB})", f"{mb:,.0f}")
             for name, mb in training["finish_memory_mb"].items()]
    for scale, cost in figures["cost"].items():
        rows.append((f"{scale} profiles: USD per run / per month",
                     f"{cost['usd_per_run']:.2f} / {cost['usd_per_month']:.2f}"))
        rows.append((f"{scale} profiles: run minutes at 16 segments", f"{cost['run_minutes_at_16_segments']:.1f}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PROFILES} profiles, one fit at 5,000 rows")
    parser.add_argument("--full", action="store_true", help="fits at 20,000 and 50,000 rows")
    args = parser.parse_args(argv)
    sizes = FULL_FIT_SIZES if args.full else QUICK_FIT_SIZES if args.quick else FIT_SIZES
    figures = measure(args.profiles or (QUICK_PROFILES if args.quick else PROFILES), sizes)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "traits_job.json").write_text(json.dumps(figures, indent=2))
    print(f"{figures['profiles']:,} profiles of {figures['mean_item_bytes']:.0f} bytes; {figures['total_s']:.1f} s")
    for name, value in table_rows(figures):
        print(f"{name:<62} {value:>28}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
