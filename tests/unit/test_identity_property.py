"""Identity merges in the ingest agree with folding the union of every message under the final id map.

Hypothesis makes histories of two users (``u1``, ``u2``) and three or four anonymous ids: views, adds, orders (each
with its own order id and value) and page views per id, identify calls with traits per user, and merges of an
anonymous id into a user (``identify`` with both ids, or ``alias`` with ``previousId``), some of the same anonymous
id into both users. Each id's messages have increasing timestamps; across ids the times interleave freely. The
records (partition key = the id the message carries, one shard per key, a few shards) are delivered in batches in an
order that keeps each key's own order and interleaves the keys arbitrarily, and some batches are redelivered whole
or in part (the same record: same shard and sequence number), alone or ahead of a later batch.

The oracle (:mod:`tests.unit.identity_oracle`) knows no link, freeze or absorb: the first merge of an anonymous id
in application order wins, and every distinct message folds, at its canonical customer, into one fresh profile.
Per canonical customer, the ingest's profile must match it: orders, revenue, first and last order, the recent order
ids, each counter's lifetime figures and buckets, channels, traits, the last add, whether it is known, the ids merged
into it and exactly the message ids it has applied; the cart too when no order clears an item (every add after every
order). Each merged anonymous profile is frozen into its customer, and no order is counted on two live profiles.

What :mod:`cdp.core.merge` says differs by design is not generated: no message or order id is sent for two ids (so
nothing is applied on both sides of a merge), no refund, cancellation or ``Product Removed``, no anonymous identify
(traits come from the user side only, where the known side wins anyway), and no customer gets more than
``RECENT_ORDERS`` orders. Memberships, latches and context are not compared (a trigger's ``when`` and the last touch
are judged per side), and the cart only when no order clears an add, since an order on one side clears the other
side's item whole and a forwarded late add is not cleared by an order folded before it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.events import Event
from cdp.core.profile import RECENT_ORDERS, Profile
from cdp.pipeline.identity import Identity
from cdp.pipeline.ingest import ingest_batch
from cdp.ports import QuarantinedRecord
from cdp_dev.memory import MemoryIdentityMap, MemoryProfileStore
from tests.unit.identity_oracle import (
    SHARDS,
    STEP,
    USERS,
    B,
    Scenario,
    Step,
    cart_is_exact,
    final_map,
    fold_union,
    message,
)

ENGINE = Engine(load_catalogue(Path(__file__).resolve().parents[2] / "segments"))
NOW = B + 2 * 86400  # every event is a day or more old: all land in their buckets, none is in the future
ANONYMOUS_KINDS = ("view", "add", "order", "page")
USER_KINDS = ("view", "add", "order", "page", "identify")
MERGE_KINDS = ("merge-identify", "merge-alias")
ORDERS_PER_ANONYMOUS, ORDERS_PER_USER = 1, 2  # at most 4 + 2 orders on one customer, under RECENT_ORDERS
assert 4 * ORDERS_PER_ANONYMOUS + ORDERS_PER_USER <= RECENT_ORDERS


class NoQuarantine:
    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        pytest.fail(f"quarantined: {[r.reason for r in records]}")


# ---- the histories ----------------------------------------------------------------------------------------


def _own_steps(draw: st.DrawFn, pk: str, kinds: Sequence[str], most_orders: int) -> list[Step]:
    chosen = draw(st.lists(st.sampled_from(kinds), max_size=4))
    steps, orders = [], 0
    for number, kind in enumerate(chosen):
        if kind == "order":
            orders += 1
            if orders > most_orders:
                kind = "view"
        steps.append(Step(kind, pk, number, variant=draw(st.integers(0, 5))))
    return steps


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    anonymous = [f"a{i}" for i in range(1, draw(st.integers(3, 4)) + 1)]
    steps: dict[str, list[Step]] = {a: _own_steps(draw, a, ANONYMOUS_KINDS, ORDERS_PER_ANONYMOUS)
                                    for a in anonymous}
    merges = draw(st.lists(st.tuples(st.sampled_from(MERGE_KINDS), st.sampled_from(USERS), st.sampled_from(anonymous),
                                     st.integers(0, 5)), max_size=5))
    for user in USERS:
        own = _own_steps(draw, user, USER_KINDS, ORDERS_PER_USER)
        mine = [Step(kind, user, 100 + n, absorbed=anon, variant=variant)
                for n, (kind, to, anon, variant) in enumerate(merges) if to == user]
        steps[user] = list(draw(st.permutations(own + mine)))
    tokens = [pk for pk, own_steps in steps.items() for _ in own_steps]
    if not tokens:
        return Scenario((), (), {}, ())
    order = draw(st.permutations(tokens))  # the delivery order: each key's own order, keys interleaved
    slots = draw(st.permutations(range(len(order))))  # the times, independent of the delivery order
    times: dict[str, list[int]] = {}
    for position, pk in enumerate(order):
        times.setdefault(pk, []).append(slots[position])
    taken = dict.fromkeys(steps, 0)
    bodies, keys = [], []
    for pk in order:
        k = taken[pk]
        taken[pk] += 1
        bodies.append(message(steps[pk][k], B + STEP * sorted(times[pk])[k]))
        keys.append(pk)
    shards = {pk: SHARDS[draw(st.integers(0, len(SHARDS) - 1))] for pk in steps}
    return Scenario(tuple(bodies), tuple(keys), shards, _deliveries(draw, len(order)))


def _deliveries(draw: st.DrawFn, count: int) -> tuple[tuple[int, ...], ...]:
    """Consecutive batches of the history, and some redelivered (whole or in part) after their first delivery:
    as a batch of their own or ahead of a later batch."""
    cuts = draw(st.lists(st.booleans(), min_size=count - 1, max_size=count - 1))
    batches: list[list[int]] = [[0]]
    for index, cut in enumerate(cuts, start=1):
        if cut:
            batches.append([])
        batches[-1].append(index)
    alone: dict[int, list[list[int]]] = {}  # position -> redeliveries sent just before the batch there
    ahead: dict[int, list[int]] = {}  # position -> records redelivered in front of the batch there
    redeliveries = draw(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.booleans(),
                                           st.lists(st.booleans(), max_size=8)), max_size=3))
    for source, later, join, keep in redeliveries:
        source %= len(batches)
        batch = batches[source]
        part = [index for n, index in enumerate(batch) if n >= len(keep) or keep[n]]
        if not part:
            continue
        position = source + 1 + later % (len(batches) - source)
        if join and position < len(batches):
            ahead.setdefault(position, [])
            ahead[position] += [i for i in part if i not in ahead[position]]
        else:
            alone.setdefault(position, []).append(part)
    schedule: list[tuple[int, ...]] = []
    for position in range(len(batches) + 1):
        schedule += [tuple(part) for part in alone.get(position, [])]
        if position < len(batches):
            schedule.append(tuple(ahead.get(position, []) + batches[position]))
    return tuple(schedule)


# ---- the comparison ---------------------------------------------------------------------------------------


def _buckets(profile: Profile, key: str) -> tuple[Any, ...] | None:
    counter = profile.counter(key)
    if counter is None:
        return None
    return (counter.count, counter.total, counter.first, counter.last,
            {code: dict(buckets) for code, buckets in counter.buckets.items()})


def differences(stored: Profile, oracle: Profile, share: Sequence[Event], merged: set[str],
                every_message: set[str]) -> list[str]:
    """What differs between the ingest's profile of a customer and the oracle's, as readable lines."""
    found: list[str] = []

    def check(what: str, mine: object, theirs: object) -> None:
        if mine != theirs:
            found.append(f"{stored.customer_id} {what}: ingest {mine!r}, oracle {theirs!r}")

    check("orders", stored.orders, oracle.orders)
    check("revenue", stored.revenue, oracle.revenue)
    check("first order", stored.first_order, oracle.first_order)
    check("last order", stored.last_order, oracle.last_order)
    check("recent order ids", {o[0] for o in stored.recent_orders}, {o[0] for o in oracle.recent_orders})
    check("counter keys", set(stored.counter_keys()), set(oracle.counter_keys()))
    for key in set(stored.counter_keys()) & set(oracle.counter_keys()):
        check(f"counter {key}", _buckets(stored, key), _buckets(oracle, key))
    check("channels", stored.channels, oracle.channels)
    check("traits", stored.traits, oracle.traits)
    check("last add", stored.last_add, oracle.last_add)
    check("known", stored.known, oracle.known)
    check("merged ids", stored.merged_ids(), merged)
    mine = {m for m in every_message if stored.seen(m)}
    check("message ids applied", mine, {e.message_id for e in share})
    if cart_is_exact(share):
        check("cart", stored.cart, oracle.cart)
    return found


def ingest(scenario: Scenario) -> tuple[MemoryProfileStore, int, Tally[str]]:
    """Deliver the scenario's batches through the ingest with identity: the store, merges made, merges refused."""
    store, clock = MemoryProfileStore(), FixedClock(NOW)
    identity = Identity(MemoryIdentityMap())
    merges, refused = 0, Tally[str]()
    for batch in scenario.batches:
        result = ingest_batch([scenario.record(i) for i in batch], ENGINE, store, NoQuarantine(), clock,
                              identity=identity)
        assert result.failed == [], result.failure_reasons
        merges += result.identity.merges
        refused.update(result.identity.refused)
    return store, merges, refused


def run(scenario: Scenario) -> list[str]:
    """Ingest the scenario, then compare every customer with the oracle; the differences found."""
    store, merges, refused = ingest(scenario)
    events = scenario.events()
    canonical = final_map(events)
    expected = fold_union(events, canonical, ENGINE, NOW)
    shares: dict[str, list[Event]] = {}
    for event in events:
        shares.setdefault(canonical.get(event.customer_id, event.customer_id), []).append(event)
    stored = store.load(sorted({*scenario.partition_keys, *canonical}))
    live = {cid: profile for cid, profile in stored.items() if profile.merged_into is None}
    found: list[str] = []
    if set(live) != set(expected):
        found.append(f"live profiles {sorted(live)}, oracle's customers {sorted(expected)} "
                     f"(merged away: { {c: p.merged_into for c, p in stored.items() if p.merged_into} })")
    every_message = {e.message_id for e in events}
    for root, (oracle, _) in sorted(expected.items()):
        if root in live:
            merged = {anon for anon, user in canonical.items() if user == root}
            found += differences(live[root], oracle, shares[root], merged, every_message)
    found += frozen_and_counted_once(stored, live, canonical, events)
    if merges != len(canonical):
        found.append(f"merges made {merges}, the final id map has {len(canonical)}")
    if set(refused) - {"known"}:
        found.append(f"merges refused for {dict(refused)}")
    return found


def frozen_and_counted_once(stored: dict[str, Profile], live: dict[str, Profile], canonical: dict[str, str],
                            events: Sequence[Event]) -> list[str]:
    """Every merged anonymous profile frozen into its customer, and each order on one live profile only."""
    found: list[str] = []
    for anon, user in sorted(canonical.items()):
        frozen = stored.get(anon)
        if frozen is None or frozen.merged_into != user or frozen.memberships or frozen.deadlines:
            found.append(f"{anon} is not frozen into {user}: "
                         f"{None if frozen is None else (frozen.merged_into, frozen.memberships, frozen.deadlines)}")
    orders = sum(1 for e in events if e.name == "Order Completed")
    if sum(p.orders for p in live.values()) != orders:
        found.append(f"orders on live profiles {sum(p.orders for p in live.values())}, distinct orders {orders}")
    return found


# ---- the tests --------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_merges_in_any_interleaving_match_folding_the_union_under_the_final_id_map(scenario: Scenario) -> None:
    assert run(scenario) == []


def scenario_of(steps: Sequence[tuple[Step, int]], batches: Sequence[Sequence[int]],
                shards: dict[str, str] | None = None) -> Scenario:
    """A hand-made scenario: each step with its time slot, in delivery order."""
    keys = tuple(step.pk for step, _ in steps)
    return Scenario(tuple(message(step, B + STEP * slot) for step, slot in steps), keys,
                    shards or dict.fromkeys(keys, SHARDS[0]), tuple(tuple(b) for b in batches))


def test_the_first_merge_of_an_anonymous_id_wins_within_one_batch() -> None:
    steps = [(Step("view", "a1", 0), 0), (Step("order", "a1", 1, variant=2), 1),
             (Step("merge-identify", "u1", 100, absorbed="a1"), 2),
             (Step("merge-alias", "u2", 100, absorbed="a1"), 3), (Step("view", "a1", 2), 4)]
    assert run(scenario_of(steps, [[0, 1], [2, 3, 4]])) == []


def test_a_redelivered_losing_merge_changes_nothing() -> None:
    steps = [(Step("add", "a1", 0, variant=1), 5), (Step("merge-identify", "u2", 100, absorbed="a1"), 2),
             (Step("order", "u1", 0), 1), (Step("merge-identify", "u1", 101, absorbed="a1"), 3),
             (Step("add", "a1", 1), 6)]
    shards = {"a1": SHARDS[0], "u1": SHARDS[1], "u2": SHARDS[2]}
    assert run(scenario_of(steps, [[0], [1, 2], [3], [1, 3, 4], [0, 4]], shards)) == []


def test_the_oracle_sees_a_merge_that_the_ingest_did_not_make() -> None:
    """The comparison can fail: ingesting only the first batch of a history leaves its merge out."""
    steps = [(Step("order", "a1", 0), 0), (Step("merge-alias", "u1", 100, absorbed="a1"), 1)]
    whole = scenario_of(steps, [[0], [1]])
    found = run(Scenario(whole.messages, whole.partition_keys, whole.shards, ((0,),)))
    assert any(line.startswith("a1 is not frozen into u1: (None, ") for line in found)
    assert "live profiles ['a1'], oracle's customers ['u1'] (merged away: {})" in found
    assert "merges made 0, the final id map has 1" in found
