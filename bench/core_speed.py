"""The core's speed: µs per event to parse and fold events and evaluate 10, 50 and 200 active segments,
against the floor of just ``json.loads`` on the same records, measured in the same run.

Each customer's 20 events come in one batch to a new profile. :mod:`bench.real_traffic` is the real-shaped
workload (one event per customer per batch, stored profiles read back).

    python bench/core_speed.py
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdp.core.catalogue import Catalogue
from cdp.core.engine import Engine
from cdp.core.events import parse_record
from cdp.core.profile import Profile

ROOT = Path(__file__).resolve().parent.parent
START = 1_767_225_600  # 2026-01-01T00:00:00Z
MIX = [("Product Viewed", 0.45), ("Page Viewed", 0.2), ("Product Added", 0.08), ("Product Removed", 0.02),
       ("Checkout Started", 0.03), ("Order Completed", 0.03), ("Email Delivered", 0.08), ("Email Opened", 0.06),
       ("Email Link Clicked", 0.03), ("Products Searched", 0.02)]
EVENTS = [name for name, _ in MIX]
WEB = {"library": {"name": "analytics.js"}}


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def workload(customers: int, per_customer: int, seed: int = 3, prefix: str = "bench") -> list[list[bytes]]:
    """Per customer, ``per_customer`` raw stream records over two weeks: one stream batch's worth each."""
    rng = random.Random(seed)
    weights = [share for _, share in MIX]
    batches = []
    for number in range(customers):
        customer = f"{prefix}-{number:06d}"
        moment = START + rng.uniform(0, 14 * 86400)
        records = []
        for sequence in range(per_customer):
            name = rng.choices(EVENTS, weights)[0]
            properties: dict[str, Any] = {"product_id": f"sku-{rng.randrange(300)}", "price": 25.0}
            if name == "Order Completed":
                properties = {"order_id": f"{customer}-{sequence}", "revenue": round(rng.uniform(10, 300), 2)}
            moment += rng.uniform(10, 3600)
            records.append(json.dumps({"type": "track", "event": name, "userId": customer,
                                       "messageId": f"{customer}-{sequence}", "timestamp": iso(moment),
                                       "properties": properties, "context": WEB}).encode())
        batches.append(records)
    return batches


def synthetic_catalogue(size: int) -> Catalogue:
    """``size`` active segments: the shipped catalogue, then generated ones of its condition kinds (the real-shaped
    workload's generator, :func:`bench.real_traffic.catalogue`, over this workload's event names)."""
    from bench.real_traffic import catalogue

    return catalogue(size, events=EVENTS)


def best_of(repeats: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def measure(customers: int = 300, per_customer: int = 20, sizes: tuple[int, ...] = (10, 50, 200),
            repeats: int = 3) -> dict[str, Any]:
    batches = workload(customers, per_customer)
    events = customers * per_customer

    def floor() -> None:
        for records in batches:
            for record in records:
                json.loads(record)

    figures: dict[str, Any] = {"events": events, "json_floor_us_per_event": best_of(repeats, floor) / events * 1e6,
                               "us_per_event": {}, "transitions_per_event": {}}
    for size in sizes:
        engine = Engine(synthetic_catalogue(size))
        transitions = 0

        def fold(engine: Engine = engine) -> None:
            nonlocal transitions
            transitions = 0
            for records in batches:
                parsed = [parse_record(record) for record in records]
                profile = Profile(parsed[0].customer_id)
                outcome = engine.apply(profile, parsed, parsed[-1].timestamp)
                transitions += len(outcome.transitions)

        figures["us_per_event"][str(size)] = best_of(repeats, fold) / events * 1e6
        figures["transitions_per_event"][str(size)] = transitions / events
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script: the ``bench`` package is importable too
    print(json.dumps(measure(), indent=2))
