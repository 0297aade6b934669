"""Writes events/sample.jsonl: a few weeks of a small shop, with one customer per catalogue story.

    python events/make_sample.py > events/sample.jsonl

Deterministic (fixed seed), so the file and the demo's output only change when this script does.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

START = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
WEB: dict[str, object] = {"library": {"name": "analytics.js", "version": "5.2.0"}, "userAgent": "Mozilla/5.0",
       "page": {"path": "/"}, "location": {"country": "DE", "city": "Berlin"}}
MOBILE: dict[str, object] = {"library": {"name": "analytics-ios", "version": "4.1.0"}, "device": {"type": "ios"},
          "os": {"name": "iOS"}, "app": {"name": "Shop", "version": "3.2"}}
SERVER: dict[str, object] = {"library": {"name": "analytics-python", "version": "2.3.0"}}
CAMPAIGN: dict[str, object] = {**WEB, "campaign": {"source": "newsletter", "medium": "email", "name": "autumn-sale"}}

lines: list[dict[str, object]] = []
counter = 0


def at(days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    return START + timedelta(days=days, hours=hours, minutes=minutes)


def send(user: str, when: datetime, event: str | None = None, *, kind: str = "track",
         properties: dict[str, object] | None = None, traits: dict[str, object] | None = None,
         context: dict[str, object] | None = None, message_id: str | None = None) -> None:
    global counter
    counter += 1
    message: dict[str, object] = {
        "type": kind,
        "messageId": message_id or f"sample-{counter:05d}",
        "userId": user,
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "context": context if context is not None else WEB,
    }
    if event:
        message["event"] = event
    if properties:
        message["properties"] = properties
    if traits:
        message["traits"] = traits
    lines.append(message)


def views(user: str, start: datetime, count: int, gap_minutes: float = 2,
          context: dict[str, object] | None = None) -> None:
    for i in range(count):
        send(user, start + timedelta(minutes=i * gap_minutes), "Product Viewed",
             properties={"product_id": f"sku-{100 + i}", "category": "shoes", "price": 59.0},
             context=context)


def order(user: str, when: datetime, order_id: str, revenue: float) -> None:
    send(user, when, "Order Completed", properties={
        "order_id": order_id, "revenue": revenue, "currency": "EUR",
        "products": [{"product_id": "sku-100", "price": revenue, "quantity": 1}]}, context=SERVER)


# alice: a burst of views, a cart add, no purchase: high-intent abandoner, then buys on day 3.
send("alice", at(0), kind="identify", traits={"email": "Alice@Example.com", "first_name": "Alice"})
views("alice", at(0, minutes=1), 6)
send("alice", at(0, minutes=14), "Product Added", properties={"product_id": "sku-102", "price": 59.0})
order("alice", at(3), "A-1001", 59.0)

# bob: a loyal repeat buyer; his fourth order in a month over 500 makes him a high-value recent buyer.
send("bob", at(0), kind="identify", traits={"email": "bob@example.com", "plan": "gold"}, context=MOBILE)
for i, amount in enumerate((120.0, 95.5, 180.0, 210.0, 75.0)):
    order("bob", at(1 + i * 6), f"B-{2001 + i}", amount)

# carol: email engagement; clicks most emails she opens.
send("carol", at(0), kind="identify", traits={"email": "carol@example.com"})
for day in range(0, 15, 3):
    send("carol", at(day, hours=8), "Email Opened", properties={"campaign_id": f"c{day}"}, context={})
    send("carol", at(day, hours=8, minutes=3), "Email Link Clicked",
         properties={"campaign_id": f"c{day}", "link_url": "https://shop.example/sale"}, context=CAMPAIGN)

# dave: browses on the web only, never adds to cart: a browser and a web-only visitor.
views("dave", at(2), 3, gap_minutes=40)
views("dave", at(4), 3, gap_minutes=40)

# erin: signs up, subscribes, views, adds to cart, all in her first week: highly engaged and new.
send("erin", at(5), kind="identify", traits={"email": " Erin.K@GMail.com", "phone": "+49 30 1234567"})
send("erin", at(5), "Signed Up", properties={"method": "email"})
send("erin", at(5, minutes=5), "Newsletter Subscribed", properties={"list": "weekly"})
views("erin", at(5, hours=1), 4, gap_minutes=5, context=MOBILE)
send("erin", at(5, hours=2), "Product Added", properties={"product_id": "sku-101", "price": 59.0},
     context=MOBILE)

# frank: adds to cart and is gone: potential, then cart abandoner after 48 hours.
send("frank", at(6), kind="identify", traits={"email": "frank@example.com", "first_name": "Frank"})
send("frank", at(6), "Product Added", properties={"product_id": "sku-200", "price": 19.9})
# frank's add is redelivered by the producer: same messageId, ignored.
lines.append(dict(lines[-1]))

# A crowd of buyers, so that "top 20% by revenue" has a population to rank against.
rng = random.Random(7)
for n in range(20):
    user = f"shopper-{n:02d}"
    for k in range(rng.randint(1, 3)):
        order(user, at(rng.uniform(0, 20)), f"S-{n:02d}-{k}", round(rng.uniform(20, 400), 2))

lines.sort(key=lambda message: str(message["timestamp"]))
for message in lines:
    print(json.dumps(message, separators=(",", ":")))
