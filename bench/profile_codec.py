"""The profile item's encoding: boto3's serializer against the direct codec, per stored profile.

    python bench/profile_codec.py

For a typical shopper, a ~3 KB profile and a heavy customer (at the dedupe caps) it measures, best
of 5, µs per profile for:

- ``round_trip``: decode a stored item and encode it again. The boto3 path is the store's old one
  (``TypeDeserializer`` + ``from_dynamo`` + ``Profile.from_item``, then ``Profile.to_item`` +
  ``to_dynamo`` + ``TypeSerializer``); the direct path is ``decode_profile`` + ``encode_profile``.
- ``round_trip_all_read``: the same, with every field read before the write (the direct codec with
  nothing left to laziness but the counters, which both paths keep packed).
- ``read_counter``: decode, read one counter's window, write back (lazy decoding: nothing else is
  decoded, and the counter is written as it was read).
- ``fold_event``: decode, fold one event and evaluate the catalogue, write back: what ingest does
  per customer on one-event-per-customer traffic.

Each figure comes with the ratio old/new and in units of ``json.loads`` of one ~650-byte analytics.js
message, measured in the same run (these machines are noisy; ratios are what compare).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdp.aws.dynamo import deserialise_item, serialise_item
from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import load_catalogue
from cdp.core.counters import tier_for_window
from cdp.core.engine import Engine
from cdp.core.events import normalise
from cdp.core.profile import DEFERRED, Profile, item_size

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 5
COUNTER = "Product Viewed"
WINDOW = 86400


def analytics_message() -> bytes:
    """A message of about 650 bytes shaped like analytics.js output: page context, user agent, library, integrations."""
    body = {
        "type": "track", "event": "Product Viewed", "userId": "typical-shopper-0001",
        "anonymousId": "6f0a3c9e-2b1d-4c7e-9a55-0d3f8b7e21aa", "messageId": "ajs-next-1767225600-8d1e4b",
        "timestamp": "2026-01-01T10:00:00.000Z",
        "properties": {"product_id": "sku-123", "category": "shoes", "price": 89.9},
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js", "version": "5.2.0"},
                    "page": {"path": "/p/sku-123", "referrer": "https://www.example.com/c/shoes",
                             "title": "Trail runner", "url": "https://www.example.com/p/sku-123"},
                    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                                 "(KHTML, like Gecko) Version/17.1 Safari/605.1.15"},
        "integrations": {"All": True},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def three_kb_profile(engine: Engine) -> Profile:
    """The typical shopper after another busy week: about 3 KB stored."""
    from bench.profile_size import SHARD, message, sequence, typical_profile

    profile = typical_profile(engine)
    rng = random.Random(5)
    moment = float(profile.updated_at)
    for number in range(1000, 1090):
        moment += rng.uniform(600, 6000)
        name = rng.choice(("Product Viewed", "Product Viewed", "Page Viewed", "Product Added", "Email Opened"))
        event = normalise(message(profile.customer_id, number, name, moment, rng))
        engine.apply(profile, [event], event.timestamp)
        profile.mark_delivered(SHARD, sequence(number), event.timestamp)
    return profile


def best_of(run: Callable[[], None], loops: int) -> float:
    """µs per call of ``run``: the best of ``REPEATS`` timings of ``loops`` calls."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(loops):
            run()
        best = min(best, time.perf_counter() - started)
    return best / loops * 1e6


def _all_read_round_trip(stored: dict[str, Any]) -> None:
    """Decode, read every field, encode: the direct codec with nothing left unread (counters stay packed
    on both paths)."""
    profile = decode_profile(stored)
    for name in DEFERRED.values():
        getattr(profile, name)
    profile.message_ids  # noqa: B018 (read: the stored ids are unpacked only when a prune needs them)
    encode_profile(profile)


def _cases(engine: Engine, stored: dict[str, Any]) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Per case, (the boto3 path, the direct path) over one stored item."""
    from bench.profile_size import iso

    tier = tier_for_window(WINDOW)
    updated = int(stored["ua"]["N"])
    event = normalise({"type": "track", "event": "Product Viewed", "userId": stored["customer_id"]["S"],
                       "messageId": "codec-bench-1", "timestamp": iso(updated + 60),
                       "properties": {"product_id": "sku-1", "category": "shoes"}})

    def old_round_trip() -> None:
        serialise_item(Profile.from_item(deserialise_item(stored)).to_item())

    def new_round_trip() -> None:
        encode_profile(decode_profile(stored))

    def read_counter(profile: Profile) -> Profile:
        counter = profile.counter(COUNTER)
        assert counter is not None
        counter.window(tier, WINDOW, updated)
        return profile

    def old_read_counter() -> None:
        serialise_item(read_counter(Profile.from_item(deserialise_item(stored))).to_item())

    def new_read_counter() -> None:
        encode_profile(read_counter(decode_profile(stored)))

    def old_fold() -> None:
        profile = Profile.from_item(deserialise_item(stored))
        engine.apply(profile, [event], updated + 60)
        serialise_item(profile.to_item())

    def new_fold() -> None:
        profile = decode_profile(stored)
        engine.apply(profile, [event], updated + 60)
        encode_profile(profile)

    return {"round_trip": (old_round_trip, new_round_trip),
            "round_trip_all_read": (old_round_trip, lambda: _all_read_round_trip(stored)),
            "read_counter": (old_read_counter, new_read_counter),
            "fold_event": (old_fold, new_fold)}


def measure(heavy_events: int = 50_000, loops: int = 200) -> dict[str, Any]:
    from bench.profile_size import heavy_profile, typical_profile

    engine = Engine(load_catalogue(ROOT / "segments"))
    record = analytics_message()
    floor = best_of(lambda: json.loads(record), loops * 20)
    figures: dict[str, Any] = {"codec.json_floor_bytes": len(record), "codec.json_floor_us": round(floor, 2)}
    profiles = {"typical": typical_profile(engine), "3kb": three_kb_profile(engine),
                "heavy": heavy_profile(engine, heavy_events)[0]}
    for name, profile in profiles.items():
        stored = serialise_item(profile.to_item())
        assert encode_profile(profile) == stored  # the same item, whichever path wrote it
        figures[f"codec.{name}.bytes"] = item_size(profile.to_item())
        runs = max(10, loops * 1500 // figures[f"codec.{name}.bytes"])
        for case, (old, new) in _cases(engine, stored).items():
            old_us, new_us = best_of(old, runs), best_of(new, runs)
            figures[f"codec.{name}.{case}"] = {
                "boto3_us": round(old_us, 1), "direct_us": round(new_us, 1), "ratio": round(old_us / new_us, 2),
                "boto3_floors": round(old_us / floor, 1), "direct_floors": round(new_us / floor, 1)}
    return figures


def main() -> int:
    json.dump(measure(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
