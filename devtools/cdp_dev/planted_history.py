"""A generated shop history with a known structure, to check what the computed traits' models recover.

Each customer belongs to one of four planted groups that differ in how often they order, how much they spend and
how much they browse (``GROUPS``), and joins at a random moment of the history's first year. A share of the
champions and big-rare buyers are *churners*: from a change date between ``CHURN_WINDOW_DAYS`` before the end,
their order rate falls to almost nothing and their browsing to a fraction. The history is Segment-spec messages
(``identify`` at sign-up, ``page``, ``Product Viewed``, ``Order Completed`` with ``order_id`` and ``revenue``) in
time order, and it comes with the planted labels, so a clustering can be scored against the groups (adjusted Rand
index) and a churn score against the churners.

Deterministic for a seed and an end date.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

DAY = 86_400.0
MONTHS = 18
DAYS_PER_MONTH = 30.44
JOIN_WITHIN_DAYS = 365  # every customer joins within the first year, so each has at least half a year of history
END = datetime(2026, 10, 31, tzinfo=UTC)
CHURN_WINDOW_DAYS = (300, 100)  # the churners' change date: between 300 and 100 days before the end
CHURN_ORDER_FACTOR = 0.02  # what is left of a churner's order rate after the change
CHURN_BROWSE_FACTOR = 0.2
CHURN_SHARE = 0.3  # of the champions and the big-rare buyers


@dataclass(frozen=True)
class Group:
    name: str
    share: float
    orders_per_month: float  # 0: exactly one order (the one-off buyers)
    order_value: float  # the median order's revenue
    views_per_week: float
    can_churn: bool


GROUPS = (
    Group("champions", 0.25, 1.0, 90.0, 2.0, True),
    Group("big-rare", 0.2, 0.15, 450.0, 0.4, True),
    Group("browsers", 0.3, 0.04, 25.0, 3.0, False),
    Group("one-off", 0.25, 0.0, 45.0, 0.25, False),
)
CONTEXT = {"library": {"name": "analytics.js", "version": "5.2.0"}, "userAgent": "Mozilla/5.0"}
PAGES = ("/", "/new", "/sale", "/category/shoes", "/category/home", "/help")


@dataclass
class PlantedHistory:
    """The messages, in time order, and what was planted: each customer's group, the churners and their dates."""

    events: list[dict[str, Any]]
    groups: dict[str, str]
    churned_at: dict[str, float] = field(default_factory=dict)  # churner -> change date (epoch seconds)
    end: float = 0.0

    @property
    def churners(self) -> set[str]:
        return set(self.churned_at)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _poisson_times(rng: random.Random, rate_per_day: float, start: float, stop: float) -> list[float]:
    """Times of a Poisson process with this rate between start and stop."""
    times: list[float] = []
    if rate_per_day <= 0:
        return times
    moment = start
    while True:
        moment += rng.expovariate(rate_per_day) * DAY
        if moment >= stop:
            return times
        times.append(moment)


class _Customer:
    def __init__(self, rng: random.Random, number: int, group: Group, start: float, end: float) -> None:
        self.user_id = f"planted-{number:06d}"
        self.group = group
        self.joined = start + rng.random() * JOIN_WITHIN_DAYS * DAY
        self.change: float | None = None
        if group.can_churn and rng.random() < CHURN_SHARE:
            low, high = CHURN_WINDOW_DAYS
            self.change = max(self.joined + 30 * DAY, end - rng.uniform(high, low) * DAY)

    def order_times(self, rng: random.Random, end: float) -> list[float]:
        if self.group.orders_per_month == 0:
            return [self.joined + rng.random() * 60 * DAY]
        rate = self.group.orders_per_month / DAYS_PER_MONTH
        if self.change is None:
            return _poisson_times(rng, rate, self.joined, end)
        return (_poisson_times(rng, rate, self.joined, self.change)
                + _poisson_times(rng, rate * CHURN_ORDER_FACTOR, self.change, end))

    def view_times(self, rng: random.Random, end: float) -> list[float]:
        rate = self.group.views_per_week / 7
        if self.change is None:
            return _poisson_times(rng, rate, self.joined, end)
        return (_poisson_times(rng, rate, self.joined, self.change)
                + _poisson_times(rng, rate * CHURN_BROWSE_FACTOR, self.change, end))


class _Messages:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.number = 0
        self.order_number = 500_000

    def _base(self, customer: _Customer, kind: str, moment: float) -> dict[str, Any]:
        self.number += 1
        return {"type": kind, "messageId": f"planted-msg-{self.number:09d}", "userId": customer.user_id,
                "timestamp": _iso(moment), "context": CONTEXT}

    def identify(self, customer: _Customer) -> dict[str, Any]:
        message = self._base(customer, "identify", customer.joined)
        message["traits"] = {"email": f"{customer.user_id}@example.com", "created_at": _iso(customer.joined)}
        return message

    def view(self, customer: _Customer, moment: float) -> dict[str, Any]:
        if self.rng.random() < 0.4:
            message = self._base(customer, "page", moment)
            message["name"] = "Page"
            message["properties"] = {"path": self.rng.choice(PAGES)}
            return message
        message = self._base(customer, "track", moment)
        message["event"] = "Product Viewed"
        message["properties"] = {"product_id": f"prod-{self.rng.randrange(1, 300):04d}", "category": "shoes",
                                 "price": round(self.rng.uniform(10, 200), 2)}
        return message

    def order(self, customer: _Customer, moment: float) -> dict[str, Any]:
        self.order_number += 1
        revenue = round(customer.group.order_value * math.exp(self.rng.gauss(0.0, 0.3)), 2)
        message = self._base(customer, "track", moment)
        message["event"] = "Order Completed"
        message["properties"] = {"order_id": f"P{self.order_number}", "revenue": revenue, "currency": "EUR",
                                 "products": [{"product_id": f"prod-{self.rng.randrange(1, 300):04d}",
                                               "price": revenue, "quantity": 1}]}
        return message


def planted_history(customers: int = 3_000, *, seed: int = 1, end: datetime = END,
                    months: int = MONTHS) -> PlantedHistory:
    """``customers`` customers over ``months`` months ending at ``end``, with their planted groups."""
    rng = random.Random(seed)
    stop = end.timestamp()
    start = (end - timedelta(days=round(months * DAYS_PER_MONTH))).timestamp()
    writer = _Messages(rng)
    timed: list[tuple[float, int, dict[str, Any]]] = []
    history = PlantedHistory([], {}, end=stop)
    for number in range(1, customers + 1):
        group = rng.choices(GROUPS, weights=[g.share for g in GROUPS])[0]
        customer = _Customer(rng, number, group, start, stop)
        history.groups[customer.user_id] = group.name
        if customer.change is not None:
            history.churned_at[customer.user_id] = customer.change
        timed.append((customer.joined, len(timed), writer.identify(customer)))
        for moment in customer.view_times(rng, stop):
            timed.append((moment, len(timed), writer.view(customer, moment)))
        for moment in customer.order_times(rng, stop):
            timed.append((moment, len(timed), writer.order(customer, moment)))
    timed.sort(key=lambda entry: (entry[0], entry[1]))
    history.events = [message for _, _, message in timed]
    return history
