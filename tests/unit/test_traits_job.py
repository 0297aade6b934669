"""The computed-traits job over in-memory stores, with a fake trainer (the real one is under test in cdp.models)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from cdp.core.catalogue import Catalogue, build_catalogue
from cdp.core.durations import DAY
from cdp.core.engine import Engine
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile
from cdp.core.traits import ClusterModel, Features, RfmModel, quintile_cuts, rfm_traits
from cdp.pipeline.jobs import DONE, TRAITS, InvalidJob, JobEngine, job_options, start_job
from cdp.pipeline.traits import Featuring, merge_features, sample_key, training_row
from cdp_dev.local_jobs import InProcessJobRunner
from cdp_dev.memory import MemoryProfileStore
from cdp_dev.memory_definitions import InMemoryDefinitionStore
from cdp_dev.memory_jobs import MemoryJobResults, MemoryJobStore, MemoryProfileScan

NOW = 1_700_000_000.0
CHAMPIONS = {"id": "champions", "name": "Champions",
             "condition": {"trait": {"name": "rfm_segment", "eq": "Champions"}}}
AT_RISK = {"id": "at-risk", "name": "At risk", "condition": {"trait": {"name": "churn_probability", "gt": 0.7}}}


class FakePredictions:
    """Purchase probability 0.9 for a customer who ordered within 30 days, else 0.1; two orders per 0.9."""

    def __init__(self, version: int, trained_at: int, rows: int = 0) -> None:
        self.version, self.trained_at = version, trained_at
        self.metrics: dict[str, Any] = {"auc": 0.8, "baseline_auc": 0.6, "training_customers": rows}

    def document(self) -> dict[str, Any]:
        return {"model": "predictions", "version": self.version, "trained_at": self.trained_at,
                "metrics": self.metrics, "horizon_days": 90}

    def to_bytes(self) -> bytes:
        return json.dumps([self.version, self.trained_at]).encode()

    def predict(self, features: Sequence[Features]) -> list[tuple[float, float]]:
        return [(0.9, 1.8) if f.buyer and f.recency_days < 30 else (0.1, 0.2) for f in features]


class FakeTrainer:
    def __init__(self) -> None:
        self.vectors: list[list[float]] = []
        self.rows: list[dict[str, Any]] = []
        self.k: list[int | None] = []

    def fit_clusters(self, vectors: Sequence[Sequence[float]], *, k: int | None, version: int,
                     trained_at: int) -> ClusterModel:
        self.vectors, self.k = [list(v) for v in vectors], [*self.k, k]
        width = len(vectors[0])
        mean = tuple(sum(v[i] for v in vectors) / len(vectors) for i in range(width))
        return ClusterModel(version, trained_at, mean, (1.0,) * width,
                            ((0.0, 1.0, 1.0, 0.0), (0.0, -1.0, -1.0, 0.0)), 0.5, "configured" if k else "silhouette",
                            (1, 1), len(vectors))

    def fit_predictions(self, rows: Sequence[Any], *, version: int, trained_at: int) -> FakePredictions:
        self.rows = list(rows)
        return FakePredictions(version, trained_at, len(rows))

    def load_predictions(self, data: bytes) -> FakePredictions:
        version, trained_at = json.loads(data)
        return FakePredictions(version, trained_at)


def shopper(customer_id: str, orders: list[tuple[float, int]], *, first_seen_days: float = 400) -> Profile:
    """A customer first seen ``first_seen_days`` ago with orders of (days ago, cents)."""
    profile = Profile(customer_id)
    profile.created_at = profile.updated_at = int(NOW - first_seen_days * DAY)
    profile.version = 1
    recent = sorted(orders, key=lambda o: -o[0])
    profile.orders, profile.revenue = len(orders), sum(cents for _, cents in orders)
    profile.recent_orders = [[f"o{i}", int(NOW - days * DAY), cents] for i, (days, cents) in enumerate(recent)][-8:]
    if orders:
        profile.first_order = int(NOW - max(d for d, _ in orders) * DAY)
        profile.last_order = int(NOW - min(d for d, _ in orders) * DAY)
    return profile


def population(count: int, seed: int = 3) -> list[Profile]:
    rng = random.Random(seed)
    profiles = []
    for i in range(count):
        n = rng.choice([0, 1, 2, 3, 5])
        orders = [(rng.uniform(1, 350), rng.randint(500, 30_000)) for _ in range(n)]
        profiles.append(shopper(f"c{i:03d}", orders))
    return profiles


class World:
    def __init__(self, profiles: list[Profile], catalogue: Catalogue, *, segments: int = 3, page_size: int = 4):
        self.profiles = MemoryProfileStore()
        for profile in profiles:
            self.profiles.put(profile.to_item())
        self.catalogue = catalogue
        self.definitions = InMemoryDefinitionStore()
        self.jobs = MemoryJobStore()
        self.results = MemoryJobResults()
        self.trainer = FakeTrainer()
        self.engine = JobEngine(self.jobs, MemoryProfileScan(self.profiles), self.profiles, self.results,
                                self.definitions, self.engine_for, lambda: self.now, segments, page_size,
                                trainer=self.trainer)
        self.now = NOW
        self.runner = InProcessJobRunner(lambda: self.engine, workers=2, background=False, sleep=lambda _: None)

    def engine_for(self, version: int) -> Engine:
        return Engine(self.catalogue, self.definitions.population())

    def run(self, **options: Any) -> Any:
        job = start_job(self.jobs, self.runner, TRAITS, options, self.now)
        stored = self.jobs.get(job.job_id)
        assert stored is not None and stored.status == DONE, stored
        return stored

    def computed(self, customer_id: str) -> dict[str, Any]:
        item = self.profiles.item(customer_id)
        assert item is not None
        return dict((item.get("ct") or {}).get("v") or {})

    def members(self, segment_id: str) -> set[str]:
        return {cid for cid, item in self.profiles.items.items() if segment_id in (item.get("m") or {})}

    def puts(self) -> int:
        return int(self.profiles.requests["PutItem"])


def test_options_default_to_every_model_and_are_checked_by_field() -> None:
    defaults = job_options(TRAITS, {})
    assert {k: defaults[k] for k in ("models", "clusters", "sample")} == {
        "models": ["rfm", "clusters", "predictions"], "clusters": None, "sample": 20_000}
    assert job_options(TRAITS, {"models": ["predictions", "rfm"], "clusters": 4})["models"] == ["rfm", "predictions"]
    for field, value in (("models", ["rfm", "magic"]), ("models", []), ("clusters", 1), ("clusters", 13),
                         ("clusters", True), ("sample", 5)):
        with pytest.raises(InvalidJob) as refused:
            job_options(TRAITS, {field: value})
        assert refused.value.field == field


def test_a_traits_job_writes_every_models_traits_and_stores_the_models() -> None:
    profiles = population(40)
    world = World(profiles, build_catalogue([("test:champions", CHAMPIONS)], version=0))
    job = world.run(clusters=2)
    assert job.phases == ["features", "score"]
    buyers = [p for p in profiles if p.orders]
    histogram: dict[float, int] = {}
    for p in buyers:
        value = round((NOW - (p.last_order or 0)) / DAY)
        histogram[float(value)] = histogram.get(float(value), 0) + 1
    cuts = quintile_cuts(histogram)
    stats = world.definitions.population()
    assert stats is not None and set(stats.models) == {"rfm", "clusters", "predictions"}
    rfm = RfmModel.from_document(stats.models["rfm"])
    assert rfm.recency == cuts and rfm.version == 1 and rfm.population == len(buyers)
    assert job.result["models"]["clusters"]["k"] == 2 and world.trainer.k == [2]
    assert job.result["models"]["clusters"]["descriptions"] == ["frequent, high spend", "infrequent, low spend"]
    assert job.result["models"]["predictions"]["metrics"]["auc"] == 0.8
    assert len(world.trainer.vectors) == 40  # every customer sampled (the sample is larger than the population)
    for p in profiles:
        traits = world.computed(p.customer_id)
        assert traits["cluster"] in (0, 1) and "churn_probability" in traits
        assert ("rfm_code" in traits) == bool(p.orders)
    assert job.counts["written"] == 40 and job.counts["scanned"] == 80  # both phases scan


def test_a_rerun_writes_nothing_and_a_later_job_renumbers_the_models() -> None:
    world = World(population(30), build_catalogue([], version=0))
    world.run()
    before = world.puts()
    again = world.run()  # the same figures: the same traits
    assert world.puts() == before and again.counts["written"] == 0
    world.now += DAY
    world.run()
    stats = world.definitions.population()
    # Each run stored its models (the rerun at the same moment too: the last of equal times wins).
    assert stats is not None and {m: d["version"] for m, d in stats.models.items()} == {
        "rfm": 3, "clusters": 3, "predictions": 3}


def test_only_profiles_whose_traits_changed_are_written() -> None:
    profiles = population(30)
    world = World(profiles, build_catalogue([], version=0))
    world.run(models=["predictions"])
    # One lapsed customer orders today, at the population's average order value (so the non-buyers' expected
    # value stays put): only that customer's predicted churn changes.
    lapsed = next(p for p in profiles if p.orders and (NOW - (p.last_order or 0)) > 60 * DAY)
    stored = world.profiles.get(lapsed.customer_id)
    assert stored is not None
    average = round(sum(p.revenue for p in profiles) / sum(p.orders for p in profiles))
    stored.orders, stored.revenue, stored.last_order = stored.orders + 1, stored.revenue + average, int(NOW)
    stored.recent_orders = [*stored.recent_orders, ["today", int(NOW), average]][-8:]
    stored.version += 1
    world.profiles.save(stored, stored.version - 1)
    again = world.run(models=["predictions"])
    assert again.counts["written"] == 1
    assert world.computed(lapsed.customer_id)["churn_probability"] == 0.1


def test_segment_membership_on_a_computed_trait_moves_with_the_job() -> None:
    profiles = population(40)
    world = World(profiles, build_catalogue([("test:champions", CHAMPIONS), ("test:at-risk", AT_RISK)],
                                            version=0))
    job = world.run(models=["rfm", "predictions"])
    stats = world.definitions.population()
    assert stats is not None
    rfm = RfmModel.from_document(stats.models["rfm"])
    from cdp.core.traits import features

    expected = {p.customer_id for p in profiles if rfm_traits(rfm, features(p, NOW)).get("rfm_segment") == "Champions"}
    assert expected and world.members("champions") == expected
    at_risk = {p.customer_id for p in profiles if not (p.orders and (NOW - (p.last_order or 0)) < 30 * DAY)}
    assert world.members("at-risk") == at_risk
    assert job.counts["entered"] == len(expected) + len(at_risk)


def test_merged_and_deleted_profiles_are_skipped() -> None:
    kept = shopper("kept", [(3, 5000)])
    merged = shopper("gone", [(3, 5000)])
    merged.merged_into = "kept"
    world = World([kept, merged, *population(25)], build_catalogue([], version=0))
    job = world.run(models=["rfm"])
    assert world.computed("gone") == {} and world.computed("kept")["rfm_code"]
    assert job.result["population"] == 26
    assert job.counts["evaluated"] == 2 * 26


def test_too_few_customers_skip_the_trained_models_with_the_reason() -> None:
    world = World(population(5), build_catalogue([], version=0))
    job = world.run()
    assert "skipped" in job.result["models"]["clusters"] and "skipped" in job.result["models"]["predictions"]
    stats = world.definitions.population()
    assert stats is not None and set(stats.models) == {"rfm"}
    assert all("cluster" not in world.computed(f"c{i:03d}") for i in range(5))


def test_the_training_rows_split_history_at_the_cut_offs() -> None:
    profile = shopper("c", [(200, 1000), (120, 2000), (10, 3000)])
    row = training_row(profile, 0.25, NOW)
    assert row["customer_id"] != "c"  # no identifier leaves in the results, only the key
    assert row["before"]["frequency"] == 2 and row["label_orders"] == 1 and row["label_revenue"] == 30.0
    assert row["earlier"]["frequency"] == 1 and row["earlier_label_orders"] == 1
    assert row["now"]["frequency"] == 3
    new = training_row(shopper("n", [(5, 1000)], first_seen_days=20), 0.5, NOW)
    assert new["before"] is None and new["earlier"] is None and new["now"]["frequency"] == 1


def test_the_bottom_k_sample_merge_is_exact_whatever_the_split() -> None:
    profiles = population(60)
    job = type("J", (), {"job_id": "job-1", "created_at": NOW, "options": {"sample": 10}})()
    keys = sorted(sample_key(p.customer_id) for p in profiles)
    for parts in (1, 3, 7):
        results = MemoryJobResults()
        engine = type("E", (), {"results": results})()
        for part in range(parts):
            worker = Featuring(engine, job, part, 0)
            worker.take(profiles[part::parts], {"scanned": 0, "evaluated": 0})
            worker.close()
        histograms, totals, sample = merge_features(results.parts("job-1", "features"), 10)
        assert [float(row["customer_id"]) for row in sample] == pytest.approx(keys[:10])
        assert totals["profiles"] == 60 and sum(histograms["frequency"].values()) == totals["buyers"]


def test_models_round_trip_through_the_memory_store_and_the_later_job_wins() -> None:
    store = InMemoryDefinitionStore()
    assert store.population() is None
    head = store.put_models({"rfm": {"model": "rfm", "version": 1, "trained_at": 100, "cuts": {}}})
    assert head.stats_version == 1
    stats = store.population()
    assert stats is not None and stats.percentiles == {} and stats.models["rfm"]["version"] == 1
    store.put_population(PopulationStats.from_values({"revenue": [1.0, 2.0]}, computed_at=5))
    store.put_models({"clusters": {"model": "clusters", "version": 1, "trained_at": 100}})
    older = store.put_models({"rfm": {"model": "rfm", "version": 9, "trained_at": 50}})
    stats = store.population()
    assert stats is not None and stats.percentiles and set(stats.models) == {"rfm", "clusters"}
    assert stats.models["rfm"]["version"] == 1 and older.stats_version == 3


def test_cdp_jobs_run_posts_the_job_and_waits_for_its_document(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cdp_dev import cli

    calls: list[tuple[str, str, Any]] = []
    running = {"id": "j1", "kind": "traits", "status": "running", "progress": 0.5, "phase": "score", "counts": {}}
    answers = iter([(202, running), (200, {**running, "status": "done", "progress": 1.0})])

    def api(args: Any, method: str, path: str, body: Any = None, query: Any = None) -> tuple[int, Any]:
        calls.append((method, path, body))
        return next(answers)

    monkeypatch.setattr(cli, "_api_call", api)
    assert cli.main(["jobs", "run", "clusters", "--clusters", "3", "--wait", "--interval", "0"]) == 0
    assert calls == [("POST", "/jobs", {"kind": "traits", "options": {"models": ["clusters"], "clusters": 3}}),
                     ("GET", "/jobs/j1", None)]
    assert json.loads(capsys.readouterr().out)["status"] == "done"
    assert cli.job_request("percentiles", clusters=3) == {"kind": "percentiles", "options": {}}


def test_the_local_traits_schedule_runs_once_a_replay_settles_then_daily() -> None:
    from cdp_dev.local_jobs import local_traits_schedule

    world = World(population(25), build_catalogue([], version=0))
    clock, applied = [0.0], [0]
    schedule = local_traits_schedule(world.jobs, world.runner, lambda: applied[0], lambda: world.now,
                                     monotonic=lambda: clock[0])
    applied[0], clock[0] = 30, 1.0
    assert schedule.tick() is None  # the replay is still going
    clock[0] = 12.0
    first = schedule.tick()
    assert first is not None and world.jobs.get(first).kind == TRAITS  # type: ignore[union-attr]
    applied[0], clock[0] = 31, 20.0
    clock[0] = 40.0
    assert schedule.tick() is None  # settled again, but the next run is a day on
    clock[0] = 20.0 + 86_400
    world.now += DAY
    assert schedule.tick() is not None


def test_a_models_first_run_goes_to_audiences_only_and_later_runs_to_every_integration() -> None:
    world = World(population(40), build_catalogue([("test:champions", CHAMPIONS)], version=0))
    world.run(models=["rfm"])
    first = [entry for item in world.profiles.items.values() for entry in item.get("tx") or []]
    assert first and all(entry[0] == "champions" and entry[5] == "audiences" for entry in first)
    champion = next(iter(world.members("champions")))
    stored = world.profiles.get(champion)
    assert stored is not None
    stored.last_order = int(NOW - 300 * DAY)  # lapsed since: the next run makes them leave
    stored.recent_orders = [[o[0], int(NOW - 300 * DAY), o[2]] for o in stored.recent_orders]
    stored.version += 1
    world.profiles.save(stored, stored.version - 1)
    world.run(models=["rfm"])
    item = world.profiles.item(champion)
    assert item is not None and [entry[:2] for entry in item["tx"]] == [["champions", "exited"]]
    assert len(item["tx"][0]) == 5  # the second version's transitions carry no delivery mark: delivered to all


def test_a_job_whose_models_were_superseded_by_a_later_job_scores_no_profile_with_them() -> None:
    world = World(population(30), build_catalogue([], version=0))
    world.now = NOW + DAY
    world.run(models=["rfm"])  # a job that started a day later stored its model first
    newer = world.definitions.population()
    assert newer is not None
    puts = world.puts()
    world.now = NOW
    job = world.run(models=["rfm"])  # started earlier, finished later
    assert job.result["models"]["rfm"] == {
        "superseded": "a newer model was stored by another job; this one scores no profile with it"}
    assert world.puts() == puts and job.counts.get("written", 0) == 0
    held = world.definitions.population()
    assert held is not None and held.models["rfm"] == newer.models["rfm"]
