"""Measures profile size: a typical shopper, and a customer with 1,000,000 events over a year.

    python bench/profile_size.py [--events 1000000]

Sizes are DynamoDB item sizes by DynamoDB's own rules (what write units are billed on). The
dedupe state (message ids kept for 8 days, completed order ids, the shard watermark ingest keeps)
is reported apart: for the heavy customer it is at its caps. So are the recent products (``rp``):
the typical shopper's, and the attribute at its caps (every id and category at its longest).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path

from cdp.core.catalogue import load_catalogue
from cdp.core.consent import MAX_CATEGORIES, MAX_CATEGORY_CHARS, MAX_CONSENT_HISTORY
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.profile import MAX_PRODUCT_CHARS, MAX_PRODUCTS, PURCHASED, VIEWED, Profile, item_size

SHARD = "shardId-000000000000"
DEDUPE = ("mi", "od", "sq")  # message ids, completed orders, shard watermarks (cdp.core.profile)

ROOT = Path(__file__).resolve().parent.parent
YEAR = 365 * 86400
START = 1_767_225_600  # 2026-01-01T00:00:00Z
HEAVY_MIX = [  # (event name, share): a very active customer on every channel
    ("Product Viewed", 0.45), ("Page Viewed", 0.20), ("Product Added", 0.08), ("Product Removed", 0.02),
    ("Cart Viewed", 0.04), ("Checkout Started", 0.03), ("Order Completed", 0.02), ("Email Delivered", 0.06),
    ("Email Opened", 0.05), ("Email Link Clicked", 0.03), ("Products Searched", 0.02),
]
CHANNELS = {"web": {"library": {"name": "analytics.js"}}, "mobile": {"library": {"name": "analytics-ios"}},
            "server": {}}


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + "Z"


def message(customer: str, number: int, name: str, moment: float, rng: random.Random) -> dict[str, object]:
    properties: dict[str, object] = {"product_id": f"sku-{rng.randrange(500)}",
                                     "category": rng.choice(("shoes", "bags", "hats", "coats"))}
    if name == "Order Completed":
        properties = {"order_id": f"{customer}-{number}", "revenue": round(rng.uniform(10, 300), 2),
                      "products": [properties]}  # Ecommerce v2: the order's items
    elif name in ("Product Added", "Product Removed"):
        properties["price"] = round(rng.uniform(5, 150), 2)
    kind = "page" if name == "Page Viewed" else "track"
    body: dict[str, object] = {"type": kind, "messageId": f"{customer}-{number}", "userId": customer,
                               "timestamp": iso(moment), "properties": properties,
                               "context": CHANNELS[rng.choice(("web", "web", "mobile"))]}
    if kind == "track":
        body["event"] = name
    return body


def heavy_profile(engine: Engine, events: int, batch: int = 100) -> tuple[Profile, float]:
    """Folds `events` events spread evenly over a year, in batches like the stream delivers them."""
    rng = random.Random(1)
    names = [name for name, _ in HEAVY_MIX]
    weights = [share for _, share in HEAVY_MIX]
    profile = Profile("heavy")
    step = YEAR / events
    started = time.perf_counter()
    for first in range(0, events, batch):
        chunk = [normalise(message("heavy", n, rng.choices(names, weights)[0], START + n * step, rng))
                 for n in range(first, min(events, first + batch))]
        engine.apply(profile, chunk, chunk[-1].timestamp)
        profile.mark_delivered(SHARD, sequence(min(events, first + batch)), chunk[-1].timestamp)  # as ingest does
        item = profile.to_item()  # what ingest writes after every batch
        profile = Profile.from_item(item)
    return profile, time.perf_counter() - started


def typical_profile(engine: Engine) -> Profile:
    """Three months of an ordinary shopper: identify, some browsing, a few adds, two orders, email."""
    rng = random.Random(2)
    profile = Profile("typical-shopper-0001")
    moment = float(START)
    traits = {"email": "jane.doe@example.com", "first_name": "Jane", "last_name": "Doe",
              "phone": "+49 30 1234567", "created_at": "2026-01-01T10:00:00Z", "plan": "free"}
    sessions = [normalise({"type": "identify", "messageId": "t-0", "userId": profile.customer_id,
                           "timestamp": iso(moment), "traits": traits})]
    plan = ["Product Viewed"] * 25 + ["Page Viewed"] * 10 + ["Product Added"] * 3 + ["Order Completed"] * 2 + [
        "Email Delivered"] * 6 + ["Email Opened"] * 4 + ["Email Link Clicked"] * 2
    rng.shuffle(plan)
    for number, name in enumerate(plan, start=1):
        moment += rng.uniform(3600, 2 * 86400)
        sessions.append(normalise(message(profile.customer_id, number, name, moment, rng)))
    for number, event in enumerate(sessions):
        engine.apply(profile, [event], event.timestamp)
        profile.mark_delivered(SHARD, sequence(number), event.timestamp)  # as ingest does
    return profile


def sequence(number: int) -> str:
    """A Kinesis sequence number: 56 decimal digits."""
    return f"4963{number:052d}"


def dedupe_bytes(profile: Profile) -> int:
    """What the dedupe state adds to the item: its attributes, by DynamoDB's rules."""
    item = profile.to_item()
    return item_size({name: item[name] for name in DEDUPE if name in item})


def dedupe_entries(profile: Profile) -> dict[str, int]:
    item = profile.to_item()
    return {"message_ids": profile.message_ids, "orders": len(item.get("od", b"")) // 8,
            "shards": len(profile.shard_marks)}


def consent_bytes(changes: int, categories: int, name_chars: int) -> int:
    """The bytes the consent attribute adds to a profile item: ``changes`` changes of preferences over
    ``categories`` categories with names of ``name_chars`` characters (message ids as SDKs make them, UUIDs)."""
    from cdp.core.consent import ConsentState
    from cdp.core.profile import consent_item

    state = ConsentState()
    for change in range(changes):
        preferences = {f"{c:02d}".ljust(name_chars, "c"): (c + change) % 2 == 0 for c in range(categories)}
        state.record(preferences, START + change * 86400, "browser", str(uuid.UUID(int=change)))
    state.unsubscribe(START, "unsubscribed")
    return item_size({"customer_id": "c", "cs": consent_item(state)}) - item_size({"customer_id": "c"})


def products_bytes(profile: Profile) -> int:
    """What the recent products add to the item, by DynamoDB's rules."""
    return item_size({"rp": profile.to_item()["rp"]}) if profile.products else 0


def products_at_caps() -> Profile:
    """Recent products at their caps: ``MAX_PRODUCTS`` of each kind, ids and categories at their longest."""
    profile = Profile("c")
    profile.products = [[f"{kind}{n:02d}".ljust(MAX_PRODUCT_CHARS, "x"), "c" * MAX_PRODUCT_CHARS, kind, 2**32 - 1]
                        for kind in (PURCHASED, VIEWED) for n in range(MAX_PRODUCTS)]
    return profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    engine = Engine(load_catalogue(ROOT / "segments"))
    typical = typical_profile(engine)
    heavy, seconds = heavy_profile(engine, args.events)
    heavy_name = "1m" if args.events == 1_000_000 else str(args.events)
    result = {
        "profile.bytes_typical": item_size(typical.to_item()),
        f"profile.bytes_{heavy_name}_events": item_size(heavy.to_item()),
        "profile.dedupe_bytes_typical": dedupe_bytes(typical),
        f"profile.dedupe_bytes_{heavy_name}_events": dedupe_bytes(heavy),
        "profile.dedupe_entries_typical": dedupe_entries(typical),
        f"profile.dedupe_entries_{heavy_name}_events": dedupe_entries(heavy),
        "profile.heavy_events": args.events,
        "profile.heavy_fold_seconds": round(seconds, 1),
        # Consent (cs): a shopper who changed 4 categories twice, and the caps (every change kept, every
        # category at the longest name kept).
        "profile.consent_bytes_typical": consent_bytes(2, 4, 12),
        "profile.consent_bytes_at_caps": consent_bytes(MAX_CONSENT_HISTORY, MAX_CATEGORIES, MAX_CATEGORY_CHARS),
        # Recent products (rp): the typical shopper's, and the caps (20 purchased and 20 viewed, 64-char ids
        # and categories).
        "profile.products_bytes_typical": products_bytes(typical),
        "profile.products_bytes_at_caps": products_bytes(products_at_caps()),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
