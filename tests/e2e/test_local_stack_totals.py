"""The local stack's /health counts what the ingest function did with every record it was given."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Running, customer, iso, track, wait_for


def ingest_totals(stack: Running) -> dict[str, int]:
    totals: dict[str, int] = stack.get("/health")[1]["ingest"]
    return totals


def test_health_counts_applied_duplicate_and_quarantined_events(stack: Running, tmp_path: Path) -> None:
    who = customer()
    before = ingest_totals(stack)
    viewed = track(who, "Product Viewed", product_id="p1")
    poison: dict[str, Any] = {"type": "track", "event": "Order Completed", "userId": who, "messageId": f"bad-{who}",
                              "timestamp": iso(time.time()),
                              "properties": {"order_id": f"o-{who}", "revenue": -10}}  # never applicable
    stack.send([viewed, track(who, "Product Added", product_id="p1", price=5), poison], tmp_path)
    wait_for(lambda: ingest_totals(stack)["records"] - before["records"] >= 3, timeout=30)
    stack.send([viewed], tmp_path)  # the same message again, as a producer retry sends it

    def moved() -> dict[str, int] | None:
        now = ingest_totals(stack)
        delta = {name: now[name] - before[name] for name in now}
        return delta if delta["applied"] + delta["duplicates"] + delta["quarantined"] >= 4 else None

    delta = wait_for(moved, timeout=30)
    assert delta == {"records": 4, "applied": 2, "duplicates": 1, "quarantined": 1, "retried": 0}
    assert set(stack.get("/health")[1]["changes"]) == {"records", "published", "retried"}
