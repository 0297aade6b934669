"""The real-shaped ingest workload every bench script shares: analytics.js messages, one event per customer
per batch, stored profiles read back, and catalogues of 16, 50 and 200 segments.

Each measured stream batch holds 100 records from 100 different customers, each with a stored profile
folded beforehand from 20-40 events over 90 days by the engine itself (so memberships, deadlines, latches
and counters are what a live shop's profiles hold). The messages are what analytics.js puts on the wire:
``context.page``, ``userAgent``, ``ip``, ``library``, ``locale``, sometimes ``campaign``, ``integrations``,
uuids, four ISO timestamps, and Ecommerce v2 properties. The core (``ingest_batch`` over the in-memory
store, items kept encoded as a database keeps them) is reported against ``json.loads`` of the same
messages, measured in the same run.

    python bench/real_traffic.py
"""

from __future__ import annotations

import calendar
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdp.core.catalogue import Catalogue, build_catalogue
from cdp.core.clock import EventClock, FixedClock
from cdp.core.engine import Engine
from cdp.core.events import parse_record
from cdp.core.profile import Profile
from cdp.pipeline.ingest import StreamRecord, ingest_batch
from cdp.ports import QuarantinedRecord
from cdp_dev.memory import MemoryProfileStore

ROOT = Path(__file__).resolve().parent.parent
HISTORY_START = calendar.timegm((2026, 8, 1, 0, 0, 0))
HISTORY_DAYS = 90
LIVE_START = HISTORY_START + (HISTORY_DAYS + 1) * 86400  # the measured batches come the day after the history
BATCH_SIZE = 100  # records per stream batch, each from a different customer
SHARD = "shardId-000000000000"

# The event names of the e-commerce mix, with their share of a shopper's events.
MIX = [("Page Viewed", 0.30), ("Product Viewed", 0.34), ("Product Added", 0.10), ("Cart Viewed", 0.08),
       ("Checkout Started", 0.06), ("Order Completed", 0.05), ("Identify", 0.04), ("Product List Viewed", 0.03)]
EVENTS = [name for name, _ in MIX]
WINDOWS = ["10m", "1h", "24h", "48h", "7d", "14d", "30d", "26w"]

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0"
    " Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1"
    " Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.4.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile"
    " Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0"
    " Safari/537.36 Edg/124.0.2478.80",
]
LOCALES = ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "nl-NL"]
REFERRERS = ["https://www.google.com/", "https://www.instagram.com/", "https://www.bing.com/", "",
             "https://duckduckgo.com/", "https://l.facebook.com/"]
CAMPAIGNS = [{"name": "fall-sale", "source": "email", "medium": "email"},
             {"name": "brand", "source": "google", "medium": "cpc"},
             {"name": "retarget", "source": "meta", "medium": "social"}]
CATEGORIES = ["shoes", "jackets", "bags", "hats", "shirts"]
BRANDS = ["Northwind", "Fjell", "Cascade", "Alder & Co"]
ADJECTIVES = ["Trail", "Urban", "Alpine", "Coastal", "Summit", "Harbor"]
NOUNS = {"shoes": "Runner", "jackets": "Shell", "bags": "Daypack", "hats": "Beanie", "shirts": "Tee"}
PLANS = ["free", "plus", "pro"]
SITE = "https://shop.example"
MAX_BYTES = 700  # the largest message of the workload
OPTIONAL_PROPERTIES = ("products", "quantity", "currency")  # sent when the message has room


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str
    brand: str
    price: float


def _products(rng: random.Random, count: int = 120) -> list[Product]:
    products = []
    for number in range(count):
        category = CATEGORIES[number % len(CATEGORIES)]
        name = f"{rng.choice(ADJECTIVES)} {NOUNS[category]}"
        products.append(Product(f"SKU-{10_000 + number}", name, category, rng.choice(BRANDS),
                                round(rng.uniform(12, 240), 2)))
    return products


@dataclass
class Shopper:
    """One customer of the shop, with the browser and identity analytics.js reports for them."""

    user_id: str
    anonymous_id: str
    user_agent: str
    ip: str
    locale: str
    traits: dict[str, Any]
    cart: list[Product] = field(default_factory=list)
    orders: int = 0


def _shopper(number: int, rng: random.Random) -> Shopper:
    user_id = f"cus_{number:07d}"
    traits = {"email": f"shopper{number}@example.com", "first_name": rng.choice(["Ana", "Ben", "Chloe", "Dev"]),
              "plan": rng.choice(PLANS), "created_at": _iso(HISTORY_START - rng.uniform(0, 400) * 86400)}
    return Shopper(user_id, str(uuid.UUID(int=rng.getrandbits(128), version=4)), rng.choice(USER_AGENTS),
                   f"{rng.randint(23, 213)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                   rng.choice(LOCALES), traits)


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


@dataclass(frozen=True)
class Draft:
    """One message with everything drawn for it; rendered with or without each optional part."""

    shopper: Shopper
    kind: str
    name: str
    at: float
    path: str
    title: str
    payload: dict[str, Any]
    message_id: str
    sent_at: str
    received_at: str
    referrer: str
    campaign: dict[str, str] | None

    def render(self, extras: set[str]) -> bytes:
        shopper = self.shopper
        campaign = self.campaign if "campaign" in extras else None
        search = f"?utm_source={campaign['source']}" if campaign else ""
        page = {"path": self.path, "referrer": self.referrer if "referrer" in extras else "", "search": search,
                "title": self.title, "url": f"{SITE}{self.path}{search}"}
        context: dict[str, Any] = {"ip": shopper.ip, "library": {"name": "analytics.js", "version": "5.2.0"},
                                   "locale": shopper.locale, "page": page, "userAgent": shopper.user_agent}
        if campaign:
            context["campaign"] = campaign
        body: dict[str, Any] = {"anonymousId": shopper.anonymous_id, "context": context}
        if self.kind == "track":
            body.update(event=self.name, properties=self._properties(extras))
        elif self.kind == "page":
            body.update(name=self.title, properties={"path": self.path, "title": self.title, "url": page["url"]})
        else:
            body["traits"] = shopper.traits
        body.update(integrations={}, messageId=self.message_id, timestamp=_iso(self.at), type=self.kind,
                    userId=shopper.user_id)
        for key, value in (("sentAt", self.sent_at), ("originalTimestamp", _iso(self.at)),
                           ("receivedAt", self.received_at)):
            if key in extras:
                body[key] = value
        return json.dumps(body, separators=(",", ":")).encode()

    def _properties(self, extras: set[str]) -> dict[str, Any]:
        properties = {key: value for key, value in self.payload.items() if key not in OPTIONAL_PROPERTIES}
        for key in OPTIONAL_PROPERTIES:
            value = self.payload.get(key, "EUR" if key == "currency" else None)
            if key in extras and value:
                properties[key] = value
        return properties


class MessageMaker:
    """Builds a shopper's next analytics.js message: the event drawn from the mix, its payload realistic."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.products = _products(rng)
        self.weights = [share for _, share in MIX]
        self.orders = 0

    def next_name(self, shopper: Shopper) -> str:
        name = self.rng.choices(EVENTS, self.weights)[0]
        if name in ("Order Completed", "Checkout Started") and not shopper.cart:
            return "Product Added"  # nobody checks out an empty cart
        return name

    def message(self, shopper: Shopper, name: str, at: float) -> bytes:
        """The message as analytics.js sends it; of what is optional, what fits within ``MAX_BYTES``."""
        rng = self.rng
        kind = {"Page Viewed": "page", "Identify": "identify"}.get(name, "track")
        product = rng.choice(self.products)
        if kind == "page":
            category = rng.choice(CATEGORIES)
            path, title = f"/c/{category}", category.title()
        else:
            path, title = f"/p/{product.sku.removeprefix('SKU-')}", product.name
        payload = self._properties(shopper, name, product) if kind == "track" else {}
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        draft = Draft(shopper, kind, name, at, path, title, payload, message_id, _iso(at + rng.uniform(0.01, 0.2)),
                      _iso(at + rng.uniform(0.05, 0.6)), rng.choice(REFERRERS),
                      rng.choice(CAMPAIGNS) if rng.random() < 0.2 else None)
        extras: set[str] = set()
        data = draft.render(extras)
        for extra in ("products", "campaign", "sentAt", "referrer", "quantity", "currency", "originalTimestamp",
                      "receivedAt"):
            longer = draft.render(extras | {extra})
            if len(longer) <= MAX_BYTES:
                extras.add(extra)
                data = longer
        return data

    def _properties(self, shopper: Shopper, name: str, product: Product) -> dict[str, Any]:
        item = {"product_id": product.sku, "name": product.name, "category": product.category,
                "price": product.price}
        if name == "Product Viewed":
            return item
        if name == "Product Added":
            shopper.cart = [*shopper.cart, product][-3:]
            return {**item, "quantity": 1 + (self.rng.random() < 0.1)}
        if name == "Product List Viewed":
            return {"list_id": f"{product.category}-grid", "category": product.category,
                    "products": [{"product_id": p.sku} for p in self.rng.sample(self.products, 2)]}
        cart = shopper.cart[-2:]
        lines = [{"product_id": p.sku, "price": p.price} for p in cart]
        value = round(sum(p.price for p in cart), 2)
        if name == "Order Completed":
            self.orders += 1
            shopper.cart = []
            return {"order_id": f"ord_{self.orders:06d}", "revenue": value, "products": lines}
        if name == "Checkout Started":
            return {"value": value, "products": lines}
        return {"products": lines}  # Cart Viewed


# ---- catalogues -------------------------------------------------------------------------------------


def _shipped_definitions() -> list[tuple[str, object]]:
    """The shipped segments, less those on computed traits: this traffic has no traits job to write them."""
    import yaml

    shipped = [(path.name, yaml.safe_load(path.read_text())) for path in sorted((ROOT / "segments").glob("*.yaml"))]
    return [(name, raw) for name, raw in shipped if not _reads_computed_traits(raw)]


def _reads_computed_traits(node: object) -> bool:
    from cdp.core.traits import TRAIT_MODELS

    if isinstance(node, dict):
        trait = node.get("trait")
        if isinstance(trait, dict) and trait.get("name") in TRAIT_MODELS:
            return True
        return any(_reads_computed_traits(value) for value in node.values())
    if isinstance(node, list):
        return any(_reads_computed_traits(value) for value in node)
    return False


def _generated_condition(number: int, rng: random.Random, events: Sequence[str],
                         referable: list[str]) -> dict[str, Any]:
    """One generated condition, of the kinds a shop's marketers write, cycling through them."""
    event, other = rng.sample(list(events), 2)
    window = rng.choice(WINDOWS)
    conditions: list[Callable[[], dict[str, Any]]] = [
        lambda: {"count": {"event": event, "within": window, "gte": rng.randint(1, 6)}},
        lambda: {"recency": {"event": event, "within": window}},
        lambda: {"absence": {"trigger": {"event": event}, "missing": {"event": other},
                             "within": rng.choice(["1h", "24h", "48h"]), "expire": "30d"}},
        lambda: {"all": [{"trait": {"name": "plan", "eq": rng.choice(PLANS)}},
                         {"recency": {"event": event, "within": "30d"}}]},
        lambda: {"rfm": {"metric": rng.choice(["orders", "revenue", "average_order_value"]),
                         "gte": rng.choice([1, 2, 3, 50, 150, 400])}},
        lambda: {"all": [{"count": {"event": event, "within": window, "gte": 2}},
                         {"not": {"recency": {"event": other, "within": "7d"}}}]},
        lambda: {"ratio": {"numerator": {"event": event}, "denominator": {"event": other},
                           "within": "30d", "gt": 0.3, "min_denominator": 2}},
        lambda: {"all": [{"segment": {"id": rng.choice(referable)}},
                         {"count": {"event": event, "within": "30d", "gte": 2}}]},
        lambda: {"all": [{"channel": {"name": "web", "within": rng.choice(["7d", "30d"])}},
                         {"rfm": {"metric": "orders", "eq": 0}}]},
        lambda: {"count": {"event": "Product Viewed", "where": {"category": rng.choice(CATEGORIES)},
                           "within": rng.choice(["24h", "7d", "30d"]), "gte": rng.randint(1, 4)}},
        lambda: {"any": [{"segment": {"id": rng.choice(referable)}},
                         {"trait": {"name": "email", "exists": True}}]},
    ]
    return conditions[number % len(conditions)]()


def catalogue(segments: int, events: Sequence[str] = EVENTS) -> Catalogue:
    """``segments`` enabled segments: the shipped catalogue (16, or its first ``segments`` files when fewer),
    then generated counts in windows, recencies, absences, trait conditions, RFM, ratios, channels, property
    filters and references to other segments, over the event names ``events``."""
    definitions = _shipped_definitions()[:segments]
    rng = random.Random(segments)
    referable = [str(raw["id"]) for _, raw in definitions if isinstance(raw, dict)]
    number = 0
    while len(definitions) < segments:
        number += 1
        segment_id = f"generated-{number}"
        condition = _generated_condition(number, rng, events, referable)
        definitions.append((f"{segment_id}.yaml", {"id": segment_id, "name": f"Generated {number}",
                                                   "priority": rng.randint(5, 50), "condition": condition}))
        referable.append(segment_id)
    return build_catalogue(definitions)


# ---- the workload -----------------------------------------------------------------------------------


@dataclass
class Workload:
    """The measured stream batches and, per catalogue, the stored items they read back."""

    batches: list[list[StreamRecord]]
    histories: dict[str, list[list[bytes]]]  # customer id -> their history, in sessions
    live_end: float

    @property
    def messages(self) -> list[bytes]:
        return [record.data for batch in self.batches for record in batch]


def batches(customers: int = 1_000, events_per_customer: int = 3, seed: int = 7) -> Workload:
    """``events_per_customer`` rounds of one event per customer, in batches of 100 different customers,
    and each customer's 20-40-event history over the 90 days before (for :func:`stored_items`)."""
    rng = random.Random(seed)
    maker = MessageMaker(rng)
    shoppers = [_shopper(number, rng) for number in range(customers)]
    histories = {shopper.user_id: _history(shopper, maker, rng) for shopper in shoppers}
    records: list[list[StreamRecord]] = []
    sequence = 0
    moment = float(LIVE_START)
    for round_number in range(events_per_customer):
        start = LIVE_START + round_number * 600
        for first in range(0, customers, BATCH_SIZE):
            batch = []
            for shopper in shoppers[first:first + BATCH_SIZE]:
                moment = start + rng.uniform(0, 590)
                sequence += 1
                data = maker.message(shopper, maker.next_name(shopper), moment)
                batch.append(StreamRecord(f"{sequence:021d}", shopper.user_id, data, shard=SHARD))
            records.append(batch)
    return Workload(records, histories, LIVE_START + events_per_customer * 600)


def analytics_messages(customers: int, events_per_customer: int, seed: int = 7) -> list[list[bytes]]:
    """The payloads of :func:`batches`, batch by batch."""
    return [[record.data for record in batch] for batch in batches(customers, events_per_customer, seed).batches]


def _history(shopper: Shopper, maker: MessageMaker, rng: random.Random) -> list[list[bytes]]:
    """20-40 events over the 90 days before the measured batches, in sessions of a few events each."""
    remaining = rng.randint(20, 40)
    days = sorted(rng.sample(range(HISTORY_DAYS), min(HISTORY_DAYS, remaining // 3 + 2)))
    sessions: list[list[bytes]] = []
    for index, day in enumerate(days):
        size = remaining if index == len(days) - 1 else min(remaining, rng.randint(2, 5))
        remaining -= size
        moment = HISTORY_START + day * 86400 + rng.uniform(8, 22) * 3600
        session = []
        for position in range(size):
            name = "Identify" if index == 0 and position == 0 else maker.next_name(shopper)
            session.append(maker.message(shopper, name, moment))
            moment += rng.uniform(20, 240)
        sessions.append(session)
        if not remaining:
            break
    return sessions


def stored_items(workload: Workload, engine: Engine) -> list[dict[str, Any]]:
    """Each customer's profile as stored after their history: folded session by session by the engine,
    then evaluated at the start of the measured batches as the timers sweep would have."""
    items = []
    for customer_id, sessions in workload.histories.items():
        profile = Profile(customer_id)
        for session in sessions:
            events = [parse_record(data) for data in session]
            engine.apply(profile, events, events[-1].timestamp)
        engine.evaluate(profile, LIVE_START)
        profile.version = len(sessions)
        items.append(profile.to_item())
    return items


class DiscardedQuarantine:
    """Counts what the ingest quarantines; the real-shaped workload should quarantine nothing."""

    def __init__(self) -> None:
        self.records = 0

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.records += len(records)


def best_of(repeats: int, run: Callable[[], None], prepare: Callable[[], None] = lambda: None) -> float:
    """The least process time of ``repeats`` runs, in seconds; ``prepare`` runs untimed before each."""
    times = []
    for _ in range(repeats):
        prepare()
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def json_floor_us(messages: Sequence[bytes], repeats: int = 5) -> float:
    """``json.loads`` of every message, best of ``repeats``, in µs per message."""

    def run() -> None:
        for data in messages:
            json.loads(data)

    return best_of(repeats, run) / len(messages) * 1e6


def size_distribution(workload: Workload) -> dict[str, Any]:
    """Message sizes in bytes: overall, by message type, and the share of track/page ones in 600-700."""
    by_type: dict[str, list[int]] = {}
    for data in workload.messages:
        by_type.setdefault(json.loads(data)["type"], []).append(len(data))
    every = sorted(size for sizes in by_type.values() for size in sizes)
    browsing = [size for kind in ("track", "page") for size in by_type.get(kind, [])]

    def summary(sizes: list[int]) -> dict[str, float]:
        ordered = sorted(sizes)
        return {"count": len(ordered), "min": ordered[0], "median": statistics.median(ordered),
                "p90": ordered[int(len(ordered) * 0.9)], "max": ordered[-1]}

    return {"all": summary(every), **{kind: summary(sizes) for kind, sizes in sorted(by_type.items())},
            "share_track_page_600_700": sum(600 <= s <= 700 for s in browsing) / len(browsing),
            "share_200_700": sum(200 <= s <= 700 for s in every) / len(every)}


@dataclass
class CoreRun:
    us_per_event: float
    transitions_per_event: float
    quarantined: int


def core_run(workload: Workload, engine: Engine, items: list[dict[str, Any]], repeats: int = 3) -> CoreRun:
    """``ingest_batch`` over every batch, against a store freshly seeded with ``items``; best of ``repeats``."""
    events = sum(len(batch) for batch in workload.batches)
    state: dict[str, Any] = {}

    def prepare() -> None:
        store = MemoryProfileStore()
        for item in items:
            store.put(item)
        state.update(store=store, quarantine=DiscardedQuarantine(), transitions=0,
                     clock=EventClock(LIVE_START, wall=FixedClock(workload.live_end + 86400)))

    def run() -> None:
        store, quarantine, clock = state["store"], state["quarantine"], state["clock"]
        transitions = 0
        for batch in workload.batches:
            transitions += len(ingest_batch(batch, engine, store, quarantine, clock).transitions)
        state["transitions"] = transitions

    seconds = best_of(repeats, run, prepare)
    return CoreRun(seconds / events * 1e6, state["transitions"] / events, state["quarantine"].records)


def measure(customers: int = 1_000, events_per_customer: int = 3, sizes: tuple[int, ...] = (16, 50, 200),
            repeats: int = 3, old_workload: bool = True) -> dict[str, Any]:
    """Core µs per event and its ratio to the json floor at each catalogue size, on the real-shaped workload."""
    from bench import core_speed

    workload = batches(customers, events_per_customer)
    messages = workload.messages
    floor = json_floor_us(messages)
    synthetic = [record for batch in core_speed.workload(300, 20) for record in batch]
    figures: dict[str, Any] = {
        "events": len(messages), "customers": customers, "batch_size": BATCH_SIZE,
        "message_bytes": size_distribution(workload), "json_floor_us_per_event": floor,
        "json_floor_us_per_event_synthetic_250b": json_floor_us(synthetic),
        "synthetic_message_bytes_mean": sum(map(len, synthetic)) / len(synthetic),
        "us_per_event": {}, "ratio_to_json_floor": {}, "transitions_per_event": {}, "quarantined": {},
    }
    for size in sizes:
        engine = Engine(catalogue(size))
        run = core_run(workload, engine, stored_items(workload, engine), repeats)
        figures["us_per_event"][str(size)] = run.us_per_event
        figures["ratio_to_json_floor"][str(size)] = run.us_per_event / floor
        figures["transitions_per_event"][str(size)] = run.transitions_per_event
        figures["quarantined"][str(size)] = run.quarantined
    if "50" in figures["us_per_event"] and "200" in figures["us_per_event"]:
        figures["ratio_200_to_50"] = figures["us_per_event"]["200"] / figures["us_per_event"]["50"]
    if old_workload:
        old = core_speed.measure(repeats=repeats)
        figures["old_workload"] = {**old, "ratio_to_json_floor": {
            size: us / old["json_floor_us_per_event"] for size, us in old["us_per_event"].items()}}
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script: the ``bench`` package is importable too
    print(json.dumps(measure(), indent=2))
