"""The computed-traits job under moto: the models' storage, and a whole job through the jobs function with the real
trainers (scikit-learn)."""

from __future__ import annotations

import random

import pytest

from cdp.aws.definitions import DynamoDefinitionStore, Models
from cdp.core.durations import DAY
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile
from cdp.pipeline.jobs import DONE
from cdp_dev.handlers import load_handler

from .support import DEFINITIONS_TABLE, REGION, ROOT, Stack, create_definitions_table
from .test_jobs import jobs_function

jobs_handler = load_handler(ROOT, "jobs")


def test_model_documents_round_trip_and_move_the_statistics_version(stack: Stack) -> None:
    create_definitions_table(stack.dynamodb)
    store = DynamoDefinitionStore(Models(DEFINITIONS_TABLE, REGION))
    assert store.population() is None
    rfm = {"model": "rfm", "version": 1, "trained_at": 100, "cuts": {"recency_days": [1.0, 2.0, 3.0, 4.0]}}
    assert store.put_models({"rfm": rfm}).stats_version == 1
    stats = store.population()
    assert stats is not None and stats.percentiles == {} and stats.models == {"rfm": rfm}
    store.put_population(PopulationStats.from_values({"revenue": [1.0, 2.0]}, computed_at=5))
    clusters = {"model": "clusters", "version": 1, "trained_at": 100, "k": 2}
    store.put_models({"clusters": clusters})
    head = store.put_models({"rfm": {**rfm, "version": 7, "trained_at": 50}})  # an older job: refused
    stats = store.population()
    assert stats is not None and stats.threshold("revenue", 50) == 1.0
    assert stats.models == {"rfm": rfm, "clusters": clusters} and head.stats_version == 3
    with pytest.raises(ValueError, match="models are"):
        store.put_models({"magic": rfm})


def seed_history(stack: Stack, count: int) -> None:
    """Loyal customers who order every few weeks, and lapsing ones whose last order is months old."""
    rng = random.Random(11)
    now = stack.clock.now()
    store = stack.store()
    for i in range(count):
        profile = Profile(f"c{i:03d}")
        profile.created_at = profile.updated_at = int(now - 400 * DAY)
        loyal = i % 2 == 0
        days = sorted((rng.uniform(1, 360) if loyal else rng.uniform(150, 390)) for _ in range(rng.randint(1, 6)))
        cents = [rng.randint(2_000, 9_000) if loyal else rng.randint(500, 2_000) for _ in days]
        profile.orders, profile.revenue = len(days), sum(cents)
        profile.recent_orders = [[f"o{n}", int(now - d * DAY), c] for n, (d, c) in
                                 enumerate(sorted(zip(days, cents, strict=True), key=lambda pair: -pair[0]))]
        profile.first_order, profile.last_order = int(now - days[-1] * DAY), int(now - days[0] * DAY)
        profile.version = 1
        store.save(profile, 0)


def test_the_scheduled_traits_job_trains_stores_and_writes_every_customers_traits(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_history(stack, 80)
    deps, runner = jobs_function(stack, monkeypatch, page_size=10)
    event = {"step": "schedule", "kind": "traits", "options": {"clusters": 2}}
    answer = jobs_handler.handle(event, None, deps)
    job = deps.job_store.get(answer["id"])
    assert job is not None and job.status == DONE, (runner.errors, job)
    assert job.result["models"]["clusters"]["k"] == 2
    assert job.result["models"]["clusters"]["chosen_by"] == "configured"
    metrics = job.result["models"]["predictions"]["metrics"]
    assert metrics["auc"] is not None and metrics["holdout_customers"] > 0
    stored = deps.definitions.population()
    assert stored is not None and {m: d["version"] for m, d in stored.models.items()} == {
        "rfm": 1, "clusters": 1, "predictions": 1}
    profiles = [stack.store().get(f"c{i:03d}") for i in range(80)]
    assert all(p is not None and {"rfm_code", "cluster", "churn_probability"} <= set(p.computed.values)
               for p in profiles)
    assert job.counts["written"] == 80
    # The next run with the same figures writes nothing.
    again = jobs_handler.handle(event, None, deps)
    rerun = deps.job_store.get(again["id"])
    assert rerun is not None and rerun.status == DONE and rerun.counts["written"] == 0
