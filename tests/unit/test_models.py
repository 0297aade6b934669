"""The computed traits' training (scikit-learn): clusters, the purchase predictions and their time-split validation."""

from __future__ import annotations

import json
import random

import pytest
from sklearn.metrics import adjusted_rand_score  # type: ignore[import-untyped, unused-ignore]

from bench.models import fold
from cdp.core.traits import ClusterModel, Features, assign_cluster
from cdp.models import PredictionModel, TrainingRow, fit_clusters, fit_predictions, training_row
from cdp_dev.planted_history import planted_history

CENTRES = ((5.0, 2.0, 6.0, 1.0), (60.0, 0.5, 3.0, 0.2), (200.0, 0.0, 0.0, 2.5))


def _blobs(per_blob: int = 120, seed: int = 3) -> tuple[list[list[float]], list[int]]:
    rng = random.Random(seed)
    scales = (3.0, 0.1, 0.2, 0.1)
    vectors, truth = [], []
    for label, centre in enumerate(CENTRES):
        for _ in range(per_blob):
            vectors.append([rng.gauss(mean, scale) for mean, scale in zip(centre, scales, strict=True)])
            truth.append(label)
    return vectors, truth


def _labels(model_vectors: list[list[float]], model: ClusterModel) -> list[int]:
    """Nearest centroid of each raw vector, computed here independently of cdp.core.traits."""
    labels = []
    for vector in model_vectors:
        point = [(v - m) / s for v, m, s in zip(vector, model.mean, model.scale, strict=True)]
        distances = [sum((a - b) ** 2 for a, b in zip(point, c, strict=True)) for c in model.centroids]
        labels.append(distances.index(min(distances)))
    return labels


def test_clusters_recover_well_separated_blobs_with_k_chosen_by_silhouette() -> None:
    vectors, truth = _blobs()
    model = fit_clusters(vectors, seed=0, version=4, trained_at=1_700_000_000)
    assert (model.k, model.chosen_by, model.version, model.population) == (3, "silhouette", 4, len(vectors))
    assert model.silhouette > 0.5
    assert adjusted_rand_score(truth, _labels(vectors, model)) > 0.9
    assert sum(model.sizes) == len(vectors) and sorted(model.sizes) == [120, 120, 120]


def test_a_configured_k_is_honoured() -> None:
    vectors, _ = _blobs()
    model = fit_clusters(vectors, k=5, seed=0, version=1, trained_at=0)
    assert (model.k, model.chosen_by) == (5, "configured")


def test_cluster_zero_is_the_highest_spending_and_sizes_follow_the_order() -> None:
    vectors, truth = _blobs()
    model = fit_clusters(vectors, k=3, seed=0, version=1, trained_at=0)
    monetary = [centroid[2] for centroid in model.centroids]
    assert monetary == sorted(monetary, reverse=True)
    labels = _labels(vectors, model)
    assert [labels.count(index) for index in range(model.k)] == list(model.sizes)
    # blob 0 has the highest monetary value: its points are cluster 0
    assert {labels[i] for i, t in enumerate(truth) if t == 0} == {0}


def test_the_pure_assignment_agrees_with_the_fit() -> None:
    vectors, _ = _blobs(per_blob=40)
    model = fit_clusters(vectors, seed=0, version=1, trained_at=0)
    figures = Features(recency_days=61.0, frequency=1, monetary=19.0, engagement=0.2, tenure_days=300)
    point = figures.vector()
    assert assign_cluster(model, figures)[0] == _labels([point], model)[0]


def test_clustering_is_deterministic_for_a_seed() -> None:
    vectors, _ = _blobs(per_blob=50)
    first = fit_clusters(vectors, seed=7, version=1, trained_at=0)
    assert fit_clusters(vectors, seed=7, version=1, trained_at=0) == first


@pytest.mark.parametrize("vectors", [[], [[1.0, 0.0, 2.0, 0.5]], [[1.0, 0.0, 2.0, 0.5]] * 5,
                                     [[1.0, 0.0, 2.0, 0.5], [3.0, 1.0, 2.0, 0.5]]])
def test_tiny_populations_get_a_model_without_failing(vectors: list[list[float]]) -> None:
    model = fit_clusters(vectors, seed=0, version=1, trained_at=0)
    assert 1 <= model.k <= max(1, len(vectors))
    assert sum(model.sizes) == len(vectors)
    configured = fit_clusters(vectors, k=4, seed=0, version=1, trained_at=0)
    assert configured.k <= max(1, len(vectors)) and configured.chosen_by == "configured"


# ---- predictions -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_rows() -> list[TrainingRow]:
    history = planted_history(700, seed=5)
    profiles = fold(history)
    rows = [training_row(profiles[cid], history.end) for cid in sorted(profiles)]
    return [row for row in rows if row is not None]


@pytest.fixture(scope="module")
def planted_model(planted_rows: list[TrainingRow]) -> PredictionModel:
    return fit_predictions(planted_rows, version=2, trained_at=1_800_000_000, seed=0)


def test_the_churn_model_beats_the_last_periods_rate_on_the_time_split(planted_model: PredictionModel) -> None:
    metrics = planted_model.metrics
    assert metrics["auc"] > metrics["baseline_auc"]
    assert metrics["auc"] > 0.75
    assert metrics["mae"] < metrics["baseline_mae"]
    assert metrics["training_customers"] < metrics["holdout_customers"]  # the newest had no earlier cut-off
    assert "HistGradientBoostingClassifier" in metrics["model"]


def test_the_model_document_is_json_metadata_without_the_estimators(planted_model: PredictionModel) -> None:
    document = json.loads(json.dumps(planted_model.document()))
    assert (document["model"], document["version"], document["trained_at"]) == ("predictions", 2, 1_800_000_000)
    assert document["horizon_days"] == 90
    assert document["features"] == ["recency_days", "frequency", "monetary", "tenure_days"]
    assert document["metrics"]["auc"] == planted_model.metrics["auc"]


def test_a_stored_model_predicts_the_same(planted_model: PredictionModel, planted_rows: list[TrainingRow]) -> None:
    loaded = PredictionModel.from_bytes(planted_model.to_bytes())
    now = [row.now for row in planted_rows[:50]]
    assert loaded.predict(now) == planted_model.predict(now)
    assert (loaded.version, loaded.trained_at, loaded.metrics) == (2, 1_800_000_000, planted_model.metrics)


def test_predictions_are_probabilities_and_non_negative_orders(planted_model: PredictionModel,
                                                               planted_rows: list[TrainingRow]) -> None:
    predicted = planted_model.predict([row.now for row in planted_rows])
    assert all(0.0 <= p <= 1.0 and orders >= 0.0 for p, orders in predicted)
    assert planted_model.predict([]) == []


def test_training_is_deterministic_for_a_seed(planted_model: PredictionModel, planted_rows: list[TrainingRow]) -> None:
    again = fit_predictions(planted_rows, version=2, trained_at=1_800_000_000, seed=0)
    now = [row.now for row in planted_rows[:50]]
    assert again.predict(now) == planted_model.predict(now)
    assert again.metrics == planted_model.metrics


def test_rows_from_a_jobs_state_take_plain_mappings(planted_rows: list[TrainingRow]) -> None:
    from dataclasses import asdict

    row = planted_rows[0]
    plain = TrainingRow(row.customer_id, asdict(row.before), row.label_orders, row.label_revenue,  # type: ignore[arg-type]
                        None if row.earlier is None else asdict(row.earlier),  # type: ignore[arg-type]
                        row.earlier_label_orders, asdict(row.now))  # type: ignore[arg-type]
    assert plain == row


def _row(number: int, orders: int, earlier_orders: int | None = 0) -> TrainingRow:
    figures = Features(recency_days=float(number), frequency=1 + number % 3, monetary=10.0 * number,
                       engagement=1.0, tenure_days=200.0)
    return TrainingRow(f"c{number}", figures, orders, 20.0 * orders, figures if earlier_orders is not None else None,
                       earlier_orders, figures)


@pytest.mark.parametrize("rows", [[], [_row(1, 1)], [_row(n, n % 2) for n in range(8)],
                                  [_row(n, 0) for n in range(60)], [_row(n, 2, None) for n in range(30)]])
def test_tiny_or_one_class_populations_get_a_constant_model(rows: list[TrainingRow]) -> None:
    model = fit_predictions(rows, version=1, trained_at=0)
    assert model.metrics["auc"] is None
    assert "constant" in model.metrics["model"]
    ordered = [row.label_orders > 0 for row in rows]
    predicted = model.predict([_row(99, 0).now, _row(3, 0).now])
    assert predicted[0] == predicted[1]
    assert predicted[0][0] == pytest.approx(sum(ordered) / len(rows) if rows else 0.0)
    assert PredictionModel.from_bytes(model.to_bytes()).predict([_row(5, 0).now]) == [predicted[0]]


def test_the_naive_baseline_is_the_last_periods_orders() -> None:
    known = _row(1, 0, earlier_orders=3)
    assert known.last_period_orders == 3
    unknown = _row(2, 0, earlier_orders=None)
    assert unknown.last_period_orders == unknown.before.frequency
