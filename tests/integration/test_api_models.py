"""Computed traits over the HTTP API, against moto: the profile's traits with their models, the stored models
(GET /models, GET /models/{name}), explain's computed leaves, and starting a job (POST /jobs).

The models are stored in the real DynamoDB definitions store (``put_models``, as the traits job stores them) and
reach the api function through its :class:`LiveCatalogue`'s statistics, as in a deployment. Jobs are recorded by
the lifecycle tests' in-memory store and runner: here the question is which job a request starts. Every reply is
checked against the OpenAPI document by the ``api`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cdp.aws.definitions import DynamoDefinitionStore
from cdp.core.engine import Engine
from cdp.core.traits import ClusterModel, RfmModel
from cdp.pipeline.definitions import folder_definitions, seed
from cdp.pipeline.live_catalogue import LiveCatalogue

from . import test_api
from .support import SEGMENTS
from .test_api import DAY, Api, Reply, T, document, flush_stream, problem, raw_event, seed_alice
from .test_api_segments import RecordedJobs, committed, create_definitions_table, request

api, exchanges = test_api.api, test_api.exchanges  # the fixtures: the API over moto, replies checked

TRAINED = int(T - 9 * 3600)  # 2026-10-20T03:00:00Z
CLUSTERS = ClusterModel(2, TRAINED, mean=(40.0, 0.8, 3.5, 0.9), scale=(25.0, 0.6, 1.8, 0.7),
                        centroids=((-1.1, 1.2, 1.4, 0.8), (0.9, -0.7, -0.9, -0.2)), silhouette=0.58,
                        sizes=(120, 380), population=500)
RFM = RfmModel(3, TRAINED, (5.0, 14.0, 40.0, 90.0), (1.0, 1.0, 2.0, 3.0), (30.0, 60.0, 120.0, 240.0), 500)
PREDICTIONS = {"model": "predictions", "version": 1, "trained_at": TRAINED, "horizon_days": 90,
               "features": ["recency_days", "frequency", "monetary", "engagement", "tenure_days"],
               "metrics": {"auc": 0.82, "baseline_auc": 0.71, "mae": 0.41, "baseline_mae": 0.58,
                           "holdout_customers": 100, "training_customers": 400,
                           "model": "gradient boosting on features at a cut-off"}}


@dataclass
class Traits:
    api: Api
    store: DynamoDefinitionStore
    live: LiveCatalogue
    jobs: RecordedJobs

    def get(self, path: str, query: dict[str, str] | None = None) -> Reply:
        return self.api.send(request("GET", path, None, query))

    def post(self, path: str, body: Any) -> Reply:
        return self.api.send(request("POST", path, body, None))

    def store_models(self, *documents: dict[str, Any]) -> None:
        self.store.put_models({d["model"]: d for d in documents})
        self.live.refresh(force=True)


@pytest.fixture
def traits(api: Api) -> Iterator[Traits]:
    store = create_definitions_table(api)
    assert seed(store, folder_definitions(SEGMENTS), "seed", T - DAY)
    live = LiveCatalogue(store, lambda: api.stack.catalogue, check_seconds=30)
    jobs = RecordedJobs()
    api.use(catalogue=live.catalogue, engine=Engine(live.catalogue), definitions=store, catalogue_source=live,
            job_store=jobs, runner=jobs)
    yield Traits(api, store, live, jobs)


def write_traits(api: Api, customer_id: str, model: str, version: int, values: dict[str, Any]) -> None:
    """What the traits job's score phase does to one profile: put the traits, evaluate what reads them, write."""
    store = api.stack.store()
    profile = store.get(customer_id)
    assert profile is not None
    changed = profile.computed.put(model, version, TRAINED, values)
    Engine(api.deps.catalogue).evaluate(profile, T, touched={f"t:{name}" for name in changed})
    expected = profile.version
    profile.version += 1
    store.save(profile, expected)


# ---- the profile ---------------------------------------------------------------------------------------------


def test_the_profile_shows_each_computed_trait_with_its_model_version_and_training_time(traits: Traits) -> None:
    seed_alice(traits.api.stack)
    assert traits.get("/customers/alice").json["computed_traits"] == {}
    write_traits(traits.api, "alice", "rfm", 3, {"rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 4,
                                                 "rfm_code": "554", "rfm_segment": "Champions"})
    write_traits(traits.api, "alice", "clusters", 2, {"cluster": 0, "cluster_distance": 0.31})
    flush_stream(traits.api.stack)
    body = traits.get("/customers/alice").json
    assert body["computed_traits"]["rfm_segment"] == {"value": "Champions", "model": "rfm", "version": 3,
                                                      "trained_at": "2026-10-20T03:00:00Z"}
    assert body["computed_traits"]["cluster_distance"]["value"] == 0.31
    assert {"champions", "top-spend-cluster"} <= {s["id"] for s in body["segments"]}
    # The members index has them too (the table stream carried the job's write).
    members = traits.get("/segments/champions/members").json["members"]
    assert [m["customer_id"] for m in members] == ["alice"]


def test_explain_names_the_model_version_behind_a_computed_trait(traits: Traits) -> None:
    seed_alice(traits.api.stack)
    write_traits(traits.api, "alice", "predictions", 1, {"churn_probability": 0.91, "expected_orders_90d": 0.1,
                                                        "expected_value_90d": 8.1})
    reply = traits.get("/customers/alice/explain", {"segment": "at-risk-high-value"})
    assert reply.status == 200, reply.text
    churn, monetary = reply.json["condition"]["children"]
    assert churn["value"] == 0.91 and churn["result"] is True
    assert churn["detail"] == {"computed": True, "model": "predictions", "version": 1,
                               "trained_at": "2026-10-20T03:00:00Z"}
    assert monetary["value"] is None and monetary["detail"]["version"] is None  # no RFM run yet
    assert reply.json["holds"] is False


# ---- the models ----------------------------------------------------------------------------------------------


def test_no_model_is_listed_and_each_is_404_naming_it_before_the_traits_job_runs(traits: Traits) -> None:
    assert traits.get("/models").json == {"models": []}
    for name in ("rfm", "clusters", "predictions"):
        body = problem(traits.get(f"/models/{name}"), 404, "not_found")
        assert f"the {name} model is not trained yet" in body["message"]
    body = problem(traits.get("/models/weather"), 404, "not_found")
    assert body["message"] == "name: no such model (one of rfm, clusters, predictions)"
    problem(traits.get("/models/Clusters"), 400, "invalid_request", "name")


def test_the_stored_models_are_listed_and_each_one_described(traits: Traits) -> None:
    traits.store_models(PREDICTIONS, CLUSTERS.as_document(), RFM.as_document())
    listed = traits.get("/models").json["models"]
    assert [(m["model"], m["version"]) for m in listed] == [("rfm", 3), ("clusters", 2), ("predictions", 1)]

    clusters = traits.get("/models/clusters").json
    assert clusters["trained_at"] == "2026-10-20T03:00:00Z" and clusters["k"] == 2
    assert clusters["chosen_by"] == "silhouette" and clusters["silhouette"] == 0.58
    top, other = clusters["clusters"]
    assert (top["index"], top["size"], top["description"]) == (0, 120, "high spend, frequent, recent, engaged")
    assert top["centroid"]["recency_days"] == 12.5  # 40 - 1.1 x 25: in days, not standardised
    assert top["centroid"]["revenue"] > other["centroid"]["revenue"] > 0
    assert other["description"] == "lapsed, low spend, infrequent"

    predictions = traits.get("/models/predictions").json
    assert predictions["horizon_days"] == 90
    assert predictions["metrics"]["auc"] > predictions["metrics"]["baseline_auc"]
    assert predictions["metrics"]["mae"] < predictions["metrics"]["baseline_mae"]

    rfm = traits.get("/models/rfm").json
    assert rfm["cuts"]["monetary"] == [30.0, 60.0, 120.0, 240.0] and rfm["population"] == 500
    assert {"recency_scores": "5", "frequency_scores": "45", "name": "Champions"} in rfm["named_segments"]


def test_without_a_definitions_store_no_model_is_stored(api: Api) -> None:
    assert api.send(raw_event("GET", "/models")).json == {"models": []}
    problem(api.send(raw_event("GET", "/models/rfm")), 404, "not_found")


# ---- starting a job ------------------------------------------------------------------------------------------


def test_post_jobs_starts_a_traits_job_and_answers_202_with_its_document(traits: Traits) -> None:
    reply = traits.post("/jobs", {"kind": "traits"})
    assert reply.status == 202, reply.text
    job = reply.json
    assert job["kind"] == "traits" and job["status"] == "queued" and job["phases"] == ["features", "score"]
    assert traits.jobs.started == [job["id"]]
    assert traits.get(f"/jobs/{job['id']}").json["id"] == job["id"]


def test_post_jobs_starts_percentiles_too(traits: Traits) -> None:
    reply = traits.post("/jobs", {"kind": "percentiles", "options": {}})
    assert reply.status == 202 and reply.json["kind"] == "percentiles"


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "weather"}, "kind"),
    ({"kind": "traits", "options": {"deliver": "everyone"}}, "options.deliver"),
    ({"options": {}}, "kind"),
    ({"kind": "traits", "extra": 1}, "extra"),
])
def test_post_jobs_refuses_a_bad_request_naming_the_field_and_starts_nothing(traits: Traits, body: dict[str, Any],
                                                                            field: str) -> None:
    problem(traits.post("/jobs", body), 400, "invalid_request", field)
    assert traits.jobs.started == [] and traits.jobs.jobs == {}


def test_post_jobs_without_jobs_configured_is_501(api: Api) -> None:
    reply = api.send(request("POST", "/jobs", {"kind": "traits"}, None))
    body = problem(reply, 501, "not_configured")
    assert "backfill=false" not in body["message"]


def test_the_committed_envelopes_list_the_models_describe_one_and_start_a_traits_job(traits: Traits) -> None:
    assert traits.api.send(committed("get-model")).status == 404  # not trained yet
    traits.store_models(CLUSTERS.as_document())
    assert [m["model"] for m in traits.api.send(committed("list-models")).json["models"]] == ["clusters"]
    assert traits.api.send(committed("get-model")).json["clusters"][0]["size"] == 120
    started = traits.api.send(committed("start-job"))
    assert started.status == 202 and started.json["kind"] == "traits"
    assert started.json["options"]["models"] == ["rfm", "clusters", "predictions"]
    assert traits.jobs.started == [started.json["id"]]


def test_the_openapi_document_describes_the_computed_traits_routes() -> None:
    paths = document()["paths"]
    assert set(paths["/models"]) == {"get"} and set(paths["/models/{name}"]) == {"get"}
    assert "202" in paths["/jobs"]["post"]["responses"] and "200" not in paths["/jobs"]["post"]["responses"]
    for route, method in (("/models", "get"), ("/models/{name}", "get"), ("/jobs", "post")):
        assert paths[route][method]["security"] == [{"iam": []}], route
    profile = document()["components"]["schemas"]["CustomerProfile"]
    assert "computed_traits" in profile["required"]
