"""The timers sweep (cdp.pipeline.timers) over the in-memory store and due index, with the real catalogue.

Every expected moment is worked out from the segment definitions (segments/*.yaml) and the window
semantics of segments/README.md: recency, absence and channel windows are exact to the second;
windowed counts use epoch-aligned buckets (hours up to 48h, UTC days up to 35d, weeks from Thursday
00:00 UTC beyond), and an event leaves a window of W at the start of the bucket that begins W after
the start of its own bucket. 2024-03-04 is a Monday; its week bucket starts on Thursday 2024-02-29.
Events reach the profiles through ``ingest_batch``, one stream record per message.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import ENTERED, EXITED, Engine
from cdp.core.profile import Profile, due_shard
from cdp.pipeline.ingest import StreamRecord, ingest_batch
from cdp.pipeline.timers import DUE_SHARDS, DueIndex, DuePage, SweepResult, sweep
from cdp.ports import QuarantinedRecord, TransientError
from cdp_dev.memory import MemoryDueIndex, MemoryProfileStore

ENGINE = Engine(load_catalogue(Path(__file__).resolve().parents[2] / "segments"))
WEB = {"library": {"name": "analytics.js"}}
EMAIL: dict[str, Any] = {}  # Email spec events are always on the email channel
CART = "cart-abandoners"
OPEN, CLICK = "Email Opened", "Email Link Clicked"
_ids = itertools.count(1)


def ts(text: str) -> int:
    """'2024-03-04 10:00' (UTC) as Unix seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


class Ev(NamedTuple):
    when: str
    event: str | None = None
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    kind: str = "track"
    traits: dict[str, Any] | None = None


def view(when: str) -> Ev:
    return Ev(when, "Product Viewed", {"product_id": "sku-1", "price": 25.0})


def add(when: str, product: str = "sku-1") -> Ev:
    return Ev(when, "Product Added", {"product_id": product, "price": 25.0, "quantity": 1})


def order(when: str, order_id: str, revenue: float = 50.0) -> Ev:
    return Ev(when, "Order Completed", {"order_id": order_id, "revenue": revenue})


def email(when: str, event: str) -> Ev:
    return Ev(when, event, {"email_id": "e1"}, EMAIL)


def record(user: str, ev: Ev) -> StreamRecord:
    """One stream record holding a Segment-spec message with a unique messageId and an ISO 'Z' timestamp."""
    message: dict[str, Any] = {"type": ev.kind, "messageId": f"timers-{next(_ids):07d}", "userId": user,
                               "timestamp": datetime.fromtimestamp(ts(ev.when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "context": WEB if ev.context is None else ev.context}
    for key, value in (("event", ev.event), ("properties", ev.properties), ("traits", ev.traits)):
        if value is not None:
            message[key] = value
    return StreamRecord(sequence=str(next(_ids)), partition_key=user, data=json.dumps(message).encode())


class NoQuarantine:
    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        pytest.fail(f"quarantined: {[r.reason for r in records]}")


def ingest(store: MemoryProfileStore, clock: FixedClock, pairs: Sequence[tuple[str, Ev]]) -> None:
    """One stream batch, ingested with the clock at its latest event."""
    clock.set(max(ts(ev.when) for _, ev in pairs))
    result = ingest_batch([record(user, ev) for user, ev in pairs], ENGINE, store, NoQuarantine(), clock)
    assert result.failed == [] and result.applied == len(pairs), result.failure_reasons


def sweep_at(store: MemoryProfileStore, clock: FixedClock, when: float, **options: Any) -> SweepResult:
    clock.set(when)
    return sweep(MemoryDueIndex(store), store, ENGINE, clock, **options)


def of(result: SweepResult, user: str, segment: str) -> list[tuple[str, int]]:
    return [(t.kind, t.at) for t in result.transitions if t.customer_id == user and t.segment_id == segment]


# ---- 1, 2: every time-driven segment fires at its deadline, not a second before, and not when replaced ----


class Case(NamedTuple):
    events: list[Ev]
    deadline: str  # derived from the definition, see the comment of each case
    kind: str  # what the segment does when the deadline passes
    cancel: list[Ev]  # a newer event before the deadline that replaces it
    settle: str | None = None  # earlier moment whose own deadlines must be swept first


def views(day: str) -> list[Ev]:
    return [view(f"{day} 10:{m}0") for m in range(5)]


BURST = [view("2024-03-04 12:00:30"), view("2024-03-04 12:05:00"), view("2024-03-04 12:09:50")]
CASES = {
    # 30d window in UTC days: the 03-04 day bucket leaves at 04-03 00:00; 5 more views on 03-20 keep 5.
    "browsers": Case(views("2024-03-04"), "2024-04-03 00:00", EXITED, views("2024-03-20")),
    # absence within 48h: true at add + 48h; an order at 47h means nothing was abandoned.
    "cart-abandoners": Case([add("2024-03-04 10:00")], "2024-03-06 10:00", ENTERED, [order("2024-03-06 09:00", "o1")]),
    # recency 30d: exact, 30 days after the click; a newer click moves it.
    "email-responders": Case([email("2024-03-04 09:05", CLICK)], "2024-04-03 09:05", EXITED,
                             [email("2024-03-24 18:00", CLICK)]),
    # 24h in hour buckets: at 03-05 10:00 the 10:15 and 10:40 views drop (4 left, not > 5); two more keep 6.
    "engaged-browsers": Case([view(f"2024-03-04 {t}") for t in ("10:15", "10:40", "11:05", "12:00", "13:59", "15:20")],
                             "2024-03-05 10:00", EXITED, [view("2024-03-04 20:00"), view("2024-03-04 20:30")]),
    # 7d count in UTC days: the 03-04 views leave at 03-11 00:00, before the sign-up's 03-11 10:00.
    "high-engagement-new": Case(
        [Ev("2024-03-04 10:00", "Signed Up"), *(view(f"2024-03-04 11:{m}0") for m in range(3)),
         Ev("2024-03-04 12:00", "Newsletter Subscribed"), add("2024-03-05 09:00")],
        "2024-03-11 00:00", EXITED, [view(f"2024-03-06 10:{m}0") for m in range(3)]),
    # 30d in UTC days: the 03-04 order's day leaves at 04-03 00:00 (3 left, not > 3); a 5th order keeps 4.
    "high-frequency": Case([order(w, f"o{n}") for n, w in enumerate(
        ["2024-03-04 15:00", "2024-03-10 09:00", "2024-03-20 09:00", "2024-03-25 09:00"])],
        "2024-04-03 00:00", EXITED, [order("2024-03-30 09:00", "o5")]),
    # 3 views in 10 minutes before the add; absence within 24h: add + 24h; an order at 23h50m ends it.
    "high-intent-abandoners": Case([*BURST, add("2024-03-04 12:09:55")], "2024-03-05 12:09:55", ENTERED,
                                   [order("2024-03-05 12:00", "o1")]),
    # 4 orders of 150 (600 > 500): recency 30d of the last (03-07 10:00); a 5th order moves it.
    "high-value-recent-buyer": Case([order(f"2024-03-0{d} 10:00", f"o{d}", 150.0) for d in range(4, 8)],
                                    "2024-04-06 10:00", EXITED, [order("2024-03-20 10:00", "o9", 150.0)]),
    # 2 clicks / 3 opens; at 04-03 00:00 the 03-04 open and click leave: 1/2 is not > 0.5. A 3rd click keeps 2/2.
    "highly-engaged": Case(
        [email(w, e) for w, e in [("2024-03-04 09:00", OPEN), ("2024-03-04 09:05", CLICK), ("2024-03-05 09:00", OPEN),
                                  ("2024-03-06 09:00", OPEN), ("2024-03-06 09:05", CLICK)]],
        "2024-04-03 00:00", EXITED, [email("2024-03-20 09:05", CLICK)]),
    # 5 orders; loyal once recent-buyers (higher priority) lets go at 03-15 10:00; recency 53w of 03-08 10:00
    # ends at 2025-03-14 10:00. A new order hands the customer to recent-buyers and restarts the 53 weeks.
    "loyal-customers": Case([order(f"2024-03-0{d} 10:00", f"o{d}") for d in range(4, 9)], "2025-03-14 10:00",
                            EXITED, [order("2025-03-10 10:00", "o9")], settle="2024-03-15 10:00"),
    # absence within 0s, expire 48h: out at add + 48h; a second add 22h later restarts the 48 hours.
    "potential-abandoners": Case([add("2024-03-04 10:00")], "2024-03-06 10:00", EXITED,
                                 [add("2024-03-05 08:00", "sku-2")]),
    # recency 7d: out 7 days after the order; an order on day 6 moves it.
    "recent-buyers": Case([order("2024-03-04 10:00", "o1")], "2024-03-11 10:00", EXITED,
                          [order("2024-03-10 10:00", "o2")]),
    # 26w in weeks from Thursday: 03-04 is in the week of Thu 02-29, which leaves 26 weeks later, Thu 08-29.
    "repeat-buyers": Case([order(w, f"o{n}") for n, w in enumerate(["2024-03-04 10:00", "2024-04-15 10:00",
                                                                    "2024-05-20 10:00"])],
                          "2024-08-29 00:00", EXITED, [order("2024-08-01 10:00", "o4")]),
    # channel web within 30d: exact, 30 days after the page view; a web identify is a newer web visit.
    "web-only-visitors": Case([Ev("2024-03-04 09:00", kind="page", properties={"path": "/"})], "2024-04-03 09:00",
                              EXITED, [Ev("2024-03-20 09:30", kind="identify", traits={"plan": "free"})]),
}


def test_the_cases_cover_every_time_driven_segment() -> None:
    # Population statistics, a hand-kept list and computed traits (only their job changes them): no deadlines.
    untimed = {"premium-customers", "vip", "champions", "at-risk-high-value", "top-spend-cluster"}
    assert set(CASES) == set(ENGINE.catalogue.segments) - untimed


def prepare(segment: str, case: Case) -> tuple[MemoryProfileStore, FixedClock, str]:
    store, clock, user = MemoryProfileStore(), FixedClock(0), f"cust-{segment}"
    for ev in case.events:  # one batch each, with the clock at the event
        ingest(store, clock, [(user, ev)])
    if case.settle is not None:
        sweep_at(store, clock, ts(case.settle))
    return store, clock, user


@pytest.mark.parametrize("segment", sorted(CASES))
def test_segment_changes_exactly_at_its_deadline(segment: str) -> None:
    case = CASES[segment]
    store, clock, user = prepare(segment, case)
    deadline = ts(case.deadline)
    assert store.items[user]["dl"][segment] == deadline

    version = store.items[user]["v"]
    early = sweep_at(store, clock, deadline - 1)
    assert of(early, user, segment) == []
    assert early.written == early.reevaluated and store.items[user]["v"] == version + early.written

    version = store.items[user]["v"]
    due = sweep_at(store, clock, deadline)
    assert of(due, user, segment) == [(case.kind, deadline)]
    assert (due.reevaluated, due.written, due.unfinished, due.failures) == (1, 1, False, [])
    item = store.items[user]
    assert item["v"] == version + 1  # exactly one write per re-evaluation
    # The write carries its transitions, so the table stream publishes them.
    assert item["tx"] == [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in due.transitions]
    assert (segment in item.get("m", {})) == (case.kind == ENTERED)
    assert sweep_at(store, clock, deadline).due == 0  # it left the due range: the next run has nothing


@pytest.mark.parametrize("segment", sorted(CASES))
def test_new_event_before_the_deadline_replaces_it(segment: str) -> None:
    case = CASES[segment]
    store, clock, user = prepare(segment, case)
    deadline = ts(case.deadline)
    assert all(ts(ev.when) < deadline for ev in case.cancel)
    for ev in case.cancel:
        ingest(store, clock, [(user, ev)])
    assert store.items[user].get("dl", {}).get(segment) != deadline
    result = sweep_at(store, clock, deadline)
    assert of(result, user, segment) == []


# ---- 3: a run that stops early leaves the rest to the next run ---------------------------------------------


def ids_in_shard(shard: str, count: int, prefix: str) -> list[str]:
    candidates = (f"{prefix}-{n:05d}" for n in itertools.count())
    return list(itertools.islice((c for c in candidates if due_shard(c) == shard), count))


def pages(allowed: int) -> Callable[[], bool]:
    """A has_time that allows ``allowed`` page reads in a run."""
    calls = itertools.count(1)
    return lambda: next(calls) <= allowed


def test_sweep_split_over_runs_by_the_time_left() -> None:
    # 250 customers due together in one shard: 13 pages of 20. With 40 pages a run and the busy shard
    # swept last (rotation), run 1 reads 31 empty shards and 9 pages (180 customers), then stops mid-shard;
    # run 2 (rotation + 1, as the next minute's run) reads the remaining 70 and every other shard.
    shard = "07"
    users = ids_in_shard(shard, 250, "split")
    store, clock = MemoryProfileStore(), FixedClock(0)
    ingest(store, clock, [(u, add("2024-03-04 10:00")) for u in users])
    deadline = ts("2024-03-06 10:00")
    runs: list[SweepResult] = []
    while not runs or runs[-1].unfinished:
        assert len(runs) < 10
        rotation = (int(shard) + 1 + len(runs)) % DUE_SHARDS
        runs.append(sweep_at(store, clock, deadline + 60 * len(runs), page_size=20, has_time=pages(40),
                             rotation=rotation))
    assert [r.transitioned for r in runs] == [180, 70]
    assert [r.unfinished for r in runs] == [True, False]
    entered = Tally(t.customer_id for r in runs for t in r.transitions if t.segment_id == CART)
    assert entered == dict.fromkeys(users, 1)
    assert all(store.items[u]["v"] == 2 for u in users)
    assert sweep_at(store, clock, deadline + 600).due == 0


def test_run_without_time_changes_nothing() -> None:
    store, clock = MemoryProfileStore(), FixedClock(0)
    ingest(store, clock, [(f"late-{n}", add("2024-03-04 10:00")) for n in range(5)])
    before = {u: store.items[u] for u in store.items}
    store.requests.clear()
    result = sweep_at(store, clock, ts("2024-03-06 10:00"), has_time=lambda: False)
    assert result.unfinished and (result.pages, result.due, result.transitions) == (0, 0, [])
    assert {u: store.items[u] for u in store.items} == before and sum(store.requests.values()) == 0


# ---- 4, 5: costs --------------------------------------------------------------------------------------------


def populate(store: MemoryProfileStore, count: int, prefix: str, added_at: str) -> None:
    """``count`` stored customers like one ingested cart add at ``added_at`` (due 48h later)."""
    template = MemoryProfileStore()
    ingest(template, FixedClock(0), [("template", add(added_at))])
    item = template.items["template"]
    for n in range(len(store.items), len(store.items) + count):
        customer_id = f"{prefix}-{n:06d}"
        store.put({**item, "customer_id": customer_id, "ds": due_shard(customer_id)})


def test_idle_sweep_costs_32_queries_whatever_the_table_size() -> None:
    store, clock = MemoryProfileStore(), FixedClock(0)
    costs = []
    for total in (1_000, 10_000):
        populate(store, total - len(store.items), "idle", "2024-03-04 10:00")
        assert len(store.items) == total
        store.requests.clear()
        result = sweep_at(store, clock, ts("2024-03-06 10:00") - 1)
        assert (result.due, result.pages, result.unfinished) == (0, DUE_SHARDS, False)
        costs.append(dict(store.requests))
    assert costs == [{"Query": 32}] * 2  # no BatchGetItem, no PutItem


class PageLog:
    """A due index that remembers how many entries each page it served had."""

    def __init__(self, inner: DueIndex) -> None:
        self.inner, self.sizes = inner, list[int]()

    def due(self, shard: str, until: int, limit: int, cursor: object | None) -> DuePage:
        page = self.inner.due(shard, until, limit, cursor)
        self.sizes.append(len(page.entries))
        return page


def test_cost_per_due_customer_is_constant() -> None:
    totals = []
    for due in (100, 1_000):
        store, clock = MemoryProfileStore(), FixedClock(ts("2024-03-06 10:00"))
        populate(store, due, "due", "2024-03-04 10:00")
        store.requests.clear()
        index = PageLog(MemoryDueIndex(store))
        result = sweep(index, store, ENGINE, clock, page_size=100)
        assert (result.due, result.transitioned, result.unfinished) == (due, due, False)
        assert store.requests["PutItem"] == due
        assert store.requests["BatchGetItem"] == sum(1 for size in index.sizes if size)
        assert store.requests["Query"] == len(index.sizes) == result.pages
        totals.append(sum(store.requests.values()))
    # 1 PutItem each, plus at most 32 Query and 32 BatchGetItem shared by all (no shard holds 100 here),
    # so 1 .. 1.64 requests per due customer; each of the 900 extra customers costs 1 .. 1 + 32/900.
    per_customer = [totals[0] / 100, totals[1] / 1_000]
    assert all(1 <= cost <= 1.64 for cost in per_customer) and per_customer[0] - per_customer[1] < 0.64
    assert 1 <= (totals[1] - totals[0]) / 900 <= 1 + 32 / 900


# ---- 6: ingest writes in between ----------------------------------------------------------------------------


class RacingStore:
    """The memory store, where ingest writes a customer in between the sweep's read and its first save."""

    def __init__(self, inner: MemoryProfileStore, race: Callable[[str], None]) -> None:
        self.inner, self.race, self.raced = inner, race, set[str]()

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        return self.inner.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        if profile.customer_id not in self.raced:
            self.raced.add(profile.customer_id)
            self.race(profile.customer_id)  # the stored version is now newer: the save raises ConflictError
        self.inner.save(profile, expected_version)


@pytest.mark.parametrize(("event", "still_due"), [
    pytest.param(order("2024-03-06 09:59", "o1"), False, id="order-cancels-the-deadline"),
    pytest.param(view("2024-03-06 09:59"), True, id="view-leaves-it-due"),
])
def test_sweep_loses_a_race_with_ingest(event: Ev, still_due: bool) -> None:
    store, clock = MemoryProfileStore(), FixedClock(0)
    ingest(store, clock, [("racer", add("2024-03-04 10:00"))])
    deadline = ts("2024-03-06 10:00")

    def race(user: str) -> None:  # an ingest whose clock is 30 s behind the sweep's
        result = ingest_batch([record(user, event)], ENGINE, store, NoQuarantine(), FixedClock(deadline - 30))
        assert result.customers_written == 1

    clock.set(deadline)
    store.requests.clear()
    result = sweep(MemoryDueIndex(store), RacingStore(store, race), ENGINE, clock)
    assert (result.conflicts, result.failures) == (1, [])
    assert store.requests["BatchGetItem"] == 3  # the sweep's read, ingest's read, the sweep's reload
    item = store.items["racer"]
    if still_due:
        assert (result.stale, result.written, item["v"]) == (0, 1, 3)
        assert of(result, "racer", CART) == [(ENTERED, deadline)] and CART in item["m"]
    else:
        assert (result.stale, result.written, item["v"]) == (1, 0, 2)
        assert result.transitions == [] and CART not in item.get("m", {})
        assert CART not in item.get("dl", {}) and item["nd"] > deadline


class FrozenIndex:
    """A due index that still serves the entries it held at one moment (it is eventually consistent)."""

    def __init__(self, index: DueIndex, until: int) -> None:
        self.entries = {f"{s:02d}": index.due(f"{s:02d}", until, 10_000, None).entries for s in range(DUE_SHARDS)}

    def due(self, shard: str, until: int, limit: int, cursor: object | None) -> DuePage:
        return DuePage(self.entries[shard], None)


def test_stale_index_entries_are_skipped_and_not_written() -> None:
    store, clock = MemoryProfileStore(), FixedClock(0)
    users = [f"stale-{n}" for n in range(12)]
    ingest(store, clock, [(u, add("2024-03-04 10:00")) for u in users])
    deadline = ts("2024-03-06 10:00")
    frozen = FrozenIndex(MemoryDueIndex(store), deadline)
    assert sweep_at(store, clock, deadline).transitioned == len(users)
    before = {u: store.items[u] for u in users}
    store.requests.clear()
    clock.set(deadline + 60)
    result = sweep(frozen, store, ENGINE, clock)
    assert (result.due, result.stale, result.reevaluated, result.written) == (len(users), len(users), 0, 0)
    assert result.transitions == [] and store.requests["PutItem"] == 0
    assert {u: store.items[u] for u in users} == before


# ---- 7: delays ----------------------------------------------------------------------------------------------


def test_delays_measure_now_minus_deadline() -> None:
    store, clock = MemoryProfileStore(), FixedClock(0)
    ingest(store, clock, [("late-0", add("2024-03-04 10:00:00")), ("late-30", add("2024-03-04 10:00:30")),
                          ("late-60", add("2024-03-04 10:01:00"))])
    result = sweep_at(store, clock, ts("2024-03-06 10:01:30"))  # 90 s after the first deadline
    assert sorted(result.delays) == [30.0, 60.0, 90.0]
    assert (result.delay_p50, result.delay_max) == (60.0, 90.0)


# ---- 8: transient errors --------------------------------------------------------------------------------------


class Flaky:
    """The memory store and due index, where one call raises TransientError once: ``fail`` names which."""

    def __init__(self, store: MemoryProfileStore, fail: str, shard: str) -> None:
        self.store, self.index, self.fail, self.shard = store, MemoryDueIndex(store), fail, shard

    def _once(self, call: str) -> None:
        if self.fail == call:
            self.fail = ""
            raise TransientError("throttled")

    def due(self, shard: str, until: int, limit: int, cursor: object | None) -> DuePage:
        if shard == self.shard:
            self._once("index")
        return self.index.due(shard, until, limit, cursor)

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        self._once("load")
        return self.store.load(customer_ids)

    def save(self, profile: Profile, expected_version: int) -> None:
        self._once("save")
        self.store.save(profile, expected_version)


@pytest.mark.parametrize(("fail", "reason"), [
    ("index", "due index could not be read"),
    ("load", "profiles could not be loaded"),
    ("save", "profile could not be written"),
])
def test_transient_error_leaves_the_work_for_the_next_run(fail: str, reason: str) -> None:
    store, clock = MemoryProfileStore(), FixedClock(0)
    users = [f"flaky-{n:02d}" for n in range(64)]
    ingest(store, clock, [(u, add("2024-03-04 10:00")) for u in users])
    deadline = ts("2024-03-06 10:00")
    flaky = Flaky(store, fail, due_shard(users[0]))
    clock.set(deadline)
    first = sweep(flaky, flaky, ENGINE, clock)
    assert first.unfinished and len(first.failures) == 1 and first.failures[0].startswith(reason)
    assert not any(u in first.failures[0] for u in users)  # reasons only, never identifiers
    assert 0 < first.transitioned < len(users)
    second = sweep_at(store, clock, deadline + 60)
    assert (second.unfinished, second.failures) == (False, [])
    entered = Tally(t.customer_id for r in (first, second) for t in r.transitions
                    if (t.segment_id, t.kind) == (CART, ENTERED))
    assert entered == dict.fromkeys(users, 1)
    assert first.transitioned + second.transitioned == len(users)
    assert all(CART in store.items[u]["m"] and store.items[u]["v"] == 2 for u in users)
