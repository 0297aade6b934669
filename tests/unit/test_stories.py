"""Story tests for the default catalogue: one scripted customer per segment, replayed in event time.

Every expected moment is worked out from the segment definitions (segments/*.yaml) and the
documented semantics (segments/README.md, cdp/counters.py):

* ``recency``, ``absence`` and ``channel ... within`` are exact to the second: a 7d recency ends
  exactly 7 days after the event, an absence becomes true exactly ``within`` after its trigger.
* Windowed counts (``count``, ``ratio``) use epoch-aligned buckets: hours on the clock for
  windows up to 48h, UTC days up to 35d, weeks starting Thursday 00:00 UTC beyond. A window of W
  counts the current bucket and the W/s - 1 before it, so an event drops out at the *start* of
  the bucket that begins W after the start of its own bucket (which may be before it is W old).
* In an exclusive group only the eligible segment with the highest priority keeps the customer;
  the others leave with the clause ``group``.

2024-03-04 is a Monday; its week bucket starts on Thursday 2024-02-29.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine, Transition
from cdp.core.events import normalise
from cdp_dev.replay import Replay

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
WEB = {"library": {"name": "analytics.js"}}
MOBILE = {"library": {"name": "analytics-ios"}}
END = "2026-06-01 00:00"  # far enough past every story for all deadlines to have fired

_message_ids = itertools.count(1)


# ---- time -------------------------------------------------------------------------------------


def moment(text: str) -> datetime:
    """'2024-03-04 10:00' (or with seconds, or ISO with Z) as an aware UTC datetime."""
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def shown(value: str | float) -> str:
    when = moment(value) if isinstance(value, str) else datetime.fromtimestamp(value, UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


def later(text: str, **delta: float) -> str:
    """A moment this long after another: later('2024-03-04 10:00', days=30)."""
    return shown((moment(text) + timedelta(**delta)).timestamp())


def entered(when: str) -> tuple[str, str]:
    return ("entered", shown(when))


def exited(when: str) -> tuple[str, str]:
    return ("exited", shown(when))


# ---- messages ---------------------------------------------------------------------------------


def message(kind: str, user: str, when: str, *, event: str | None = None,
            properties: dict[str, Any] | None = None, traits: dict[str, Any] | None = None,
            context: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Segment-spec message; the context's library decides the channel (web by default)."""
    built: dict[str, Any] = {
        "type": kind,
        "messageId": f"story-{next(_message_ids):06d}",
        "userId": user,
        "timestamp": moment(when).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "context": WEB if context is None else context,
    }
    if event is not None:
        built["event"] = event
    if properties is not None:
        built["properties"] = properties
    if traits is not None:
        built["traits"] = traits
    return built


class Story:
    """One replay over the default catalogue, and a log of every transition it produced."""

    def __init__(self) -> None:
        self.replay = Replay(Engine(load_catalogue(SEGMENTS)))
        self.log: list[Transition] = []

    def send(self, *messages: dict[str, Any]) -> None:
        transitions, outcome = self.replay.apply([normalise(m) for m in messages])
        assert not outcome.rejected, outcome.rejected
        assert outcome.applied == len(messages)
        self.log += transitions

    def track(self, user: str, event: str, when: str, context: dict[str, Any] | None = None,
              **properties: Any) -> None:
        self.send(message("track", user, when, event=event, properties=properties, context=context))

    def identify(self, user: str, when: str, context: dict[str, Any] | None = None, **traits: Any) -> None:
        self.send(message("identify", user, when, traits=traits, context=context))

    def page(self, user: str, when: str) -> None:
        self.send(message("page", user, when, properties={"path": "/"}))

    def view(self, user: str, when: str, product: str = "sku-1") -> None:
        self.track(user, "Product Viewed", when, product_id=product, price=25.0)

    def add(self, user: str, when: str, product: str = "sku-1") -> None:
        self.track(user, "Product Added", when, product_id=product, price=25.0, quantity=1)

    def order(self, user: str, when: str, order_id: str, revenue: float = 50.0) -> None:
        self.track(user, "Order Completed", when, order_id=order_id, revenue=revenue)

    def cancel(self, user: str, when: str, order_id: str) -> None:
        self.track(user, "Order Cancelled", when, order_id=order_id)

    def refund(self, user: str, when: str, order_id: str, revenue: float) -> None:
        self.track(user, "Order Refunded", when, order_id=order_id, revenue=revenue)

    def computed(self, user: str, when: str, model: str, version: int, **traits: Any) -> None:
        """A traits job run writing this model's traits, then evaluating the segments that read a changed one."""
        self.log += self.replay.advance_to(moment(when).timestamp())
        profile = self.replay.profile(user)
        changed = profile.computed.put(model, version, int(moment(when).timestamp()), traits)
        self.log += self.replay.engine.evaluate(profile, self.replay.now, touched={f"t:{n}" for n in changed})

    def until(self, when: str) -> None:
        """Let the replayed clock run to this moment, firing every deadline it passes."""
        self.log += self.replay.advance_to(moment(when).timestamp())

    def refresh(self) -> None:
        self.log += self.replay.refresh_population()

    def transitions(self, user: str, segment: str) -> list[Transition]:
        return [t for t in self.log if t.customer_id == user and t.segment_id == segment]

    def of(self, user: str, segment: str) -> list[tuple[str, str]]:
        """The customer's transitions for one segment, as (kind, moment) in the order they happened."""
        return [(t.kind, shown(t.at)) for t in self.transitions(user, segment)]


@pytest.fixture
def story() -> Story:
    return Story()


STORIED_SEGMENTS = {
    "recent-buyers", "high-frequency", "premium-customers", "high-value-recent-buyer", "engaged-browsers",
    "potential-abandoners", "cart-abandoners", "high-intent-abandoners", "highly-engaged",
    "high-engagement-new", "repeat-buyers", "browsers", "email-responders", "web-only-visitors",
    "loyal-customers", "vip", "champions", "at-risk-high-value", "top-spend-cluster",
}


def test_every_catalogue_segment_has_a_story() -> None:
    """The catalogue holds exactly the segments this file tells stories about."""
    catalogue = load_catalogue(SEGMENTS)
    assert set(catalogue.segments) == STORIED_SEGMENTS
    groups = {s.id: s.group for s in catalogue.segments.values() if s.group}
    assert groups == {
        "recent-buyers": "buyer-lifecycle", "high-value-recent-buyer": "buyer-lifecycle",
        "loyal-customers": "buyer-lifecycle", "potential-abandoners": "cart-recovery",
        "cart-abandoners": "cart-recovery", "high-intent-abandoners": "cart-recovery",
    }


# ---- buyer lifecycle: recent-buyers, high-value-recent-buyer, loyal-customers -----------------


@pytest.mark.parametrize(
    ("later_orders", "expected"),
    [
        pytest.param([], [entered("2024-03-04 10:00"), exited("2024-03-11 10:00")], id="leaves-7d-after-order"),
        pytest.param(["2024-03-09 18:30"], [entered("2024-03-04 10:00"), exited("2024-03-16 18:30")],
                     id="second-order-postpones-exit"),
        pytest.param(["2024-03-11 10:00"], [entered("2024-03-04 10:00"), exited("2024-03-11 10:00"),
                                            entered("2024-03-11 10:00"), exited("2024-03-18 10:00")],
                     id="order-at-the-deadline-comes-after-it"),
    ],
)
def test_recent_buyers(story: Story, later_orders: list[str], expected: list[tuple[str, str]]) -> None:
    """Ann orders once; she is a recent buyer for exactly 7 days after her latest order."""
    story.order("ann", "2024-03-04 10:00", "o1")
    for number, when in enumerate(later_orders, start=2):
        story.order("ann", when, f"o{number}")
    story.until(END)
    assert story.of("ann", "recent-buyers") == expected


def test_recent_buyers_displaced_by_high_value_and_back_when_it_lapses(story: Story) -> None:
    """Bea's 4th order makes her high-value (recent-buyers yields); a cancellation hands her back."""
    for number, day in enumerate(["04", "05", "06", "07"], start=1):
        story.order("bea", f"2024-03-{day} 10:00", f"o{number}", revenue=150.0)  # 600 over 4 orders
    story.cancel("bea", "2024-03-09 12:00", "o1")  # 3 orders, 450: no longer high-value
    story.until(END)
    assert story.of("bea", "high-value-recent-buyer") == [entered("2024-03-07 10:00"), exited("2024-03-09 12:00")]
    assert story.of("bea", "recent-buyers") == [
        entered("2024-03-04 10:00"),
        exited("2024-03-07 10:00"),  # high-value-recent-buyer takes precedence
        entered("2024-03-09 12:00"),  # back: the last order (03-07 10:00) is still within 7 days
        exited("2024-03-14 10:00"),
    ]
    displaced = story.transitions("bea", "recent-buyers")[1]
    assert displaced.clause == "group"
    assert "high-value-recent-buyer" in displaced.reason
    assert story.of("bea", "loyal-customers") == []  # never 5 orders


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(None, [entered("2024-03-07 10:00"), exited("2024-04-06 10:00")],
                     id="leaves-30d-after-last-order"),
        pytest.param(("order", "2024-03-20 10:00"), [entered("2024-03-07 10:00"), exited("2024-04-19 10:00")],
                     id="new-order-postpones-exit"),
        pytest.param(("refund", "2024-03-10 12:00"), [entered("2024-03-07 10:00"), exited("2024-03-10 12:00")],
                     id="partial-refund-drops-revenue-to-480"),
    ],
)
def test_high_value_recent_buyer(story: Story, extra: tuple[str, str] | None,
                                 expected: list[tuple[str, str]]) -> None:
    """Cai places 4 orders of 150 (600 > 500, 4 > 3) and stays high-value while the last is within 30 days."""
    for number, day in enumerate(["04", "05", "06", "07"], start=1):
        story.order("cai", f"2024-03-{day} 10:00", f"o{number}", revenue=150.0)
    if extra is not None:
        kind, when = extra
        if kind == "order":
            story.order("cai", when, "o5", revenue=150.0)
        else:
            story.refund("cai", when, "o4", revenue=120.0)  # 600 - 120 = 480, still 4 orders
    story.until(END)
    assert story.of("cai", "high-value-recent-buyer") == expected


@pytest.mark.parametrize(
    ("extra", "expected_loyal", "expected_recent"),
    [
        pytest.param(
            None,
            [entered("2024-03-15 10:00"), exited(later("2024-03-08 10:00", weeks=53))],
            [entered("2024-03-04 10:00"), exited("2024-03-15 10:00")],
            id="takes-over-from-recent-buyers-then-53w",
        ),
        pytest.param(
            ("order", "2024-09-01 10:00"),
            [entered("2024-03-15 10:00"), exited("2024-09-01 10:00"),  # recent-buyers takes precedence
             entered("2024-09-08 10:00"), exited(later("2024-09-01 10:00", weeks=53))],
            [entered("2024-03-04 10:00"), exited("2024-03-15 10:00"),
             entered("2024-09-01 10:00"), exited("2024-09-08 10:00")],
            id="new-order-hands-back-and-postpones",
        ),
        pytest.param(
            ("cancel", "2024-05-01 12:00"),
            [entered("2024-03-15 10:00"), exited("2024-05-01 12:00")],
            [entered("2024-03-04 10:00"), exited("2024-03-15 10:00")],
            id="cancellation-leaves-4-orders",
        ),
    ],
)
def test_loyal_customers(story: Story, extra: tuple[str, str] | None, expected_loyal: list[tuple[str, str]],
                         expected_recent: list[tuple[str, str]]) -> None:
    """Dev orders 5 times (50 each): loyal once recent-buyers lets go, until 53 weeks after the last order."""
    for number, day in enumerate(["04", "05", "06", "07", "08"], start=1):
        story.order("dev", f"2024-03-{day} 10:00", f"o{number}")
    if extra is not None:
        kind, when = extra
        if kind == "order":
            story.order("dev", when, "o6")
        else:
            story.cancel("dev", when, "o2")
    story.until(END)
    assert story.of("dev", "loyal-customers") == expected_loyal
    assert story.of("dev", "recent-buyers") == expected_recent
    assert story.of("dev", "high-value-recent-buyer") == []  # revenue never above 500


def test_loyal_customers_after_high_value_lapses(story: Story) -> None:
    """Eve orders 5 times (150 each): high-value for 30 days after the last order, then loyal until 53 weeks."""
    for number, day in enumerate(["04", "05", "06", "07", "08"], start=1):
        story.order("eve", f"2024-03-{day} 10:00", f"o{number}", revenue=150.0)
    story.until(END)
    assert story.of("eve", "high-value-recent-buyer") == [entered("2024-03-07 10:00"), exited("2024-04-07 10:00")]
    assert story.of("eve", "loyal-customers") == [
        entered("2024-04-07 10:00"),
        exited(later("2024-03-08 10:00", weeks=53)),  # 2025-03-14 10:00
    ]
    assert story.of("eve", "recent-buyers") == [entered("2024-03-04 10:00"), exited("2024-03-07 10:00")]
    assert later("2024-03-08 10:00", weeks=53) == shown("2025-03-14 10:00")


# ---- order counts over windows: high-frequency, repeat-buyers ---------------------------------


@pytest.mark.parametrize(
    ("fifth_order", "expected"),
    [
        # The 03-04 order's UTC-day bucket leaves the 30-day window at 04-03 00:00 (it is 29d 9h old).
        pytest.param(None, [entered("2024-03-25 09:00"), exited("2024-04-03 00:00")], id="first-day-drops"),
        # A fifth order keeps 4 in the window when 03-04 drops; the 03-10 bucket leaves at 04-09 00:00.
        pytest.param("2024-03-30 09:00", [entered("2024-03-25 09:00"), exited("2024-04-09 00:00")],
                     id="fifth-order-postpones"),
    ],
)
def test_high_frequency(story: Story, fifth_order: str | None, expected: list[tuple[str, str]]) -> None:
    """Fay's 4th order within 30 days makes her high-frequency; she leaves when the first order's day drops."""
    for number, when in enumerate(["2024-03-04 15:00", "2024-03-10 09:00", "2024-03-20 09:00",
                                   "2024-03-25 09:00"], start=1):
        story.order("fay", when, f"o{number}")
    if fifth_order is not None:
        story.order("fay", fifth_order, "o5")
    story.until(END)
    assert story.of("fay", "high-frequency") == expected


@pytest.mark.parametrize(
    ("fourth_order", "expected"),
    [
        # 03-04 (Mon) is in the week bucket starting Thu 02-29; it leaves 26 weeks later, Thu 08-29 00:00.
        pytest.param(None, [entered("2024-05-20 10:00"), exited("2024-08-29 00:00")], id="first-week-drops"),
        # With a 4th order, the next to drop is 04-15 (week from Thu 04-11): out on Thu 10-10 00:00.
        pytest.param("2024-08-01 10:00", [entered("2024-05-20 10:00"), exited("2024-10-10 00:00")],
                     id="fourth-order-postpones"),
    ],
)
def test_repeat_buyers(story: Story, fourth_order: str | None, expected: list[tuple[str, str]]) -> None:
    """Gus orders 3 times in 26 weeks; he leaves when his first order's week bucket leaves the window."""
    for number, when in enumerate(["2024-03-04 10:00", "2024-04-15 10:00", "2024-05-20 10:00"], start=1):
        story.order("gus", when, f"o{number}")
    if fourth_order is not None:
        story.order("gus", fourth_order, "o4")
    story.until(END)
    assert story.of("gus", "repeat-buyers") == expected


# ---- premium-customers: population statistics -------------------------------------------------


def test_premium_customers(story: Story) -> None:
    """Hal out-spends a crowd: premium once statistics exist, out on a refund, in again, out when outspent."""
    for rank in range(1, 10):
        story.order(f"crowd-{rank}", f"2024-03-04 09:{rank:02d}", "c1", revenue=10.0 * rank)  # 10 .. 90
    story.order("hal", "2024-03-04 10:00", "h1", revenue=1000.0)
    assert story.of("hal", "premium-customers") == []  # no statistics yet: nobody is a member

    story.until("2024-03-05 00:00")
    story.refresh()  # 10 profiles: the 80th percentile (8th of 10) is 80
    story.refund("hal", "2024-03-06 12:00", "h1", revenue=950.0)  # 50 < 80
    story.order("hal", "2024-03-07 12:00", "h2", revenue=500.0)  # 550 >= 80
    for number in range(1, 11):
        story.order(f"whale-{number}", "2024-03-08 12:00", "w1", revenue=1000.0)
    story.until("2024-03-09 00:00")
    story.refresh()  # 20 profiles: the 80th percentile (16th of 20) is 1000; nobody is above it
    story.until(END)
    assert story.of("hal", "premium-customers") == [
        entered("2024-03-05 00:00"),
        exited("2024-03-06 12:00"),
        entered("2024-03-07 12:00"),
        exited("2024-03-09 00:00"),
    ]
    # Statistics exist from 03-05: a new order is judged against them at once (threshold 80).
    assert story.of("whale-1", "premium-customers") == [entered("2024-03-08 12:00"), exited("2024-03-09 00:00")]
    assert story.of("crowd-9", "premium-customers") == [entered("2024-03-05 00:00"), exited("2024-03-09 00:00")]
    assert story.of("crowd-1", "premium-customers") == []


def test_premium_customers_is_the_top_fifth(story: Story) -> None:
    """Ten customers with distinct revenues 10..100: the top 20% are the two biggest spenders."""
    for rank in range(1, 11):
        story.order(f"shopper-{rank:02d}", f"2024-03-04 09:{rank:02d}", "o1", revenue=10.0 * rank)
    story.until("2024-03-05 00:00")
    story.refresh()
    # "top 20%" of 10 distinct values is 2 customers: those strictly above the 8th value (80).
    members = sorted(t.customer_id for t in story.log if t.segment_id == "premium-customers")
    assert members == ["shopper-09", "shopper-10"]


# ---- browsing: engaged-browsers, browsers ------------------------------------------------------


@pytest.mark.parametrize(
    ("evening_views", "expected"),
    [
        # The two 10:xx views leave the 24h window with their hour bucket at 10:00 the next day: 4 left.
        pytest.param([], [entered("2024-03-04 15:20"), exited("2024-03-05 10:00")], id="first-hour-drops"),
        # Two more views keep 6 when 10:xx drops; the 11:xx bucket leaves at 11:00 and 5 is not > 5.
        pytest.param(["2024-03-04 20:00", "2024-03-04 20:30"],
                     [entered("2024-03-04 15:20"), exited("2024-03-05 11:00")], id="more-views-postpone"),
    ],
)
def test_engaged_browsers(story: Story, evening_views: list[str], expected: list[tuple[str, str]]) -> None:
    """Ivy views 6 products in an afternoon; she is engaged until the hour buckets of her first views drop."""
    for when in ["2024-03-04 10:15", "2024-03-04 10:40", "2024-03-04 11:05", "2024-03-04 12:00",
                 "2024-03-04 13:59", "2024-03-04 15:20", *evening_views]:
        story.view("ivy", when)
    story.until(END)
    assert story.of("ivy", "engaged-browsers") == expected


@pytest.mark.parametrize(
    ("sixth_view", "expected"),
    [
        # At 09:55 the window starts at 10:00 the day before: all 6 count, and 5 minutes later 10:xx drops.
        pytest.param("2024-03-05 09:55", [entered("2024-03-05 09:55"), exited("2024-03-05 10:00")],
                     id="just-inside-the-bucket"),
        # At 10:05 the window starts at 11:00 the day before: the 10:15 view (23h50m old) no longer counts.
        pytest.param("2024-03-05 10:05", [], id="first-view-already-dropped"),
        pytest.param(None, [], id="only-five-views"),
    ],
)
def test_engaged_browsers_bucket_edge(story: Story, sixth_view: str | None, expected: list[tuple[str, str]]) -> None:
    """Jon views 5 products one afternoon and a 6th the next morning, around the 24h bucket edge."""
    for when in ["2024-03-04 10:15", "2024-03-04 11:00", "2024-03-04 12:00", "2024-03-04 13:00",
                 "2024-03-04 14:00"]:
        story.view("jon", when)
    if sixth_view is not None:
        story.view("jon", sixth_view)
    story.until(END)
    assert story.of("jon", "engaged-browsers") == expected


def test_browsers(story: Story) -> None:
    """Kim views 5 products one morning and buys nothing: a browser until that day leaves the 30-day window."""
    for minute in range(0, 50, 10):
        story.view("kim", f"2024-03-04 10:{minute:02d}")
    story.until(END)
    assert story.of("kim", "browsers") == [entered("2024-03-04 10:40"), exited("2024-04-03 00:00")]


def test_browsers_cart_add_ends_it(story: Story) -> None:
    """Lea browses 5 products, then adds one to her cart: no longer a mere browser, at once."""
    for minute in range(0, 50, 10):
        story.view("lea", f"2024-03-04 10:{minute:02d}")
    story.add("lea", "2024-03-10 12:00")
    story.until(END)  # the views have left the window (04-03) before the add is 30 days old (04-09)
    assert story.of("lea", "browsers") == [entered("2024-03-04 10:40"), exited("2024-03-10 12:00")]


def test_browsers_entry_waits_for_old_purchase_to_age(story: Story) -> None:
    """Max bought on 03-01 and browses on 03-04: he becomes a browser when the order is exactly 30 days old."""
    story.order("max", "2024-03-01 08:00", "o1")
    for minute in range(0, 50, 10):
        story.view("max", f"2024-03-04 10:{minute:02d}")
    story.until(END)
    assert story.of("max", "browsers") == [entered("2024-03-31 08:00"), exited("2024-04-03 00:00")]


# ---- cart recovery: potential-abandoners -> cart-abandoners, high-intent-abandoners -----------


@pytest.mark.parametrize(
    ("purchase", "expected_potential", "expected_cart"),
    [
        pytest.param(None,
                     [entered("2024-03-04 10:00"), exited("2024-03-06 10:00")],
                     [entered("2024-03-06 10:00"), exited("2024-04-03 10:00")],
                     id="hand-over-at-48h-then-30d-expiry"),
        pytest.param("2024-03-06 09:00",
                     [entered("2024-03-04 10:00"), exited("2024-03-06 09:00")],
                     [],
                     id="purchase-at-47h-no-abandonment"),
        pytest.param("2024-03-10 12:00",
                     [entered("2024-03-04 10:00"), exited("2024-03-06 10:00")],
                     [entered("2024-03-06 10:00"), exited("2024-03-10 12:00")],
                     id="purchase-after-abandonment"),
    ],
)
def test_cart_abandonment(story: Story, purchase: str | None, expected_potential: list[tuple[str, str]],
                          expected_cart: list[tuple[str, str]]) -> None:
    """Ned adds to cart: a potential abandoner at once, a cart abandoner after 48h without buying."""
    story.add("ned", "2024-03-04 10:00")
    if purchase is not None:
        story.order("ned", purchase, "o1")
    story.until(END)
    assert story.of("ned", "potential-abandoners") == expected_potential
    assert story.of("ned", "cart-abandoners") == expected_cart
    assert story.of("ned", "high-intent-abandoners") == []  # no burst of views before the add


def test_cart_abandonment_buy_now(story: Story) -> None:
    """Ben adds to cart and orders in the same second: the order is at the trigger, so nothing was abandoned."""
    story.send(
        message("track", "ben", "2024-03-04 10:00", event="Product Added",
                properties={"product_id": "sku-1", "price": 25.0}),
        message("track", "ben", "2024-03-04 10:00", event="Order Completed",
                properties={"order_id": "o1", "revenue": 25.0}),
    )
    story.until(END)
    assert story.of("ben", "potential-abandoners") == []
    assert story.of("ben", "cart-abandoners") == []
    assert story.of("ben", "recent-buyers") == [entered("2024-03-04 10:00"), exited("2024-03-11 10:00")]


def test_cart_abandonment_second_add_restarts_the_wait(story: Story) -> None:
    """Ola adds to cart twice, 22 hours apart: the 48h wait and the 30d expiry count from the later add."""
    story.add("ola", "2024-03-04 10:00", product="sku-1")
    story.add("ola", "2024-03-05 08:00", product="sku-2")
    story.until(END)
    assert story.of("ola", "potential-abandoners") == [entered("2024-03-04 10:00"), exited("2024-03-07 08:00")]
    assert story.of("ola", "cart-abandoners") == [entered("2024-03-07 08:00"), exited("2024-04-04 08:00")]


def test_cart_abandonment_new_add_after_purchase(story: Story) -> None:
    """Pia adds, buys at 47h, adds again: the earlier purchase does not cover the new add."""
    story.add("pia", "2024-03-04 10:00")
    story.order("pia", "2024-03-06 09:00", "o1")
    story.add("pia", "2024-03-08 10:00")
    story.until(END)
    assert story.of("pia", "potential-abandoners") == [
        entered("2024-03-04 10:00"), exited("2024-03-06 09:00"),
        entered("2024-03-08 10:00"), exited("2024-03-10 10:00"),
    ]
    assert story.of("pia", "cart-abandoners") == [entered("2024-03-10 10:00"), exited("2024-04-07 10:00")]


def test_high_intent_abandoner_full_journey(story: Story) -> None:
    """Quin views 3 products in 10 minutes and adds to cart: potential, high-intent at 24h, cart-abandoner at 14d."""
    for when in ["2024-03-04 12:00:30", "2024-03-04 12:05:00", "2024-03-04 12:09:50"]:
        story.view("quin", when)
    story.add("quin", "2024-03-04 12:09:55")
    story.until(END)
    assert story.of("quin", "potential-abandoners") == [entered("2024-03-04 12:09:55"),
                                                        exited("2024-03-05 12:09:55")]
    assert story.of("quin", "high-intent-abandoners") == [entered("2024-03-05 12:09:55"),
                                                          exited("2024-03-18 12:09:55")]
    # Eligible from 48h, but high-intent outranks it until its 14d expiry; then 30d after the add.
    assert story.of("quin", "cart-abandoners") == [entered("2024-03-18 12:09:55"), exited("2024-04-03 12:09:55")]
    handed_over = story.transitions("quin", "potential-abandoners")[1]
    assert handed_over.clause == "group"
    assert "high-intent-abandoners" in handed_over.reason


@pytest.mark.parametrize(
    ("views", "add_at"),
    [
        pytest.param(["2024-03-04 12:05:00", "2024-03-04 12:09:50"], "2024-03-04 12:09:55", id="burst-of-two"),
        # 10m window in minute buckets at 12:10:05 starts at 12:01: the 12:00:30 view (9m35s old) is out.
        pytest.param(["2024-03-04 12:00:30", "2024-03-04 12:05:00", "2024-03-04 12:09:50"], "2024-03-04 12:10:05",
                     id="first-view-minute-dropped"),
        pytest.param(["2024-03-04 11:40:00", "2024-03-04 11:45:00", "2024-03-04 11:50:00"], "2024-03-04 12:09:55",
                     id="burst-too-long-before-the-add"),
    ],
)
def test_high_intent_needs_the_burst_at_the_add(story: Story, views: list[str], add_at: str) -> None:
    """Rae's views do not make 3 within 10 minutes of her add: an ordinary abandoner, never high-intent."""
    for when in views:
        story.view("rae", when)
    story.add("rae", add_at)
    story.until(END)
    assert story.of("rae", "high-intent-abandoners") == []
    assert story.of("rae", "potential-abandoners") == [entered(add_at), exited(later(add_at, hours=48))]
    assert story.of("rae", "cart-abandoners") == [entered(later(add_at, hours=48)), exited(later(add_at, days=30))]


@pytest.mark.parametrize(
    ("purchase", "expected_potential", "expected_high_intent"),
    [
        pytest.param("2024-03-05 12:00",
                     [entered("2024-03-04 12:09:55"), exited("2024-03-05 12:00")], [],
                     id="purchase-within-24h"),
        pytest.param("2024-03-08 09:00",
                     [entered("2024-03-04 12:09:55"), exited("2024-03-05 12:09:55")],
                     [entered("2024-03-05 12:09:55"), exited("2024-03-08 09:00")],
                     id="purchase-after-entry"),
    ],
)
def test_high_intent_ended_by_purchase(story: Story, purchase: str, expected_potential: list[tuple[str, str]],
                                       expected_high_intent: list[tuple[str, str]]) -> None:
    """Sid has a burst of views and adds to cart, then buys: no (more) abandonment of any kind."""
    for when in ["2024-03-04 12:00:30", "2024-03-04 12:05:00", "2024-03-04 12:09:50"]:
        story.view("sid", when)
    story.add("sid", "2024-03-04 12:09:55")
    story.order("sid", purchase, "o1")
    story.until(END)
    assert story.of("sid", "potential-abandoners") == expected_potential
    assert story.of("sid", "high-intent-abandoners") == expected_high_intent
    assert story.of("sid", "cart-abandoners") == []


# ---- email: email-responders, highly-engaged ---------------------------------------------------


@pytest.mark.parametrize(
    ("clicks", "expected"),
    [
        pytest.param(["2024-03-04 09:05"], [entered("2024-03-04 09:05"), exited("2024-04-03 09:05")],
                     id="leaves-30d-after-click"),
        pytest.param(["2024-03-04 09:05", "2024-03-24 18:00"],
                     [entered("2024-03-04 09:05"), exited("2024-04-23 18:00")], id="new-click-postpones"),
    ],
)
def test_email_responders(story: Story, clicks: list[str], expected: list[tuple[str, str]]) -> None:
    """Tia clicks a link in an email; she is a responder for exactly 30 days after her latest click."""
    for when in clicks:
        story.track("tia", "Email Link Clicked", when, context={}, email_id="e1")
    story.until(END)
    assert story.of("tia", "email-responders") == expected


@pytest.mark.parametrize(
    ("late_engagement", "expected"),
    [
        # 04-03 00:00: the 03-04 open and click leave together, 1 click / 2 opens is not > 0.5.
        pytest.param(False, [entered("2024-03-06 09:05"), exited("2024-04-03 00:00")], id="first-day-drops"),
        # A third click on 03-20: 04-03 leaves 2/2 (= 1), 04-04 drops the 03-05 open and 2/1 has < 2 opens.
        pytest.param(True, [entered("2024-03-06 09:05"), exited("2024-04-04 00:00")], id="third-click-postpones"),
    ],
)
def test_highly_engaged(story: Story, late_engagement: bool, expected: list[tuple[str, str]]) -> None:
    """Uma opens 3 emails over 3 days and clicks in 2; she is highly engaged while over half her opens click."""
    opens = ["2024-03-04 09:00", "2024-03-05 09:00", "2024-03-06 09:00"]
    clicks = ["2024-03-04 09:05", "2024-03-06 09:05"]
    if late_engagement:
        clicks.append("2024-03-20 09:05")  # a link in an email opened earlier
    emails = [*((when, "Email Opened") for when in opens), *((when, "Email Link Clicked") for when in clicks)]
    for when, event in sorted(emails):
        story.track("uma", event, when, context={}, email_id="e1")
    story.until(END)
    # 03-04 09:05 is 1/1 (fewer than 2 opens), 03-05 09:00 is 1/2 (not > 0.5), 03-06 09:05 is 2/3.
    assert story.of("uma", "highly-engaged") == expected


# ---- new customers: high-engagement-new --------------------------------------------------------


def test_high_engagement_new_views_day_drops_first(story: Story) -> None:
    """Vic signs up, views 3 products, subscribes and adds to cart; the 7d count loses his views' day at midnight."""
    story.identify("vic", "2024-03-04 09:55", email="vic@example.com")
    story.track("vic", "Signed Up", "2024-03-04 10:00")
    for when in ["2024-03-04 11:00", "2024-03-04 11:10", "2024-03-04 11:20"]:
        story.view("vic", when)
    story.track("vic", "Newsletter Subscribed", "2024-03-04 12:00")
    story.add("vic", "2024-03-05 09:00")
    story.until(END)
    # Sign-up ends 03-11 10:00, but the 03-04 day bucket leaves the 7-day window at 03-11 00:00.
    assert story.of("vic", "high-engagement-new") == [entered("2024-03-05 09:00"), exited("2024-03-11 00:00")]


def test_high_engagement_new_first_sign_up_counts(story: Story) -> None:
    """Wes signs up twice; membership ends 7 days after the first sign-up, not the second."""
    story.track("wes", "Signed Up", "2024-03-04 10:00")
    for when in ["2024-03-05 08:00", "2024-03-05 08:10", "2024-03-05 08:20"]:
        story.view("wes", when)
    story.track("wes", "Newsletter Subscribed", "2024-03-05 08:30")
    story.add("wes", "2024-03-05 09:30")
    story.track("wes", "Signed Up", "2024-03-07 10:00")
    story.until(END)
    assert story.of("wes", "high-engagement-new") == [entered("2024-03-05 09:30"), exited("2024-03-11 10:00")]


@pytest.mark.parametrize(
    ("purchase", "expected"),
    [
        pytest.param("2024-03-06 15:00", [entered("2024-03-05 09:00"), exited("2024-03-06 15:00")],
                     id="first-order-ends-it"),
        pytest.param("2024-03-05 08:30", [], id="bought-before-the-add-never-enters"),
    ],
)
def test_high_engagement_new_ended_by_an_order(story: Story, purchase: str, expected: list[tuple[str, str]]) -> None:
    """Xan is a highly engaged newcomer until his first order: customers who bought are not 'never bought'."""
    story.track("xan", "Signed Up", "2024-03-04 10:00")
    for when in ["2024-03-04 11:00", "2024-03-04 11:10", "2024-03-04 11:20"]:
        story.view("xan", when)
    story.track("xan", "Newsletter Subscribed", "2024-03-04 12:00")
    if purchase < "2024-03-05 09:00":
        story.order("xan", purchase, "o1")
        story.add("xan", "2024-03-05 09:00")
    else:
        story.add("xan", "2024-03-05 09:00")
        story.order("xan", purchase, "o1")
    story.until(END)
    assert story.of("xan", "high-engagement-new") == expected


# ---- channels: web-only-visitors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("later_visit", "expected"),
    [
        pytest.param(None, [entered("2024-03-04 09:00"), exited("2024-04-03 09:00")], id="leaves-30d-after-visit"),
        # An identify from analytics.js is a web visit too.
        pytest.param(("identify", WEB, "2024-03-20 09:30"),
                     [entered("2024-03-04 09:00"), exited("2024-04-19 09:30")], id="web-identify-postpones"),
        # Once seen in the app, never web-only again, even after more web visits.
        pytest.param(("identify", MOBILE, "2024-03-10 08:00"),
                     [entered("2024-03-04 09:00"), exited("2024-03-10 08:00")], id="app-ends-it-for-good"),
    ],
)
def test_web_only_visitors(story: Story, later_visit: tuple[str, dict[str, Any], str] | None,
                           expected: list[tuple[str, str]]) -> None:
    """Yas visits the website; she is web-only for 30 days after her last web visit, until she uses the app."""
    story.page("yas", "2024-03-04 09:00")
    if later_visit is not None:
        _, context, when = later_visit
        story.identify("yas", when, context=context, plan="free")
        if context is MOBILE:
            story.page("yas", "2024-03-12 09:00")
    story.until(END)
    assert story.of("yas", "web-only-visitors") == expected


def test_messages_carry_the_channel() -> None:
    """The helper's contexts give the channels the stories rely on."""
    assert normalise(message("page", "z", "2024-03-04 09:00")).channel == "web"
    assert normalise(message("identify", "z", "2024-03-04 09:00", context=MOBILE)).channel == "mobile"
    assert normalise(message("track", "z", "2024-03-04 09:00", event="Email Opened", context={})).channel == "email"


# ---- vip: a static segment ---------------------------------------------------------------------


def test_vip_is_kept_by_hand_and_never_by_events_or_time() -> None:
    """Vera is put on the VIP list by hand; her events and weeks passing do not move her; removal does."""
    replay = Replay(Engine(load_catalogue(SEGMENTS)))
    start = datetime(2024, 3, 4, 9, tzinfo=UTC).timestamp()
    profile = replay.profile("vera")
    entered_by_hand = replay.engine.set_manual(profile, "vip", True, start)
    assert entered_by_hand is not None
    assert (entered_by_hand.kind, entered_by_hand.clause) == ("entered", "manual")
    assert replay.engine.set_manual(profile, "vip", True, start + 1) is None  # already a member: no transition
    view = {"type": "track", "event": "Product Viewed", "messageId": "v1", "userId": "vera",
            "timestamp": "2024-03-04T10:00:00Z", "properties": {"product_id": "p1"}}
    transitions, _ = replay.apply([normalise(view)])
    transitions += replay.advance_to(start + 60 * 86400)
    assert [t for t in transitions if t.segment_id == "vip"] == []
    assert "vip" in profile.memberships
    left = replay.engine.set_manual(profile, "vip", False, start + 61 * 86400)
    assert left is not None and left.kind == "exited" and "vip" not in profile.memberships
    with pytest.raises(ValueError, match="not an enabled static segment"):
        replay.engine.set_manual(profile, "recent-buyers", True, start)


# ---- computed traits: champions, at-risk-high-value, top-spend-cluster --------------------------

CHAMPION = {"rfm_recency": 5, "rfm_frequency": 4, "rfm_monetary": 3, "rfm_code": "543", "rfm_segment": "Champions"}


def test_champions_enter_when_the_rfm_job_names_them_and_leave_when_a_later_run_does_not(story: Story) -> None:
    story.order("carla", "2024-03-04 10:00", "c-1")
    story.computed("carla", "2024-03-05 03:00", "rfm", 1, **CHAMPION)
    story.computed("carla", "2024-04-05 03:00", "rfm", 2, **{**CHAMPION, "rfm_recency": 3, "rfm_code": "343",
                                                             "rfm_segment": "Loyal Customers"})
    assert story.of("carla", "champions") == [entered("2024-03-05 03:00"), exited("2024-04-05 03:00")]
    first = story.transitions("carla", "champions")[0]
    assert first.clause == "condition.trait" and "rfm_segment" in first.reason


def test_an_identify_trait_named_like_a_computed_one_is_never_read_by_a_rule(story: Story) -> None:
    story.identify("mallory", "2024-03-04 10:00", rfm_segment="Champions", cluster=0)
    story.until(END)
    assert story.of("mallory", "champions") == [] and story.of("mallory", "top-spend-cluster") == []


@pytest.mark.parametrize(("monetary", "expected"), [
    pytest.param(4, [entered("2024-05-01 03:00"), exited("2024-05-20 03:00")], id="high-value"),
    pytest.param(3, [], id="not-high-value"),
])
def test_at_risk_high_value_needs_both_models(story: Story, monetary: int, expected: list[tuple[str, str]]) -> None:
    story.order("hugo", "2024-03-04 10:00", "h-1", revenue=900)
    story.computed("hugo", "2024-03-05 03:00", "rfm", 1, rfm_recency=5, rfm_frequency=3, rfm_monetary=monetary,
                   rfm_code=f"53{monetary}", rfm_segment="Potential Loyalists")
    story.computed("hugo", "2024-03-05 03:00", "predictions", 1, churn_probability=0.2)
    story.computed("hugo", "2024-05-01 03:00", "predictions", 2, churn_probability=0.72)
    story.computed("hugo", "2024-05-10 03:00", "predictions", 3, churn_probability=0.69)  # within the tolerance
    story.computed("hugo", "2024-05-20 03:00", "predictions", 4, churn_probability=0.66)  # not above 0.7
    assert story.of("hugo", "at-risk-high-value") == expected


def test_top_spend_cluster_follows_the_cluster_trait(story: Story) -> None:
    story.order("nina", "2024-03-04 10:00", "n-1")
    story.computed("nina", "2024-03-05 03:00", "clusters", 1, cluster=0, cluster_distance=0.4)
    story.computed("nina", "2024-03-06 03:00", "clusters", 2, cluster=0, cluster_distance=0.6)  # still 0
    story.computed("nina", "2024-03-07 03:00", "clusters", 3, cluster=2, cluster_distance=1.1)
    assert story.of("nina", "top-spend-cluster") == [entered("2024-03-05 03:00"), exited("2024-03-07 03:00")]
