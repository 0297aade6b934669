"""Training of the computed traits' models: k-means clusters and the purchase predictions (scikit-learn).

Only the jobs function imports this package, and numpy and scikit-learn are imported inside the functions that
train or predict, so importing it costs nothing (they come from the jobs function's own layer, ``layers/models``).
Assigning a customer to a stored cluster model needs neither: :mod:`cdp.core.traits` does that in pure Python.

**Clusters** (:func:`fit_clusters`): ``StandardScaler`` then ``KMeans(n_init=10)`` over the four cluster features
(:meth:`cdp.core.traits.Features.vector`). Unless configured, k is the one of ``k_range`` with the best silhouette
(measured on at most 5,000 rows). Centroids are ordered by descending standardised monetary value, so cluster 0 is
always the highest-spending one, whatever order k-means found them in.

**Predictions** (:func:`fit_predictions`): a supervised classifier on features at a cut-off date. A
``HistGradientBoostingClassifier`` gives the probability of an order within the next ``HORIZON_DAYS`` (churn is
its complement) and a ``HistGradientBoostingRegressor(loss="poisson")`` the expected number of orders, both over
recency, frequency, monetary value and tenure. Engagement is left out: the profile keeps per-event-name counts for
the customer's lifetime, so the engagement "as it stood at the cut-off" would count the very events of the
horizon it is meant to predict. Why not BG/NBD + Gamma-Gamma: its Python library
(lifetimes) is no longer maintained, and its successor (pymc-marketing) brings PyMC and PyTensor, which would not
fit Lambda's 250 MB with scikit-learn and compile C code at run time. The classifier uses the same scikit-learn as
k-means, and it is validated directly on a time split.

Validation, a time split. Training: each customer's features at ``now - 2 * HORIZON_DAYS`` (``earlier``) against
their orders in the horizon after it. Holdout: the features at ``now - HORIZON_DAYS`` (``before``) against the
orders since (``label_orders``), which the model never saw. Reported: the AUC of the churn probability, the mean
absolute error of the expected orders, and both for a naive baseline, the last period's rate (the orders in the
horizon before the cut-off, as churn score its negative). The model applied to profiles is then refitted on
``before`` against ``label_orders``, and predicts from the features as of now.

With fewer than ``MIN_TRAINING_ROWS`` rows, or when every row has the same outcome, a model would learn nothing:
the estimator is then a constant (the share of rows that ordered, and their mean orders; 0 without rows), and a
metric that cannot be measured is None. Training never fails on a small or uniform population.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdp.core.durations import DAY
from cdp.core.profile import Profile
from cdp.core.traits import (
    CLUSTER_FEATURES,
    HORIZON_DAYS,
    PREDICTIONS,
    ClusterModel,
    Features,
    features,
    features_before,
    orders_after,
)

SILHOUETTE_ROWS = 5_000  # the silhouette is quadratic in rows: measured on a sample this large
MIN_TRAINING_ROWS = 20
PREDICTION_FEATURES = ("recency_days", "frequency", "monetary", "tenure_days")  # no engagement: see above
CLASSIFIER = "HistGradientBoostingClassifier"
REGRESSOR = "HistGradientBoostingRegressor(loss=poisson)"
_BOOSTING = {"max_iter": 150, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 20,
             "l2_regularization": 1.0, "early_stopping": False}


# ---- clusters ----------------------------------------------------------------------------------------------


def _one_thread() -> Any:
    """Native thread pools (OpenMP, BLAS) held to one thread: a jobs function has at most a vCPU or two, and
    threads spinning against each other there, or beside another process, make a fit many times slower."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

    return threadpool_limits(limits=1)


def fit_clusters(vectors: Sequence[Sequence[float]], *, k: int | None = None, k_range: tuple[int, int] = (2, 8),
                 seed: int = 0, version: int, trained_at: int) -> ClusterModel:
    """k-means over standardised vectors; k by the best silhouette in ``k_range`` (inclusive) unless given."""
    with _one_thread():
        return _fit_clusters(vectors, k, k_range, seed, version, trained_at)


def _fit_clusters(vectors: Sequence[Sequence[float]], k: int | None, k_range: tuple[int, int], seed: int,
                  version: int, trained_at: int) -> ClusterModel:
    import numpy as np
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped, unused-ignore]

    width = len(CLUSTER_FEATURES)
    data = np.asarray(vectors, dtype=float).reshape(-1, width)
    if len(data) == 0:
        return ClusterModel(version, trained_at, (0.0,) * width, (1.0,) * width, ((0.0,) * width,),
                            chosen_by="configured" if k else "silhouette", sizes=(0,))
    scaler = StandardScaler().fit(data)
    scaled = scaler.transform(data)
    distinct = len(np.unique(scaled, axis=0))
    if k is not None:
        labels, centroids = _kmeans(scaled, max(1, min(k, distinct)), seed)
        silhouette, chosen_by = _silhouette(scaled, labels, seed), "configured"
    else:
        labels, centroids, silhouette = _best_k(scaled, k_range, distinct, seed)
        chosen_by = "silhouette"
    order = sorted(range(len(centroids)), key=lambda index: -float(centroids[index][2]))
    sizes = np.bincount(labels, minlength=len(centroids))
    return ClusterModel(version, trained_at, tuple(float(v) for v in scaler.mean_),
                        tuple(float(v) for v in scaler.scale_),
                        tuple(tuple(round(float(v), 6) for v in centroids[index]) for index in order),
                        silhouette=round(silhouette, 4), chosen_by=chosen_by,
                        sizes=tuple(int(sizes[index]) for index in order), population=len(data))


def _kmeans(scaled: Any, k: int, seed: int) -> tuple[Any, Any]:
    from sklearn.cluster import KMeans  # type: ignore[import-untyped, unused-ignore]

    fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(scaled)
    return fitted.labels_, fitted.cluster_centers_


def _silhouette(scaled: Any, labels: Any, seed: int) -> float:
    from sklearn.metrics import silhouette_score  # type: ignore[import-untyped, unused-ignore]

    clusters = len(set(labels.tolist()))
    if clusters < 2 or clusters >= len(scaled):
        return 0.0  # undefined for one cluster, or one point per cluster
    sample = SILHOUETTE_ROWS if len(scaled) > SILHOUETTE_ROWS else None
    return float(silhouette_score(scaled, labels, sample_size=sample, random_state=seed))


def _best_k(scaled: Any, k_range: tuple[int, int], distinct: int, seed: int) -> tuple[Any, Any, float]:
    low, high = max(2, k_range[0]), min(k_range[1], distinct - 1)
    if high < low:  # too few distinct customers to compare two clusterings: one cluster
        labels, centroids = _kmeans(scaled, max(1, min(distinct, k_range[0])), seed)
        return labels, centroids, _silhouette(scaled, labels, seed)
    best: tuple[Any, Any, float] | None = None
    for candidate in range(low, high + 1):
        labels, centroids = _kmeans(scaled, candidate, seed)
        score = _silhouette(scaled, labels, seed)
        if best is None or score > best[2]:  # ties keep the smaller k
            best = (labels, centroids, score)
    assert best is not None
    return best


# ---- predictions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRow:
    """One customer's figures at the two cut-offs and the orders after each (see the module docstring)."""

    customer_id: str
    before: Features  # as of now - HORIZON_DAYS
    label_orders: int  # orders in (now - HORIZON_DAYS, now]
    label_revenue: float
    earlier: Features | None  # as of now - 2 * HORIZON_DAYS; None when unknown
    earlier_label_orders: int | None  # orders in (now - 2 * HORIZON_DAYS, now - HORIZON_DAYS]
    now: Features

    def __post_init__(self) -> None:
        # rows that travelled through a job's state arrive with the features as plain mappings
        for name in ("before", "earlier", "now"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, Features(**value))

    @property
    def last_period_orders(self) -> int:
        """Orders in the horizon before the cut-off: the naive baseline's prediction for the horizon after it."""
        if self.earlier_label_orders is not None:
            return self.earlier_label_orders
        return self.before.frequency  # not a customer, or too many orders to tell, at the earlier cut-off


def training_row(profile: Profile, now: float) -> TrainingRow | None:
    """A profile's training row, or None when its figures at the cut-off are unknown (or it was not a customer)."""
    cut_off = now - HORIZON_DAYS * DAY
    before = features_before(profile, cut_off)
    after = orders_after(profile, cut_off)
    if before is None or after is None:
        return None
    earlier = features_before(profile, cut_off - HORIZON_DAYS * DAY)
    earlier_orders = None if earlier is None else max(0, before.frequency - earlier.frequency)
    return TrainingRow(profile.customer_id, before, after[0], after[1], earlier, earlier_orders,
                       features(profile, now))


def _matrix(rows: Sequence[Features]) -> Any:
    import numpy as np

    return np.asarray([[getattr(row, name) for name in PREDICTION_FEATURES] for row in rows], dtype=float)


class PredictionModel:
    """The fitted purchase models: P(an order within the horizon) and the expected orders in it."""

    def __init__(self, version: int, trained_at: int, classifier: Any, regressor: Any,
                 metrics: Mapping[str, Any]) -> None:
        self.version = version
        self.trained_at = trained_at
        self.classifier = classifier  # a fitted estimator, or a float: the constant probability
        self.regressor = regressor  # a fitted estimator, or a float: the constant expected orders
        self.metrics = dict(metrics)

    def predict(self, rows: Sequence[Features]) -> list[tuple[float, float]]:
        """(probability of an order within the horizon, expected orders in it) for each customer's features."""
        if not rows:
            return []
        with _one_thread():
            return self._predict(_matrix(rows))

    def _predict(self, data: Any) -> list[tuple[float, float]]:
        rows = len(data)
        if isinstance(self.classifier, float):
            probabilities = [self.classifier] * rows
        else:
            probabilities = [float(p) for p in self.classifier.predict_proba(data)[:, 1]]
        if isinstance(self.regressor, float):
            orders = [self.regressor] * rows
        else:
            orders = [float(v) for v in self.regressor.predict(data)]
        return [(min(1.0, max(0.0, p)), max(0.0, o)) for p, o in zip(probabilities, orders, strict=True)]

    def document(self) -> dict[str, Any]:
        """What the model store and the API show of the model (its estimators are stored apart, as bytes)."""
        return {"model": PREDICTIONS, "version": self.version, "trained_at": self.trained_at,
                "metrics": dict(self.metrics), "features": list(PREDICTION_FEATURES), "horizon_days": HORIZON_DAYS}

    def to_bytes(self) -> bytes:
        return pickle.dumps({"version": self.version, "trained_at": self.trained_at, "metrics": self.metrics,
                             "classifier": self.classifier, "regressor": self.regressor})

    @classmethod
    def from_bytes(cls, data: bytes) -> PredictionModel:
        """Only ever the bytes :meth:`to_bytes` wrote to the project's own model store (pickle runs code)."""
        state = pickle.loads(data)  # the project's own artefact, never input from outside
        return cls(int(state["version"]), int(state["trained_at"]), state["classifier"], state["regressor"],
                   state["metrics"])


def _fit_classifier(data: Any, ordered: Sequence[bool], seed: int) -> Any:
    if len(ordered) < MIN_TRAINING_ROWS or len(set(ordered)) < 2:
        return sum(ordered) / len(ordered) if ordered else 0.0
    from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped, unused-ignore]

    return HistGradientBoostingClassifier(random_state=seed, **_BOOSTING).fit(data, list(ordered))


def _fit_regressor(data: Any, orders: Sequence[int], seed: int) -> Any:
    if len(orders) < MIN_TRAINING_ROWS or not any(orders):
        return sum(orders) / len(orders) if orders else 0.0
    from sklearn.ensemble import HistGradientBoostingRegressor  # type: ignore[import-untyped, unused-ignore]

    return HistGradientBoostingRegressor(loss="poisson", random_state=seed, **_BOOSTING).fit(data, list(orders))


def _auc(churned: Sequence[bool], scores: Sequence[float]) -> float | None:
    if len(set(churned)) < 2:
        return None  # every holdout customer had the same outcome
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped, unused-ignore]

    return round(float(roc_auc_score(list(churned), list(scores))), 4)


def _mae(predicted: Sequence[float], actual: Sequence[int]) -> float | None:
    if not actual:
        return None
    return round(sum(abs(p - a) for p, a in zip(predicted, actual, strict=True)) / len(actual), 4)


def _description(classifier: Any, regressor: Any) -> str:
    churn = "constant" if isinstance(classifier, float) else CLASSIFIER
    orders = "constant" if isinstance(regressor, float) else REGRESSOR
    return f"{churn} for P(order within {HORIZON_DAYS} days); {orders} for expected orders"


def validate(rows: Sequence[TrainingRow], seed: int = 0) -> dict[str, Any]:
    """The time split: trained on the earlier cut-off, measured on the later one, against the naive baseline."""
    training = [row for row in rows if row.earlier is not None and row.earlier_label_orders is not None]
    data = _matrix([row.earlier for row in training if row.earlier is not None])
    labels = [row.earlier_label_orders or 0 for row in training]
    model = PredictionModel(0, 0, _fit_classifier(data, [n > 0 for n in labels], seed),
                            _fit_regressor(data, labels, seed), {})
    predicted = model.predict([row.before for row in rows])
    churned = [row.label_orders == 0 for row in rows]
    actual = [row.label_orders for row in rows]
    naive = [row.last_period_orders for row in rows]
    ranked = not isinstance(model.classifier, float)  # a constant ranks no one: its AUC says nothing
    return {"auc": _auc(churned, [1.0 - p for p, _ in predicted]) if ranked else None,
            "baseline_auc": _auc(churned, [-float(n) for n in naive]),
            "mae": _mae([orders for _, orders in predicted], actual),
            "baseline_mae": _mae([float(n) for n in naive], actual),
            "holdout_customers": len(rows), "training_customers": len(training),
            "holdout_churn_rate": round(sum(churned) / len(rows), 4) if rows else None,
            "validation_model": _description(model.classifier, model.regressor)}


def fit_predictions(rows: Sequence[TrainingRow], *, version: int, trained_at: int, seed: int = 0) -> PredictionModel:
    """Validate on the time split, then fit on the latest cut-off (``before`` -> ``label_orders``); a row without
    ``before`` is left out."""
    rows = [row for row in rows if row.before is not None]  # figures at the cut-off unknown: left out
    with _one_thread():
        metrics = validate(rows, seed)
        data = _matrix([row.before for row in rows])
        labels = [row.label_orders for row in rows]
        classifier = _fit_classifier(data, [n > 0 for n in labels], seed)
        regressor = _fit_regressor(data, labels, seed)
    metrics["model"] = _description(classifier, regressor)
    return PredictionModel(version, trained_at, classifier, regressor, metrics)


def sample(rows: Sequence[Any], limit: int, seed: int = 0) -> list[Any]:
    """At most ``limit`` of the rows, the same ones for a seed (training a very large population on a sample)."""
    if len(rows) <= limit:
        return list(rows)
    return random.Random(seed).sample(list(rows), limit)


__all__ = ["MIN_TRAINING_ROWS", "PREDICTION_FEATURES", "PredictionModel", "TrainingRow", "fit_clusters",
           "fit_predictions", "sample", "training_row", "validate"]
