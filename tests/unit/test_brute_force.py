"""A brute-force evaluator over the raw event list must agree with the incremental engine.

The evaluator below re-implements the documented semantics of the segment language
(``segments/README.md`` and the docstring of ``cdp.core.counters``) directly over the list of
events a customer sent, with no buckets, counters or deadlines: a window of W seconds in a
tier of bucket size s counts the events whose bucket ``floor(ts / s)`` lies in
``floor(now / s) - W / s + 1 .. floor(now / s)``. It shares nothing with ``cdp.core.language``
or ``cdp.core.counters`` except ``parse_duration``.

Hypothesis generates random histories (shuffled, in several batches, some messages
redelivered) and random condition trees, replays them through ``Engine.apply`` as event-time
replay does, and checks:

* the engine's membership after every batch, after a full re-evaluation at a later time,
  and after timer sweeps at each deadline, equals the brute force;
* every windowed count the engine reads equals the bucket rule, and lies between the exact
  count of events in ``[now - W + s, now]`` and the exact count in ``(now - W, now]``;
* the deadline is right: the brute-force answer does not change before it (or, without a
  deadline, at all).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdp.core.catalogue import build_catalogue
from cdp.core.durations import parse_duration
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.language import AllOf, AnyOf, MetricCondition, Not, RatioCondition
from cdp.core.profile import Profile

MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
HORIZON = 60 * DAY

# ---- the brute force ------------------------------------------------------------------------------
# Its own copy of the documented rules; nothing here calls the engine's evaluation code.

# (bucket size, buckets kept), finest first: the table in segments/README.md.
DOCUMENTED_TIERS = ((MINUTE, 60), (HOUR, 48), (DAY, 35), (WEEK, 53))
EMAIL_SPEC_EVENTS = frozenset({"Email Opened", "Email Link Clicked"})  # "always from the email channel"
ORDER_COMPLETED = "Order Completed"
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
    "eq": operator.eq, "ne": operator.ne,
}


@dataclass(frozen=True)
class RawEvent:
    message_id: str
    name: str
    ts: int
    properties: dict[str, Any] = field(default_factory=dict)
    channel: str = "web"

    def message(self) -> dict[str, Any]:
        when = datetime.fromtimestamp(self.ts, UTC).isoformat().replace("+00:00", "Z")
        return {"type": "track", "messageId": self.message_id, "userId": "u1", "timestamp": when,
                "event": self.name, "properties": self.properties, "channel": self.channel}


def bucket_size(window: int) -> int:
    """The finest documented tier that can hold the window (which must be whole buckets of it)."""
    for size, kept in DOCUMENTED_TIERS:
        if window <= size * kept:
            assert window % size == 0, f"the generator made an invalid window {window}"
            return size
    raise AssertionError(f"the generator made a window longer than 53 weeks: {window}")


def in_window(ts: int, window: int, now: int) -> bool:
    size = bucket_size(window)
    current = now // size
    return current - window // size + 1 <= ts // size <= current


def json_same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    return bool(actual == expected)


def property_test(properties: dict[str, Any], name: str, test: Any) -> bool:
    op, expected = next(iter(test.items())) if isinstance(test, dict) else ("eq", test)
    if name not in properties:
        return op == "ne"
    actual = properties[name]
    if op == "eq":
        return json_same(actual, expected)
    if op == "ne":
        return not json_same(actual, expected)
    if op == "in":
        return any(json_same(actual, option) for option in expected)
    numbers = (int, float)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return False
    if isinstance(actual, numbers) and isinstance(expected, numbers):
        return COMPARISONS[op](actual, expected)
    if isinstance(actual, str) and isinstance(expected, str):
        return COMPARISONS[op](actual, expected)
    return False


def matches(event: RawEvent, spec: dict[str, Any]) -> bool:
    return event.name == spec["event"] and all(
        property_test(event.properties, name, test) for name, test in (spec.get("where") or {}).items())


def channel_of(event: RawEvent) -> str:
    return "email" if event.name in EMAIL_SPEC_EVENTS else event.channel


def hundredths(event: RawEvent, prop: str) -> int:
    """What one event adds to a sum, to 0.01 (non-numeric and missing values add 0)."""
    value = event.properties.get(prop)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int((Decimal(str(value)) * 100).to_integral_value())


def comparison(body: dict[str, Any]) -> tuple[str, float]:
    [op] = [key for key in COMPARISONS if key in body]
    return op, float(body[op])


Predicate = Callable[[int], bool]


def brute_force(condition: dict[str, Any], events: list[RawEvent]) -> Predicate:
    """The condition's truth at any moment >= every event, from the raw events alone."""
    unique = list({event.message_id: event for event in events}.values())  # redeliveries count once
    return _compile(condition, unique)


def _compile(condition: dict[str, Any], events: list[RawEvent]) -> Predicate:
    [(kind, body)] = condition.items()
    compiler = _COMPILERS.get(kind)
    if compiler is None:
        raise AssertionError(f"the brute force does not know {kind!r}")
    return compiler(kind, body, events)


def _combination(kind: str, body: Any, events: list[RawEvent]) -> Predicate:
    parts = [_compile(part, events) for part in body]
    combine = all if kind == "all" else any
    return lambda now: combine(part(now) for part in parts)


def _negation(kind: str, body: Any, events: list[RawEvent]) -> Predicate:
    inner = _compile(body, events)
    return lambda now: not inner(now)


def _recency(kind: str, body: dict[str, Any], events: list[RawEvent]) -> Predicate:
    times = [e.ts for e in events if matches(e, body)]
    span = parse_duration(body["within"])
    if not times:
        return lambda now: False
    moment = max(times) if body.get("of", "last") == "last" else min(times)
    return lambda now: now < moment + span


def _ratio(kind: str, body: dict[str, Any], events: list[RawEvent]) -> Predicate:
    window = parse_duration(body["within"])
    tops = [e.ts for e in events if matches(e, body["numerator"])]
    bottoms = [e.ts for e in events if matches(e, body["denominator"])]
    op, value = comparison(body)
    least = body.get("min_denominator", 1)

    def ratio(now: int) -> bool:
        top = sum(in_window(ts, window, now) for ts in tops)
        bottom = sum(in_window(ts, window, now) for ts in bottoms)
        return bottom >= least and COMPARISONS[op](top / bottom, value)
    return ratio


def _channel(kind: str, body: dict[str, Any], events: list[RawEvent]) -> Predicate:
    seen = [e.ts for e in events if channel_of(e) == body["name"]]
    if not seen:
        return lambda now: False
    if "within" not in body:
        return lambda now: True
    until = max(seen) + parse_duration(body["within"])
    return lambda now: now < until


def _aggregate(kind: str, body: dict[str, Any], events: list[RawEvent]) -> Predicate:
    chosen = [e for e in events if matches(e, body)]
    values = [hundredths(e, body["property"]) if kind != "count" else 0 for e in chosen]
    window = parse_duration(body["within"]) if "within" in body else None
    op, value = comparison(body)

    def holds(now: int) -> bool:
        picked = [i for i, e in enumerate(chosen) if window is None or in_window(e.ts, window, now)]
        count, total = len(picked), sum(values[i] for i in picked)
        if kind == "count":
            figure: float = count
        elif kind == "sum":
            figure = total / 100
        elif count == 0:
            return False  # the average of no events is false whatever the comparison
        else:
            figure = total / 100 / count
        return COMPARISONS[op](figure, value)
    return holds


def _absence(kind: str, body: dict[str, Any], events: list[RawEvent]) -> Predicate:
    triggers = [e.ts for e in events if matches(e, body["trigger"])]
    if not triggers:
        return lambda now: False
    latest = max(triggers)
    if any(matches(e, body["missing"]) and e.ts >= latest for e in events):
        return lambda now: False
    due = latest + parse_duration(body["within"], allow_zero=True)
    ends = latest + parse_duration(body["expire"]) if "expire" in body else None
    return lambda now: due <= now and (ends is None or now < ends)


_COMPILERS: dict[str, Callable[[str, Any, list[RawEvent]], Predicate]] = {
    "all": _combination, "any": _combination, "not": _negation, "count": _aggregate, "sum": _aggregate,
    "average": _aggregate, "recency": _recency, "absence": _absence, "ratio": _ratio, "channel": _channel}


def durations(condition: dict[str, Any]) -> Iterator[tuple[int, int]]:
    """(duration, bucket size) for every duration in the condition; exact durations have size 1."""
    [(kind, body)] = condition.items()
    if kind in ("all", "any"):
        for part in body:
            yield from durations(part)
    elif kind == "not":
        yield from durations(body)
    elif kind in ("count", "sum", "average", "ratio") and "within" in body:
        window = parse_duration(body["within"])
        yield window, bucket_size(window)
    elif kind in ("recency", "channel") and "within" in body:
        yield parse_duration(body["within"]), 1
    elif kind == "absence":
        yield parse_duration(body["within"], allow_zero=True), 1
        if "expire" in body:
            yield parse_duration(body["expire"]), 1


def change_points(condition: dict[str, Any], events: list[RawEvent]) -> set[int]:
    """Every moment at which the brute-force answer can change with no new event (a superset)."""
    points = set()
    for window, size in set(durations(condition)):
        for event in events:
            points.add(event.ts + window)
            points.add(event.ts // size * size + window)  # the bucket leaves the window
    return points


# ---- generated histories and definitions --------------------------------------------------------

EVENT_NAMES = ("Product Viewed", "Product Added", ORDER_COMPLETED, "Email Opened", "Email Link Clicked")
CHANNEL_NAMES = ("web", "mobile", "email", "server")
CATEGORIES = ("shoes", "hats")
PRICES = (5, 10, 19.99, 50)
REVENUES = (0, 10, 19.99, 50, 120.5)
FLAGS = (True, False, 1, 0)
WINDOWS = ("1m", "10m", "30m", "60m", "2h", "24h", "48h", "3d", "7d", "30d", "35d", "4w", "26w", "53w")
EXACT_DURATIONS = ("90s", "10m", "90m", "2h", "36h", "3d", "7d", "30d")
ABSENCE_WITHIN = ("0s", "10m", "2h", "48h", "3d")
EXPIRES = ("1h", "3d", "7d", "30d")
WHERE_TESTS: tuple[tuple[str, Any], ...] = (
    ("category", "shoes"), ("category", {"in": ["shoes", "bags"]}), ("category", {"eq": "hats"}),
    ("category", {"gt": "hats"}),
    ("price", {"gt": 10}), ("price", {"lte": 19.99}), ("price", {"eq": 10}), ("price", {"in": [5, "10"]}),
    ("flag", True), ("flag", {"eq": 1}), ("flag", {"in": [False, 0]}),
    ("revenue", {"gt": 19.99}), ("revenue", {"lte": 10}),
)
OPS = tuple(COMPARISONS)


@dataclass
class History:
    events: list[RawEvent]  # as the customer made them
    batches: list[list[RawEvent]]  # as they arrive, redeliveries included


def _templates(name: str) -> list[dict[str, Any]]:
    """The property sets an event of this name can carry (order ids are added per event)."""
    common: list[dict[str, Any]] = [{}, {"category": "shoes"}, {"category": "hats"},
                                    *({"flag": flag} for flag in FLAGS),
                                    {"category": "shoes", "flag": True}, {"category": "hats", "flag": 1}]
    if name == "Product Added":
        prices: list[Any] = [None, *PRICES]
        return [{**c, "product_id": p, **({"price": price} if price is not None else {})}
                for c in common for p in ("p1", "p2") for price in prices]
    if name == ORDER_COMPLETED:
        return [{**c, "revenue": revenue} for c in common for revenue in REVENUES]
    return [{**c, **({"price": price} if price is not None else {})}
            for c in common for price in (None, *PRICES, "10")]  # a string price sums as 0


TEMPLATES = {name: _templates(name) for name in EVENT_NAMES}


@st.composite
def histories(draw: st.DrawFn) -> History:
    start = B + draw(st.integers(0, WEEK))  # shifts the history against every bucket boundary
    centres = draw(st.lists(st.integers(0, HORIZON), min_size=1, max_size=4))
    # How tightly events cluster round the centres: one choice per history, so some are minutes long.
    spread = draw(st.sampled_from((st.integers(-120, 120), st.integers(-3 * HOUR, 3 * HOUR),
                                   st.integers(-2 * DAY, 2 * DAY), st.integers(-2, 2).map(lambda k: k * HOUR),
                                   st.integers(0, HORIZON))))
    count = draw(st.integers(0, 60))
    events = []
    for index in range(count):
        name = draw(st.sampled_from(EVENT_NAMES))
        offset = min(max(draw(st.sampled_from(centres)) + draw(spread), 0), HORIZON)
        properties = dict(draw(st.sampled_from(TEMPLATES[name])))
        if name == ORDER_COMPLETED:
            properties["order_id"] = f"order-{index}"  # unique: a repeated order id is refused
        events.append(RawEvent(f"m-{index}", name, start + offset, properties, draw(st.sampled_from(CHANNEL_NAMES))))
    # Arrival order: event time plus a random delay, so disorder from none to weeks.
    disorder = draw(st.sampled_from((0, 10 * MINUTE, 3 * HOUR, 5 * DAY, HORIZON)))
    delays = [draw(st.integers(0, disorder)) if disorder else 0 for _ in events]
    arrival = [e for _, e in sorted(zip(delays, events, strict=True), key=lambda pair: pair[1].ts + pair[0])]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, count - 1)), max_size=6)))) if count > 1 else []
    bounds = [0, *cuts, count]
    batches = [arrival[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    if not count:
        return History(events, batches)
    for position in draw(st.lists(st.integers(0, count - 1), max_size=6)):
        # redeliver an event (same message id) in its own batch or a later one
        home = next(i for i, batch in enumerate(batches) if arrival[position] in batch)
        batches[draw(st.integers(home, len(batches) - 1))].append(arrival[position])
    if draw(st.booleans()):  # a whole batch delivered again later, as a retried stream read does
        batches.append(list(draw(st.sampled_from(batches))))
    return History(events, batches)


def event_filters() -> st.SearchStrategy[dict[str, Any]]:
    def build(name: str, tests: list[tuple[str, Any]]) -> dict[str, Any]:
        spec: dict[str, Any] = {"event": name}
        if tests:
            spec["where"] = dict(tests)
        return spec
    tests = st.lists(st.sampled_from(WHERE_TESTS), max_size=2, unique_by=lambda t: t[0])
    return st.builds(build, st.sampled_from(EVENT_NAMES), tests)


def _with(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**spec, **{k: v for k, v in extra.items() if v is not None}}


def aggregates() -> tuple[st.SearchStrategy[dict[str, Any]], ...]:
    """count, sum and average leaves."""
    windows = st.none() | st.sampled_from(WINDOWS)

    def count(spec: dict[str, Any], window: str | None, op: str, value: int) -> dict[str, Any]:
        return {"count": _with(spec, within=window, **{op: value})}

    def numeric(kind: str, spec: dict[str, Any], window: str | None, op: str, value: float) -> dict[str, Any]:
        prop = "revenue" if spec["event"] == ORDER_COMPLETED else "price"  # one sum property per event
        return {kind: _with(spec, property=prop, within=window, **{op: value})}

    amounts = st.sampled_from((0, 10, 19.5, 19.99, 29.99, 50, 100, 139.9))
    return (
        st.builds(count, event_filters(), windows, st.sampled_from(OPS), st.integers(0, 10)),
        st.builds(numeric, st.just("sum"), event_filters(), windows, st.sampled_from(OPS), amounts),
        st.builds(numeric, st.just("average"), event_filters(), windows, st.sampled_from(OPS), amounts),
    )


def recencies() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda spec, within, of: {"recency": _with(spec, within=within, of=of)},
                     event_filters(), st.sampled_from(EXACT_DURATIONS), st.sampled_from((None, "last", "first")))


@st.composite
def absences(draw: st.DrawFn) -> dict[str, Any]:
    within = draw(st.sampled_from(ABSENCE_WITHIN))
    longer = [e for e in EXPIRES if parse_duration(e) > parse_duration(within, allow_zero=True)]
    expire = draw(st.none() | st.sampled_from(longer))
    return {"absence": _with({"trigger": draw(event_filters()), "missing": draw(event_filters())},
                             within=within, expire=expire)}


def ratios() -> st.SearchStrategy[dict[str, Any]]:
    def build(top: dict[str, Any], bottom: dict[str, Any], window: str, op: str, value: float,
              least: int | None) -> dict[str, Any]:
        return {"ratio": _with({"numerator": top, "denominator": bottom, "within": window},
                               min_denominator=least, **{op: value})}
    return st.builds(build, event_filters(), event_filters(), st.sampled_from(WINDOWS), st.sampled_from(OPS),
                     st.sampled_from((0, 0.25, 0.5, 1, 2)), st.none() | st.integers(1, 3))


def channels() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda name, within: {"channel": _with({"name": name}, within=within)},
                     st.sampled_from(CHANNEL_NAMES), st.none() | st.sampled_from(EXACT_DURATIONS + WINDOWS))


COUNTS, SUMS, AVERAGES = aggregates()
LEAVES = (COUNTS, COUNTS, SUMS, AVERAGES, recencies(), absences(), ratios(), channels())


@st.composite
def conditions(draw: st.DrawFn, depth: int = 3) -> dict[str, Any]:
    """A condition tree up to ``depth`` levels of all / any / not; each kind of node drawn explicitly,
    so that no branch crowds out the others."""
    kind = draw(st.sampled_from(("leaf", "leaf", "all", "any", "not"))) if depth else "leaf"
    if kind == "leaf":
        return draw(draw(st.sampled_from(LEAVES)))
    if kind == "not":
        return {"not": draw(conditions(depth - 1))}
    return {kind: draw(st.lists(conditions(depth - 1), min_size=1, max_size=3))}


# ---- running the engine ---------------------------------------------------------------------------

@dataclass
class Replay:
    engine: Engine
    profile: Profile
    clock: int  # the time of the last batch
    received: list[RawEvent]


def replay(condition: dict[str, Any], history: History,
           after_batch: Callable[[Replay], None] | None = None) -> Replay:
    """Event-time replay: each batch is applied with the clock at the newest event seen so far."""
    engine = Engine(build_catalogue([("t.yaml", {"id": "s", "name": "S", "condition": condition})]))
    state = Replay(engine, Profile("u1"), B, [])
    for batch in history.batches:
        state.clock = max(state.clock, *(event.ts for event in batch))
        fresh = {e.message_id for e in batch} - {e.message_id for e in state.received}
        outcome = engine.apply(state.profile, [normalise(event.message()) for event in batch], state.clock)
        assert outcome.rejected == []
        assert outcome.applied == len(fresh)
        state.received.extend(batch)
        if after_batch is not None:
            after_batch(state)
    return state


def leaves_with_windows(raw: dict[str, Any], node: Any) -> Iterator[tuple[dict[str, Any], Any, str]]:
    """(event filter as written, parsed node, counter attribute) for every windowed count the engine reads."""
    [(kind, body)] = raw.items()
    if kind in ("all", "any"):
        assert isinstance(node, (AllOf, AnyOf))
        for part, child in zip(body, node.items, strict=True):
            yield from leaves_with_windows(part, child)
    elif kind == "not":
        assert isinstance(node, Not)
        yield from leaves_with_windows(body, node.item)
    elif kind in ("count", "sum", "average") and "within" in body:
        assert isinstance(node, MetricCondition)
        yield body, node, "metric"
    elif kind == "ratio":
        assert isinstance(node, RatioCondition)
        yield body["numerator"], node, "numerator"
        yield body["denominator"], node, "denominator"


def check_window_counts(state: Replay, condition: dict[str, Any], now: int) -> None:
    root = state.engine.catalogue.segments["s"].condition
    events = list({e.message_id: e for e in state.received}.values())
    for spec, node, attribute in leaves_with_windows(condition, root):
        counter = state.profile.counter(getattr(node, attribute).key)
        window = node.window
        size = bucket_size(window)
        assert node.tier.size == size, f"{window}s should be counted in buckets of {size}s"
        engine_count = counter.window(node.tier, window, now)[0] if counter else 0
        chosen = [e.ts for e in events if matches(e, spec)]
        by_rule = sum(in_window(ts, window, now) for ts in chosen)
        surely = sum(now - window + size <= ts <= now for ts in chosen)
        at_most = sum(now - window < ts <= now for ts in chosen)
        context = f"{spec} within {window}s at {now}: engine {engine_count}"
        assert engine_count == by_rule, f"{context}, bucket rule {by_rule}"
        assert surely <= engine_count <= at_most, f"{context}, exact counts {surely}..{at_most}"


def member(state: Replay) -> bool:
    return "s" in state.profile.memberships


# ---- the properties -------------------------------------------------------------------------------

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(history=histories(), condition=conditions(), data=st.data())
def test_engine_agrees_with_brute_force(history: History, condition: dict[str, Any], data: st.DataObject) -> None:
    state = replay(condition, history)
    truth = brute_force(condition, state.received)
    # A later evaluation time: anywhere in the next 60 days, or just at or before a moment the answer can change.
    edges = sorted(p + d for p in change_points(condition, state.received) for d in (-1, 0)
                   if state.clock <= p + d <= state.clock + HORIZON)
    later = st.integers(state.clock, state.clock + HORIZON)
    moments = data.draw(st.lists(st.one_of(later, st.sampled_from(edges)) if edges else later,
                                 min_size=1, max_size=5), label="moments")
    for now in sorted(moments):
        state.engine.evaluate(state.profile, now, touched=None)
        assert member(state) == truth(now), f"at {now}: engine {member(state)}, brute force {truth(now)}"
        check_window_counts(state, condition, now)


# The smallest disagreement found: a condition that is true of a profile with no matching events is never
# evaluated when the profile's events touch none of its inputs, so the customer never enters (no deadline
# is set either, so no timer fixes it). The README's own `not: {recency: {event: Order Completed, within:
# 30d}}` ("no order for 30 days (or ever)") behaves the same for a customer who has only viewed products.
ONLY_A_VIEW = RawEvent("m-0", "Product Viewed", B, {}, "web")


@SETTINGS
@example(history=History([ONLY_A_VIEW], [[ONLY_A_VIEW]]),
         condition={"not": {"recency": {"event": "Product Added", "within": "90s"}}})
@given(history=histories(), condition=conditions())
def test_incremental_evaluation_agrees_after_every_batch(history: History, condition: dict[str, Any]) -> None:
    """Only Engine.apply, as ingest runs it: the membership after each batch is the brute-force answer."""
    def after_batch(state: Replay) -> None:
        truth = brute_force(condition, state.received)(state.clock)
        assert member(state) == truth, f"after a batch at {state.clock}: engine {member(state)}, brute force {truth}"

    replay(condition, history, after_batch)


@SETTINGS
@given(history=histories(), condition=conditions())
def test_incremental_evaluation_and_timers_agree_once_evaluated(history: History, condition: dict[str, Any]) -> None:
    """Evaluate every segment once after the first batch (as after a catalogue change); from then on
    incremental evaluation after each batch, then timer sweeps at each deadline, keep membership right."""
    def after_batch(state: Replay) -> None:
        if len(state.received) == len(history.batches[0]):
            state.engine.evaluate(state.profile, state.clock, touched=None)
        truth = brute_force(condition, state.received)(state.clock)
        assert member(state) == truth, f"after a batch at {state.clock}: engine {member(state)}, brute force {truth}"

    state = replay(condition, history, after_batch)
    truth = brute_force(condition, state.received)
    moments = sorted({p + d for p in change_points(condition, state.received) for d in (-1, 0)
                      if state.clock < p + d <= state.clock + HORIZON})
    for moment in moments:
        while (deadline := state.profile.deadlines.get("s")) is not None and deadline <= moment:
            state.engine.evaluate(state.profile, deadline, touched=set())
            after = state.profile.deadlines.get("s")
            assert after is None or after > deadline, f"the deadline {deadline} did not move on ({after})"
        assert member(state) == truth(moment), (
            f"at {moment}: engine {member(state)} (deadline {state.profile.deadlines.get('s')}),"
            f" brute force {truth(moment)}")


@SETTINGS
@given(history=histories(), condition=conditions(), data=st.data())
def test_deadline_is_right(history: History, condition: dict[str, Any], data: st.DataObject) -> None:
    state = replay(condition, history)
    now = state.clock
    truth = brute_force(condition, state.received)
    deadline = state.profile.deadlines.get("s")
    if deadline is not None:
        assert deadline > now, f"deadline {deadline} is not after the clock {now}"
    end = deadline if deadline is not None else now + HORIZON + 1
    # The answer is piecewise constant between change points, so checking each of them is exhaustive.
    moments = {p for p in change_points(condition, state.received) if now <= p < end}
    moments.add(data.draw(st.integers(now, end - 1), label="t"))
    if deadline is None:
        moments.add(now + HORIZON)
    for moment in sorted(moments):
        assert truth(moment) == truth(now), (
            f"the answer changes at {moment}, before the deadline {deadline} (clock {now})")
