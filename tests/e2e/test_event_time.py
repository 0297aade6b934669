"""The local stack in event time: the timers sweep follows the stack's shared event clock.

The ingest moves the clock to the latest event it has seen; the sweep and the API read it. So a deadline
falls due when events say that much time has passed, whatever the wall clock says. (Wall time is covered by
test_local_stack.py::test_a_deadline_passing_enters_a_segment_with_no_new_event.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Running, bus_events, customer, started, track, wait_for

HOUR = 3600


@pytest.fixture(scope="module")
def event_stack() -> Iterator[Running]:
    with started("--clock", "event", "--timer-tick", "1", name="event") as running:
        yield running


def segment_ids(stack: Running, who: str) -> list[str]:
    status, body = stack.get(f"/customers/{who}/segments")
    assert status == 200, body
    return [s["id"] for s in body["segments"]]


def test_in_event_time_cart_abandonment_fires_48_hours_of_event_time_after_the_add(
        event_stack: Running, tmp_path: Path) -> None:
    """cart-abandoners: Product Added and no Order Completed within 48 h (segments/cart-abandoners.yaml)."""
    assert event_stack.health["clock"] == "event"
    shopper, bystander = customer(), customer()
    added = float(int(time.time()) - 60 * HOUR)  # in the past, as replayed history is
    sent = event_stack.send([track(shopper, "Product Added", at=added, product_id="p1", price=20)], tmp_path)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: event_stack.get(f"/customers/{shopper}")[0] == 200)
    time.sleep(3)  # three sweeps at event time T: nothing is due yet, though the wall clock is 60 h on
    assert "cart-abandoners" not in segment_ids(event_stack, shopper)
    assert not [e for e in bus_events(event_stack, shopper) if e["detail"]["segment"]["id"] == "cart-abandoners"]

    # Another customer's event 49 h later moves the shared clock; only the sweep can act on the shopper.
    event_stack.send([track(bystander, "Page Viewed", at=added + 49 * HOUR)], tmp_path)
    entered = wait_for(lambda: [e for e in bus_events(event_stack, shopper)
                                if e["detail"]["segment"]["id"] == "cart-abandoners"], timeout=30)
    assert entered[0]["detail-type"] == "Segment Entered"
    at = datetime.fromisoformat(entered[0]["time"].replace("Z", "+00:00")).timestamp()
    assert added + 48 * HOUR <= at <= added + 49 * HOUR  # in event time: 11 h before the wall clock
    assert "cart-abandoners" in segment_ids(event_stack, shopper)
    sweeps = event_stack.get("/health")[1]["last_sweep"]["targets"]
    assert sweeps and all(not target["unfinished"] for target in sweeps)
