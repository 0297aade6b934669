"""Measures a decision: in-process microseconds per decision, p50 and p99, against the profile read it follows.

    python -m bench.decisions [--profiles 2000]

Real-shaped stored profiles (:mod:`bench.real_traffic`: each customer's 20-40-event, 90-day history folded by the
shipped catalogue) are encoded as the profiles table returns them (attribute values). One in ten is put on the
vip list, and half of those also bought product B (sku-100) the day before, so the shipped ``home-hero``
placement's first rule is met by some. Each decision is timed on its own
(``perf_counter_ns``): the read is the decode of the stored item with the Lambda adapter's decoder
(``decode_profile``, what ``GET /customers/{id}/decisions`` does after its one GetItem), the decision is
:func:`cdp.core.placements.decide` on that profile, with a request context. The network round trip of the read
is not in it (bench/prices.py has the latencies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.real_traffic import LIVE_START, batches, stored_items
from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine
from cdp.core.placements import decide, load_placements
from cdp.core.profile import Profile, ProfileView, record_product

ROOT = Path(__file__).resolve().parent.parent
CONTEXTS = ({"page": "/"}, {"page": "/", "device": "mobile", "utm_campaign": "spring-sale"})
REPEATS = 3  # every profile decided this many times (per context); the percentiles are over all of them


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(profiles: int = 1_000) -> dict[str, Any]:
    catalogue = load_catalogue(ROOT / "segments")
    placement = load_placements(ROOT / "placements", catalogue)["home-hero"]
    items = []
    for number, plain in enumerate(stored_items(batches(customers=profiles, events_per_customer=1),
                                                Engine(catalogue))):
        profile = Profile.from_item(plain)
        if number % 10 == 0:
            profile.memberships["vip"] = int(LIVE_START)
        if number % 20 == 0:
            record_product(profile.products, "sku-100", "coffee", "p", int(LIVE_START) - 86_400)
        items.append(encode_profile(profile))
    now = float(LIVE_START)
    read_us: list[float] = []
    decide_us: list[float] = []
    served: dict[str, int] = {}
    clock = time.perf_counter_ns
    for _ in range(REPEATS):
        for item in items:
            for context in CONTEXTS:
                started = clock()
                profile = decode_profile(item)
                read = clock()
                decision = decide(placement, ProfileView(profile, now, None), context)
                done = clock()
                read_us.append((read - started) / 1000)
                decide_us.append((done - read) / 1000)
                served[decision.content.id] = served.get(decision.content.id, 0) + 1
    return {
        "profiles": len(items), "decisions": len(decide_us), "placement": placement.id,
        "rules": len(placement.rules),
        "decide_us": {"p50": percentile(decide_us, 0.5), "p99": percentile(decide_us, 0.99),
                      "mean": statistics.fmean(decide_us)},
        "read_us": {"p50": percentile(read_us, 0.5), "p99": percentile(read_us, 0.99),
                    "mean": statistics.fmean(read_us)},
        "decide_share_of_read_p50": percentile(decide_us, 0.5) / percentile(read_us, 0.5),
        "served": dict(sorted(served.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000)
    figures = measure(parser.parse_args().profiles)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
