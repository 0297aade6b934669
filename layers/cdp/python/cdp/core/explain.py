"""Explain: why a customer is, or is not, in a segment, node by node of its condition.

:func:`explain_segment` answers ``GET /customers/{id}/explain?segment=S`` and ``cdp explain ID S``. Each
node of the condition tree shows what the profile holds (``value``), what that is compared with
(``threshold``), the node's result now and, for conditions that change with time alone, when the result
next changes (``changes_at``). Results and times come from the nodes' own ``evaluate``, so the answer is
the engine's; only the observed values are read here, through the same :class:`~cdp.core.language.Context`
methods the nodes read. A ``trait`` node on a computed trait (``rfm_segment``, ``cluster``,
``churn_probability`` ...) also gives, under ``detail``, the model that computed the value and that
model's ``version`` and ``trained_at``, so the value can be traced to the training run that wrote it.

Besides the tree: the stored membership (``member``, ``since``, ``entered_by``: the node path or clause
it was entered by), ``holds`` (the condition's result now), in an exclusive group the higher-ranked
segment that takes precedence (``outranked_by``), and a ``note`` when the stored membership is not what
an evaluation now would leave (not re-evaluated yet, a deadline the timers have not swept, no profiling
consent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cdp.core.catalogue import Catalogue, Segment
from cdp.core.engine import EXPIRY
from cdp.core.language import (
    SYMBOLS,
    AbsenceCondition,
    AllOf,
    AnyOf,
    ChannelCondition,
    Condition,
    Context,
    ManualCondition,
    MetricCondition,
    Not,
    PercentileCondition,
    ProductCondition,
    RatioCondition,
    RecencyCondition,
    RfmCondition,
    SegmentCondition,
    TraitCondition,
)
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile, ProfileView
from cdp.core.static_segments import UnknownSegment
from cdp.core.traits import TRAIT_MODELS

DAY = 86_400

__all__ = ["UnknownSegment", "explain_segment"]

# What a node observes: (operator, value, threshold, detail); detail holds the figures behind the value.
Observed = tuple[str, Any, Any, dict[str, Any]]


def iso(moment: float | None) -> str | None:
    """A moment as ISO 8601 UTC, to the second (rounded up: a deadline is the first second it holds)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(math.ceil(moment), UTC).isoformat().replace("+00:00", "Z")


def explain_segment(catalogue: Catalogue, segment_id: str, profile: Profile, now: float,
                    stats: PopulationStats | None, refusal: str | None = None) -> dict[str, Any]:
    """The explanation of ``segment_id`` for ``profile`` at ``now``.

    ``refusal`` is why the customer's consent does not permit profiling (``Engine.profiling_refusal``), or
    None. Raises :class:`UnknownSegment` when no enabled segment has this id.
    """
    segment = catalogue.segments.get(segment_id)
    if segment is None:
        raise UnknownSegment("segment: no enabled segment has this id")
    view = ProfileView(profile, now, stats)
    holds, deadline = segment.condition.evaluate(view)
    member = segment.id in profile.memberships
    since = profile.memberships.get(segment.id)
    answer: dict[str, Any] = {
        "segment": segment.id, "name": segment.name, "at": iso(now), "holds": holds, "member": member,
        "since": iso(since), "entered_by": profile.entered_by.get(segment.id) if member else None,
        "changes_at": iso(deadline), "condition": explain_node(segment.condition, view),
    }
    outranked_by = _outranked_by(catalogue, segment, view) if holds else None
    if segment.group is not None:
        answer["group"] = segment.group
        answer["outranked_by"] = outranked_by
    note = _note(catalogue, segment, profile, now, member, holds and outranked_by is None, refusal)
    if note is not None:
        answer["note"] = note
    return answer


def explain_node(node: Condition, ctx: Context) -> dict[str, Any]:
    """One node and, below it, its children: what each observes, and its result now."""
    result, deadline = node.evaluate(ctx)
    operator, value, threshold, detail = observe(node, ctx)
    explained: dict[str, Any] = {
        "path": node.path, "operator": operator, "description": node.describe(), "value": value,
        "threshold": threshold, "result": result, "changes_at": iso(deadline),
        "children": [explain_node(child, ctx) for child in node.children()],
    }
    comparison = getattr(node, "op", None)
    if isinstance(comparison, str):
        explained["comparison"] = SYMBOLS.get(comparison, comparison)
    if detail:
        explained["detail"] = detail
    return explained


def observe(node: Condition, ctx: Context) -> Observed:
    """What ``node`` compares, read as the node reads it."""
    for kind, reader in _OBSERVERS:
        if isinstance(node, kind):
            return reader(node, ctx)
    raise TypeError(f"no observer for {type(node).__name__}")


def _combination(node: Any, ctx: Context) -> Observed:
    operator = "all" if isinstance(node, AllOf) else "any" if isinstance(node, AnyOf) else "not"
    return operator, None, None, {}


def _trait(node: TraitCondition, ctx: Context) -> Observed:
    return "trait", ctx.trait(node.name), node.value, _computed_detail(node.name, ctx)


def _computed_detail(name: str, ctx: Context) -> dict[str, Any]:
    """A computed trait's model, and the version and training time of the model that wrote the value."""
    model = TRAIT_MODELS.get(name)
    profile = getattr(ctx, "profile", None)
    if model is None or not isinstance(profile, Profile):
        return {}
    stamp = profile.computed.models.get(model)
    return {"computed": True, "model": model, "version": int(stamp[0]) if stamp else None,
            "trained_at": iso(stamp[1]) if stamp else None}


def _metric(node: MetricCondition, ctx: Context) -> Observed:
    counter = ctx.counter(node.metric.key)
    if counter is None:
        count, total = 0, 0
    elif node.tier is None or node.window is None:
        count, total = counter.count, counter.total
    else:
        count, total = counter.window(node.tier, node.window, ctx.now)
    detail: dict[str, Any] = {"kind": node.kind, "count": count}
    if node.window is not None:
        detail["window_days"] = _days(node.window)
    return "metric", node.figure(count, total), node.value, detail


def _ratio(node: RatioCondition, ctx: Context) -> Observed:
    tops, bottoms = ctx.counter(node.numerator.key), ctx.counter(node.denominator.key)
    top = tops.window(node.tier, node.window, ctx.now)[0] if tops else 0
    bottom = bottoms.window(node.tier, node.window, ctx.now)[0] if bottoms else 0
    detail = {"numerator": top, "denominator": bottom, "min_denominator": node.min_denominator}
    return "ratio", top / bottom if bottom else None, node.value, detail


def _recency(node: RecencyCondition, ctx: Context) -> Observed:
    counter = ctx.counter(node.metric.key)
    moment = None if counter is None or not counter.count else counter.last if node.of == "last" else counter.first
    value = None if moment is None else _days(ctx.now - moment)
    return "recency", value, _days(node.window), {"event_at": iso(moment)} if moment is not None else {}


def _absence(node: AbsenceCondition, ctx: Context) -> Observed:
    triggered = node.trigger_time(ctx)
    missing = ctx.counter(node.missing.key)
    missing_at = missing.last if missing is not None and missing.count else None
    detail: dict[str, Any] = {"triggered_at": iso(triggered), "missing_last_at": iso(missing_at)}
    if node.when is not None:
        detail["when"] = node.when.describe()  # judged when the trigger happened, not now
    if node.expire is not None:
        detail["expire_days"] = _days(node.expire)
    value = None if triggered is None else _days(ctx.now - triggered)
    return "absence", value, _days(node.within), detail


def _channel(node: ChannelCondition, ctx: Context) -> Observed:
    seen = ctx.channel_last_seen(node.channel)
    value = None if seen is None else _days(ctx.now - seen)
    threshold = None if node.window is None else _days(node.window)
    return "channel", value, threshold, {"last_seen_at": iso(seen)} if seen is not None else {}


def _product(node: ProductCondition, ctx: Context) -> Observed:
    moment = node.last(ctx)
    value = None if moment is None else _days(ctx.now - moment)
    threshold = None if node.window is None else _days(node.window)
    return node.condition, value, threshold, {"last_at": iso(moment)} if moment is not None else {}


def _segment(node: SegmentCondition, ctx: Context) -> Observed:
    return "segment", ctx.is_member(node.segment_id), None, {"segment": node.segment_id}


def _manual(node: ManualCondition, ctx: Context) -> Observed:
    return "manual", ctx.is_member(node.segment_id), None, {}


def _rfm(node: RfmCondition, ctx: Context) -> Observed:
    return "rfm", ctx.rfm(node.metric), node.value, {"metric": node.metric}


def _percentile(node: PercentileCondition, ctx: Context) -> Observed:
    detail = {"metric": node.metric, "top_percent": node.top}
    return "percentile", ctx.rfm(node.metric), ctx.threshold(node.metric, node.top), detail


_OBSERVERS: tuple[tuple[type | tuple[type, ...], Callable[[Any, Context], Observed]], ...] = (
    ((AllOf, AnyOf, Not), _combination), (TraitCondition, _trait), (MetricCondition, _metric),
    (RatioCondition, _ratio), (RecencyCondition, _recency), (AbsenceCondition, _absence),
    (ChannelCondition, _channel), (SegmentCondition, _segment), (ManualCondition, _manual),
    (RfmCondition, _rfm), (PercentileCondition, _percentile), (ProductCondition, _product),
)


def _days(seconds: float) -> float:
    return round(seconds / DAY, 4)


def _outranked_by(catalogue: Catalogue, segment: Segment, view: ProfileView) -> str | None:
    """In an exclusive group, the first segment ranked above ``segment`` whose condition holds (it wins)."""
    if segment.group is None:
        return None
    for other in catalogue.unit_of[segment.id].segments:
        if other is segment:
            return None
        if other.condition.evaluate(view)[0]:
            return other.id
    return None


def _note(catalogue: Catalogue, segment: Segment, profile: Profile, now: float, member: bool, expected: bool,
          refusal: str | None) -> str | None:
    """Why the stored membership is not ``expected`` (what an evaluation now would leave); None when it is."""
    if refusal is not None:
        return f"no segment is evaluated for this customer: {refusal}" if member or expected else None
    if member == expected:
        return None
    if profile.merged_into is not None:
        return "this profile was merged into another customer; explain that customer instead"
    expiry = profile.deadlines.get(EXPIRY)
    if expiry is not None and expiry <= now:
        return "the profile has expired; the timers make its exits"
    if profile.catalogue != catalogue.fingerprint:
        return ("not yet evaluated against the current catalogue: the next event, deadline or backfill"
                " evaluates it")
    due = profile.deadlines.get(segment.id)
    if due is not None and due <= now:
        return f"changed at {iso(due)} with no new event: the timers re-evaluate it within a minute"
    return ("not re-evaluated since its inputs changed (new population statistics, or a segment it refers to):"
            " the next event or a backfill re-evaluates it")
