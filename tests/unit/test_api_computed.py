"""What the API shows of computed traits: the profile's traits with their models, the stored models in readable
form, and explain's computed-trait leaves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cdp.api.views import centroid_in_units, computed_traits, model_document, model_documents, profile_document
from cdp.core.catalogue import load_catalogue
from cdp.core.explain import explain_segment
from cdp.core.profile import Profile
from cdp.core.traits import RFM_SEGMENTS, ClusterModel, Features, RfmModel, standardise

CATALOGUE = load_catalogue(Path(__file__).resolve().parents[2] / "segments")
TRAINED = 1_792_461_600  # 2026-10-20T02:00:00Z
NOW = TRAINED + 36_000


def champion() -> Profile:
    profile = Profile("carla")
    profile.computed.put("rfm", 3, TRAINED, {"rfm_recency": 5, "rfm_frequency": 4, "rfm_monetary": 2,
                                             "rfm_code": "542", "rfm_segment": "Champions"})
    profile.computed.put("clusters", 2, TRAINED - 86_400, {"cluster": 1, "cluster_distance": 0.75})
    return profile


def test_each_computed_trait_shows_its_value_model_version_and_training_time() -> None:
    traits = computed_traits(champion().computed)
    assert traits["rfm_segment"] == {"value": "Champions", "model": "rfm", "version": 3,
                                     "trained_at": "2026-10-20T02:00:00Z"}
    assert traits["cluster_distance"] == {"value": 0.75, "model": "clusters", "version": 2,
                                          "trained_at": "2026-10-19T02:00:00Z"}
    assert sorted(traits) == ["cluster", "cluster_distance", "rfm_code", "rfm_frequency", "rfm_monetary",
                              "rfm_recency", "rfm_segment"]
    assert profile_document(champion(), CATALOGUE, NOW)["computed_traits"] == traits
    assert profile_document(Profile("new"), CATALOGUE, NOW)["computed_traits"] == {}


def test_an_identify_trait_of_a_reserved_name_stays_a_trait_and_is_not_shown_as_computed() -> None:
    profile = Profile("x")
    profile.traits["cluster"] = 0
    document = profile_document(profile, CATALOGUE, NOW)
    assert document["traits"] == {"cluster": 0} and document["computed_traits"] == {}


def cluster_model() -> ClusterModel:
    return ClusterModel(4, TRAINED, mean=(30.0, 1.0, 4.0, 1.0), scale=(20.0, 0.5, 2.0, 1.0),
                        centroids=((-1.0, 1.0, 1.0, 0.6), (1.2, -1.0, -1.0, 0.0)), silhouette=0.61,
                        sizes=(40, 160), population=200)


def test_centroids_are_shown_in_the_features_own_units() -> None:
    # A customer exactly at a centroid shows the figures the centroid stands for.
    customer = Features(recency_days=12.0, frequency=5, monetary=640.0, engagement=3.5, tenure_days=300)
    model = cluster_model()
    point = standardise(model, customer)
    assert centroid_in_units(point, model.mean, model.scale) == {
        "recency_days": 12.0, "orders": 5.0, "revenue": 640.0, "events_per_week": 3.5}


def test_the_clusters_model_document_describes_each_cluster() -> None:
    document = model_document(cluster_model().as_document())
    assert document["model"] == "clusters" and document["version"] == 4
    assert document["trained_at"] == "2026-10-20T02:00:00Z"
    assert (document["k"], document["chosen_by"], document["silhouette"]) == (2, "silhouette", 0.61)
    first, second = document["clusters"]
    assert first["index"] == 0 and first["size"] == 40
    assert first["description"] == "recent, frequent, high spend, engaged"  # ties: in the features order
    assert first["centroid"] == {"recency_days": 10.0, "orders": round(math.expm1(1.5), 2),
                                 "revenue": round(math.expm1(6.0), 2), "events_per_week": round(math.expm1(1.6), 2)}
    assert second["description"] == "lapsed, infrequent, low spend" and second["size"] == 160


def test_the_rfm_document_gives_the_cuts_and_the_named_segments() -> None:
    model = RfmModel(2, TRAINED, (10.0, 30.0, 60.0, 120.0), (1.0, 1.0, 2.0, 4.0), (20.0, 45.0, 90.0, 200.0), 900)
    document = model_document(model.as_document())
    assert document["cuts"]["frequency"] == [1.0, 1.0, 2.0, 4.0] and document["population"] == 900
    assert len(document["named_segments"]) == len(RFM_SEGMENTS)
    assert {"recency_scores": "5", "frequency_scores": "45", "name": "Champions"} in document["named_segments"]


def test_the_predictions_document_gives_the_validation_against_the_baseline() -> None:
    stored = {"model": "predictions", "version": 1, "trained_at": TRAINED, "horizon_days": 90,
              "features": ["recency_days", "frequency"], "population": 500,
              "metrics": {"auc": 0.81, "baseline_auc": 0.7, "mae": 0.4, "baseline_mae": 0.55}}
    document = model_document(stored)
    assert document["metrics"]["auc"] == 0.81 and document["horizon_days"] == 90
    assert document["features"] == ["recency_days", "frequency"]


def test_models_are_listed_in_model_order_and_untrained_ones_left_out() -> None:
    stored = {"clusters": cluster_model().as_document(),
              "rfm": RfmModel(1, TRAINED, (), (), ()).as_document()}
    assert [d["model"] for d in model_documents(stored)] == ["rfm", "clusters"]
    assert model_documents({}) == []


@pytest.mark.parametrize(("segment", "model", "version"), [("champions", "rfm", 3),
                                                           ("top-spend-cluster", "clusters", 2)])
def test_explain_gives_a_computed_leaf_its_value_and_model_version(segment: str, model: str, version: int) -> None:
    explained = explain_segment(CATALOGUE, segment, champion(), NOW, None)
    leaf = explained["condition"]
    assert leaf["operator"] == "trait"
    assert leaf["value"] == ("Champions" if model == "rfm" else 1)
    assert leaf["detail"]["computed"] is True
    assert (leaf["detail"]["model"], leaf["detail"]["version"]) == (model, version)
    assert explained["holds"] is (model == "rfm")


def test_explain_of_a_computed_trait_not_written_yet_names_the_model_without_a_version() -> None:
    explained = explain_segment(CATALOGUE, "at-risk-high-value", champion(), NOW, None)
    churn, monetary = explained["condition"]["children"]
    assert churn["value"] is None and churn["detail"] == {"computed": True, "model": "predictions",
                                                          "version": None, "trained_at": None}
    assert monetary["value"] == 2 and monetary["detail"]["version"] == 3 and explained["holds"] is False


def test_explain_of_an_ordinary_trait_has_no_model_detail() -> None:
    from cdp.core.explain import observe
    from cdp.core.language import Context, TraitCondition
    from cdp.core.profile import ProfileView

    profile = Profile("x")
    profile.traits["plan"] = "gold"
    view: Context = ProfileView(profile, NOW, None)
    assert observe(TraitCondition("plan", "eq", "gold"), view) == ("trait", "gold", "gold", {})
