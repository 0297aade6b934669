"""Measures the timers sweep: cost per due customer from 1k to 100k due, and the cost of an idle sweep.

    python bench/timers_sweep.py [--sizes 1000,10000,100000]

The sweep runs over the in-memory adapters (cdp_dev.memory), which count the DynamoDB requests the
real adapters send for the same calls (tests/integration/test_timers.py checks the real adapter's
counts against moto). CPU is process time spent in the sweep itself: the same core, evaluation and
item encoding the Lambda runs. The deadline delay is simulated: customers fall due spread over ten
minutes and a sweep runs every 60 s, as the schedule does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.profile import Profile, due_shard
from cdp.pipeline.timers import sweep
from cdp_dev.memory import MemoryDueIndex, MemoryProfileStore

ROOT = Path(__file__).resolve().parent.parent
START = 1_767_225_600  # 2026-01-01T00:00:00Z
CART_WAIT = 2 * 86400  # cart-abandoners: no order within 48 h of an add


def template_item(engine: Engine, added_at: int) -> dict[str, Any]:
    """A customer who added to the cart at ``added_at`` and did nothing since: due 48 h later."""
    profile = Profile("template")
    event = normalise({"type": "track", "event": "Product Added", "userId": "template", "messageId": "m-1",
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(added_at)),
                       "properties": {"product_id": "sku-1", "price": 25}})
    engine.apply(profile, [event], added_at)
    profile.version = 1
    return profile.to_item()


def populate(store: MemoryProfileStore, template: dict[str, Any], count: int, prefix: str,
             spread: int = 0) -> None:
    """``count`` customers like ``template``; with ``spread``, their deadlines step over that many seconds."""
    for number in range(count):
        customer_id = f"{prefix}-{number:07d}"
        shift = (number * spread // count) if spread else 0
        item = {**template, "customer_id": customer_id, "ds": due_shard(customer_id), "nd": template["nd"] + shift,
                "dl": {k: v + shift for k, v in template["dl"].items()}}
        store.put(item)


def due_cost(engine: Engine, template: dict[str, Any], due: int) -> dict[str, float]:
    store = MemoryProfileStore()
    populate(store, template, due, "due")
    clock = FixedClock(template["nd"])
    started = time.process_time()
    result = sweep(MemoryDueIndex(store), store, engine, clock)
    cpu = time.process_time() - started
    assert result.reevaluated == due and not result.unfinished, result
    requests = sum(store.requests.values())
    return {"due": due, "transitioned": result.transitioned, "requests": requests,
            "requests_per_due_customer": requests / due, "put_item": store.requests["PutItem"],
            "batch_get_item": store.requests["BatchGetItem"], "query": store.requests["Query"],
            "cpu_us_per_due_customer": cpu / due * 1e6}


def idle_cost(engine: Engine, template: dict[str, Any], stored: int) -> dict[str, float]:
    store = MemoryProfileStore()
    populate(store, template, stored, "idle")
    clock = FixedClock(template["nd"] - 3600)  # everyone is due in an hour: nobody now
    started = time.process_time()
    result = sweep(MemoryDueIndex(store), store, engine, clock)
    cpu = time.process_time() - started
    assert result.due == 0
    return {"stored_profiles": stored, "requests": sum(store.requests.values()), "cpu_ms": cpu * 1e3}


def deadline_delay(engine: Engine, template: dict[str, Any], customers: int = 10_000) -> dict[str, float]:
    """Deadlines spread over ten minutes; a sweep every 60 s (on the minute, like the schedule)."""
    store = MemoryProfileStore()
    populate(store, template, customers, "delay", spread=600)
    clock = FixedClock(template["nd"] - template["nd"] % 60 + 60)
    delays: list[float] = []
    while len(delays) < customers:
        delays += sweep(MemoryDueIndex(store), store, engine, clock).delays
        clock.advance(60)
    delays.sort()
    return {"customers": customers, "p50_seconds": delays[len(delays) // 2], "max_seconds": delays[-1]}


def measure(sizes: tuple[int, ...] = (1_000, 10_000, 100_000)) -> dict[str, Any]:
    engine = Engine(load_catalogue(ROOT / "segments"))
    template = template_item(engine, START)
    due = [due_cost(engine, template, size) for size in sizes]
    idle = [idle_cost(engine, template, size) for size in sizes]
    per_customer = [d["requests_per_due_customer"] for d in due]
    cpu = [d["cpu_us_per_due_customer"] for d in due]
    return {
        "due": due, "idle": idle, "delay": deadline_delay(engine, template),
        "requests_per_due_customer": per_customer[-1],
        "requests_per_due_customer_spread": max(per_customer) / min(per_customer),
        "cpu_per_due_customer_spread": max(cpu) / min(cpu),
        "requests_idle": idle[-1]["requests"],
        "requests_idle_constant": len({i["requests"] for i in idle}) == 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args(argv)
    figures = measure(tuple(int(s) for s in args.sizes.split(",")))
    print(f"{'due customers':>14} {'requests':>9} {'req/due':>8} {'Put':>7} {'BatchGet':>9} {'Query':>6}"
          f" {'CPU µs/due':>11}")
    for d in figures["due"]:
        print(f"{d['due']:>14,} {d['requests']:>9,} {d['requests_per_due_customer']:>8.3f} {d['put_item']:>7,}"
              f" {d['batch_get_item']:>9,} {d['query']:>6,} {d['cpu_us_per_due_customer']:>11.1f}")
    print(f"\n{'stored, none due':>16} {'requests':>9} {'CPU ms':>7}")
    for i in figures["idle"]:
        print(f"{i['stored_profiles']:>16,} {i['requests']:>9} {i['cpu_ms']:>7.2f}")
    delay = figures["delay"]
    print(f"\ndeadline delay, {delay['customers']:,} deadlines over 10 min, a sweep a minute: "
          f"p50 {delay['p50_seconds']:.0f} s, max {delay['max_seconds']:.0f} s")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "timers.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
