"""The segment language: definitions parsed and validated into condition trees that evaluate.

Every condition node evaluates to ``(value, deadline)``. The deadline is the earliest
moment its value can change with no new event (a window edge, an absence timing
out), or None when only a new event can change it. See ``segments/README.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdp.core.counters import Counter, Tier, tier_for_window, to_hundredths
from cdp.core.durations import format_duration, parse_duration
from cdp.core.events import CHANNELS, MAX_AMOUNT, ORDER_EVENTS, Event

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}
SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "==", "ne": "!="}
FILTER_OPS = (*COMPARATORS, "in", "contains", "exists")
RFM_METRICS = ("orders", "revenue", "average_order_value")
PRODUCT_KINDS = {"purchased": "p", "viewed": "v"}  # condition -> the kind of recent product it reads
MAX_PRODUCT_CHARS = 64  # as the profile keeps ids and categories (cdp.core.profile)


class DefinitionError(ValueError):
    """A definition that cannot be used. ``path`` is a dotted path inside the definition."""

    def __init__(self, path: str, message: str, *, source: str = "", segment_id: str = "") -> None:
        self.path = path
        self.message = message
        self.source = source
        self.segment_id = segment_id
        super().__init__(self.render())

    def render(self) -> str:
        where = ": ".join(part for part in (self.source, self.segment_id, self.path) if part)
        return f"{where}: {self.message}" if where else self.message

    def located(self, source: str, segment_id: str) -> DefinitionError:
        return DefinitionError(self.path, self.message, source=source, segment_id=segment_id)


class Context(Protocol):
    """What conditions read: the profile's figures at one moment."""

    now: float

    def counter(self, key: str) -> Counter | None: ...
    def trait(self, name: str) -> Any: ...
    def channel_last_seen(self, channel: str) -> int | None: ...
    def is_member(self, segment_id: str) -> bool: ...
    def rfm(self, metric: str) -> float: ...
    def threshold(self, metric: str, top_percent: float) -> float | None: ...
    def latch(self, key: str) -> int | None: ...
    def products(self) -> list[list[Any]]: ...


Result = tuple[bool, float | None]


# ---- property filters and metrics -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    """A test of one property. A path part ``name[]`` reaches into an array: the filter holds when any
    element passes the rest of the path (never for an empty or absent array)."""

    path: tuple[str, ...]
    op: str
    value: Any
    arrays: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", any(part.endswith("[]") for part in self.path))

    def matches(self, properties: Mapping[str, Any]) -> bool:
        if self.arrays:
            return self._reach(properties, 0)
        current: Any = properties
        for part in self.path:
            if not isinstance(current, Mapping) or part not in current:
                # A missing property is "not equal" to anything, and does not exist.
                return self.op == "ne" or (self.op == "exists" and not self.value)
            current = current[part]
        return compare_values(self.op, current, self.value)

    def _reach(self, current: Any, start: int) -> bool:
        for index in range(start, len(self.path)):
            part = self.path[index]
            if part.endswith("[]"):
                items = current.get(part[:-2]) if isinstance(current, Mapping) else None
                return isinstance(items, list) and any(self._reach(item, index + 1) for item in items)
            if not isinstance(current, Mapping) or part not in current:
                return self.op == "ne" or (self.op == "exists" and not self.value)
            current = current[part]
        return compare_values(self.op, current, self.value)

    def key(self) -> str:
        return f"{'.'.join(self.path)}{SYMBOLS.get(self.op, ' ' + self.op + ' ')}{self.value!r}"


def compare_values(op: str, actual: Any, expected: Any) -> bool:
    """Comparison with JSON-ish typing: numbers compare with numbers, strings with strings."""
    if op == "exists":
        return (actual is not None) == bool(expected)
    if op == "in":
        return any(_same(actual, option) for option in expected)
    if op == "contains":
        if isinstance(actual, str) and isinstance(expected, str):
            return expected in actual
        return isinstance(actual, list) and any(_same(item, expected) for item in actual)
    if op == "eq":
        return _same(actual, expected)
    if op == "ne":
        return not _same(actual, expected)
    numeric = (int, float)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return False
    if isinstance(actual, numeric) and isinstance(expected, numeric):
        return COMPARATORS[op](actual, expected)
    if isinstance(actual, str) and isinstance(expected, str):
        return COMPARATORS[op](actual, expected)
    return False


def _same(actual: Any, expected: Any) -> bool:
    """JSON equality: true is not 1, and 1 equals 1.0."""
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    return bool(actual == expected)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """An event name with optional property filters; its key names the counter that tracks it."""

    event: str
    where: tuple[PropertyFilter, ...] = ()
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.event + "|" + ",".join(f.key() for f in self.where) if self.where else self.event
        object.__setattr__(self, "key", key)  # read on every evaluation, so worked out once

    def matches(self, event: Event) -> bool:
        return event.name == self.event and all(f.matches(event.properties) for f in self.where)

    def describe(self) -> str:
        if not self.where:
            return self.event
        return f"{self.event} where {' and '.join(f.key() for f in self.where)}"


def input_of(source: EventFilter) -> str:
    """The input a condition on ``source`` reads: ``e:<event>``, or for a filtered source ``e:<counter key>``,
    which folding touches only when an event passes the filter."""
    return f"e:{source.key}"


@dataclass(slots=True)
class MetricSpec:
    """A counter the profile keeps because a segment reads it."""

    source: EventFilter
    tiers: set[str] = field(default_factory=set)
    sum_property: str | None = None

    @property
    def key(self) -> str:
        return self.source.key

    def value_of(self, event: Event) -> int:
        """The amount this event adds to the counter's sum, in hundredths."""
        if self.sum_property is None:
            return 0
        if self.sum_property == "revenue" and event.name in ORDER_EVENTS:
            return to_hundredths(event.amount or 0.0)
        value = event.properties.get(self.sum_property)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return 0
        # Like a value that is not a number, one that is not finite or beyond the amount limit adds nothing:
        # a summed property is not validated at parse time (only the catalogue knows it is summed).
        if not -MAX_AMOUNT <= value <= MAX_AMOUNT:  # also false for NaN; compared before float()
            return 0
        return to_hundredths(float(value))


# ---- condition nodes --------------------------------------------------------------------------


class Condition:
    """A node of a condition tree.

    ``cost`` ranks how much evaluating the node reads (profile fields first, then counters), so that
    ``all`` and ``any`` look at their cheap parts first and stop as soon as one decides the answer.
    """

    path: str = "condition"
    inputs: frozenset[str] = frozenset()
    time_driven: bool = False
    cost: int = 0

    def evaluate(self, ctx: Context) -> Result:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def children(self) -> tuple[Condition, ...]:
        return ()

    def walk(self) -> Iterator[Condition]:
        yield self
        for child in self.children():
            yield from child.walk()


class Combination(Condition):
    """A node over a list of conditions; they are evaluated cheapest first (the answer does not depend on it)."""

    def __init__(self, items: list[Condition]) -> None:
        self.items = tuple(items)
        self.cost = sum(item.cost for item in self.items)
        self.by_cost = tuple(sorted(self.items, key=lambda item: item.cost))

    def children(self) -> tuple[Condition, ...]:
        return self.items


class AllOf(Combination):
    def evaluate(self, ctx: Context) -> Result:
        # True: the earliest deadline of all parts. False: a part that stays false keeps the whole false
        # (no deadline); otherwise the earliest deadline of the false parts.
        earliest: float | None = None
        failing: float | None = None
        failed = False
        for item in self.by_cost:
            value, deadline = item.evaluate(ctx)
            if not value:
                if deadline is None:
                    return False, None
                if failing is None or deadline < failing:
                    failing = deadline
                failed = True
            elif not failed and deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return (False, failing) if failed else (True, earliest)

    def describe(self) -> str:
        return "all of (" + "; ".join(item.describe() for item in self.items) + ")"


class AnyOf(Combination):
    def evaluate(self, ctx: Context) -> Result:
        # True: a part that stays true keeps the whole true (no deadline); otherwise the earliest deadline of
        # the true parts. False: the earliest deadline of all parts.
        earliest: float | None = None
        passing: float | None = None
        passed = False
        for item in self.by_cost:
            value, deadline = item.evaluate(ctx)
            if value:
                if deadline is None:
                    return True, None
                if passing is None or deadline < passing:
                    passing = deadline
                passed = True
            elif not passed and deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return (True, passing) if passed else (False, earliest)

    def describe(self) -> str:
        return "any of (" + "; ".join(item.describe() for item in self.items) + ")"


class Not(Condition):
    def __init__(self, item: Condition) -> None:
        self.item = item
        self.cost = item.cost

    def children(self) -> tuple[Condition, ...]:
        return (self.item,)

    def evaluate(self, ctx: Context) -> Result:
        value, deadline = self.item.evaluate(ctx)
        return not value, deadline

    def describe(self) -> str:
        return f"not ({self.item.describe()})"


class TraitCondition(Condition):
    def __init__(self, name: str, op: str, value: Any) -> None:
        self.name, self.op, self.value = name, op, value
        self.inputs = frozenset({f"t:{name}"})

    def evaluate(self, ctx: Context) -> Result:
        return compare_values(self.op, ctx.trait(self.name), self.value), None

    def describe(self) -> str:
        return f"trait {self.name} {SYMBOLS.get(self.op, self.op)} {self.value!r}"


class MetricCondition(Condition):
    """count / sum / average of an event over a sliding window (or the customer's lifetime)."""

    cost = 3
    time_driven = True

    def __init__(self, kind: str, metric: MetricSpec, window: int | None, op: str, value: float) -> None:
        self.kind, self.metric, self.window, self.op, self.value = kind, metric, window, op, value
        self.tier: Tier | None = tier_for_window(window) if window else None
        self.inputs = frozenset({input_of(metric.source)})
        self.time_driven = window is not None
        self.compare = COMPARATORS[op]
        # A count only falls as buckets leave the window: "at least" that is false, or "fewer than" that is
        # true, stays so with no new event, and needs no look at when each bucket leaves.
        self.settled: bool | None = None
        if kind == "count" and op in ("gt", "gte"):
            self.settled = False
        elif kind == "count" and op in ("lt", "lte"):
            self.settled = True

    def figure(self, count: int, total: int) -> float | None:
        if self.kind == "count":
            return count
        if self.kind == "sum":
            return total / 100
        return total / 100 / count if count else None

    def _test(self, count: int, total: int) -> bool:
        figure = self.figure(count, total)
        return figure is not None and self.compare(figure, self.value)

    def evaluate(self, ctx: Context) -> Result:
        counter = ctx.counter(self.metric.key)
        if counter is None:
            return self._test(0, 0), None
        if self.tier is None or self.window is None:
            return self._test(counter.count, counter.total), None
        count, total = counter.window(self.tier, self.window, ctx.now)
        value = self._test(count, total)
        if value is self.settled:
            return value, None
        for expires, bucket_count, bucket_sum in counter.expiries(self.tier, self.window, ctx.now):
            count -= bucket_count
            total -= bucket_sum
            if self._test(count, total) != value:
                return value, expires
        return value, None

    def describe(self) -> str:
        what = self.metric.source.describe()
        if self.kind != "count":
            what = f"{self.metric.sum_property} of {what}"
        span = f" within {format_duration(self.window)}" if self.window else ""
        return f"{self.kind}({what}{span}) {SYMBOLS[self.op]} {self.value:g}"


class RatioCondition(Condition):
    """count(numerator) / count(denominator) over the same window."""

    cost = 4
    time_driven = True

    def __init__(self, numerator: MetricSpec, denominator: MetricSpec, window: int, op: str,
                 value: float, min_denominator: int) -> None:
        self.numerator, self.denominator = numerator, denominator
        self.window, self.op, self.value, self.min_denominator = window, op, value, min_denominator
        self.tier = tier_for_window(window)
        self.inputs = frozenset({input_of(numerator.source), input_of(denominator.source)})

    def _test(self, top: int, bottom: int) -> bool:
        return bottom >= self.min_denominator and COMPARATORS[self.op](top / bottom, self.value)

    def evaluate(self, ctx: Context) -> Result:
        tops = ctx.counter(self.numerator.key)
        bottoms = ctx.counter(self.denominator.key)
        top = tops.window(self.tier, self.window, ctx.now)[0] if tops else 0
        bottom = bottoms.window(self.tier, self.window, ctx.now)[0] if bottoms else 0
        value = self._test(top, bottom)
        changes = [(t, c, 0) for t, c, _ in (tops.expiries(self.tier, self.window, ctx.now) if tops else [])]
        changes += [(t, 0, c) for t, c, _ in
                    (bottoms.expiries(self.tier, self.window, ctx.now) if bottoms else [])]
        changes.sort()
        for index, (expires, top_drop, bottom_drop) in enumerate(changes):
            top -= top_drop
            bottom -= bottom_drop
            simultaneous = index + 1 < len(changes) and changes[index + 1][0] == expires
            if not simultaneous and self._test(top, bottom) != value:
                return value, expires
        return value, None

    def describe(self) -> str:
        return (f"ratio({self.numerator.source.describe()} / {self.denominator.source.describe()}"
                f" within {format_duration(self.window)}) {SYMBOLS[self.op]} {self.value:g}")


class RecencyCondition(Condition):
    """The last (or first) matching event happened within a duration of now."""

    cost = 2
    time_driven = True

    def __init__(self, metric: MetricSpec, window: int, of: str) -> None:
        self.metric, self.window, self.of = metric, window, of
        self.inputs = frozenset({input_of(metric.source)})

    def evaluate(self, ctx: Context) -> Result:
        counter = ctx.counter(self.metric.key)
        if counter is None or counter.count == 0:
            return False, None
        moment = counter.last if self.of == "last" else counter.first
        ends = moment + self.window
        if ctx.now < ends:
            return True, ends
        return False, None

    def describe(self) -> str:
        which = "" if self.of == "last" else "first "
        return f"{which}{self.metric.source.describe()} within {format_duration(self.window)}"


class AbsenceCondition(Condition):
    """A trigger happened and no ``missing`` event followed within a duration.

    True from ``trigger + within`` until a missing event arrives (or ``expire`` after the trigger).
    With ``when``, a trigger counts only if ``when`` held at the moment it happened.
    """

    cost = 2
    time_driven = True

    def __init__(self, trigger: MetricSpec, missing: MetricSpec, within: int, expire: int | None,
                 when: Condition | None) -> None:
        self.trigger, self.missing, self.within, self.expire, self.when = (
            trigger, missing, within, expire, when)
        self.latch_key = ""  # set by the catalogue once the node's place is known
        inputs = {input_of(trigger.source), input_of(missing.source)}
        if when is not None:
            inputs |= when.inputs
        self.inputs = frozenset(inputs)

    def children(self) -> tuple[Condition, ...]:
        return ()  # `when` is judged at trigger time, not at evaluation

    def trigger_time(self, ctx: Context) -> int | None:
        if self.when is not None:
            return ctx.latch(self.latch_key)
        counter = ctx.counter(self.trigger.key)
        return counter.last if counter is not None and counter.count else None

    def evaluate(self, ctx: Context) -> Result:
        triggered = self.trigger_time(ctx)
        if triggered is None:
            return False, None
        missing = ctx.counter(self.missing.key)
        if missing is not None and missing.count and missing.last >= triggered:
            return False, None
        due = triggered + self.within
        if ctx.now < due:
            return False, due
        if self.expire is not None:
            ends = triggered + self.expire
            return (True, ends) if ctx.now < ends else (False, None)
        return True, None

    def describe(self) -> str:
        trigger = self.trigger.source.describe()
        if self.when is not None:
            trigger += f" (when {self.when.describe()})"
        return f"no {self.missing.source.describe()} within {format_duration(self.within)} after {trigger}"


class ChannelCondition(Condition):
    cost = 1
    time_driven = True

    def __init__(self, channel: str, window: int | None) -> None:
        self.channel, self.window = channel, window
        self.inputs = frozenset({f"c:{channel}"})
        self.time_driven = window is not None

    def evaluate(self, ctx: Context) -> Result:
        seen = ctx.channel_last_seen(self.channel)
        if seen is None:
            return False, None
        if self.window is None:
            return True, None
        ends = seen + self.window
        return (True, ends) if ctx.now < ends else (False, None)

    def describe(self) -> str:
        span = f" within {format_duration(self.window)}" if self.window else ""
        return f"seen on {self.channel}{span}"


class ProductCondition(Condition):
    """The customer purchased (or viewed) a product, or a product of a category, among the recent products
    the profile keeps; with ``within``, no longer ago than that, and it stops holding when that runs out."""

    cost = 1

    def __init__(self, condition: str, product_id: str | None, category: str | None, window: int | None) -> None:
        self.condition, self.product_id, self.category, self.window = condition, product_id, category, window
        self.kind = PRODUCT_KINDS[condition]
        self.inputs = frozenset({f"p:{condition}"})
        self.time_driven = window is not None

    def last(self, ctx: Context) -> int | None:
        """When the customer last did it (None: not among the recent products)."""
        kind, product_id, category = self.kind, self.product_id, self.category
        moment: int | None = None
        for entry in ctx.products():
            if entry[2] == kind and (entry[0] == product_id if product_id is not None else entry[1] == category):
                moment = entry[3] if moment is None else max(moment, entry[3])
        return moment

    def evaluate(self, ctx: Context) -> Result:
        moment = self.last(ctx)
        if moment is None:
            return False, None
        if self.window is None:
            return True, None
        ends = moment + self.window
        return (True, ends) if ctx.now < ends else (False, None)

    def describe(self) -> str:
        what = f"product {self.product_id}" if self.product_id is not None else f"a product in category {self.category}"
        span = f" within {format_duration(self.window)}" if self.window else ""
        return f"{self.condition} {what}{span}"


class SegmentCondition(Condition):
    def __init__(self, segment_id: str) -> None:
        self.segment_id = segment_id
        self.inputs = frozenset({f"s:{segment_id}"})

    def evaluate(self, ctx: Context) -> Result:
        return ctx.is_member(self.segment_id), None

    def describe(self) -> str:
        return f"member of {self.segment_id}"


class ManualCondition(Condition):
    """A static segment: members are added and removed through the API, never by events or time."""

    def __init__(self) -> None:
        self.segment_id = ""  # set by the catalogue

    def evaluate(self, ctx: Context) -> Result:
        return ctx.is_member(self.segment_id), None

    def describe(self) -> str:
        return "added by hand"


class RfmCondition(Condition):
    def __init__(self, metric: str, op: str, value: float) -> None:
        self.metric, self.op, self.value = metric, op, value
        self.inputs = frozenset({"rfm"})

    def evaluate(self, ctx: Context) -> Result:
        return COMPARATORS[self.op](ctx.rfm(self.metric), self.value), None

    def describe(self) -> str:
        return f"{self.metric} {SYMBOLS[self.op]} {self.value:g}"


class PercentileCondition(Condition):
    """In the top N% of the population by a lifetime metric. False until population statistics exist."""

    def __init__(self, metric: str, top: float) -> None:
        self.metric, self.top = metric, top
        self.inputs = frozenset({"rfm", "stats"})

    def evaluate(self, ctx: Context) -> Result:
        threshold = ctx.threshold(self.metric, self.top)
        value = ctx.rfm(self.metric)
        return threshold is not None and value > 0 and value > threshold, None

    def describe(self) -> str:
        return f"top {self.top:g}% by {self.metric}"


# ---- parsing ----------------------------------------------------------------------------------


class Parser:
    """Builds a condition tree from its YAML form, collecting the metrics it reads."""

    def __init__(self) -> None:
        self.metrics: dict[str, MetricSpec] = {}
        self.references: set[str] = set()

    def parse(self, node: object, path: str = "condition", *, inside_when: bool = False) -> Condition:
        mapping = _mapping(node, path)
        if len(mapping) != 1:
            raise DefinitionError(path, f"must have exactly one operator, found {sorted(mapping) or 'none'}")
        ((kind, body),) = mapping.items()
        where = f"{path}.{kind}"
        builder = self._builders().get(kind)
        if builder is None:
            raise DefinitionError(path, f"unknown operator {kind!r} (one of {', '.join(self._builders())})")
        if path != "condition" and kind == "manual":
            raise DefinitionError(where, "must be the whole condition of a static segment")
        if inside_when and kind in ("absence", "segment", "percentile"):
            raise DefinitionError(where, "cannot be used inside `when`")
        condition = builder(body, where, inside_when)
        condition.path = where
        return condition

    def _builders(self) -> dict[str, Callable[[Any, str, bool], Condition]]:
        return {
            "all": self._all, "any": self._any, "not": self._not, "trait": self._trait,
            "count": self._count, "sum": self._sum, "average": self._average, "recency": self._recency,
            "absence": self._absence, "ratio": self._ratio, "channel": self._channel,
            "segment": self._segment, "rfm": self._rfm, "percentile": self._percentile,
            "manual": self._manual, "purchased": self._purchased, "viewed": self._viewed,
        }

    def _list(self, body: Any, path: str, inside_when: bool) -> list[Condition]:
        if not isinstance(body, list) or not body:
            raise DefinitionError(path, "must be a non-empty list of conditions")
        return [self.parse(item, f"{path}[{i}]", inside_when=inside_when) for i, item in enumerate(body)]

    def _all(self, body: Any, path: str, inside_when: bool) -> Condition:
        return AllOf(self._list(body, path, inside_when))

    def _any(self, body: Any, path: str, inside_when: bool) -> Condition:
        return AnyOf(self._list(body, path, inside_when))

    def _not(self, body: Any, path: str, inside_when: bool) -> Condition:
        return Not(self.parse(body, path, inside_when=inside_when))

    def _trait(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"name"}, optional=set(FILTER_OPS))
        name = _text(spec["name"], f"{path}.name")
        op, value = _one_operator(spec, path, FILTER_OPS)
        return TraitCondition(name, op, value)

    def _metric(self, source: EventFilter, *, window: int | None, sum_property: str | None,
                path: str) -> MetricSpec:
        metric = self.metrics.get(source.key)
        if metric is None:
            metric = self.metrics[source.key] = MetricSpec(source)
        if sum_property is not None:
            if metric.sum_property not in (None, sum_property):
                raise DefinitionError(path, f"{source.key!r} is already summed over {metric.sum_property!r};"
                                            " add a where-filter to tell the two apart")
            metric.sum_property = sum_property
        if window is not None:
            try:
                metric.tiers.add(tier_for_window(window).code)
            except ValueError as error:
                raise DefinitionError(f"{path}.within", str(error)) from None
        return metric

    def _aggregate(self, kind: str, body: Any, path: str) -> Condition:
        optional = {"where", "within", *COMPARATORS}
        required = {"event"} if kind == "count" else {"event", "property"}
        spec = _fields(body, path, required=required, optional=optional)
        source = _event_filter(spec, path)
        window = _duration(spec, "within", path) if "within" in spec else None
        op, value = _one_operator(spec, path, tuple(COMPARATORS))
        number = _number(value, f"{path}.{op}")
        prop = _text(spec["property"], f"{path}.property") if kind != "count" else None
        metric = self._metric(source, window=window, sum_property=prop, path=path)
        return MetricCondition(kind, metric, window, op, number)

    def _count(self, body: Any, path: str, inside_when: bool) -> Condition:
        return self._aggregate("count", body, path)

    def _sum(self, body: Any, path: str, inside_when: bool) -> Condition:
        return self._aggregate("sum", body, path)

    def _average(self, body: Any, path: str, inside_when: bool) -> Condition:
        return self._aggregate("average", body, path)

    def _recency(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"event", "within"}, optional={"where", "of"})
        source = _event_filter(spec, path)
        window = _duration(spec, "within", path)
        of = spec.get("of", "last")
        if of not in ("last", "first"):
            raise DefinitionError(f"{path}.of", f"must be last or first, not {of!r}")
        return RecencyCondition(self._metric(source, window=None, sum_property=None, path=path), window, of)

    def _absence(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"trigger", "missing", "within"}, optional={"expire", "when"})
        trigger = _event_filter(_fields(spec["trigger"], f"{path}.trigger", required={"event"},
                                        optional={"where"}), f"{path}.trigger")
        missing = _event_filter(_fields(spec["missing"], f"{path}.missing", required={"event"},
                                        optional={"where"}), f"{path}.missing")
        within = _duration(spec, "within", path, allow_zero=True)
        expire = _duration(spec, "expire", path) if "expire" in spec else None
        if expire is not None and expire <= within:
            raise DefinitionError(f"{path}.expire", "must be longer than `within`")
        when = self.parse(spec["when"], f"{path}.when", inside_when=True) if "when" in spec else None
        return AbsenceCondition(self._metric(trigger, window=None, sum_property=None, path=path),
                                self._metric(missing, window=None, sum_property=None, path=path),
                                within, expire, when)

    def _ratio(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"numerator", "denominator", "within"},
                       optional={"min_denominator", *COMPARATORS})
        window = _duration(spec, "within", path)
        metrics = []
        for part in ("numerator", "denominator"):
            source = _event_filter(_fields(spec[part], f"{path}.{part}", required={"event"},
                                           optional={"where"}), f"{path}.{part}")
            metrics.append(self._metric(source, window=window, sum_property=None, path=path))
        op, value = _one_operator(spec, path, tuple(COMPARATORS))
        minimum = spec.get("min_denominator", 1)
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            raise DefinitionError(f"{path}.min_denominator", f"must be a whole number >= 1, not {minimum!r}")
        return RatioCondition(metrics[0], metrics[1], window, op, _number(value, f"{path}.{op}"), minimum)

    def _channel(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"name"}, optional={"within"})
        name = spec["name"]
        if name not in CHANNELS:
            raise DefinitionError(f"{path}.name", f"{name!r} is not one of {', '.join(CHANNELS)}")
        window = _duration(spec, "within", path) if "within" in spec else None
        return ChannelCondition(name, window)

    def _purchased(self, body: Any, path: str, inside_when: bool) -> Condition:
        return self._product("purchased", body, path)

    def _viewed(self, body: Any, path: str, inside_when: bool) -> Condition:
        return self._product("viewed", body, path)

    def _product(self, condition: str, body: Any, path: str) -> Condition:
        spec = _fields(body, path, required=set(), optional={"product_id", "category", "within"})
        given = [key for key in ("product_id", "category") if key in spec]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise DefinitionError(path, f"needs exactly one of product_id, category (found {found})")
        key = given[0]
        value = spec[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML reads 00123 as 83 and 1_000 as 1000: the id as written is lost, so it must be quoted.
            raise DefinitionError(f"{path}.{key}", "must be text: quote it (YAML reads an unquoted id as a number)")
        text = _text(value, f"{path}.{key}")
        if len(text) > MAX_PRODUCT_CHARS:
            raise DefinitionError(f"{path}.{key}", f"is longer than {MAX_PRODUCT_CHARS} characters, the most the"
                                                   " profile keeps: it could never match")
        window = _duration(spec, "within", path) if "within" in spec else None
        return ProductCondition(condition, text if key == "product_id" else None,
                                text if key == "category" else None, window)

    def _segment(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"id"}, optional=set())
        segment_id = _text(spec["id"], f"{path}.id")
        self.references.add(segment_id)
        return SegmentCondition(segment_id)

    def _manual(self, body: Any, path: str, inside_when: bool) -> Condition:
        if body is not True:
            raise DefinitionError(path, f"must be true, not {body!r}")
        return ManualCondition()

    def _rfm(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"metric"}, optional=set(COMPARATORS))
        metric = spec["metric"]
        if metric not in RFM_METRICS:
            raise DefinitionError(f"{path}.metric", f"{metric!r} is not one of {', '.join(RFM_METRICS)}")
        op, value = _one_operator(spec, path, tuple(COMPARATORS))
        return RfmCondition(metric, op, _number(value, f"{path}.{op}"))

    def _percentile(self, body: Any, path: str, inside_when: bool) -> Condition:
        spec = _fields(body, path, required={"metric", "top"}, optional=set())
        metric = spec["metric"]
        if metric not in RFM_METRICS:
            raise DefinitionError(f"{path}.metric", f"{metric!r} is not one of {', '.join(RFM_METRICS)}")
        top = _number(spec["top"], f"{path}.top")
        if not 0 < top < 100:
            raise DefinitionError(f"{path}.top", f"must be a percentage between 0 and 100, not {top:g}")
        return PercentileCondition(metric, top)


def _mapping(node: object, path: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise DefinitionError(path, f"must be a mapping, not {type(node).__name__}")
    return node


def _fields(node: object, path: str, *, required: set[str], optional: set[str]) -> dict[str, Any]:
    spec = _mapping(node, path)
    for key in sorted(required):
        if key not in spec:
            raise DefinitionError(f"{path}.{key}", "is required")
    for key in spec:
        if key not in required and key not in optional:
            allowed = ", ".join(sorted(required | optional))
            raise DefinitionError(f"{path}.{key}", f"is not a known field here (allowed: {allowed})")
    return spec


def _one_operator(spec: dict[str, Any], path: str, allowed: tuple[str, ...]) -> tuple[str, Any]:
    present = [op for op in allowed if op in spec]
    if len(present) != 1:
        raise DefinitionError(path, f"needs exactly one comparison of {', '.join(allowed)}"
                                    f" (found {', '.join(present) or 'none'})")
    return present[0], spec[present[0]]


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise DefinitionError(path, f"must be a non-empty string, not {value!r}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DefinitionError(path, f"must be a number, not {value!r}")
    return float(value)


def _duration(spec: dict[str, Any], key: str, path: str, *, allow_zero: bool = False) -> int:
    try:
        return parse_duration(spec[key], allow_zero=allow_zero)
    except ValueError as error:
        raise DefinitionError(f"{path}.{key}", str(error)) from None


def _property_path(name: str, at: str) -> tuple[str, ...]:
    """A dotted property path; a part ``name[]`` means any element of the array ``name``. Any other part is a
    property name as written (``utm[source]`` included), as before arrays were reachable."""
    parts = tuple(name.split("."))
    if "[]" in parts:
        raise DefinitionError(at, "'[]' needs the array's name before it, e.g. products[]")
    return parts


def _event_filter(spec: dict[str, Any], path: str) -> EventFilter:
    event = _text(spec["event"], f"{path}.event")
    where = spec.get("where")
    if where is None:
        return EventFilter(event)
    filters = []
    for name, test in _mapping(where, f"{path}.where").items():
        at = f"{path}.where.{name}"
        if isinstance(test, dict):
            op, value = _one_operator(test, at, FILTER_OPS)
            if len(test) != 1:
                raise DefinitionError(at, "needs exactly one comparison")
        else:
            op, value = "eq", test
        if op == "in" and not isinstance(value, list):
            raise DefinitionError(f"{at}.in", "must be a list")
        filters.append(PropertyFilter(_property_path(str(name), at), op, value))
    filters.sort(key=lambda f: f.key())
    return EventFilter(event, tuple(filters))

