"""Computed traits: RFM scores, clusters and predictions that population jobs write to every profile.

A computed trait is read by the segment language like any other trait (``trait: {name: rfm_code, in: ["555"]}``);
its name is reserved, so a trait of the same name sent by ``identify`` is kept in ``t`` but never read by a rule.
Each trait belongs to one *model* (``rfm``, ``clusters``, ``predictions``), and the profile keeps, per model, the
version and training time of the model that wrote its traits (attribute ``ct``: ``{"v": values, "m": {model:
[version, trained_at]}}``).

Everything here is pure Python, so the ingest can assign a new customer to a cluster of the stored model without
numpy; training (scikit-learn) lives in :mod:`cdp.models` and runs only in the jobs function.

**Features** (:func:`features`), as of a moment ``at``:

- ``recency_days``: days since the last order (non-buyers: since first seen), at most ``MAX_RECENCY_DAYS``;
- ``frequency``: lifetime orders; ``monetary``: lifetime revenue net of refunds;
- ``engagement``: events per week since first seen, from the per-event-name counters (orders excluded); the
  counters hold lifetime counts, so :func:`features_before` cannot rebuild it and the purchase models do not read it
  (only the clusters do, as of now);
- ``tenure_days``: days since first seen.

:func:`features_before` rebuilds the order figures as they stood at an earlier cut-off from the lifetime figures
and the last ``RECENT_ORDERS`` orders the profile keeps; it returns None when more than those orders fell after the
cut-off (the figures before it are then unknown), and the training leaves such a customer out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cdp.core.durations import DAY, WEEK

if TYPE_CHECKING:
    from cdp.core.profile import Profile

RFM, CLUSTERS, PREDICTIONS = "rfm", "clusters", "predictions"
MODELS = (RFM, CLUSTERS, PREDICTIONS)
TRAIT_MODELS: dict[str, str] = {
    "rfm_recency": RFM, "rfm_frequency": RFM, "rfm_monetary": RFM, "rfm_code": RFM, "rfm_segment": RFM,
    "cluster": CLUSTERS, "cluster_distance": CLUSTERS,
    "churn_probability": PREDICTIONS, "expected_orders_90d": PREDICTIONS, "expected_value_90d": PREDICTIONS,
}
ORDER_EVENT = "Order Completed"
MAX_RECENCY_DAYS = 730
HORIZON_DAYS = 90  # predictions look this far ahead; the training's cut-off is this far back
# A prediction or distance that moved less than this keeps its stored value: a daily job then rewrites only the
# customers whose outlook moved, not everyone whose recency grew by a day. (RFM scores and clusters are exact.)
TOLERANCE = {"cluster_distance": 0.25, "churn_probability": 0.05, "expected_orders_90d": 0.1}
RELATIVE_TOLERANCE = {"expected_value_90d": 0.25}  # a quarter of the stored value (and at least 5)


# ---- what the profile keeps ---------------------------------------------------------------------------------


@dataclass
class ComputedTraits:
    """The computed traits of one profile and, per model, the ``[version, trained_at]`` that wrote them."""

    values: dict[str, Any] = field(default_factory=dict)
    models: dict[str, list[int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.values and not self.models

    def version(self, model: str) -> int | None:
        stamp = self.models.get(model)
        return int(stamp[0]) if stamp else None

    def put(self, model: str, version: int, trained_at: int, values: Mapping[str, Any],
            boundaries: Mapping[str, Sequence[float]] | None = None) -> set[str]:
        """Replace the traits of ``model`` with ``values`` (None leaves a trait out); the names that changed. A value
        within its :data:`TOLERANCE` of the stored one is not a change, and the stored value stays, unless one of
        the trait's ``boundaries`` (the numbers segment rules compare it with) lies between them. The stamp names
        the newest model that scored the profile."""
        names = [name for name, owner in TRAIT_MODELS.items() if owner == model]
        changed: set[str] = set()
        for name in names:
            value = values.get(name)
            if value is None:
                if name in self.values:
                    del self.values[name]
                    changed.add(name)
            elif not _close(name, self.values.get(name), value, (boundaries or {}).get(name, ())):
                self.values[name] = value
                changed.add(name)
        self.models[model] = [int(version), int(trained_at)]
        return changed

    def as_item(self) -> dict[str, Any]:
        return {"v": dict(self.values), "m": {k: list(v) for k, v in self.models.items()}}

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> ComputedTraits:
        if not item:
            return cls()
        values = {str(k): _plain(v) for k, v in (item.get("v") or {}).items()}
        models = {str(k): [int(v[0]), int(v[1])] for k, v in (item.get("m") or {}).items()}
        return cls(values, models)


def _close(name: str, stored: Any, value: Any, boundaries: Sequence[float] = ()) -> bool:
    """Whether ``value`` is the stored value, or within the trait's tolerance of it with no boundary between."""
    if stored == value:
        return True
    if stored is None or isinstance(stored, (bool, str)) or isinstance(value, (bool, str)):
        return False
    low, high = sorted((float(stored), float(value)))
    if any(low <= boundary <= high for boundary in boundaries):
        return False  # a rule's verdict may flip between them
    if name in TOLERANCE:
        return abs(float(value) - float(stored)) < TOLERANCE[name]
    if name in RELATIVE_TOLERANCE:
        return abs(float(value) - float(stored)) < max(5.0, RELATIVE_TOLERANCE[name] * abs(float(stored)))
    return False


def _plain(value: Any) -> Any:
    """A stored number as the Python number it was (DynamoDB gives Decimals)."""
    if isinstance(value, (bool, str, int)):
        return value
    number = float(value)
    return int(number) if number.is_integer() and not isinstance(value, float) else number


# ---- features ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    recency_days: float
    frequency: int
    monetary: float
    engagement: float
    tenure_days: float

    @property
    def buyer(self) -> bool:
        return self.frequency > 0

    def vector(self) -> list[float]:
        """What k-means reads (before scaling): recency, and logs of the skewed figures."""
        return [self.recency_days, math.log1p(self.frequency), math.log1p(max(0.0, self.monetary)),
                math.log1p(self.engagement)]


CLUSTER_FEATURES = ("recency", "frequency", "monetary", "engagement")


def _first_seen(profile: Profile) -> int:
    return int(profile.created_at or profile.first_order or profile.updated_at or 0)


def _engagement(profile: Profile, at: float) -> float:
    events = 0
    for key in profile.counter_keys():
        if "|" in key or key == ORDER_EVENT:
            continue  # filtered counters count the same events again
        counter = profile.counter(key)
        if counter is not None:
            events += counter.count
    weeks = max(1.0, (at - _first_seen(profile)) / WEEK)
    return events / weeks


def features(profile: Profile, at: float) -> Features:
    """The profile's features as of ``at`` (its lifetime figures)."""
    first = _first_seen(profile)
    last = profile.last_order if profile.orders > 0 and profile.last_order else first
    return Features(recency_days=_days(at - last), frequency=max(0, profile.orders),
                    monetary=max(0.0, profile.revenue / 100), engagement=_engagement(profile, at),
                    tenure_days=_days(at - first))


def _days(seconds: float) -> float:
    return round(min(MAX_RECENCY_DAYS, max(0.0, seconds / DAY)), 3)


def orders_after(profile: Profile, cut_off: float) -> tuple[int, float] | None:
    """Orders and revenue after ``cut_off``, from the recent orders kept; None when more than those fell after it."""
    recent = sorted(profile.recent_orders, key=lambda order: int(order[1]))
    later = [order for order in recent if int(order[1]) > cut_off]
    if len(later) == len(recent) and profile.orders > len(recent):
        return None  # every order kept is after the cut-off, and there were more: how many is unknown
    return len(later), sum(int(order[2]) for order in later) / 100


def features_before(profile: Profile, cut_off: float) -> Features | None:
    """The order figures as they stood at ``cut_off`` (engagement as of now, scaled to the tenure then)."""
    first = _first_seen(profile)
    if first > cut_off:
        return None  # not a customer yet at the cut-off
    after = orders_after(profile, cut_off)
    if after is None:
        return None
    later, revenue_after = after
    orders = max(0, profile.orders - later)
    before = [int(order[1]) for order in profile.recent_orders if int(order[1]) <= cut_off]
    if orders == 0:
        last = first
    elif before:
        last = max(before)
    else:
        last = int(profile.last_order or first) if later == 0 else first
    return Features(recency_days=_days(cut_off - last), frequency=orders,
                    monetary=max(0.0, profile.revenue / 100 - revenue_after), engagement=_engagement(profile, cut_off),
                    tenure_days=_days(cut_off - first))


# ---- RFM ---------------------------------------------------------------------------------------------------

# The standard named RFM segments, by recency score and frequency score (the monetary score does not name them):
# (recency scores, frequency scores) -> name. Every one of the 25 pairs has exactly one name.
RFM_SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("12", "12", "Hibernating"),
    ("12", "34", "At Risk"),
    ("12", "5", "Can't Lose Them"),
    ("3", "12", "About To Sleep"),
    ("3", "3", "Need Attention"),
    ("34", "45", "Loyal Customers"),
    ("4", "1", "Promising"),
    ("5", "1", "New Customers"),
    ("45", "23", "Potential Loyalists"),
    ("5", "45", "Champions"),
)


def rfm_segment(recency: int, frequency: int) -> str:
    for recencies, frequencies, name in RFM_SEGMENTS:
        if str(recency) in recencies and str(frequency) in frequencies:
            return name
    raise ValueError(f"no RFM segment for R{recency} F{frequency}")


@dataclass(frozen=True)
class RfmModel:
    """Quintile cut points (the 20th, 40th, 60th and 80th percentile, nearest rank) over the buyers."""

    version: int
    trained_at: int
    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    population: int = 0

    def as_document(self) -> dict[str, Any]:
        return {"model": RFM, "version": self.version, "trained_at": self.trained_at, "population": self.population,
                "cuts": {"recency_days": list(self.recency), "frequency": list(self.frequency),
                         "monetary": list(self.monetary)}}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RfmModel:
        cuts = document["cuts"]
        return cls(int(document["version"]), int(document["trained_at"]),
                   tuple(float(v) for v in cuts["recency_days"]), tuple(float(v) for v in cuts["frequency"]),
                   tuple(float(v) for v in cuts["monetary"]), int(document.get("population", 0)))


def quintile_cuts(histogram: Mapping[float, int]) -> tuple[float, ...]:
    """The 20th, 40th, 60th and 80th percentile values (nearest rank) of the values a histogram counts."""
    ordered = sorted(histogram.items())
    size = sum(count for _, count in ordered)
    if not size:
        return ()
    cuts: list[float] = []
    index, seen = 0, ordered[0][1]
    for percent in (20, 40, 60, 80):
        rank = max(0, math.ceil(percent / 100 * size) - 1)
        while rank >= seen:
            index += 1
            seen += ordered[index][1]
        cuts.append(float(ordered[index][0]))
    return tuple(cuts)


def _score(value: float, cuts: Sequence[float]) -> int:
    """1..5: one more than the number of cut points below the value (ties share the lower score)."""
    return 1 + sum(1 for cut in cuts if value > cut)


def rfm_traits(model: RfmModel, figures: Features) -> dict[str, Any]:
    """The RFM traits of a buyer (fewer days since the last order score higher); none for a non-buyer."""
    if not figures.buyer:
        return {}
    # Whole days, as the job's histogram counts them: a customer tied with a cut point takes its score.
    recency = 6 - _score(round(figures.recency_days), model.recency) if model.recency else 3
    frequency = _score(figures.frequency, model.frequency) if model.frequency else 3
    monetary = _score(figures.monetary, model.monetary) if model.monetary else 3
    return {"rfm_recency": recency, "rfm_frequency": frequency, "rfm_monetary": monetary,
            "rfm_code": f"{recency}{frequency}{monetary}", "rfm_segment": rfm_segment(recency, frequency)}


# ---- clusters ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterModel:
    """k-means centroids in standardised feature space, with the scaling that standardises a customer."""

    version: int
    trained_at: int
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    centroids: tuple[tuple[float, ...], ...]
    silhouette: float = 0.0
    chosen_by: str = "silhouette"  # or "configured"
    sizes: tuple[int, ...] = ()
    population: int = 0

    @property
    def k(self) -> int:
        return len(self.centroids)

    def descriptions(self) -> list[str]:
        return [describe_centroid(centroid) for centroid in self.centroids]

    def as_document(self) -> dict[str, Any]:
        return {"model": CLUSTERS, "version": self.version, "trained_at": self.trained_at, "k": self.k,
                "features": list(CLUSTER_FEATURES), "mean": list(self.mean), "scale": list(self.scale),
                "centroids": [list(c) for c in self.centroids], "silhouette": self.silhouette,
                "chosen_by": self.chosen_by, "sizes": list(self.sizes), "population": self.population,
                "descriptions": self.descriptions()}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ClusterModel:
        return cls(int(document["version"]), int(document["trained_at"]),
                   tuple(float(v) for v in document["mean"]), tuple(float(v) for v in document["scale"]),
                   tuple(tuple(float(v) for v in c) for c in document["centroids"]),
                   float(document.get("silhouette", 0.0)), str(document.get("chosen_by", "silhouette")),
                   tuple(int(v) for v in document.get("sizes", ())), int(document.get("population", 0)))


def standardise(model: ClusterModel, figures: Features) -> list[float]:
    return [(value - mean) / (scale or 1.0) for value, mean, scale in zip(figures.vector(), model.mean, model.scale,
                                                                          strict=True)]


def assign_cluster(model: ClusterModel, figures: Features) -> tuple[int, float]:
    """The nearest centroid (ties: the lower index) and the Euclidean distance to it, in standardised units, to
    one decimal: a customer's distance drifts a little every day as recency grows, and a daily job writes only
    the profiles whose traits changed."""
    point = standardise(model, figures)
    best, distance = 0, math.inf
    for index, centroid in enumerate(model.centroids):
        d = math.sqrt(sum((a - b) ** 2 for a, b in zip(point, centroid, strict=True)))
        if d < distance:
            best, distance = index, d
    return best, round(distance, 1)


def cluster_traits(model: ClusterModel, figures: Features) -> dict[str, Any]:
    index, distance = assign_cluster(model, figures)
    return {"cluster": index, "cluster_distance": distance}


# Words for a centroid's standardised value of each feature: (above +0.5, below -0.5). Recency is in days, so a
# centroid far above the mean is *lapsed*.
_WORDS = {"recency": ("lapsed", "recent"), "frequency": ("frequent", "infrequent"),
          "monetary": ("high spend", "low spend"), "engagement": ("engaged", "quiet")}
_STRONG = 0.5


def describe_centroid(centroid: Sequence[float]) -> str:
    """A centroid in plain words, e.g. ``"frequent, recent, high spend"``: the features it stands out on, the
    strongest first (``"average on every feature"`` when none stands out)."""
    ranked = sorted(zip(CLUSTER_FEATURES, centroid, strict=True), key=lambda pair: -abs(pair[1]))
    words = [_WORDS[name][0] if value > 0 else _WORDS[name][1] for name, value in ranked if abs(value) >= _STRONG]
    return ", ".join(words) if words else "average on every feature"


# ---- predictions -------------------------------------------------------------------------------------------


def prediction_traits(purchase_probability: float, expected_orders: float, average_order_value: float) -> dict[
        str, Any]:
    """The prediction traits: churn is no order within the horizon. Rounded (probability and orders to two decimals,
    value to whole currency units), so that the daily job rewrites only the customers whose outlook moved."""
    return {"churn_probability": round(1.0 - purchase_probability, 2),
            "expected_orders_90d": round(max(0.0, expected_orders), 2),
            "expected_value_90d": float(round(max(0.0, expected_orders) * max(0.0, average_order_value)))}


# ---- at ingest ---------------------------------------------------------------------------------------------


def model_documents(stats: Any) -> Mapping[str, Mapping[str, Any]]:
    """The stored model documents the live catalogue's statistics carry (an empty mapping without any)."""
    return getattr(stats, "models", None) or {}


def assign_at_ingest(profile: Profile, models: Mapping[str, Mapping[str, Any]], now: float) -> set[str]:
    """Give a customer the stored cluster model hasn't assigned yet (a new one, or one the model is newer than) its
    cluster at once; the ``t:<name>`` inputs it touched. Existing assignments are renewed by the model's job."""
    document = models.get(CLUSTERS)
    if not document:
        return set()
    try:
        version = int(document["version"])
        if profile.computed.version(CLUSTERS) == version:
            return set()
        model = ClusterModel.from_document(document)
        values = cluster_traits(model, features(profile, now))
    except (KeyError, TypeError, ValueError):
        return set()  # a document this code cannot read (hand-edited, or newer): the job assigns them instead
    changed = profile.computed.put(CLUSTERS, version, model.trained_at, values)
    return {f"t:{name}" for name in changed}


def trait_boundaries(conditions: Iterable[Any]) -> dict[str, list[float]]:
    """Per computed trait, the numbers the given conditions compare it with (see :meth:`ComputedTraits.put`)."""
    found: dict[str, list[float]] = {}
    for node in conditions:
        name, value = getattr(node, "name", None), getattr(node, "value", None)
        if name not in TRAIT_MODELS or getattr(node, "op", None) is None:
            continue
        numbers = value if isinstance(value, (list, tuple)) else [value]
        for number in numbers:
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                found.setdefault(str(name), []).append(float(number))
    return found
