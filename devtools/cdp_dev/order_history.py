"""A generated order history shaped like a shop's order export, as Segment-spec JSON Lines.

    cdp history --orders 70000 --customers 23000 --months 18 [--seed N] [--end 2026-10-31] [--out FILE]

Every customer places at least one order. Most buy once; a minority buy again, and a few buy very often
(a long tail: each repeat buyer's share of the extra orders follows a capped Pareto law). Orders follow the
seasons of a retail year (a November and December peak, a quiet January and summer) and the hours of a
day. Each customer gets an ``identify`` (email, name, country) just before their first ``Order Completed``.
Products come from a catalogue with Zipf-like popularity and long-tailed prices. The messages are in time
order and end before ``--end`` (default: the start of today, UTC).

The output is deterministic for a seed and an end date: the same arguments write the same bytes.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

ORDERS = 70_000
CUSTOMERS = 23_000
MONTHS = 18
DAYS_PER_MONTH = 30.44
REPEAT_SHARE = 0.45  # customers who ever buy a second time; the rest are one-time buyers
PARETO_SHAPE = 1.16  # the 80/20 law: a few repeat buyers place most of the repeat orders
MOST_ORDERS_WEIGHT = 60.0  # caps the heaviest buyer's share, so no one customer is most of the history
PRODUCTS = 400
IDENTIFY_LEAD_SECONDS = (5, 300)  # sign-up or checkout form, shortly before the first order

# Relative order volume by month (January first) and by hour of day (UTC).
MONTH_WEIGHTS = (0.8, 0.75, 0.9, 0.95, 1.0, 0.9, 0.85, 0.85, 1.0, 1.05, 1.45, 1.6)
HOUR_WEIGHTS = (0.2, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.1, 1.2, 1.2, 1.3,
                1.4, 1.3, 1.2, 1.2, 1.3, 1.5, 1.7, 1.9, 2.0, 1.7, 1.1, 0.5)

CATEGORIES = ("shoes", "apparel", "accessories", "home", "beauty", "sports", "toys", "electronics")
COUNTRIES = (("DE", "EUR", 0.3), ("FR", "EUR", 0.15), ("GB", "GBP", 0.2), ("US", "USD", 0.25), ("NL", "EUR", 0.1))
CITIES = {"DE": ("Berlin", "Hamburg", "Munich"), "FR": ("Paris", "Lyon"), "GB": ("London", "Manchester"),
          "US": ("New York", "Chicago", "Austin"), "NL": ("Amsterdam", "Utrecht")}
FIRST_NAMES = ("Anna", "Ben", "Chloe", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Klara",
               "Liam", "Mia", "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tara", "Theo")
LAST_NAMES = ("Becker", "Dubois", "Evans", "Fischer", "Garcia", "Jansen", "Martin", "Miller", "Novak", "Smith",
              "Weber", "Young")
LIBRARY = {"library": {"name": "analytics-python", "version": "2.3.0"}}  # an order export comes from a back end


@dataclass(frozen=True)
class HistoryShape:
    orders: int = ORDERS
    customers: int = CUSTOMERS
    months: int = MONTHS
    seed: int = 1
    end: datetime | None = None  # None: the start of today, UTC

    def __post_init__(self) -> None:
        if self.customers < 1 or self.months < 1:
            raise ValueError("a history needs at least one customer and one month")
        if self.orders < self.customers:
            raise ValueError(f"every customer orders at least once: --orders ({self.orders}) must be at least "
                             f"--customers ({self.customers})")


@dataclass(frozen=True)
class Product:
    product_id: str
    sku: str
    name: str
    category: str
    price: float


@dataclass(frozen=True)
class Customer:
    user_id: str
    email: str
    first_name: str
    last_name: str
    country: str
    city: str
    currency: str


def default_end(now: datetime | None = None) -> datetime:
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def orders_per_customer(rng: random.Random, customers: int, orders: int) -> list[int]:
    """How many orders each customer places: one each, and the rest shared among the repeat buyers."""
    weights = [min(rng.paretovariate(PARETO_SHAPE), MOST_ORDERS_WEIGHT) if rng.random() < REPEAT_SHARE else 0.0
               for _ in range(customers)]
    if not any(weights):
        weights[0] = 1.0
    counts = [1] * customers
    for index in rng.choices(range(customers), weights=weights, k=orders - customers):
        counts[index] += 1
    return counts


class Calendar:
    """Draws order times between start and end, weighted by month of year and hour of day."""

    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.days = max(1, (end - start).days)
        self._day_weights = list(itertools.accumulate(
            MONTH_WEIGHTS[(start + timedelta(days=d)).month - 1] for d in range(self.days)))
        self._hour_weights = list(itertools.accumulate(HOUR_WEIGHTS))

    def draw(self, rng: random.Random) -> datetime:
        day = bisect.bisect_right(self._day_weights, rng.random() * self._day_weights[-1])
        hour = bisect.bisect_right(self._hour_weights, rng.random() * self._hour_weights[-1])
        seconds = ((min(day, self.days - 1) * 24 + min(hour, 23)) * 3600 + rng.random() * 3600)
        return self.start + timedelta(seconds=seconds)


def catalogue(rng: random.Random) -> tuple[list[Product], list[float]]:
    """The shop's products and their cumulative popularity (Zipf-like: rank r sells as 1/r)."""
    products = []
    for number in range(1, PRODUCTS + 1):
        category = rng.choice(CATEGORIES)
        price = round(min(max(rng.lognormvariate(3.4, 0.8), 3.0), 900.0), 2)
        products.append(Product(f"prod-{number:04d}", f"SKU-{number:05d}", f"{category.title()} item {number}",
                                category, price))
    return products, list(itertools.accumulate(1.0 / rank for rank in range(1, PRODUCTS + 1)))


def make_customer(rng: random.Random, number: int) -> Customer:
    country, currency, _ = rng.choices(COUNTRIES, weights=[c[2] for c in COUNTRIES])[0]
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return Customer(f"cust-{number:06d}", f"{first}.{last}.{number}@example.com".lower(), first, last, country,
                    rng.choice(CITIES[country]), currency)


class _Writer:
    """Turns the time-ordered plan into messages; all randomness is drawn in file order."""

    def __init__(self, rng: random.Random, customers: list[Customer]) -> None:
        self.rng = rng
        self.customers = customers
        self.products, self.popularity = catalogue(rng)
        self.order_number = 100_000

    def message_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def identify(self, customer: Customer, when: datetime) -> dict[str, Any]:
        return {"type": "identify", "messageId": self.message_id(), "userId": customer.user_id,
                "timestamp": iso(when), "context": LIBRARY,
                "traits": {"email": customer.email, "first_name": customer.first_name,
                           "last_name": customer.last_name, "country": customer.country, "city": customer.city,
                           "created_at": iso(when)}}

    def order(self, customer: Customer, when: datetime) -> dict[str, Any]:
        rng = self.rng
        self.order_number += 1
        lines = rng.choices((1, 2, 3, 4, 5), weights=(55, 25, 11, 6, 3))[0]
        picked: dict[str, dict[str, Any]] = {}
        for _ in range(lines):
            index = bisect.bisect_right(self.popularity, rng.random() * self.popularity[-1])
            product = self.products[min(index, PRODUCTS - 1)]
            quantity = rng.choices((1, 2, 3), weights=(85, 12, 3))[0]
            line = picked.setdefault(product.product_id, {
                "product_id": product.product_id, "sku": product.sku, "name": product.name,
                "category": product.category, "price": product.price, "quantity": 0})
            line["quantity"] += quantity
        products = list(picked.values())
        subtotal = round(sum(p["price"] * p["quantity"] for p in products), 2)
        shipping = 0.0 if subtotal >= 50 else 4.95
        tax = round(subtotal * 0.19 / 1.19, 2)
        return {"type": "track", "messageId": self.message_id(), "userId": customer.user_id,
                "timestamp": iso(when), "context": LIBRARY, "event": "Order Completed",
                "properties": {"order_id": str(self.order_number), "revenue": subtotal,
                               "total": round(subtotal + shipping, 2), "shipping": shipping, "tax": tax,
                               "currency": customer.currency, "products": products}}


def history(shape: HistoryShape) -> Iterator[dict[str, Any]]:
    """The messages of the history, in time order (identify first when a customer's is at the same time)."""
    rng = random.Random(shape.seed)
    end = shape.end or default_end()
    calendar = Calendar(end - timedelta(days=round(shape.months * DAYS_PER_MONTH)), end)
    counts = orders_per_customer(rng, shape.customers, shape.orders)
    customers = [make_customer(rng, number) for number in range(1, shape.customers + 1)]
    plan: list[tuple[datetime, int, int]] = []  # (when, 0 identify / 1 order, customer index)
    for index, count in enumerate(counts):
        times = sorted(calendar.draw(rng) for _ in range(count))
        lead = timedelta(seconds=rng.uniform(*IDENTIFY_LEAD_SECONDS))
        plan.append((max(times[0] - lead, calendar.start), 0, index))
        plan.extend((when, 1, index) for when in times)
    plan.sort()
    writer = _Writer(rng, customers)
    for when, kind, index in plan:
        customer = customers[index]
        yield writer.identify(customer, when) if kind == 0 else writer.order(customer, when)


def write_history(shape: HistoryShape, out: IO[str]) -> int:
    """Write the history as JSON Lines; returns the number of messages."""
    written = 0
    for message in history(shape):
        out.write(json.dumps(message, separators=(",", ":")) + "\n")
        written += 1
    return written
