"""The merge rule of computed traits: per model, the side the model last wrote wins, the known side first."""

from __future__ import annotations

from pathlib import Path

from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine
from cdp.core.merge import merge_profiles, merged_computed
from cdp.core.profile import Profile
from cdp.core.traits import ComputedTraits

CATALOGUE = load_catalogue(Path(__file__).resolve().parents[2] / "segments")
NOW = 1_790_000_000
CHAMPION = {"rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 5, "rfm_code": "555", "rfm_segment": "Champions"}
HIBERNATING = {"rfm_recency": 1, "rfm_frequency": 1, "rfm_monetary": 1, "rfm_code": "111",
               "rfm_segment": "Hibernating"}


def traits(**models: tuple[int, dict[str, object]]) -> ComputedTraits:
    computed = ComputedTraits()
    for model, (version, values) in models.items():
        computed.put(model, version, NOW - version, values)
    return computed


def test_the_known_sides_model_wins_where_it_has_one_and_the_anonymous_fills_the_rest() -> None:
    known = traits(rfm=(3, CHAMPION))
    anonymous = traits(rfm=(4, HIBERNATING), clusters=(2, {"cluster": 1, "cluster_distance": 0.5}))
    merged = merged_computed(known, anonymous)
    assert merged.values == {**CHAMPION, "cluster": 1, "cluster_distance": 0.5}
    assert merged.models == {"rfm": [3, NOW - 3], "clusters": [2, NOW - 2]}


def test_a_known_model_that_wrote_no_trait_keeps_the_anonymous_sides_out() -> None:
    # The known customer's prediction run left every trait out (no purchase history yet): its stamp still wins.
    known = traits(predictions=(5, {}))
    anonymous = traits(predictions=(5, {"churn_probability": 0.9, "expected_orders_90d": 0.1}))
    merged = merged_computed(known, anonymous)
    assert merged.values == {} and merged.models == {"predictions": [5, NOW - 5]}


def test_neither_side_with_computed_traits_merges_to_none() -> None:
    assert merged_computed(ComputedTraits(), ComputedTraits()).empty


def test_merge_profiles_takes_the_rule_and_leaves_both_inputs_unchanged() -> None:
    known, anonymous = Profile("user-1"), Profile("anon-1")
    known.computed = traits(rfm=(3, CHAMPION))
    anonymous.computed = traits(rfm=(4, HIBERNATING), clusters=(2, {"cluster": 0, "cluster_distance": 0.2}))
    merged = merge_profiles(known, anonymous, NOW, catalogue=CATALOGUE)
    assert merged.computed.values == {**CHAMPION, "cluster": 0, "cluster_distance": 0.2}
    merged.computed.values["cluster"] = 7
    assert anonymous.computed.values["cluster"] == 0 and known.computed.values == CHAMPION
    assert decode_profile(encode_profile(merged)).computed == merged.computed  # stored as it merged


def test_the_merged_traits_decide_the_merged_profiles_segments() -> None:
    known, anonymous = Profile("user-1"), Profile("anon-1")
    anonymous.computed = traits(clusters=(2, {"cluster": 0, "cluster_distance": 0.2}))
    known.computed = traits(rfm=(3, CHAMPION))
    merged = merge_profiles(known, anonymous, NOW, catalogue=CATALOGUE)
    entered = {t.segment_id for t in Engine(CATALOGUE).evaluate(merged, NOW) if t.kind == "entered"}
    assert {"champions", "top-spend-cluster"} <= entered
