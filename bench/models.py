"""``make models``: what the computed traits' models recover from a history with a known structure.

    python -m bench.models [--customers 3000] [--quick]

A planted history (:mod:`cdp_dev.planted_history`: four groups of customers that differ in order rate, order value
and browsing, and churners whose order rate falls to almost nothing before the end) is folded into profiles by the
real core (:meth:`cdp.core.engine.Engine.apply`, day by day in event time, with the shipped catalogue). Then, as
the computed-traits job does, as of the history's end:

- clusters (:func:`cdp.models.fit_clusters`, k by silhouette, and k = 4 configured) against the planted groups:
  adjusted Rand index, beside two baselines: the named RFM segment as a clustering, and k-means on the unscaled
  features;
- predictions (:func:`cdp.models.fit_predictions`) on the time split: churn AUC and the mean absolute error of the
  expected orders in the holdout period, each beside the naive baseline (the last period's rate); and the AUC of
  the churn probability as of now at picking the planted churners among the groups that can churn.

Also measured: the import time of numpy and scikit-learn in a fresh interpreter, each fit's time, and the size of
the models layer (``layers/models/python``) when it has been built (``make layers``). Prints a table and writes
bench/out/models.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.profile import Profile
from cdp.core.traits import Features, RfmModel, features, quintile_cuts, rfm_traits
from cdp.models import TrainingRow, fit_clusters, fit_predictions, training_row
from cdp_dev.planted_history import PlantedHistory, planted_history

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
LAYER = ROOT / "layers" / "models" / "python"
CUSTOMERS, QUICK_CUSTOMERS = 3_000, 800
PLANTED_GROUPS = 4
IMPORT = "import time; t = time.perf_counter(); import numpy, sklearn.cluster, sklearn.ensemble, sklearn.metrics; " \
         "print(time.perf_counter() - t)"


def fold(history: PlantedHistory) -> dict[str, Profile]:
    """Each customer's profile after their history, folded day by day (the clock at each day's last event)."""
    engine = Engine(load_catalogue(ROOT / "segments"))
    by_customer: dict[str, list[Any]] = {}
    for message in history.events:
        by_customer.setdefault(str(message["userId"]), []).append(normalise(message))
    profiles = {}
    for customer_id, events in by_customer.items():
        profile = Profile(customer_id)
        for _, day in itertools.groupby(events, key=lambda event: int(event.timestamp // 86_400)):
            batch = list(day)
            engine.apply(profile, batch, batch[-1].timestamp)
        profiles[customer_id] = profile
    return profiles


def _ari(truth: Sequence[str], labels: Sequence[Any]) -> float:
    from sklearn.metrics import adjusted_rand_score  # type: ignore[import-untyped, unused-ignore]

    return round(float(adjusted_rand_score(list(truth), [str(label) for label in labels])), 4)


def _rfm_segments(now: Sequence[Features]) -> list[str]:
    buyers = [f for f in now if f.buyer]
    model = RfmModel(1, 0, quintile_cuts(Counter(f.recency_days for f in buyers)),
                     quintile_cuts(Counter(float(f.frequency) for f in buyers)),
                     quintile_cuts(Counter(f.monetary for f in buyers)), len(buyers))
    return [str(rfm_traits(model, f).get("rfm_segment", "no orders")) for f in now]


def _unscaled_kmeans(now: Sequence[Features], seed: int) -> list[int]:
    from sklearn.cluster import KMeans  # type: ignore[import-untyped, unused-ignore]

    data = [[f.recency_days, f.frequency, f.monetary, f.engagement] for f in now]
    return [int(v) for v in KMeans(n_clusters=PLANTED_GROUPS, n_init=10, random_state=seed).fit(data).labels_]


def clusters(history: PlantedHistory, profiles: Mapping[str, Profile], seed: int = 0) -> dict[str, Any]:
    from cdp.core.traits import assign_cluster

    ids = sorted(profiles)
    now = [features(profiles[cid], history.end) for cid in ids]
    truth = [history.groups[cid] for cid in ids]
    result: dict[str, Any] = {}
    for name, k in (("by_silhouette", None), ("configured_k4", PLANTED_GROUPS)):
        started = time.perf_counter()
        model = fit_clusters([f.vector() for f in now], k=k, seed=seed, version=1, trained_at=int(history.end))
        seconds = time.perf_counter() - started
        labels = [assign_cluster(model, f)[0] for f in now]
        result[name] = {"k": model.k, "silhouette": model.silhouette, "ari": _ari(truth, labels),
                        "fit_s": round(seconds, 3), "sizes": list(model.sizes), "descriptions": model.descriptions()}
    result["baseline_rfm_segments_ari"] = _ari(truth, _rfm_segments(now))
    result["baseline_unscaled_kmeans_ari"] = _ari(truth, _unscaled_kmeans(now, seed))
    return result


def _churner_auc(history: PlantedHistory, rows: Sequence[TrainingRow], churn: Sequence[float]) -> float | None:
    """How well the churn probability as of now picks the planted churners among the groups that can churn."""
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped, unused-ignore]

    churnable = {cid for cid, group in history.groups.items() if group in ("champions", "big-rare")}
    pairs = [(row.customer_id in history.churners, p) for row, p in zip(rows, churn, strict=True)
             if row.customer_id in churnable]
    if len({truth for truth, _ in pairs}) < 2:
        return None
    return round(float(roc_auc_score([t for t, _ in pairs], [p for _, p in pairs])), 4)


def predictions(history: PlantedHistory, profiles: Mapping[str, Profile], seed: int = 0) -> dict[str, Any]:
    rows = [row for cid in sorted(profiles) if (row := training_row(profiles[cid], history.end)) is not None]
    started = time.perf_counter()
    model = fit_predictions(rows, version=1, trained_at=int(history.end), seed=seed)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    predicted = model.predict([row.now for row in rows])
    predict_us = (time.perf_counter() - started) / max(1, len(rows)) * 1e6
    return {**model.metrics, "customers": len(profiles), "rows": len(rows), "fit_s": round(seconds, 3),
            "predict_us_per_customer": round(predict_us, 2), "model_bytes": len(model.to_bytes()),
            "planted_churner_auc": _churner_auc(history, rows, [1.0 - p for p, _ in predicted])}


def import_seconds() -> float:
    """numpy and scikit-learn's import in a fresh interpreter (what a cold jobs function pays for them)."""
    done = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True)
    return round(float(done.stdout.strip()), 3)


def layer_mb() -> float | None:
    if not LAYER.is_dir():
        return None
    return round(sum(path.stat().st_size for path in LAYER.rglob("*") if path.is_file()) / 1e6, 1)


def measure(customers: int = CUSTOMERS, seed: int = 1) -> dict[str, Any]:
    started = time.perf_counter()
    history = planted_history(customers, seed=seed)
    generated = time.perf_counter()
    profiles = fold(history)
    folded = time.perf_counter()
    figures = {"customers": customers, "events": len(history.events), "churners": len(history.churners),
               "generate_s": round(generated - started, 2), "fold_s": round(folded - generated, 2),
               "clusters": clusters(history, profiles), "predictions": predictions(history, profiles),
               "import_s": import_seconds(), "layer_mb": layer_mb()}
    figures["total_s"] = round(time.perf_counter() - started, 2)
    return figures


def table(figures: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(figure, measured, baseline) rows of the report."""
    found, predicted = figures["clusters"], figures["predictions"]
    return [
        ("clusters ARI, k by silhouette (k)", f"{found['by_silhouette']['ari']} ({found['by_silhouette']['k']})",
         found["baseline_rfm_segments_ari"]),
        ("clusters ARI, k = 4 configured", found["configured_k4"]["ari"], found["baseline_unscaled_kmeans_ari"]),
        ("churn AUC, holdout (baseline: last period)", predicted["auc"], predicted["baseline_auc"]),
        ("orders MAE, holdout (baseline: last period)", predicted["mae"], predicted["baseline_mae"]),
        ("planted churners AUC (churn probability now)", predicted["planted_churner_auc"], None),
        ("fit s: clusters (silhouette) / predictions", found["by_silhouette"]["fit_s"], predicted["fit_s"]),
        ("import s: numpy + scikit-learn", figures["import_s"], None),
        ("models layer MB (make layers)", figures["layer_mb"], None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score the computed traits' models on a planted history.")
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CUSTOMERS} customers")
    args = parser.parse_args(argv)
    figures = measure(args.customers or (QUICK_CUSTOMERS if args.quick else CUSTOMERS))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "models.json").write_text(json.dumps(figures, indent=2))
    print(f"{figures['customers']} customers, {figures['events']} events, {figures['churners']} churners; "
          f"{figures['total_s']} s")
    print(f"{'figure':<48} {'measured':>12} {'baseline':>12}")
    for name, value, baseline in table(figures):
        print(f"{name:<48} {value!s:>12} {'' if baseline is None else baseline!s:>12}")
    for index, words in enumerate(figures["clusters"]["by_silhouette"]["descriptions"]):
        print(f"  cluster {index}: {words}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
