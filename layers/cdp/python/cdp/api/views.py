"""What the API shows: a profile, its memberships and the segment definitions, in readable form.

Pure functions over a profile and the catalogue; the handler only fetches and serialises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cdp.core.catalogue import Catalogue, Segment, membership_score, primary_segment, ranked_members
from cdp.core.counters import tier_for_window
from cdp.core.durations import DAY, format_duration
from cdp.core.language import MetricCondition, RatioCondition
from cdp.core.profile import Profile
from cdp.core.traits import CLUSTERS, MODELS, PREDICTIONS, RFM, RFM_SEGMENTS, TRAIT_MODELS, ClusterModel, ComputedTraits
from cdp.ports import PrivacyRequest, SegmentVersion

if TYPE_CHECKING:
    from cdp.core.language import DefinitionError
    from cdp.pipeline.privacy import CustomerExport


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def windows_by_metric(catalogue: Catalogue) -> dict[str, set[int]]:
    """For each counter, the windows the catalogue reads it over: those are the ones worth showing."""
    windows: dict[str, set[int]] = {}
    for segment in catalogue.segments.values():
        for node in segment.condition.walk():
            if isinstance(node, MetricCondition) and node.window:
                windows.setdefault(node.metric.key, set()).add(node.window)
            elif isinstance(node, RatioCondition):
                for metric in (node.numerator, node.denominator):
                    windows.setdefault(metric.key, set()).add(node.window)
    return windows


def memberships(profile: Profile, catalogue: Catalogue) -> list[dict[str, Any]]:
    """The customer's segments, highest priority first."""
    since = profile.memberships
    return [{"id": segment.id, "name": segment.name, "since": iso(since[segment.id])}
            for segment in ranked_members(catalogue, since)]


def segments_summary(profile: Profile, catalogue: Catalogue) -> dict[str, Any]:
    """The customer's segments, the primary one and the score: the overlap fields of the API's documents."""
    primary = primary_segment(catalogue, profile.memberships)
    return {"segments": memberships(profile, catalogue), "primary_segment": primary.id if primary else None,
            "score": membership_score(catalogue, profile.memberships)}


def normalised_email(address: str) -> str:
    """An email address as the id map indexes it (cdp.core.identity.identifier_digest)."""
    return address.strip().lower()


def holds_email(profile: Profile, address: str) -> bool:
    """Whether the profile's own ``email`` trait is this address: the email index is written just before the
    profile, and an address can move to another customer, so an index entry alone proves nothing."""
    email = profile.traits.get("email")
    return isinstance(email, str) and normalised_email(email) == normalised_email(address)


def identity_fields(profile: Profile, requested_id: str | None = None) -> dict[str, Any]:
    """Which customer is canonical, the ids merged into it, and the id asked for when it is not the canonical one."""
    fields: dict[str, Any] = {
        "canonical_id": profile.customer_id,
        "merged_ids": [{"id": str(merged), "at": iso(at), "message_id": str(message_id)}
                       for merged, at, message_id in profile.merges],
    }
    if requested_id is not None and requested_id != profile.customer_id:
        fields["requested_id"] = requested_id
    return fields


def profile_document(profile: Profile, catalogue: Catalogue, now: float,
                     requested_id: str | None = None) -> dict[str, Any]:
    windows = windows_by_metric(catalogue)
    counters = []
    for key in sorted(profile.counter_keys()):
        counter = profile.counter(key)
        if counter is None or counter.count == 0:
            continue
        spec = catalogue.metrics.get(key)
        entry: dict[str, Any] = {"key": key, "event": spec.source.event if spec else key,
                                 "lifetime": counter.count, "first_at": iso(counter.first),
                                 "last_at": iso(counter.last), "windows": {}}
        if spec is not None and spec.sum_property:
            entry["lifetime_sum"] = counter.total / 100
        for window in sorted(windows.get(key, ())):
            count, total = counter.window(tier_for_window(window), window, now)
            figures: dict[str, Any] = {"count": count}
            if spec is not None and spec.sum_property:
                figures["sum"] = total / 100
            entry["windows"][format_duration(window)] = figures
        counters.append(entry)
    revenue = profile.revenue / 100
    return {
        "customer_id": profile.customer_id,
        **identity_fields(profile, requested_id),
        "traits": profile.traits,
        "rfm": {
            "orders": profile.orders,
            "revenue": revenue,
            "average_order_value": round(revenue / profile.orders, 2) if profile.orders else None,
            "first_order_at": iso(profile.first_order),
            "last_order_at": iso(profile.last_order),
            "recency_days": int((now - profile.last_order) // DAY) if profile.last_order else None,
        },
        "counters": counters,
        "cart": {"items": [{"product_id": pid, "quantity": item[0], "price": item[1] / 100}
                           for pid, item in sorted(profile.cart.items())],
                 "last_added": ({"product_id": profile.last_add[0], "at": iso(profile.last_add[1])}
                                if profile.last_add else None)},
        "recent_products": [{"product_id": entry[0], "category": entry[1] or None,
                             "kind": "purchased" if entry[2] == "p" else "viewed", "at": iso(entry[3])}
                            for entry in reversed(profile.products)],
        "channels": {channel: iso(seen) for channel, seen in sorted(profile.channels.items())},
        "computed_traits": computed_traits(profile.computed),
        **segments_summary(profile, catalogue),
        "next_deadline": iso(profile.next_deadline),
        "version": profile.version,
        "updated_at": iso(profile.updated_at or None),
    }


def computed_traits(computed: ComputedTraits) -> dict[str, dict[str, Any]]:
    """Each computed trait with the model that wrote it: its version and training time (the profile's stamp)."""
    traits: dict[str, dict[str, Any]] = {}
    for name in sorted(computed.values):
        model = TRAIT_MODELS.get(name)
        if model is None:
            continue  # a trait no model writes any more: not shown, and no rule reads it
        stamp = computed.models.get(model)
        traits[name] = {"value": computed.values[name], "model": model,
                        "version": int(stamp[0]) if stamp else None,
                        "trained_at": iso(stamp[1]) if stamp else None}
    return traits


# ---- the computed traits' models, as GET /models shows them -----------------------------------------------

def model_documents(stored: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every stored model, in the order rfm, clusters, predictions."""
    return [model_document(stored[name]) for name in MODELS if stored.get(name)]


def model_document(stored: Mapping[str, Any]) -> dict[str, Any]:
    """One stored model document in readable form: times in ISO 8601, clusters' centroids in the features' units."""
    name = str(stored["model"])
    document: dict[str, Any] = {"model": name, "version": int(stored["version"]),
                                "trained_at": iso(stored.get("trained_at")),
                                "population": stored.get("population")}
    if name == RFM:
        document["cuts"] = {key: list(values) for key, values in (stored.get("cuts") or {}).items()}
        document["named_segments"] = [{"recency_scores": recency, "frequency_scores": frequency, "name": label}
                                      for recency, frequency, label in RFM_SEGMENTS]
    elif name == CLUSTERS:
        document.update(_cluster_fields(stored))
    elif name == PREDICTIONS:
        document.update(horizon_days=stored.get("horizon_days"), features=list(stored.get("features") or []),
                        metrics=dict(stored.get("metrics") or {}))
    return document


# A centroid's features in their own units: recency in days; the other three were log1p'd before scaling.
CENTROID_UNITS = (("recency_days", False), ("orders", True), ("revenue", True), ("events_per_week", True))


def centroid_in_units(centroid: Sequence[float], mean: Sequence[float], scale: Sequence[float]) -> dict[str, float]:
    """A standardised centroid back in the features' units (the inverse of the scaling, then of the logs)."""
    figures: dict[str, float] = {}
    for (name, logged), value, centre, spread in zip(CENTROID_UNITS, centroid, mean, scale, strict=True):
        raw = value * (spread or 1.0) + centre
        figures[name] = round(max(0.0, math.expm1(raw) if logged else raw), 2)
    return figures


def _cluster_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
    model = ClusterModel.from_document(stored)
    sizes = list(model.sizes)
    clusters = [{"index": index, "size": sizes[index] if index < len(sizes) else None,
                 "description": description,
                 "centroid": centroid_in_units(centroid, model.mean, model.scale)}
                for index, (centroid, description) in enumerate(zip(model.centroids, model.descriptions(),
                                                                    strict=True))]
    return {"k": model.k, "chosen_by": model.chosen_by, "silhouette": model.silhouette,
            "features": list(stored.get("features") or []), "clusters": clusters}


def segment_document(segment: Segment, size: int | None = None, *, version: int | None = None,
                     author: str | None = None, at: float | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": segment.id,
        "name": segment.name,
        "description": segment.description,
        "enabled": segment.enabled,
        "priority": segment.priority,
        "group": segment.group,
        "weight": segment.weight,
        "static": segment.manual,
        "condition": segment.definition["condition"],
    }
    if size is not None:
        document["size"] = size
    if version is not None:  # a stored definition
        document.update(version=version, author=author, updated_at=iso(at), definition=segment.definition)
    return document


def version_document(version: SegmentVersion) -> dict[str, Any]:
    """One stored version, as ``GET /segments/{segmentId}/versions`` lists it."""
    return {"version": version.version, "author": version.author, "at": iso(version.at),
            "deleted": version.definition is None, "catalogue_version": version.catalogue_version,
            "definition": version.definition}


def definition_issues(errors: Sequence[DefinitionError]) -> list[dict[str, str]]:
    """Each problem as the API reports it: the path inside the definition, the rule, the segment. The source
    (a file or ``store:...``) is left out: a request's definition has none."""
    return [{"path": error.path, "message": error.message, "segment_id": error.segment_id} for error in errors]


def history_days(rows: Sequence[dict[str, Any]], now: float, size_now: int | None) -> list[dict[str, Any]]:
    """The history's rows, with today's size from the members index until the day's snapshot is taken."""
    today = datetime.fromtimestamp(now, UTC).date().isoformat()
    days = [dict(row) for row in rows if row["day"] <= today]
    if size_now is None:
        return days
    if days and days[-1]["day"] == today:
        if days[-1]["size"] is None:
            days[-1]["size"] = size_now
    else:
        days.append({"day": today, "size": size_now, "entered": 0, "exited": 0})
    return days


def request_document(request: PrivacyRequest) -> dict[str, Any]:
    """A data subject request as ``GET /requests/{requestId}`` shows it."""
    return {"request_id": request.request_id, "kind": request.kind, "status": request.status,
            "customer_digest": request.customer_digest, "created_at": iso(request.created_at),
            "updated_at": iso(request.updated_at), "counts": dict(sorted(request.counts.items())),
            "reason": request.reason or None}


def export_document(export: CustomerExport, catalogue: Catalogue, now: float) -> dict[str, Any]:
    """Everything held about a customer: the profile as the API shows it, the memberships with since-times, the
    consent (latest and history), the deliveries made, and the ids (canonical, merged, email addresses)."""
    from cdp.pipeline.privacy import customer_emails

    profile = export.profile
    identity = identity_fields(profile)
    return {
        "request_id": export.request.request_id,
        "profile": profile_document(profile, catalogue, now),
        "memberships": memberships(profile, catalogue),
        "consent": profile.consent.as_json(),
        "deliveries": [{"destination": d.destination, "segment_id": d.segment_id, "kind": d.kind,
                        "version": d.version} for d in export.deliveries],
        "ids": {"canonical_id": identity["canonical_id"], "merged_ids": identity["merged_ids"],
                "emails": customer_emails(profile)},
    }
