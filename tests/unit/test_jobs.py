"""The job engine over in-memory stores: backfills, population statistics, preview, cursors and the local runner."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from cdp.core.catalogue import Catalogue, build_catalogue
from cdp.core.engine import Engine
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile
from cdp.pipeline.jobs import (
    BACKFILL,
    DONE,
    FAILED,
    PERCENTILES,
    InvalidJob,
    JobEngine,
    Preview,
    StaleCatalogue,
    job_document,
    merge_histograms,
    preview,
    start_job,
    stats_from_histograms,
)
from cdp_dev.local_jobs import InProcessJobRunner, LocalPopulationSchedule
from cdp_dev.memory import MemoryProfileStore
from cdp_dev.memory_definitions import InMemoryDefinitionStore
from cdp_dev.memory_jobs import MemoryJobResults, MemoryJobStore, MemoryProfileScan

NOW = 1_700_000_000.0
BIG = {"id": "big-spenders", "name": "Big spenders", "condition": {"rfm": {"metric": "revenue", "gt": 300}}}
TOP = {"id": "premium-customers", "name": "Premium", "condition": {"percentile": {"metric": "revenue", "top": 20}}}


def catalogue_of(*definitions: dict[str, Any], version: int = 0) -> Catalogue:
    return build_catalogue([(f"test:{d['id']}", d) for d in definitions], version=version)


def customer(customer_id: str, revenue: float, orders: int = 1, **fields: Any) -> Profile:
    profile = Profile(customer_id)
    profile.orders, profile.revenue = (orders, round(revenue * 100)) if revenue else (0, 0)
    profile.created_at = profile.updated_at = int(NOW) - 86_400
    profile.version = 1
    for name, value in fields.items():
        setattr(profile, name, value)
    return profile


class World:
    """The stores and an engine over a catalogue that a test can change."""

    def __init__(self, catalogue: Catalogue, revenues: dict[str, float], *, segments: int = 4,
                 page_size: int = 3) -> None:
        self.profiles = MemoryProfileStore()
        for customer_id, revenue in revenues.items():
            self.profiles.put(customer(customer_id, revenue).to_item())
        self.catalogue = catalogue
        self.stats: PopulationStats | None = None
        self.jobs = MemoryJobStore()
        self.results = MemoryJobResults()
        self.definitions = InMemoryDefinitionStore()
        self.scan = MemoryProfileScan(self.profiles)
        self.engine = JobEngine(self.jobs, self.scan, self.profiles, self.results, self.definitions,
                                self.engine_for, lambda: NOW, segments, page_size)
        self.runner = InProcessJobRunner(lambda: self.engine, workers=2, background=False, sleep=lambda _: None)

    def engine_for(self, version: int) -> Engine:
        if self.catalogue.version < version:
            raise StaleCatalogue("not yet")
        population = self.definitions.population()
        return Engine(self.catalogue, population or self.stats)

    def run(self, kind: str, **options: Any) -> Any:
        job = start_job(self.jobs, self.runner, kind, options, NOW)
        stored = self.jobs.get(job.job_id)
        assert stored is not None
        return stored

    def item(self, customer_id: str) -> dict[str, Any]:
        item = self.profiles.item(customer_id)
        assert item is not None
        return item

    def members(self, segment_id: str) -> set[str]:
        return {cid for cid in self.profiles.items if segment_id in self.item(cid).get("m", {})}

    def puts(self) -> int:
        return int(self.profiles.requests["PutItem"])


REVENUES = {f"c{i:02d}": float(v) for i, v in enumerate([0, 50, 120, 310, 400, 299, 301, 1000, 80, 450, 0, 5])}


def test_a_backfill_enters_every_existing_qualifying_customer_once() -> None:
    world = World(catalogue_of(BIG, version=3), REVENUES)
    job = world.run(BACKFILL, segment_id="big-spenders", catalogue_version=3)
    qualifying = {cid for cid, revenue in REVENUES.items() if revenue > 300}
    assert job.status == DONE and job.phases == ["evaluate"]
    assert world.members("big-spenders") == qualifying
    assert job.counts["scanned"] == job.counts["evaluated"] == len(REVENUES)
    assert job.counts["entered"] == len(qualifying) and job.counts["exited"] == 0
    # Written: the profiles whose memberships or deadlines changed, each with the new fingerprint; the others keep
    # theirs (their next event evaluates them in full), so saving a segment does not rewrite the whole table.
    rewritten = {cid for cid in REVENUES if world.item(cid).get("cv") == world.catalogue.fingerprint}
    assert qualifying <= rewritten and job.counts["written"] == len(rewritten) < len(REVENUES)
    assert job_document(job)["progress"] == 1.0


def test_a_rerun_of_the_same_backfill_writes_nothing() -> None:
    world = World(catalogue_of(BIG, version=3), REVENUES)
    world.run(BACKFILL, segment_id="big-spenders", catalogue_version=3)
    before = world.puts()
    again = world.run(BACKFILL, segment_id="big-spenders", catalogue_version=3)
    assert world.puts() == before
    assert again.counts["written"] == 0 and again.counts["entered"] == 0


@pytest.mark.parametrize(("deliver", "mark"), [("none", ["none"]), ("audiences", ["audiences"]), ("all", [])])
def test_backfill_entries_carry_the_delivery_mode_unless_it_is_all(deliver: str, mark: list[str]) -> None:
    world = World(catalogue_of(BIG, version=1), {"rich": 900.0, "poor": 1.0})
    world.run(BACKFILL, segment_id="big-spenders", deliver=deliver, catalogue_version=1)
    (entry,) = world.item("rich")["tx"]
    assert entry[:2] == ["big-spenders", "entered"] and list(entry[5:]) == mark
    assert "tx" not in world.item("poor")


def test_the_default_delivery_is_audiences_and_an_unknown_mode_is_refused() -> None:
    world = World(catalogue_of(BIG, version=1), {"rich": 900.0})
    assert world.run(BACKFILL, segment_id="big-spenders").options["deliver"] == "audiences"
    with pytest.raises(InvalidJob) as refused:
        start_job(world.jobs, world.runner, BACKFILL, {"deliver": "everyone"}, NOW)
    assert refused.value.field == "deliver"


def test_a_deleted_segment_sends_its_members_exits_with_the_reason() -> None:
    world = World(catalogue_of(BIG, version=1), REVENUES)
    world.run(BACKFILL, segment_id="big-spenders", catalogue_version=1)
    members = world.members("big-spenders")
    world.catalogue = catalogue_of({**BIG, "id": "other", "name": "Other"}, version=2)
    job = world.run(BACKFILL, segment_id="big-spenders", catalogue_version=2, because="deleted", deliver="all")
    assert world.members("big-spenders") == set() and job.counts["exited"] == len(members)
    exits = [entry for cid in members for entry in world.item(cid)["tx"] if entry[0] == "big-spenders"]
    assert {tuple(entry[1:2]) + tuple(entry[3:5]) for entry in exits} == {("exited", "segment", "segment disabled")}


def test_merged_profiles_are_skipped() -> None:
    world = World(catalogue_of(BIG, version=1), {})
    world.profiles.put(customer("gone", 900.0, merged_into="kept").to_item())
    world.profiles.put(customer("kept", 900.0).to_item())
    job = world.run(BACKFILL, catalogue_version=1)
    assert world.members("big-spenders") == {"kept"}
    assert job.counts["scanned"] == 2 and job.counts["evaluated"] == 1


def test_a_step_without_the_jobs_catalogue_version_fails_the_job_after_its_retries() -> None:
    world = World(catalogue_of(BIG, version=1), {"rich": 900.0})
    job = world.run(BACKFILL, catalogue_version=5)
    assert job.status == FAILED and "StaleCatalogue" in job.reason
    assert world.members("big-spenders") == set()


def brute_force_top(revenues: dict[str, float], top: float) -> set[str]:
    ordered = sorted(revenues.values())
    rank = min(99, max(1, math.ceil(100 - top)))
    threshold = ordered[max(0, math.ceil(rank / 100 * len(ordered)) - 1)]
    return {cid for cid, revenue in revenues.items() if revenue > 0 and revenue > threshold}


def test_percentiles_are_exact_and_their_segment_gets_the_top_customers() -> None:
    rng = random.Random(7)
    revenues = {f"c{i:03d}": float(rng.choice([0, rng.randint(1, 2000)])) for i in range(157)}
    world = World(catalogue_of(BIG, TOP), revenues, segments=5, page_size=7)
    job = world.run(PERCENTILES)
    expected = PopulationStats.from_values({"revenue": list(revenues.values()), "orders": [
        1 if r else 0 for r in revenues.values()], "average_order_value": list(revenues.values())})
    stored = world.definitions.population()
    assert stored is not None and stored.percentiles == expected.percentiles
    assert job.status == DONE and job.phases == ["collect", "reevaluate"]
    assert world.members("premium-customers") == brute_force_top(revenues, 20)
    (threshold,) = job.result["thresholds"]
    assert threshold == {"segment_id": "premium-customers", "metric": "revenue", "top": 20, "old": None,
                         "new": expected.threshold("revenue", 20)}


def test_after_new_statistics_only_customers_whose_side_of_the_threshold_moved_are_written() -> None:
    revenues = {f"c{i:02d}": float(10 * (i + 1)) for i in range(20)}  # 10 .. 200: the top 20% is above 160
    world = World(catalogue_of(TOP), revenues)
    world.run(PERCENTILES)
    assert world.members("premium-customers") == {"c16", "c17", "c18", "c19"}
    # Five big new customers move the threshold up to 200: c16..c19 fall out, the newcomers are in.
    for i in range(5):
        world.profiles.put(customer(f"n{i}", 5000.0 + i, catalogue=world.catalogue.fingerprint).to_item())
    before = world.puts()
    job = world.run(PERCENTILES)
    assert world.members("premium-customers") == {f"n{i}" for i in range(5)}
    assert world.puts() - before == 9 == job.counts["written"]
    assert job.counts["entered"] == 5 and job.counts["exited"] == 4
    (threshold,) = job.result["thresholds"]
    assert threshold["old"] < threshold["new"]


def test_a_backfill_goes_on_to_compute_statistics_when_a_segment_reads_them() -> None:
    world = World(catalogue_of(TOP, version=1), REVENUES)
    job = world.run(BACKFILL, segment_id="premium-customers", catalogue_version=1)
    assert job.phases == ["evaluate", "collect", "reevaluate"] and job.status == DONE
    assert world.members("premium-customers") == brute_force_top(REVENUES, 20)


def test_a_percentiles_job_without_any_segment_reading_them_skips_the_reevaluation() -> None:
    world = World(catalogue_of(BIG), REVENUES)
    job = world.run(PERCENTILES)
    assert job.status == DONE and job.phase == "collect" and job.counts["written"] == 0
    assert world.definitions.population() is not None


def test_histogram_merge_is_exact_however_the_values_are_split() -> None:
    rng = random.Random(3)
    values = [round(rng.uniform(0, 500), 2) for _ in range(500)] + [0.0] * 40 + [12.5] * 30
    parts = []
    for start in range(0, len(values), 37):
        histogram: dict[float, int] = {}
        for value in values[start:start + 37]:
            histogram[value] = histogram.get(value, 0) + 1
        parts.append({"values": {"revenue": sorted([v, n] for v, n in histogram.items())}})
    rng.shuffle(parts)
    merged = stats_from_histograms(merge_histograms(parts), 0)
    assert merged.percentiles["revenue"] == PopulationStats.from_values({"revenue": values}).percentiles["revenue"]
    assert merged.population == len(values)


def test_a_worker_hands_its_cursor_on_when_its_time_is_up() -> None:
    world = World(catalogue_of(BIG, version=1), {f"c{i:02d}": 400.0 for i in range(10)}, segments=1, page_size=2)
    job = start_job(world.jobs, _Idle(), BACKFILL, {"catalogue_version": 1}, NOW)
    state = world.engine.advance(job.job_id)
    assert state.segments == [0]
    cursor, invocations = None, 0
    while True:
        invocations += 1
        worked = world.engine.work(job.job_id, state.phase, 0, state.total, cursor, has_time=lambda: False)
        if worked.done:
            break
        cursor = worked.cursor
    assert invocations == 5  # one page of two per invocation
    stored = world.jobs.get(job.job_id)
    assert stored is not None and stored.counts["entered"] == 10 and stored.segments_done == 1
    assert world.engine.advance(job.job_id, "evaluate").done


def test_advance_asked_again_for_a_phase_it_left_answers_the_current_one() -> None:
    world = World(catalogue_of(BIG), REVENUES)
    job = start_job(world.jobs, _Idle(), PERCENTILES, {}, NOW)
    assert world.engine.advance(job.job_id).phase == "collect"
    world.engine.finish(job.job_id, "collect")
    assert world.engine.advance(job.job_id, "collect").done  # nothing reads the statistics
    assert world.engine.advance(job.job_id, "collect").done


class _Idle:
    def start(self, job_id: str) -> None:
        pass


def test_preview_is_exact_when_the_table_fits() -> None:
    world = World(catalogue_of(BIG, version=1), REVENUES)
    result = preview(world.scan, world.catalogue, None, "big-spenders", NOW, sample=2)
    assert result == Preview(5, len(REVENUES), True, 0, result.members)
    assert len(result.members) == 2 and set(result.members) <= {c for c, r in REVENUES.items() if r > 300}
    assert world.puts() == 0  # nothing written


def test_a_sampled_preview_states_a_bound_that_holds_the_true_size() -> None:
    rng = random.Random(11)
    revenues = {f"c{i:04d}": float(rng.choice([100, 100, 100, 400])) for i in range(2000)}
    world = World(catalogue_of(BIG, version=1), revenues)
    truth = sum(1 for r in revenues.values() if r > 300)
    result = preview(world.scan, world.catalogue, None, "big-spenders", NOW, max_profiles=400,
                     rng=random.Random(5))
    assert not result.exact and 400 <= result.scanned < 2000
    share = truth / len(revenues)
    assert result.error_bound == pytest.approx(1.96 * math.sqrt(share * (1 - share) / result.scanned) * 2000,
                                               rel=0.25)
    assert abs(result.size - truth) <= result.error_bound


def test_preview_of_a_segment_not_in_the_catalogue_is_refused() -> None:
    world = World(catalogue_of(BIG), REVENUES)
    with pytest.raises(InvalidJob):
        preview(world.scan, world.catalogue, None, "nope", NOW)


def test_the_local_schedule_runs_once_the_ingest_has_moved_and_gone_quiet() -> None:
    world = World(catalogue_of(TOP), REVENUES)
    applied, clock = [0], [0.0]
    schedule = LocalPopulationSchedule(world.jobs, world.runner, lambda: applied[0], lambda: NOW,
                                       every_seconds=20, quiet_seconds=2, monotonic=lambda: clock[0])
    assert schedule.tick() is None  # nothing happened
    applied[0], clock[0] = 50, 1.0
    assert schedule.tick() is None  # still replaying
    clock[0] = 3.5
    job_id = schedule.tick()
    assert job_id is not None and world.members("premium-customers") == brute_force_top(REVENUES, 20)
    clock[0] = 30.0
    assert schedule.tick() is None  # nothing new since


class DeletedAfterTheScan(MemoryProfileStore):
    """A profiles table in which the given customers are deleted between the scan's read and the job's write."""

    def __init__(self, doomed: set[str]) -> None:
        super().__init__()
        self.doomed = doomed

    def save(self, profile: Profile, expected_version: int) -> None:
        if profile.customer_id in self.doomed:
            self._encoded.pop(profile.customer_id, None)
            self._keys.pop(profile.customer_id, None)
            self.doomed.discard(profile.customer_id)
        super().save(profile, expected_version)


def test_a_backfill_never_brings_back_a_profile_deleted_after_its_scan_read_it() -> None:
    world = World(catalogue_of({"id": "no-revenue", "name": "No revenue",
                                "condition": {"rfm": {"metric": "revenue", "lt": 1}}}, version=1), {})
    store = DeletedAfterTheScan({"erased"})
    for customer_id in ("erased", "kept"):
        store.put(customer(customer_id, 0.0).to_item())
    world.profiles = store
    world.scan = MemoryProfileScan(store)
    world.engine.profiles, world.engine.scan = store, world.scan

    job = world.run(BACKFILL, catalogue_version=1)

    assert store.item("erased") is None  # the conflict's reload found nothing: nothing is written
    assert "no-revenue" in (store.item("kept") or {})["m"]
    assert job.counts["written"] == 1 and job.counts["entered"] == 1


def test_a_stopping_local_runner_ends_its_job_after_the_page_in_hand() -> None:
    import threading
    import time

    world = World(catalogue_of(BIG, version=1), {f"c{i:03d}": float(i) for i in range(200)}, page_size=1)
    pages: list[int] = []
    scan_page = world.scan.page

    def slow_page(*args: Any) -> Any:
        pages.append(1)
        time.sleep(0.01)
        return scan_page(*args)

    world.scan.page = slow_page  # type: ignore[method-assign, assignment]
    stopping = threading.Event()
    runner = InProcessJobRunner(lambda: world.engine, workers=2, stopping=stopping)
    job = start_job(world.jobs, runner, BACKFILL, {"catalogue_version": 1}, NOW)
    while not pages:
        time.sleep(0.005)
    stopping.set()

    assert runner.wait(job.job_id, timeout=5)
    assert len(pages) < 200  # it did not go on through the other pages
    stored = world.jobs.get(job.job_id)
    assert stored is not None and stored.status == "running"  # left as a stopped execution leaves it
    assert runner.running() == []
