"""The HTTP API's request and response models; they generate the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(Model):
    """Every error: a stable code and a message that says what is wrong (never repeating an id or value)."""

    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["customerId: no profile has this customer id"])
    field: str | None = Field(default=None, examples=["limit"])


class Rfm(Model):
    orders: int
    revenue: float
    average_order_value: float | None
    first_order_at: str | None
    last_order_at: str | None
    recency_days: int | None


class WindowFigures(Model):
    count: int
    sum: float | None = None


class Counter(Model):
    key: str = Field(examples=["Product Viewed"])
    event: str
    lifetime: int
    lifetime_sum: float | None = None
    first_at: str | None
    last_at: str | None
    windows: dict[str, WindowFigures] = Field(examples=[{"24h": {"count": 7}, "30d": {"count": 31}}])


class CartItem(Model):
    product_id: str
    quantity: int
    price: float


class LastAdded(Model):
    product_id: str
    at: str | None


class Cart(Model):
    items: list[CartItem]
    last_added: LastAdded | None


class RecentProduct(Model):
    product_id: str = Field(examples=["sku-100"])
    category: str | None = Field(examples=["coffee"])
    kind: str = Field(examples=["purchased"], description="`purchased` or `viewed`.")
    at: str = Field(examples=["2026-10-04T09:00:00Z"], description="The last time, of this kind.")


class Membership(Model):
    id: str = Field(examples=["recent-buyers"])
    name: str = Field(examples=["Recent buyers"])
    since: str | None = Field(examples=["2026-10-02T09:00:00Z"])


class MergedId(Model):
    """An id merged into this customer, when, and by which message (the merge audit)."""

    id: str = Field(examples=["anon-7f3a"])
    at: str | None = Field(examples=["2026-10-02T09:00:00Z"])
    message_id: str = Field(examples=["m-2c9d"])


class ComputedTrait(Model):
    """A computed trait's value, and the model version and training time that wrote it."""

    value: Any = Field(examples=["Champions"])
    model: str = Field(examples=["rfm"], description="rfm | clusters | predictions")
    version: int | None = Field(examples=[3])
    trained_at: str | None = Field(examples=["2026-10-20T03:00:00Z"])


class CustomerProfile(Model):
    customer_id: str = Field(examples=["alice"])
    canonical_id: str = Field(examples=["alice"], description="The canonical customer every merged id resolves to.")
    requested_id: str | None = Field(
        default=None, exclude_if=lambda requested: requested is None, examples=["anon-7f3a"],
        description="The id asked for, when it was merged into the canonical customer (absent otherwise).")
    merged_ids: list[MergedId] = Field(description="The ids merged into this customer, oldest first.")
    traits: dict[str, Any] = Field(examples=[{"first_name": "Alice", "plan": "gold"}])
    rfm: Rfm
    counters: list[Counter]
    cart: Cart
    recent_products: list[RecentProduct] = Field(
        description="The most recent distinct products purchased and viewed (at most 20 of each), newest first: "
                    "what `purchased` and `viewed` conditions read.")
    channels: dict[str, str | None] = Field(examples=[{"web": "2026-10-04T09:00:00Z"}])
    computed_traits: dict[str, ComputedTrait] = Field(
        examples=[{"rfm_segment": {"value": "Champions", "model": "rfm", "version": 3,
                                   "trained_at": "2026-10-20T03:00:00Z"}}],
        description="The traits the population jobs compute (RFM scores, cluster, predictions), each with the "
                    "version and training time of its model. Segment rules read them by name like any trait.")
    segments: list[Membership]
    primary_segment: str | None = Field(examples=["recent-buyers"])
    score: float = Field(examples=[3.0])
    next_deadline: str | None = Field(description="The next moment a membership can change with no new event.")
    version: int
    updated_at: str | None


class CustomerSegments(Model):
    customer_id: str
    requested_id: str | None = Field(
        default=None, exclude_if=lambda requested: requested is None,
        description="The id asked for, when it was merged into this customer (absent otherwise).")
    segments: list[Membership]
    primary_segment: str | None
    score: float


class SegmentDefinition(Model):
    id: str = Field(examples=["cart-abandoners"])
    name: str
    description: str
    enabled: bool
    priority: int
    group: str | None
    weight: float
    static: bool = Field(description="Members are kept by hand through POST /segments/{segmentId}/members.")
    condition: Any = Field(examples=[{"recency": {"event": "Order Completed", "within": "7d"}}])
    size: int | None = Field(default=None, description="Current members (on GET /segments/{segmentId}).")
    # The stored version's fields: absent for a segment of the YAML folder (nothing stored yet).
    version: int | None = Field(default=None, exclude_if=lambda value: value is None,
                                description="The stored definition's version.")
    author: str | None = Field(default=None, exclude_if=lambda value: value is None,
                               description="Who saved this version (on GET /segments/{segmentId}).")
    updated_at: str | None = Field(default=None, exclude_if=lambda value: value is None,
                                   description="When this version was saved (on GET /segments/{segmentId}).")
    definition: dict[str, Any] | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="The definition as saved: what PUT /segments/{segmentId} takes back.")


class SegmentList(Model):
    segments: list[SegmentDefinition]


class Member(Model):
    customer_id: str | None = Field(default=None, exclude_if=lambda value: value is None)
    member: str | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="With pseudonymous_indexes: the member's pseudonym (h: + HMAC-SHA256 of the customer id), "
                    "given instead of customer_id.")
    since: int = Field(description="Unix seconds")


class MemberPage(Model):
    segment_id: str
    members: list[Member]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class MembershipEdit(Model):
    """Customers to add to or remove from a static segment (at most 100 in all per call)."""

    add: list[str] = Field(default_factory=list, max_length=100, examples=[["alice", "bob"]])
    remove: list[str] = Field(default_factory=list, max_length=100, examples=[["carol"]])


class MembershipEditResult(Model):
    segment_id: str
    added: list[str]
    removed: list[str]
    unchanged: list[str]


class DeletionAccepted(Model):
    """A deletion request was recorded and its job queued; follow it at ``status_url``."""

    request_id: str = Field(examples=["req-5f0c2a9e81d4b7c3a1e2f3d4"])
    status: str = Field(examples=["pending"])
    status_url: str = Field(examples=["/requests/req-5f0c2a9e81d4b7c3a1e2f3d4"])


class RequestStatus(Model):
    """A data subject request and its audit record: no personal data beyond the request id and the customer's
    digest (SHA-256 of ``customer:<id>``, as the id map keys it)."""

    request_id: str
    kind: str = Field(examples=["delete"], description="delete | export")
    status: str = Field(examples=["done"], description="pending | running | done | failed")
    customer_digest: str
    created_at: str | None
    updated_at: str | None
    counts: dict[str, int] = Field(
        examples=[{"id_map": 3, "profiles": 1, "members": 2, "ledger": 2, "quarantine": 0}],
        description="Per store, the items erased (a deletion).")
    reason: str | None = Field(default=None, description="Why a failed request failed.")


class ConsentChoice(Model):
    at: float | None = Field(description="Unix seconds, as the message gave it")
    source: str
    message_id: str | None
    categories: dict[str, bool]


class ConsentRecord(Model):
    """The customer's latest consent preferences, any unsubscribe, and the history of their choices."""

    categories: dict[str, bool] = Field(examples=[{"marketing": True, "advertising": False}])
    at: float | None
    source: str
    message_id: str | None
    unsubscribed_at: float | None
    unsubscribed_reason: str | None = Field(description="unsubscribed | spam")
    history: list[ConsentChoice]


class DeliveryRecord(Model):
    """A membership delivered to a destination (the delivery ledger): the latest change sent."""

    destination: str = Field(examples=["meta"])
    segment_id: str = Field(examples=["cart-abandoners"])
    kind: str = Field(examples=["entered"], description="entered | exited")
    version: int


class CustomerIds(Model):
    canonical_id: str
    merged_ids: list[MergedId] = Field(description="Anonymous ids and aliases merged into the customer.")
    emails: list[str] = Field(description="The email addresses held (the id map keeps only their digests).")


class CustomerExport(Model):
    """Everything held about a customer, assembled on request (nothing is stored for it, so no export file is
    left to delete)."""

    request_id: str = Field(description="The export's audit record (GET /requests/{requestId}).")
    profile: CustomerProfile
    memberships: list[Membership] = Field(description="Current segments, with since-times.")
    consent: ConsentRecord
    deliveries: list[DeliveryRecord]
    ids: CustomerIds


class DefinitionIssue(Model):
    """One problem of a definition: where it is (a dotted path inside the definition) and the rule it breaks."""

    path: str = Field(examples=["condition.all.0.count.at_least"])
    message: str = Field(examples=["must be a whole number >= 0"])
    segment_id: str = Field(examples=["big-spenders"], description="The segment the problem is in.")


class DefinitionProblem(Model):
    """A definition that cannot be saved: every problem, as ``cdp segments validate`` reports them."""

    code: str = Field(examples=["invalid_definition"])
    message: str
    field: str | None = Field(default=None, examples=["condition"])
    errors: list[DefinitionIssue]


class ValidationResult(Model):
    valid: bool = Field(examples=[True])
    segment_id: str


class JobSegments(Model):
    total: int = Field(description="Scan segments of the current phase.")
    done: int


class JobDocument(Model):
    """A job that evaluates every profile (a backfill), computes population statistics, or trains the computed
    traits' models and scores every profile (traits)."""

    id: str = Field(examples=["5f0c2a9e81d4b7c3a1e2f3d4"])
    kind: str = Field(examples=["backfill"], description="backfill | percentiles | traits")
    status: str = Field(examples=["running"], description="queued | running | done | failed")
    progress: float = Field(ge=0, le=1, description="The share of the work done, 0 to 1.")
    phase: str = Field(examples=["evaluate"])
    phases: list[str]
    segments: JobSegments
    counts: dict[str, int] = Field(examples=[{"profiles": 2400, "entered": 310, "exited": 12}])
    result: dict[str, Any]
    options: dict[str, Any] = Field(examples=[{"segment_id": "big-spenders", "deliver": "audiences"}])
    created_at: str
    updated_at: str
    reason: str = Field(description="Why a failed job failed (empty otherwise).")


class SegmentSaved(Model):
    """A saved definition, the catalogue version it made, and the backfill that evaluates every profile."""

    segment: SegmentDefinition
    version: int
    catalogue_version: int
    job: JobDocument | None = Field(description="The backfill (null with backfill=false).")


class SegmentDeleted(Model):
    segment_id: str
    version: int = Field(description="The version that records the deletion.")
    catalogue_version: int
    job: JobDocument | None = Field(description="The backfill that makes the members exit (null with "
                                                "backfill=false).")


class SegmentVersionEntry(Model):
    version: int
    author: str
    at: str | None
    deleted: bool
    catalogue_version: int
    definition: dict[str, Any] | None = Field(description="The definition of this version (null: a deletion).")


class SegmentVersions(Model):
    segment_id: str
    versions: list[SegmentVersionEntry] = Field(description="Every version, oldest first.")


class PreviewResult(Model):
    """The size the definition would have now, over a fresh scan of the profiles (sampled on large tables)."""

    segment_id: str
    size: int = Field(description="Members now (estimated when ``exact`` is false).")
    scanned: int = Field(description="Profiles evaluated.")
    exact: bool
    error_bound: int = Field(description="Half-width of the 95% interval of ``size`` (0 when exact).")
    members: list[str] = Field(description="A sample of the customers who would be members.")


def _absent(value: Any) -> bool:
    return value is None


class SegmentExplanation(Model):
    """Why the customer is, or is not, in the segment: the condition tree as the engine evaluates it now."""

    customer_id: str
    requested_id: str | None = Field(
        default=None, exclude_if=_absent,
        description="The id asked for, when it was merged into this customer (absent otherwise).")
    segment: str = Field(examples=["big-spenders"])
    name: str
    at: str | None = Field(description="The moment evaluated (now).")
    holds: bool = Field(description="The condition's result now.")
    member: bool = Field(description="A member as the profile holds it.")
    since: str | None
    entered_by: str | None = Field(description="The clause the customer entered by.")
    changes_at: str | None = Field(description="When the result next changes with no new event.")
    condition: dict[str, Any] = Field(description="The tree: at each node `value`, `threshold`, `result`, "
                                                  "`changes_at` and its `children`.")
    group: str | None = Field(default=None, exclude_if=_absent)
    outranked_by: str | None = Field(default=None, description="In an exclusive group: the segment that takes "
                                                               "precedence.")
    note: str | None = Field(default=None, exclude_if=_absent,
                             description="Why the stored membership differs from an evaluation now.")


class SegmentVerdict(Model):
    segment: str
    name: str
    holds: bool = Field(description="Whether the condition holds now.")
    member: bool = Field(description="A member as the profile holds it.")
    since: str | None
    entered_by: str | None = Field(description="The clause the customer entered by.")
    note: str | None = Field(default=None, exclude_if=_absent)


class CustomerExplanation(Model):
    customer_id: str
    requested_id: str | None = Field(default=None, exclude_if=_absent)
    segments: list[SegmentVerdict] = Field(description="Every enabled segment, highest priority first.")


class HistoryDay(Model):
    day: str = Field(examples=["2026-10-20"])
    size: int | None = Field(description="Members at the day's snapshot (null: none taken).")
    entered: int
    exited: int


class SegmentHistory(Model):
    segment_id: str
    days: list[HistoryDay] = Field(description="Oldest first, up to today.")


class JobRequest(Model):
    """A job to start: its kind and options (as ``cdp jobs run`` takes them)."""

    kind: str = Field(examples=["traits"], description="backfill | percentiles | traits")
    options: dict[str, Any] = Field(
        default_factory=dict, examples=[{"models": ["clusters"], "clusters": 4}],
        description="traits: `models` (rfm, clusters, predictions; default all), `clusters` (2..12; default: by "
                    "silhouette), `sample`; backfill: `segment_id`, `deliver`.")


class NamedRfmSegment(Model):
    recency_scores: str = Field(examples=["5"], description="The recency scores (1-5) the name covers.")
    frequency_scores: str = Field(examples=["45"])
    name: str = Field(examples=["Champions"])


class CentroidFigures(Model):
    """A cluster's centre in the features' own units."""

    recency_days: float = Field(description="Days since the last order (non-buyers: since first seen).")
    orders: float
    revenue: float
    events_per_week: float


class ClusterSummary(Model):
    index: int = Field(description="The ``cluster`` trait's value; 0 is the highest-spending centroid.")
    size: int | None = Field(description="Training customers assigned to it.")
    description: str = Field(examples=["frequent, recent, high spend"])
    centroid: CentroidFigures


class ModelDocument(Model):
    """A computed traits model as stored: its version, training time and what it learnt."""

    model: str = Field(examples=["clusters"], description="rfm | clusters | predictions")
    version: int
    trained_at: str | None
    population: int | None = Field(default=None, description="Customers the model was trained over.")
    cuts: dict[str, list[float]] | None = Field(
        default=None, exclude_if=_absent, description="rfm: the quintile cut points of each figure.")
    named_segments: list[NamedRfmSegment] | None = Field(
        default=None, exclude_if=_absent, description="rfm: the name ``rfm_segment`` takes for each score pair.")
    k: int | None = Field(default=None, exclude_if=_absent, description="clusters: how many.")
    chosen_by: str | None = Field(default=None, exclude_if=_absent, description="clusters: silhouette | configured")
    silhouette: float | None = Field(default=None, exclude_if=_absent)
    clusters: list[ClusterSummary] | None = Field(default=None, exclude_if=_absent)
    horizon_days: int | None = Field(default=None, exclude_if=_absent,
                                     description="predictions: how far ahead they look.")
    features: list[str] | None = Field(default=None, exclude_if=_absent)
    metrics: dict[str, Any] | None = Field(
        default=None, exclude_if=_absent,
        description="predictions: the time-split validation, AUC and purchase error against the naive baseline.")


class ModelList(Model):
    models: list[ModelDocument] = Field(description="Every trained model: rfm, clusters, predictions.")


class DecisionContent(Model):
    id: str = Field(examples=["promo-capsules"])
    payload: dict[str, Any] = Field(description="The content's JSON, as the placement defines it.")


class DecisionDocument(Model):
    """The content a placement serves one customer, the rule that won and why."""

    placement: str = Field(examples=["home-hero"])
    customer_id: str | None = Field(description="The canonical customer decided for (null for a new visitor "
                                                "at /me/decisions).")
    requested_id: str | None = Field(
        default=None, exclude_if=lambda requested: requested is None,
        description="The id asked for, when it was merged into this customer (absent otherwise).")
    known: bool = Field(description="False: no profile has this id (a new visitor); the rules were evaluated on an "
                                    "empty profile, so only rules without profile conditions can match.")
    content: DecisionContent
    rule: str | None = Field(description="The rule that won; null when the default is served.",
                             examples=["vip-bought-b"])
    reason: str = Field(examples=["rule vip-bought-b names vip, the customer's primary segment; also matched: "
                                  "spring-campaign"])
    matched: list[str] = Field(description="Every rule that matched, in the placement's order.")
    context: dict[str, str] = Field(description="The request context the rules were matched against.")
