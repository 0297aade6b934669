"""The computed traits' pure core: RFM scores and names, quintiles, clusters in words, features at a cut-off."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.profile import RECENT_ORDERS, Profile
from cdp.core.traits import (
    CLUSTERS,
    RFM,
    RFM_SEGMENTS,
    ClusterModel,
    ComputedTraits,
    Features,
    RfmModel,
    assign_at_ingest,
    assign_cluster,
    describe_centroid,
    features,
    features_before,
    orders_after,
    quintile_cuts,
    rfm_segment,
    rfm_traits,
)

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400
START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_catalogue(ROOT / "segments"))


def _message(number: int, at: int, event: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": f"m-{number}", "userId": "ann", "event": event, "properties": properties,
            "timestamp": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")}


def _folded(engine: Engine, orders: list[tuple[int, float]], views: int = 0) -> Profile:
    """A profile that signed up at START, viewed ``views`` products that day, then placed ``orders`` (day, revenue)."""
    messages = [{"type": "identify", "messageId": "m-0", "userId": "ann", "traits": {"plan": "x"},
                 "timestamp": datetime.fromtimestamp(START, UTC).isoformat().replace("+00:00", "Z")}]
    messages += [_message(100 + n, START + 60 + n, "Product Viewed", product_id="p") for n in range(views)]
    messages += [_message(1000 + n, START + day * DAY, "Order Completed", order_id=f"o{n}", revenue=revenue)
                 for n, (day, revenue) in enumerate(orders)]
    profile = Profile("ann")
    for message in messages:
        event = normalise(message)
        engine.apply(profile, [event], event.timestamp)
    return profile


# ---- RFM ---------------------------------------------------------------------------------------------------


def test_every_recency_frequency_pair_has_exactly_one_named_segment() -> None:
    for recency, frequency in itertools.product(range(1, 6), repeat=2):
        names = [name for r, f, name in RFM_SEGMENTS if str(recency) in r and str(frequency) in f]
        assert len(names) == 1, (recency, frequency, names)
        assert rfm_segment(recency, frequency) == names[0]
    assert rfm_segment(5, 5) == "Champions"
    assert rfm_segment(1, 1) == "Hibernating"
    assert rfm_segment(1, 5) == "Can't Lose Them"


def test_a_score_outside_one_to_five_has_no_segment() -> None:
    with pytest.raises(ValueError, match="no RFM segment"):
        rfm_segment(0, 3)


def test_quintile_cuts_are_nearest_rank_percentiles() -> None:
    assert quintile_cuts({float(v): 1 for v in range(1, 11)}) == (2.0, 4.0, 6.0, 8.0)
    # 70 customers with one order, 20 with two, 10 with five: the first three cuts are all 1
    assert quintile_cuts({1.0: 70, 2.0: 20, 5.0: 10}) == (1.0, 1.0, 1.0, 2.0)
    assert quintile_cuts({3.0: 1}) == (3.0, 3.0, 3.0, 3.0)
    assert quintile_cuts({}) == ()


def _features(recency: float = 10, frequency: int = 1, monetary: float = 50) -> Features:
    return Features(recency_days=recency, frequency=frequency, monetary=monetary, engagement=1.0, tenure_days=100)


MODEL = RfmModel(1, 0, recency=(10, 30, 60, 120), frequency=(1, 2, 3, 5), monetary=(20, 50, 100, 300))


def test_rfm_scores_fewer_days_higher_and_more_orders_and_money_higher() -> None:
    best = rfm_traits(MODEL, _features(recency=2, frequency=9, monetary=1000))
    assert best == {"rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 5, "rfm_code": "555",
                    "rfm_segment": "Champions"}
    worst = rfm_traits(MODEL, _features(recency=400, frequency=1, monetary=5))
    assert (worst["rfm_recency"], worst["rfm_frequency"], worst["rfm_monetary"]) == (1, 1, 1)
    assert worst["rfm_segment"] == "Hibernating"


def test_a_value_on_a_cut_takes_the_lower_score() -> None:
    on_cuts = rfm_traits(MODEL, _features(recency=30, frequency=2, monetary=50))
    # 30 days is not above the 30-day cut: recency score 6 - 2 = 4; 2 orders and 50 are not above theirs either
    assert on_cuts["rfm_code"] == "422"


def test_a_non_buyer_gets_no_rfm_traits_and_a_model_without_cuts_scores_three() -> None:
    assert rfm_traits(MODEL, _features(frequency=0)) == {}
    empty = RfmModel(1, 0, (), (), ())
    assert rfm_traits(empty, _features())["rfm_code"] == "333"


def test_an_rfm_model_survives_its_document() -> None:
    assert RfmModel.from_document(MODEL.as_document()) == MODEL
    assert MODEL.as_document()["model"] == RFM


# ---- clusters ----------------------------------------------------------------------------------------------


def test_centroids_in_plain_words_strongest_first() -> None:
    assert describe_centroid([-1.2, 0.9, 1.5, 0.1]) == "high spend, recent, frequent"
    assert describe_centroid([2.0, -0.6, -0.7, -1.0]) == "lapsed, quiet, low spend, infrequent"
    assert describe_centroid([0.2, -0.3, 0.4, 0.0]) == "average on every feature"


def _at(recency: float) -> Features:
    """Features whose standardised vector is ((recency - 30) / 10, 0, 0, 0) under CLUSTER_MODEL."""
    return Features(recency_days=recency, frequency=3, monetary=120.0, engagement=2.0, tenure_days=100)


CLUSTER_MODEL = ClusterModel(3, 1_700_000_000, mean=(30.0, *_at(0).vector()[1:]), scale=(10.0, 0.5, 1.0, 0.5),
                             centroids=((0.0, 0.0, 0.0, 0.0), (2.0, 0.0, 0.0, 0.0), (-2.0, 0.0, 0.0, 0.0)))


def test_assign_cluster_takes_the_nearest_centroid_in_standardised_units() -> None:
    assert assign_cluster(CLUSTER_MODEL, _at(30)) == (0, 0.0)
    index, distance = assign_cluster(CLUSTER_MODEL, _at(55))  # 2.5 standard units: nearest to +2
    assert (index, distance) == (1, 0.5)
    assert assign_cluster(CLUSTER_MODEL, _at(5))[0] == 2


def test_a_tie_goes_to_the_lower_cluster() -> None:
    assert assign_cluster(CLUSTER_MODEL, _at(40))[0] == 0  # exactly between cluster 0 and cluster 1


def test_a_cluster_model_survives_its_document() -> None:
    document = CLUSTER_MODEL.as_document()
    assert ClusterModel.from_document(document) == CLUSTER_MODEL
    assert document["descriptions"] == ["average on every feature", "lapsed", "recent"]


# ---- what the profile keeps --------------------------------------------------------------------------------


def test_put_reports_only_the_names_that_changed() -> None:
    traits = ComputedTraits()
    assert traits.put(CLUSTERS, 1, 100, {"cluster": 2, "cluster_distance": 0.5}) == {"cluster", "cluster_distance"}
    assert traits.put(CLUSTERS, 2, 200, {"cluster": 2, "cluster_distance": 0.5}) == set()
    assert traits.version(CLUSTERS) == 2
    assert traits.put(CLUSTERS, 2, 200, {"cluster": 2, "cluster_distance": 0.75}) == {"cluster_distance"}
    assert traits.put(CLUSTERS, 3, 300, {"cluster": 1}) == {"cluster", "cluster_distance"}  # distance dropped
    assert traits.values == {"cluster": 1}
    assert traits.version(RFM) is None


def test_put_touches_only_the_traits_of_its_model() -> None:
    traits = ComputedTraits()
    traits.put(CLUSTERS, 1, 100, {"cluster": 0})
    assert traits.put(RFM, 1, 100, {"rfm_code": "555", "cluster": 4}) == {"rfm_code"}
    assert traits.values["cluster"] == 0
    assert ComputedTraits.from_item(traits.as_item()) == traits


def test_a_new_customer_is_assigned_at_ingest_once_per_model_version(engine: Engine) -> None:
    profile = _folded(engine, [(1, 40.0)])
    models = {CLUSTERS: CLUSTER_MODEL.as_document()}
    assert assign_at_ingest(profile, models, START + 2 * DAY) == {"t:cluster", "t:cluster_distance"}
    assert profile.computed.version(CLUSTERS) == 3
    assert assign_at_ingest(profile, models, START + 3 * DAY) == set()
    assert assign_at_ingest(Profile("bob"), {}, START) == set()


# ---- features ---------------------------------------------------------------------------------------------


def test_features_as_of_now(engine: Engine) -> None:
    profile = _folded(engine, [(10, 40.0), (20, 60.0)], views=14)
    now = features(profile, START + 70 * DAY)
    assert (now.frequency, now.monetary, now.recency_days, now.tenure_days) == (2, 100.0, 50.0, 70.0)
    assert now.engagement == pytest.approx(15 / 10)  # an identify and 14 views in 10 weeks; orders not counted


def test_features_before_rebuild_the_figures_at_the_cut_off(engine: Engine) -> None:
    profile = _folded(engine, [(10, 40.0), (20, 60.0), (50, 25.0)])
    before = features_before(profile, START + 30 * DAY)
    assert before is not None
    assert (before.frequency, before.monetary, before.recency_days, before.tenure_days) == (2, 100.0, 10.0, 30.0)
    assert orders_after(profile, START + 30 * DAY) == (1, 25.0)
    nothing_yet = features_before(profile, START + 5 * DAY)
    assert nothing_yet is not None
    assert (nothing_yet.frequency, nothing_yet.monetary, nothing_yet.recency_days) == (0, 0.0, 5.0)


def test_features_before_are_unknown_for_someone_not_a_customer_yet(engine: Engine) -> None:
    profile = _folded(engine, [(10, 40.0)])
    assert features_before(profile, START - DAY) is None


def test_features_before_are_unknown_when_more_orders_fell_after_the_cut_off_than_are_kept(engine: Engine) -> None:
    orders = [(10 + day, 10.0) for day in range(RECENT_ORDERS + 2)]
    profile = _folded(engine, orders)
    assert features_before(profile, START + 5 * DAY) is None
    assert orders_after(profile, START + 5 * DAY) is None
    # a cut-off with no more than the kept orders after it is known again
    known = features_before(profile, START + 12 * DAY)
    assert known is not None and known.frequency == 3


def test_a_prediction_within_its_tolerance_keeps_the_stored_value_and_is_no_change() -> None:
    from cdp.core.traits import PREDICTIONS, ComputedTraits

    computed = ComputedTraits()
    first = {"churn_probability": 0.40, "expected_orders_90d": 1.20, "expected_value_90d": 100.0}
    assert computed.put(PREDICTIONS, 1, 100, first) == set(first)
    nudged = {"churn_probability": 0.43, "expected_orders_90d": 1.25, "expected_value_90d": 108.0}
    assert computed.put(PREDICTIONS, 2, 200, nudged) == set()
    assert computed.values == first and computed.models[PREDICTIONS] == [2, 200]
    moved = {"churn_probability": 0.46, "expected_orders_90d": 1.25, "expected_value_90d": 126.0}
    assert computed.put(PREDICTIONS, 3, 300, moved) == {"churn_probability", "expected_value_90d"}
    assert computed.values["churn_probability"] == 0.46 and computed.values["expected_orders_90d"] == 1.20


def test_scores_and_codes_change_on_any_difference() -> None:
    from cdp.core.traits import RFM, ComputedTraits

    computed = ComputedTraits()
    computed.put(RFM, 1, 1, {"rfm_recency": 5, "rfm_code": "555", "rfm_segment": "Champions"})
    assert computed.put(RFM, 2, 2, {"rfm_recency": 4, "rfm_code": "455", "rfm_segment": "Loyal Customers"}) == {
        "rfm_recency", "rfm_code", "rfm_segment"}


def test_a_value_within_tolerance_that_crosses_a_rule_boundary_is_a_change() -> None:
    from cdp.core.traits import PREDICTIONS, ComputedTraits

    computed = ComputedTraits()
    computed.put(PREDICTIONS, 1, 1, {"churn_probability": 0.68})
    assert computed.put(PREDICTIONS, 2, 2, {"churn_probability": 0.71}, {"churn_probability": [0.7]}) == {
        "churn_probability"}
    assert computed.put(PREDICTIONS, 3, 3, {"churn_probability": 0.74}, {"churn_probability": [0.7]}) == set()
    assert computed.values["churn_probability"] == 0.71


def test_rule_boundaries_are_the_numbers_rules_compare_computed_traits_with() -> None:
    from cdp.core.catalogue import build_catalogue
    from cdp.core.traits import trait_boundaries

    catalogue = build_catalogue([("a.yaml", {"id": "a", "name": "A", "condition": {"all": [
        {"trait": {"name": "churn_probability", "gt": 0.7}}, {"trait": {"name": "rfm_code", "in": ["555"]}},
        {"trait": {"name": "plan", "eq": 3}}, {"trait": {"name": "expected_value_90d", "gte": 100}}]}})])
    nodes = [node for segment in catalogue.segments.values() for node in segment.condition.walk()]
    assert trait_boundaries(nodes) == {"churn_probability": [0.7], "expected_value_90d": [100.0]}


def test_a_cluster_document_the_ingest_cannot_read_assigns_nothing_and_raises_nothing() -> None:
    from cdp.core.profile import Profile
    from cdp.core.traits import assign_at_ingest

    profile = Profile("c1")
    assert assign_at_ingest(profile, {"clusters": {"version": 2, "trained_at": 1}}, 1_000.0) == set()
    five = {"version": 2, "trained_at": 1, "mean": [0] * 5, "scale": [1] * 5, "centroids": [[0] * 5]}
    assert assign_at_ingest(profile, {"clusters": five}, 1_000.0) == set()
    assert profile.computed.empty


def test_recency_is_scored_in_whole_days_as_the_histogram_counts_it() -> None:
    from cdp.core.traits import Features, RfmModel, rfm_traits

    model = RfmModel(1, 1, (10.0, 20.0, 30.0, 40.0), (1.0, 1.0, 2.0, 3.0), (10.0, 20.0, 30.0, 40.0))
    tied = rfm_traits(model, Features(10.4, 1, 5.0, 0.0, 100.0))
    assert tied["rfm_recency"] == 5  # 10.4 days counts as 10: tied with the cut, the better score
    assert rfm_traits(model, Features(10.6, 1, 5.0, 0.0, 100.0))["rfm_recency"] == 4
