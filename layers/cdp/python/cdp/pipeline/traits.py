"""The computed-traits job's work (kind ``traits`` of :mod:`cdp.pipeline.jobs`): collect features, train, score.

Phase ``features``: each invocation writes one part to the job results with, over the live profiles it read,
exact histograms of the buyers' RFM figures (recency in whole days, orders, revenue in cents) and a bounded
training sample. The sample is a bottom-k: each profile gets a uniform key from a hash of (job id, customer id),
and a part keeps the ``sample`` smallest keys, so the merge of any split of the parts keeps exactly the ``sample``
smallest keys of the whole population. A row carries no customer id, only its key.

The finish trains each model of the job: RFM quintile cuts from the histograms, k-means over the sample's features
as of the job, and the purchase model on the sample's time split (features before the cut-off ``HORIZON_DAYS``
ago, orders after it). The prediction model's bytes go to the job results (the score phase loads them); every
model's document goes to the definitions store, which moves the statistics version so every function's live
catalogue picks the models up (the ingest assigns new customers to clusters with them).

Phase ``score``: each live profile gets the traits of each trained model, and is written, with the ingest's
conditional write, only when a trait value changed; then only the segments reading those traits are evaluated.
The computation runs inside the write's change callback, so a profile re-read after a conflict is scored again.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from cdp.core.durations import DAY
from cdp.core.engine import Engine
from cdp.core.profile import Profile
from cdp.core.traits import (
    CLUSTERS,
    HORIZON_DAYS,
    PREDICTIONS,
    RFM,
    ClusterModel,
    Features,
    RfmModel,
    cluster_traits,
    features,
    features_before,
    orders_after,
    prediction_traits,
    quintile_cuts,
    rfm_traits,
    trait_boundaries,
)
from cdp.pipeline.jobs import DEFAULT_SAMPLE, _Evaluating

if TYPE_CHECKING:
    from cdp.pipeline.jobs import Job, JobEngine

FEATURES_PHASE, SCORE_PHASE, MODELS_PHASE = "features", "score", "models"
RFM_FIGURES = ("recency_days", "frequency", "monetary")
MIN_CLUSTER_ROWS = 20  # fewer customers than this: no clusters worth the name
MIN_PREDICTION_ROWS = 20


class PredictionModel(Protocol):
    """What the job reads of :class:`cdp.models.PredictionModel`."""

    version: int
    trained_at: int
    metrics: dict[str, Any]

    def document(self) -> dict[str, Any]: ...

    def to_bytes(self) -> bytes: ...

    def predict(self, features: Sequence[Features]) -> list[tuple[float, float]]: ...


class Trainer(Protocol):
    def fit_clusters(self, vectors: Sequence[Sequence[float]], *, k: int | None, version: int,
                     trained_at: int) -> ClusterModel: ...

    def fit_predictions(self, rows: Sequence[Any], *, version: int, trained_at: int) -> PredictionModel: ...

    def load_predictions(self, data: bytes) -> PredictionModel: ...


class ScikitTrainer:
    """The trainers of :mod:`cdp.models` (scikit-learn, imported only when a job trains: the jobs function's
    models layer holds it, no other function does)."""

    def fit_clusters(self, vectors: Sequence[Sequence[float]], *, k: int | None, version: int,
                     trained_at: int) -> ClusterModel:
        from cdp.models import fit_clusters

        return fit_clusters(vectors, k=k, version=version, trained_at=trained_at)

    def fit_predictions(self, rows: Sequence[Any], *, version: int, trained_at: int) -> PredictionModel:
        from cdp.models import TrainingRow, fit_predictions

        training = [row if isinstance(row, TrainingRow) else TrainingRow(**row) for row in rows]
        return fit_predictions(training, version=version, trained_at=trained_at)

    def load_predictions(self, data: bytes) -> PredictionModel:
        from cdp.models import PredictionModel as Loaded

        return Loaded.from_bytes(data)


# ---- the features phase ----------------------------------------------------------------------------------


SAMPLE_SALT = "traits-sample"


def sample_key(customer_id: str) -> float:
    """A uniform key in [0, 1) from the customer alone: the same customers make every run's sample, so a day's
    retraining sees the same population a day older and its predictions move only as the customers do."""
    digest = hashlib.blake2b(f"{SAMPLE_SALT}\x00{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def training_row(profile: Profile, key: float, at: float) -> dict[str, Any]:
    """The data of a :class:`cdp.models.TrainingRow` (see the contract's definitions), ``customer_id`` the key."""
    cut_off, earlier_cut_off = at - HORIZON_DAYS * DAY, at - 2 * HORIZON_DAYS * DAY
    before = features_before(profile, cut_off)
    label = orders_after(profile, cut_off)
    earlier = features_before(profile, earlier_cut_off)
    earlier_after = orders_after(profile, earlier_cut_off)
    earlier_label = earlier_after[0] - label[0] if earlier_after is not None and label is not None else None
    return {"customer_id": f"{key:.17f}",
            "before": asdict(before) if before is not None and label is not None else None,
            "label_orders": label[0] if label is not None else 0,
            "label_revenue": label[1] if label is not None else 0.0,
            "earlier": asdict(earlier) if earlier is not None else None,
            "earlier_label_orders": earlier_label if earlier is not None else None,
            "now": asdict(features(profile, at))}


def live(profile: Profile) -> bool:
    return profile.merged_into is None and profile.version > 0


class Featuring:
    """One invocation of the features phase: histograms, totals and the bottom-k sample of the profiles read."""

    def __init__(self, jobs: JobEngine, job: Job, segment: int, part: int) -> None:
        self.jobs, self.job, self.segment, self.part = jobs, job, segment, part
        self.at = float(job.created_at)
        self.size = int(job.options.get("sample", DEFAULT_SAMPLE))
        self.histograms: dict[str, dict[float, int]] = {name: {} for name in RFM_FIGURES}
        self.totals = {"profiles": 0, "buyers": 0, "orders": 0, "revenue": 0.0}
        self.sample: list[tuple[float, str, dict[str, Any]]] = []  # a max-heap by key (negated)

    def take(self, profiles: Sequence[Profile], counts: dict[str, int]) -> None:
        counts["scanned"] += len(profiles)
        for profile in profiles:
            if not live(profile):
                continue
            counts["evaluated"] += 1
            self._count(features(profile, self.at))
            key = sample_key(profile.customer_id)
            if len(self.sample) < self.size:
                heapq.heappush(self.sample, (-key, profile.customer_id, training_row(profile, key, self.at)))
            elif key < -self.sample[0][0]:
                heapq.heapreplace(self.sample, (-key, profile.customer_id, training_row(profile, key, self.at)))

    def _count(self, figures: Features) -> None:
        self.totals["profiles"] += 1
        if not figures.buyer:
            return
        self.totals["buyers"] += 1
        self.totals["orders"] += figures.frequency
        self.totals["revenue"] += figures.monetary
        for name, value in (("recency_days", float(round(figures.recency_days))),
                            ("frequency", float(figures.frequency)), ("monetary", round(figures.monetary, 2))):
            histogram = self.histograms[name]
            histogram[value] = histogram.get(value, 0) + 1

    def close(self) -> None:
        document = {"segment": self.segment, "part": self.part, "totals": self.totals,
                    "values": {m: sorted([v, n] for v, n in h.items()) for m, h in self.histograms.items()},
                    "sample": [[key, row] for key, row in sorted(((-negated, row) for negated, _, row in self.sample),
                                                                   key=lambda entry: entry[0])]}
        self.jobs.results.put(self.job.job_id, FEATURES_PHASE, f"{self.segment:05d}-{self.part:06d}", document)


def merge_features(parts: Iterable[Mapping[str, Any]], size: int) -> tuple[
        dict[str, dict[float, int]], dict[str, float], list[dict[str, Any]]]:
    """Every part's histograms and totals added up, and the ``size`` rows of smallest key over all parts (exact,
    whatever the split: a row among the smallest overall is among the smallest of its own part). Parts are read
    one at a time into a bounded heap, so the finish holds ``size`` rows and one part, however many parts."""
    histograms: dict[str, dict[float, int]] = {name: {} for name in RFM_FIGURES}
    totals: dict[str, float] = {"profiles": 0, "buyers": 0, "orders": 0, "revenue": 0.0}
    kept: list[tuple[float, int, dict[str, Any]]] = []  # (-key, arrival, row): the largest kept key on top
    arrival = 0
    for part in parts:
        for name, pairs in (part.get("values") or {}).items():
            histogram = histograms.setdefault(name, {})
            for value, count in pairs:
                histogram[float(value)] = histogram.get(float(value), 0) + int(count)
        for name, value in (part.get("totals") or {}).items():
            totals[name] = totals.get(name, 0) + value
        for key, row in part.get("sample") or []:
            arrival += 1
            entry = (-float(key), arrival, row)
            if len(kept) < size:
                heapq.heappush(kept, entry)
            elif -entry[0] < -kept[0][0]:
                heapq.heapreplace(kept, entry)
    return histograms, totals, [row for _, _, row in sorted(kept, key=lambda entry: -entry[0])]


# ---- the finish: training and storing the models -----------------------------------------------------------


def _previous_versions(jobs: JobEngine) -> dict[str, int]:
    stats = jobs.definitions.population() if jobs.definitions is not None else None
    stored = getattr(stats, "models", None) or {}
    return {name: int(document.get("version", 0)) for name, document in stored.items()}


def _training_rows(sample: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows the purchase model trains on: customers whose figures at the cut-off are known."""
    rows = []
    for row in sample:
        if row.get("before") is None:
            continue
        earlier = row.get("earlier")
        rows.append({"customer_id": row["customer_id"], "before": Features(**row["before"]),
                     "label_orders": int(row["label_orders"]), "label_revenue": float(row["label_revenue"]),
                     "earlier": Features(**earlier) if earlier else None,
                     "earlier_label_orders": row.get("earlier_label_orders"), "now": Features(**row["now"])})
    return rows


class Training:
    """The finish of the features phase: each model of the job trained, its document and summary."""

    def __init__(self, jobs: JobEngine, job: Job, trainer: Trainer) -> None:
        self.jobs, self.job, self.trainer = jobs, job, trainer
        self.trained_at = int(job.created_at)
        self.documents: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, dict[str, Any]] = {}

    def run(self) -> dict[str, Any]:
        size = int(self.job.options.get("sample", DEFAULT_SAMPLE))
        histograms, totals, sample = merge_features(self.jobs.results.parts(self.job.job_id, FEATURES_PHASE), size)
        versions = _previous_versions(self.jobs)
        for model in self.job.options.get("models") or ():
            version = versions.get(model, 0) + 1
            if model == RFM:
                self._rfm(histograms, int(totals.get("buyers", 0)), version)
            elif model == CLUSTERS:
                self._clusters(sample, version)
            elif model == PREDICTIONS:
                self._predictions(sample, version)
        orders = float(totals.get("orders", 0))
        return {"documents": self.documents, "models": self.summary, "population": int(totals.get("profiles", 0)),
                "buyers": int(totals.get("buyers", 0)), "sample": len(sample),
                "average_order_value": round(float(totals.get("revenue", 0.0)) / orders, 2) if orders else 0.0}

    def _rfm(self, histograms: Mapping[str, Mapping[float, int]], buyers: int, version: int) -> None:
        model = RfmModel(version, self.trained_at, quintile_cuts(histograms["recency_days"]),
                         quintile_cuts(histograms["frequency"]), quintile_cuts(histograms["monetary"]), buyers)
        self.documents[RFM] = model.as_document()
        self.summary[RFM] = {"version": version, "trained_at": self.trained_at, "population": buyers,
                             "cuts": self.documents[RFM]["cuts"]}

    def _clusters(self, sample: Sequence[Mapping[str, Any]], version: int) -> None:
        vectors = [Features(**row["now"]).vector() for row in sample]
        if len(vectors) < MIN_CLUSTER_ROWS:
            self.summary[CLUSTERS] = {"skipped": f"{len(vectors)} customers sampled, fewer than {MIN_CLUSTER_ROWS}"}
            return
        k = self.job.options.get("clusters")
        model = self.trainer.fit_clusters(vectors, k=k, version=version, trained_at=self.trained_at)
        self.documents[CLUSTERS] = {**model.as_document(), "population": len(vectors)}
        self.summary[CLUSTERS] = {"version": version, "trained_at": self.trained_at, "k": model.k,
                                  "chosen_by": model.chosen_by, "silhouette": model.silhouette,
                                  "sizes": list(model.sizes), "descriptions": model.descriptions()}

    def _predictions(self, sample: Sequence[Mapping[str, Any]], version: int) -> None:
        rows = _training_rows(sample)
        if len(rows) < MIN_PREDICTION_ROWS or not any(row["label_orders"] for row in rows):
            self.summary[PREDICTIONS] = {"skipped": f"{len(rows)} customers with a known history before the "
                                                    f"cut-off, or none bought after it"}
            return
        try:
            model = self.trainer.fit_predictions(rows, version=version, trained_at=self.trained_at)
        except ValueError as error:  # e.g. every holdout customer in one class: nothing to measure
            self.summary[PREDICTIONS] = {"skipped": str(error)[:300]}
            return
        artefact = {"job_id": self.job.job_id, "phase": MODELS_PHASE, "part": PREDICTIONS}
        self.jobs.results.put(self.job.job_id, MODELS_PHASE, PREDICTIONS,
                              {"encoding": "base64", "bytes": base64.b64encode(model.to_bytes()).decode()})
        self.documents[PREDICTIONS] = {**model.document(), "artefact": artefact}
        self.summary[PREDICTIONS] = {"version": version, "trained_at": self.trained_at,
                                     "metrics": dict(model.metrics)}


def train_and_store(jobs: JobEngine, job: Job, trainer: Trainer) -> dict[str, Any]:
    """Train the job's models, store their documents; the job's result."""
    result = Training(jobs, job, trainer).run()
    definitions = jobs.definitions
    if definitions is None or not result["documents"]:
        return {**result, "stored": False, "stats_version": 0}
    head = definitions.put_models(result["documents"])
    # Read back: a job that started later may have stored newer models first (the store then keeps them), and a
    # retried finish finds its own. Only models stored as trained here are scored with.
    held = definitions.population()
    held_models = held.models if held is not None else {}
    superseded = sorted(name for name, document in result["documents"].items()
                        if _identity(held_models.get(name)) != _identity(document))
    if superseded:
        result["documents"] = {name: doc for name, doc in result["documents"].items() if name not in superseded}
        for name in superseded:
            result["models"][name] = {"superseded": "a newer model was stored by another job; this one scores "
                                                    "no profile with it"}
    return {**result, "stored": bool(result["documents"]), "stats_version": head.stats_version}


def _identity(document: Mapping[str, Any] | None) -> tuple[int, int] | None:
    return (int(document["version"]), int(document["trained_at"])) if document else None


# ---- the score phase -----------------------------------------------------------------------------------------


def load_prediction_model(jobs: JobEngine, job: Job, trainer: Trainer) -> PredictionModel | None:
    if PREDICTIONS not in (job.result.get("documents") or {}):
        return None
    for part in jobs.results.parts(job.job_id, MODELS_PHASE):
        if part.get("bytes"):
            return trainer.load_predictions(base64.b64decode(part["bytes"]))
    raise RuntimeError("the prediction model's bytes are missing from the job results")


class Scoring(_Evaluating):
    """Each live profile's traits of every trained model; written, and its trait readers evaluated, on a change."""

    def __init__(self, jobs: JobEngine, job: Job, engine: Engine, segment: int, part: int,
                 predictions: PredictionModel | None) -> None:
        super().__init__(jobs, job, engine, set(), segment, part)
        documents = job.result.get("documents") or {}
        self.at = job.created_at  # traits as of the job's start, as the features phase read the histograms
        self.boundaries = trait_boundaries(
            node for segment in engine.catalogue.segments.values() for node in segment.condition.walk())
        if self.mark is None and any(int(d.get("version", 0)) == 1 for d in documents.values()):
            # A model's first run scores everyone at once, like a backfill: lists and audiences, but no email.
            self.mark = "audiences"
        self.rfm = RfmModel.from_document(documents[RFM]) if RFM in documents else None
        self.clusters = ClusterModel.from_document(documents[CLUSTERS]) if CLUSTERS in documents else None
        self.predictions = predictions
        self.average = float(job.result.get("average_order_value", 0.0))
        self.predicted: dict[str, tuple[int, tuple[float, float]]] = {}  # customer -> (version read, prediction)

    def take(self, profiles: Sequence[Profile], counts: dict[str, int]) -> None:
        if self.predictions is not None:
            page = [p for p in profiles if live(p)]
            figures = [features(p, self.at) for p in page]
            answers = self.predictions.predict(figures) if figures else []
            self.predicted = {p.customer_id: (p.version, answer) for p, answer in zip(page, answers, strict=True)}
        super().take(profiles, counts)

    def _prediction(self, profile: Profile, figures: Features) -> tuple[float, float]:
        cached = self.predicted.get(profile.customer_id)
        if cached is not None and cached[0] == profile.version:
            return cached[1]
        assert self.predictions is not None
        return self.predictions.predict([figures])[0]  # re-read after a conflict: its figures moved

    def traits(self, profile: Profile) -> set[str]:
        """Put every model's traits on the profile; the names whose value changed."""
        figures = features(profile, self.at)
        changed: set[str] = set()
        bounds = self.boundaries
        if self.rfm is not None:
            changed |= profile.computed.put(RFM, self.rfm.version, self.rfm.trained_at, rfm_traits(self.rfm, figures),
                                            bounds)
        if self.clusters is not None:
            changed |= profile.computed.put(CLUSTERS, self.clusters.version, self.clusters.trained_at,
                                            cluster_traits(self.clusters, figures), bounds)
        if self.predictions is not None:
            purchase, orders = self._prediction(profile, figures)
            average = figures.monetary / figures.frequency if figures.buyer else self.average
            changed |= profile.computed.put(PREDICTIONS, self.predictions.version, self.predictions.trained_at,
                                            prediction_traits(purchase, orders, average), bounds)
        return changed

    def change(self, profile: Profile) -> bool:
        if not live(profile):
            return False  # deleted or merged since the scan read it
        changed = self.traits(profile)
        if not changed:
            return False
        self.engine.evaluate(profile, self.now, {f"t:{name}" for name in changed})
        if self.mark is not None:
            profile.transitions = [[*entry[:5], self.mark] for entry in profile.transitions]
        return True

