"""Measures a segment's backfill: profiles per second per worker, and its requests and cost per million profiles.

    python -m bench.backfill [--profiles 4000]

Real-shaped stored profiles (:mod:`bench.real_traffic`: each customer's 20-40-event, 90-day history folded by the
shipped catalogue, as the table holds them) are backfilled for a new segment (``revenue > 100``), so that every
profile is evaluated in full, as after any change of the catalogue. The job runs through the real job engine
(:class:`cdp.pipeline.jobs.JobEngine`: its ``advance``, ``work`` over every scan segment and ``finish``) on one
thread, the way one Step Functions child execution works one scan segment. The scan hands each page over as
DynamoDB returns it (the items' attribute values) and decodes it with the same decoder the Lambda adapter uses;
a write encodes the profile as the adapter does. Process time of the whole job over the profiles, against a
floor: decoding the same items and nothing else.

Counted: Scan requests (100 items each, the engine's page) and their read units (eventually consistent: 0.5 per
4 KB of a page), profile writes (only changed profiles are written) with their billed size, due-index writes
(keys only: 1 to add or drop an entry, 2 to move one), transitions written. A second run of the same job
measures a rerun: it writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import prices
from bench.real_traffic import batches, stored_items
from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import build_catalogue, load_catalogue
from cdp.core.engine import Engine
from cdp.core.profile import Profile, item_size
from cdp.pipeline.jobs import BACKFILL, JobEngine, ScanPage, start_job
from cdp.ports import ConflictError
from cdp_dev.memory_jobs import MemoryJobStore

ROOT = Path(__file__).resolve().parent.parent
SCAN_SEGMENTS = 4
PAGE_ITEMS = 100  # the job engine's page
JOBS_MEMORY_MB = 512  # the jobs function's memory (the stack's memory_mb)
FULL_VCPU_MB = 1769  # Lambda gives one vCPU at 1,769 MB
WRITES_IN_FLIGHT = 16  # the jobs function's write pool
NEW_SEGMENT = {"id": "bench-big-spenders", "name": "Big spenders",
               "condition": {"rfm": {"metric": "revenue", "gt": 100}}}
# Step Functions Standard state transitions per scan segment and loop (Work, SegmentDone, and the Map's own) and
# per phase of the parent (Advance, JobDone, Segments, Finish).
TRANSITIONS_PER_WORK = 3
TRANSITIONS_PER_PHASE = 4


class StoredTable:
    """Items as DynamoDB returns them (attribute values), split into scan segments by a hash of the key."""

    def __init__(self, items: Sequence[dict[str, Any]], segments: int) -> None:
        self.segments: list[list[str]] = [[] for _ in range(segments)]
        self.items: dict[str, dict[str, Any]] = {}
        self.sizes: dict[str, int] = {}
        for plain in items:
            customer_id = str(plain["customer_id"])
            self.items[customer_id] = encode_profile(Profile.from_item(plain))
            self.sizes[customer_id] = item_size(plain)
            digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
            self.segments[int.from_bytes(digest, "big") % segments].append(customer_id)
        self.versions = {cid: int(item["v"]["N"]) for cid, item in self.items.items()}
        self.requests = {"Scan": 0, "PutItem": 0}
        self.read_units = 0.0
        self.write_units = 0
        self.due_index_units = 0
        self.transitions = 0


class TableScan:
    """:class:`cdp.pipeline.jobs.ProfileScan` over :class:`StoredTable`, decoding as the Lambda adapter does."""

    def __init__(self, table: StoredTable) -> None:
        self.table = table

    def page(self, segment: int, total: int, cursor: object | None, limit: int) -> ScanPage:
        table = self.table
        ids = table.segments[segment]
        start = int(str(cursor)) if cursor else 0
        chosen = ids[start:start + limit]
        table.requests["Scan"] += 1
        table.read_units += math.ceil(sum(table.sizes[cid] for cid in chosen) / 4096) * 0.5
        following = start + limit
        return ScanPage([decode_profile(table.items[cid]) for cid in chosen],
                        str(following) if following < len(ids) else None)

    def approximate_count(self) -> int:
        return len(self.table.items)


class TableStore:
    """The profile writes: conditional on the version, encoded as the adapter encodes them, counted."""

    def __init__(self, table: StoredTable) -> None:
        self.table = table

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        return {cid: decode_profile(self.table.items[cid]) for cid in customer_ids if cid in self.table.items}

    def save(self, profile: Profile, expected_version: int) -> None:
        table = self.table
        table.requests["PutItem"] += 1
        if table.versions.get(profile.customer_id, 0) != expected_version:
            raise ConflictError(profile.customer_id)
        old = table.items.get(profile.customer_id)
        item = encode_profile(profile)
        table.items[profile.customer_id] = item
        table.versions[profile.customer_id] = profile.version
        table.transitions += len(profile.transitions)
        table.write_units += max(1, math.ceil(item_size(profile.to_item()) / 1024))
        before, after = (old or {}).get("nd"), item.get("nd")
        if before != after:
            table.due_index_units += 2 if before and after else 1


class KeptResults:
    """The population phases' partial results (S3 objects in AWS), kept and counted."""

    def __init__(self) -> None:
        self.parts_by_phase: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.puts = 0
        self.gets = 0

    def put(self, job_id: str, phase: str, part: str, document: dict[str, Any]) -> None:
        self.puts += 1
        self.parts_by_phase.setdefault((job_id, phase), {})[part] = json.loads(json.dumps(document))

    def parts(self, job_id: str, phase: str) -> list[dict[str, Any]]:
        found = list(self.parts_by_phase.get((job_id, phase), {}).values())
        self.gets += len(found)
        return found


class KeptPopulation:
    """The definitions store's population statistics, as the job stores and reads them."""

    def __init__(self) -> None:
        self.stats: Any = None

    def population(self) -> Any:
        return self.stats

    def put_population(self, stats: Any) -> Any:
        from cdp.ports import CatalogueHead

        self.stats = stats
        return CatalogueHead(1, {}, 1)


class NoRunner:
    def start(self, job_id: str) -> None:
        pass


def run_job(engine_factory: Any, table: StoredTable, now: float, results: KeptResults,
            population: KeptPopulation) -> tuple[float, dict[str, int], list[str]]:
    """One backfill over every scan segment on this thread; its process seconds, counts and phases."""
    jobs = MemoryJobStore()
    job_engine = JobEngine(jobs=jobs, scan=TableScan(table), profiles=TableStore(table), results=results,
                           definitions=population, engine_for=engine_factory,  # type: ignore[arg-type]
                           now=lambda: now,
                           scan_segments=SCAN_SEGMENTS, page_size=PAGE_ITEMS)
    job = start_job(jobs, NoRunner(), BACKFILL, {"segment_id": NEW_SEGMENT["id"], "deliver": "audiences",
                                                 "catalogue_version": 1, "because": "saved"}, now)
    started = time.process_time()
    advanced = job_engine.advance(job.job_id)
    while not advanced.done:
        for segment in advanced.segments:
            cursor: Any = ""
            while True:
                worked = job_engine.work(job.job_id, advanced.phase, segment, advanced.total, cursor)
                if worked.done:
                    break
                cursor = worked.cursor
        job_engine.finish(job.job_id, advanced.phase)
        advanced = job_engine.advance(job.job_id, advanced.phase)
    seconds = time.process_time() - started
    done = jobs.get(job.job_id)
    assert done is not None and done.status == "done", done
    return seconds, dict(done.counts), list(done.phases)


def decode_floor(table: StoredTable) -> float:
    """Process seconds to decode every stored item once, best of 3."""
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        for item in table.items.values():
            decode_profile(item)
        best = min(best, time.process_time() - started)
    return best


def cost_per_million(table: StoredTable, cpu_s: float, profiles: int, written: int, phases: int,
                     results: KeptResults) -> dict[str, Any]:
    """US dollars per million profiles backfilled, from this run's counts and CPU."""
    scale = 1e6 / profiles
    share = JOBS_MEMORY_MB / FULL_VCPU_MB
    pages = table.requests["Scan"]
    waits = pages * prices.LATENCY_SECONDS["Query"] + math.ceil(written / WRITES_IN_FLIGHT) * \
        prices.LATENCY_SECONDS["PutItem"]
    lambda_s = cpu_s / share + waits
    works = SCAN_SEGMENTS * phases  # each segment fits one invocation here; a bigger table loops every ~14 minutes
    lines = {
        "scan_read_units": table.read_units * scale * prices.DYNAMODB_READ_REQUEST_UNIT,
        "profile_writes": table.write_units * scale * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "due_index_writes": table.due_index_units * scale * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "lambda_duration": lambda_s * scale * JOBS_MEMORY_MB / 1024 * prices.LAMBDA_ARM_GB_SECOND,
        "lambda_requests": (works + 3 * phases) * prices.LAMBDA_REQUEST,
        "step_functions": (works * TRANSITIONS_PER_WORK + TRANSITIONS_PER_PHASE * phases)
        * prices.STEP_FUNCTIONS_STANDARD_TRANSITION,
        "results_objects": results.puts * prices.S3_PUT_REQUEST + results.gets * prices.S3_GET_REQUEST,
        # Downstream of each transition: the changes function's members write and its bus entry.
        "transitions_downstream": table.transitions * scale * (prices.DYNAMODB_WRITE_REQUEST_UNIT
                                                                + prices.EVENTBRIDGE_CUSTOM_EVENT),
    }
    return {"usd_per_million_profiles": sum(lines.values()), "lines": lines,
            "lambda_seconds_per_million_profiles": lambda_s * scale,
            "assumptions": {"memory_mb": JOBS_MEMORY_MB, "vcpu_share": share, "scan_segments": SCAN_SEGMENTS,
                            "page_items": PAGE_ITEMS, "round_trips": "prices.LATENCY_SECONDS (Query for a Scan page)",
                            "lambda_requests_and_step_functions": "per job, not per profile"}}


def measure(profiles: int = 4_000) -> dict[str, Any]:
    shipped = load_catalogue(ROOT / "segments")
    workload = batches(customers=profiles, events_per_customer=1)
    items = stored_items(workload, Engine(shipped))
    definitions = [(s.source, s.definition) for s in shipped.all_segments.values()] + [("bench", NEW_SEGMENT)]
    catalogue = build_catalogue(definitions, version=1)
    now = workload.live_end

    population = KeptPopulation()

    def engine_factory(version: int) -> Engine:
        # as a function's live catalogue gives it: with the statistics stored last
        return Engine(catalogue, stats=population.stats)

    table = StoredTable(items, SCAN_SEGMENTS)
    floor_s = decode_floor(table)
    results = KeptResults()
    cpu_s, counts, phases = run_job(engine_factory, table, now, results, population)
    requests = dict(table.requests)
    read_units, write_units = table.read_units, table.write_units
    cost = cost_per_million(table, cpu_s, profiles, counts["written"], len(phases), results)
    for name in table.requests:
        table.requests[name] = 0
    table.read_units = 0.0
    rerun_s, rerun_counts, _ = run_job(engine_factory, table, now, KeptResults(), population)
    lambda_s = cost["lambda_seconds_per_million_profiles"] * profiles / 1e6
    return {
        "profiles": profiles,
        "phases": phases,  # the shipped catalogue reads population statistics, so they follow the backfill
        "mean_item_bytes": sum(table.sizes.values()) / len(table.sizes),
        "counts": counts,
        "requests": requests,
        "requests_per_profile": sum(requests.values()) / profiles,
        "read_units_per_profile": read_units / profiles,
        "write_units_per_written_profile": write_units / max(1, counts["written"]),
        "cpu_us_per_profile": cpu_s / profiles * 1e6,
        "profiles_per_cpu_second": profiles / cpu_s,
        # one worker (a Step Functions child execution's Lambda) at the jobs function's memory, waits included
        "profiles_per_second_per_worker": profiles / lambda_s,
        "decode_floor_us_per_profile": floor_s / profiles * 1e6,
        "to_decode_floor": cpu_s / floor_s,
        "rerun": {"written": rerun_counts["written"], "cpu_us_per_profile": rerun_s / profiles * 1e6,
                  "requests": dict(table.requests)},
        "cost": cost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=4_000)
    args = parser.parse_args()
    print(json.dumps(measure(args.profiles), indent=2))


if __name__ == "__main__":
    main()
