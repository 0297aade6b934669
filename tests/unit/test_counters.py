"""Time-bucketed counters: tier choice, landing and retention, window semantics, expiries, packing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.core.counters import LONGEST_WINDOW, TIER_BY_CODE, TIERS, Counter, Tier, tier_for_window, to_hundredths

MIN, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z, a UTC midnight
W0 = B + DAY  # 2024-01-11T00:00:00Z, a Thursday: epoch weeks start here
assert B % DAY == 0 and W0 % WEEK == 0

M, H, D, W = (TIER_BY_CODE[code] for code in "mhdw")


def state(counter: Counter) -> dict[str, Any]:
    return {
        "count": counter.count, "total": counter.total, "first": counter.first, "last": counter.last,
        "has_sum": counter.has_sum,
        "buckets": {code: {index: list(bucket) for index, bucket in buckets.items()}
                    for code, buckets in counter.buckets.items()},
    }


# ---- tiers ------------------------------------------------------------------------------------------


def test_tier_table() -> None:
    assert [(t.code, t.size, t.keep) for t in TIERS] == [("m", MIN, 60), ("h", HOUR, 48), ("d", DAY, 35),
                                                         ("w", WEEK, 53)]
    assert [t.span for t in TIERS] == [HOUR, 48 * HOUR, 35 * DAY, 53 * WEEK]
    assert LONGEST_WINDOW == 371 * DAY


@pytest.mark.parametrize(
    ("seconds", "code"),
    [
        (MIN, "m"), (10 * MIN, "m"), (60 * MIN, "m"),
        (2 * HOUR, "h"), (DAY, "h"), (48 * HOUR, "h"),
        (3 * DAY, "d"), (WEEK, "d"), (35 * DAY, "d"),
        (6 * WEEK, "w"), (26 * WEEK, "w"), (53 * WEEK, "w"),
    ],
)
def test_tier_for_window_picks_the_finest_tier_that_spans_it(seconds: int, code: str) -> None:
    assert tier_for_window(seconds).code == code


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (90, "90s is not a whole number of 1m buckets, which windows up to 60m are counted in"),
        (90 * MIN, "90m is not a whole number of 60m buckets, which windows up to 2d are counted in"),
        (61 * MIN, "61m is not a whole number of 60m buckets"),
        (49 * HOUR, "49h is not a whole number of 24h buckets, which windows up to 5w are counted in"),
        (36 * DAY, "36d is not a whole number of 7d buckets, which windows up to 53w are counted in"),
    ],
)
def test_tier_for_window_rejects_windows_of_part_buckets(seconds: int, message: str) -> None:
    with pytest.raises(ValueError, match="is not a whole number of") as caught:
        tier_for_window(seconds)
    assert message in str(caught.value)


@pytest.mark.parametrize("seconds", [54 * WEEK, 372 * DAY, 53 * WEEK + DAY])
def test_tier_for_window_rejects_windows_longer_than_53_weeks(seconds: int) -> None:
    with pytest.raises(ValueError) as caught:
        tier_for_window(seconds)
    assert "is longer than the longest window, 53w; use lifetime figures instead" in str(caught.value)


def test_too_long_message_names_the_window() -> None:
    with pytest.raises(ValueError, match=r"^54w is longer than the longest window, 53w"):
        tier_for_window(54 * WEEK)


def test_to_hundredths() -> None:
    assert to_hundredths(19.99) == 1999
    assert to_hundredths(0.1 + 0.2) == 30
    assert to_hundredths(-2.5) == -250


# ---- add --------------------------------------------------------------------------------------------


def test_new_counter_is_empty() -> None:
    counter = Counter(("m", "d"), has_sum=True)
    assert state(counter) == {"count": 0, "total": 0, "first": 0, "last": 0, "has_sum": True,
                              "buckets": {"m": {}, "d": {}}}


def test_add_lands_in_every_tier() -> None:
    now = W0 + 3 * DAY + 5 * HOUR + 7 * MIN + 30  # Sunday 05:07:30
    counter = Counter(("m", "h", "d", "w"), has_sum=True)
    assert counter.add(now, 1250, now) is True
    assert counter.buckets == {
        "m": {now // MIN: [1, 1250]},
        "h": {now // HOUR: [1, 1250]},
        "d": {now // DAY: [1, 1250]},
        "w": {W0 // WEEK: [1, 1250]},  # the week that started on Thursday
    }
    assert (counter.count, counter.total, counter.first, counter.last) == (1, 1250, now, now)


def test_add_accumulates_in_the_same_bucket() -> None:
    counter = Counter(("m",), has_sum=True)
    counter.add(B, 100, B)
    counter.add(B + 59, 250, B + 59)
    counter.add(B + 60, 5, B + 60)
    assert counter.buckets["m"] == {B // MIN: [2, 350], B // MIN + 1: [1, 5]}
    assert (counter.count, counter.total) == (3, 355)


def test_lifetime_figures_track_first_and_last_in_any_order() -> None:
    counter = Counter()
    counter.add(B + 100, 1, B + 200)
    counter.add(B, 2, B + 200)
    counter.add(B + 50, 3, B + 200)
    assert (counter.count, counter.total, counter.first, counter.last) == (3, 6, B, B + 100)


def test_add_without_tiers_is_lifetime_only_and_always_lands() -> None:
    counter = Counter()
    assert counter.add(B - 10 * 371 * DAY, 7, B) is True
    assert counter.buckets == {}
    assert (counter.count, counter.total) == (1, 7)


def test_add_lands_only_in_tiers_that_still_keep_its_bucket() -> None:
    now = B + 12 * HOUR
    counter = Counter(("m", "h", "d"))
    assert counter.add(now - 2 * HOUR, 1, now) is True  # too old for minutes, fine for hours and days
    assert counter.buckets["m"] == {}
    assert counter.buckets["h"] == {(now - 2 * HOUR) // HOUR: [1, 1]}
    assert counter.buckets["d"] == {B // DAY: [1, 1]}


def test_add_returns_false_beyond_the_coarsest_retained_bucket() -> None:
    now = B + 12 * HOUR
    counter = Counter(("m", "h"))
    # Hours keep the current bucket and the 47 before it: the oldest kept starts 47 hours before this one.
    oldest_kept = (now // HOUR - 47) * HOUR
    assert counter.add(oldest_kept, 1, now) is True
    assert counter.add(oldest_kept - 1, 1, now) is False
    assert counter.buckets["h"] == {now // HOUR - 47: [1, 1]}
    assert counter.count == 2  # lifetime still counts it
    assert counter.first == oldest_kept - 1


@pytest.mark.parametrize("tier", TIERS, ids=[t.code for t in TIERS])
def test_retention_edge_in_each_tier(tier: Tier) -> None:
    now = W0 + tier.size * 1000 + tier.size // 2  # mid-bucket
    current = now // tier.size
    counter = Counter((tier.code,))
    assert counter.add((current - tier.keep + 1) * tier.size, 1, now) is True
    assert counter.add((current - tier.keep + 1) * tier.size - 1, 1, now) is False
    assert list(counter.buckets[tier.code]) == [current - tier.keep + 1]


def test_future_events_are_kept_but_not_yet_counted() -> None:
    counter = Counter(("m",))
    assert counter.add(B + 120, 1, B) is True
    assert counter.window(M, 10 * MIN, B) == (0, 0)
    assert counter.window(M, 10 * MIN, B + 120) == (1, 1)


def test_ensure_adds_tiers_and_sums_but_never_removes() -> None:
    counter = Counter(("m",), has_sum=False)
    counter.add(B, 5, B)
    counter.ensure(("h",), has_sum=True)
    assert set(counter.buckets) == {"m", "h"}
    assert counter.buckets["m"] == {B // MIN: [1, 5]}
    assert counter.buckets["h"] == {}  # no backfill
    assert counter.has_sum is True
    counter.ensure((), has_sum=False)
    assert counter.has_sum is True and set(counter.buckets) == {"m", "h"}


# ---- window -----------------------------------------------------------------------------------------


def counter_with(tier: Tier, *times: int, now: int) -> Counter:
    counter = Counter((tier.code,), has_sum=True)
    for moment in times:
        counter.add(moment, 100, now)
    return counter


def test_window_counts_and_sums_the_events_in_it() -> None:
    now = B + 30 * MIN
    counter = counter_with(M, now - 5 * MIN, now - 4 * MIN, now - 20 * MIN, now=now)
    assert counter.window(M, 10 * MIN, now) == (2, 200)
    assert counter.window(M, 30 * MIN, now) == (3, 300)


def test_window_of_a_tier_not_kept_is_empty() -> None:
    counter = counter_with(M, B, now=B)
    assert counter.window(H, HOUR, B) == (0, 0)


def test_window_at_a_bucket_boundary() -> None:
    # now is the first instant of a minute: a 10-minute window holds this minute and the 9 before it.
    now = B + HOUR
    window = 10 * MIN

    def counts(moment: int) -> int:
        return counter_with(M, moment, now=now).window(M, window, now)[0]

    assert counts(now) == 1
    assert counts(now - window + MIN) == 1  # exactly W - s old: counted
    assert counts(now - window + MIN - 1) == 0  # W - s + 1 old: in the bucket that has left
    assert counts(now - window) == 0  # exactly W old: never counted
    assert counts(now - window - 1) == 0


def test_window_at_the_end_of_a_bucket() -> None:
    # now is the last second of a minute: the same 10 buckets now reach back almost W.
    now = B + HOUR + MIN - 1
    window = 10 * MIN

    def counts(moment: int) -> int:
        return counter_with(M, moment, now=now).window(M, window, now)[0]

    assert counts(now - window + 1) == 1  # W - 1 old: still counted
    assert counts(now - window) == 0  # exactly W old: never counted
    assert counts(now - window + MIN) == 1


def test_window_in_the_week_tier_follows_thursday_weeks() -> None:
    now = W0 + 6 * DAY  # Wednesday, the last day of the week that began on Thursday W0
    counter = counter_with(W, W0 - 1, W0, now=now)
    assert counter.window(W, WEEK, now) == (1, 100)  # only this week: W0 - 1 is last week's Wednesday
    assert counter.window(W, 2 * WEEK, now) == (2, 200)


def test_the_longest_window_in_each_tier_covers_every_bucket_kept() -> None:
    for tier in TIERS:
        now = W0 + 500 * tier.size
        times = [now - k * tier.size for k in range(tier.keep)]
        counter = counter_with(tier, *times, now=now)
        assert len(counter.buckets[tier.code]) == tier.keep
        assert counter.window(tier, tier.span, now) == (tier.keep, 100 * tier.keep)


windows = st.sampled_from([
    (M, MIN), (M, 10 * MIN), (M, 60 * MIN), (H, HOUR), (H, 24 * HOUR), (H, 48 * HOUR), (D, DAY),
    (D, 7 * DAY), (D, 35 * DAY), (W, WEEK), (W, 26 * WEEK), (W, 53 * WEEK),
])


@settings(max_examples=300, deadline=None)
@given(windows, st.integers(min_value=B, max_value=B + 400 * DAY), st.integers(min_value=0, max_value=53 * WEEK))
def test_window_never_counts_older_than_w_and_always_counts_younger_than_w_minus_s(
    tier_window: tuple[Tier, int], now: int, age: int,
) -> None:
    tier, window = tier_window
    counter = counter_with(tier, now - age, now=now)
    counted = counter.window(tier, window, now)[0] == 1
    if age >= window:
        assert not counted
    if age < window - tier.size:
        assert counted


# ---- expiries ---------------------------------------------------------------------------------------


def test_expiries_are_when_each_bucket_leaves_the_window_soonest_first() -> None:
    now = B + HOUR  # a minute boundary
    counter = counter_with(M, now, now - 2 * MIN, now - 2 * MIN + 30, now - 20 * MIN, now=now)
    # The 10-minute window holds buckets now-9m .. now; a bucket starting at t leaves it at t + 10m.
    assert counter.expiries(M, 10 * MIN, now) == [(now + 8 * MIN, 2, 200), (now + 10 * MIN, 1, 100)]


def test_expiry_time_is_the_first_moment_the_bucket_is_out() -> None:
    now = B + HOUR + 17
    counter = counter_with(H, now - 5 * HOUR, now, now=now)
    assert len(counter.expiries(H, 24 * HOUR, now)) == 2
    for leaves, count, _ in counter.expiries(H, 24 * HOUR, now):
        assert count == 1
        before = counter.window(H, 24 * HOUR, leaves - 1)[0]
        after = counter.window(H, 24 * HOUR, leaves)[0]
        assert before - after == 1


def test_expiries_leave_out_buckets_outside_the_window() -> None:
    now = B + HOUR
    counter = counter_with(M, now - 30 * MIN, now + 5 * MIN, now=now)
    assert counter.expiries(M, 10 * MIN, now) == []
    assert Counter(("m",)).expiries(M, 10 * MIN, now) == []
    assert counter.expiries(H, HOUR, now) == []


# ---- prune ------------------------------------------------------------------------------------------


def test_prune_drops_buckets_no_longer_kept_and_keeps_lifetime() -> None:
    start = B + HOUR
    counter = Counter(("m", "h"), has_sum=True)
    for minutes in range(0, 90, 10):
        counter.add(start + minutes * MIN, 1, start + minutes * MIN)
    assert len(counter.buckets["m"]) == 9
    later = start + 90 * MIN
    counter.prune(later)
    # minutes keep later-59m .. later: the events 40..80 minutes after start (later - 50m .. later - 10m)
    assert sorted(counter.buckets["m"]) == [(start + m * MIN) // MIN for m in (40, 50, 60, 70, 80)]
    assert sorted(counter.buckets["h"]) == [start // HOUR, start // HOUR + 1]
    assert counter.count == 9


def test_prune_matches_what_add_would_keep() -> None:
    for tier in TIERS:
        now = W0 + 700 * tier.size + 1
        counter = Counter((tier.code,))
        for k in range(tier.keep + 5):
            counter.add((now // tier.size - k) * tier.size, 1, (now // tier.size - k) * tier.size)
        counter.prune(now)
        assert len(counter.buckets[tier.code]) == tier.keep
        assert min(counter.buckets[tier.code]) == now // tier.size - tier.keep + 1


# ---- encode / decode --------------------------------------------------------------------------------


def test_empty_counter_encoding() -> None:
    assert Counter().encode() == bytes([1, 0, 0, 0, 0, 0])  # flags, count, total, first, span, tiers
    assert Counter(has_sum=True).encode()[0] == 3


def test_encoding_by_hand() -> None:
    counter = Counter(("m",), has_sum=True)
    counter.add(300, -3, 300)  # minute bucket 5
    assert counter.encode() == bytes([
        0b11,  # version bit and has_sum
        1,  # count
        5,  # total -3, zigzagged
        0xAC, 0x02,  # first = 300 as a varint: 300 = 0b10_0101100
        0,  # last - first
        1,  # one tier
        ord("m"), 1,  # "m" with one bucket
        5, 1, 5,  # index delta 5, count 1, sum -3 zigzagged
    ])


def test_round_trip_with_negative_sums() -> None:
    counter = Counter(("m", "h", "d", "w"), has_sum=True)
    now = W0 + 10 * DAY
    for k, value in enumerate((-1999, 250, -1, 0, 10**12, -(10**12))):
        counter.add(now - k * 7 * HOUR, value, now)
    assert counter.total == 250 - 1999 - 1
    decoded = Counter.decode(counter.encode())
    assert state(decoded) == state(counter)
    assert decoded.buckets["m"] == {now // MIN: [1, -1999]}


def test_round_trip_without_sums_keeps_counts_and_lifetime_total_only() -> None:
    counter = Counter(("m", "d"), has_sum=False)
    counter.add(B, 500, B)
    counter.add(B + 61, -200, B + 61)
    decoded = Counter.decode(counter.encode())
    assert decoded.has_sum is False
    assert decoded.total == 300
    assert (decoded.count, decoded.first, decoded.last) == (2, B, B + 61)
    assert decoded.buckets == {"m": {B // MIN: [1, 0], B // MIN + 1: [1, 0]}, "d": {B // DAY: [2, 0]}}


def test_round_trip_keeps_a_tier_with_no_buckets() -> None:
    counter = Counter(("m", "w"))
    counter.add(B, 1, B + 2 * HOUR)  # too old for minutes
    decoded = Counter.decode(counter.encode())
    assert decoded.buckets == {"m": {}, "w": {B // WEEK: [1, 0]}}


def test_decoded_counter_keeps_counting() -> None:
    counter = Counter(("h",), has_sum=True)
    counter.add(B, 100, B)
    decoded = Counter.decode(counter.encode())
    decoded.add(B + 10, 50, B + 10)
    assert decoded.window(H, HOUR, B + 10) == (2, 150)
    assert decoded.count == 2


@st.composite
def counters(draw: st.DrawFn) -> Counter:
    has_sum = draw(st.booleans())
    codes = draw(st.lists(st.sampled_from("mhdw"), unique=True))
    counter = Counter(tuple(codes), has_sum)
    counter.count = draw(st.integers(min_value=0, max_value=2**40))
    counter.total = draw(st.integers(min_value=-(2**70), max_value=2**70))
    counter.first = draw(st.integers(min_value=0, max_value=2**40))
    counter.last = counter.first + draw(st.integers(min_value=0, max_value=2**35))
    for code in codes:
        buckets = draw(st.dictionaries(
            st.integers(min_value=0, max_value=2**35),
            st.tuples(st.integers(min_value=0, max_value=2**30), st.integers(min_value=-(2**45), max_value=2**45)),
            max_size=10,
        ))
        counter.buckets[code] = {index: [count, total if has_sum else 0] for index, (count, total) in buckets.items()}
    return counter


@settings(max_examples=300, deadline=None)
@given(counters())
def test_encode_decode_round_trip(counter: Counter) -> None:
    data = counter.encode()
    decoded = Counter.decode(data)
    assert state(decoded) == state(counter)
    assert decoded.encode() == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=400 * DAY), st.integers(-(10**9), 10**9)), max_size=40))
def test_round_trip_of_counters_built_by_add(events: list[tuple[int, int]]) -> None:
    now = B + 400 * DAY
    counter = Counter(("m", "h", "d", "w"), has_sum=True)
    for offset, value in events:
        counter.add(B + offset, value, now)
    assert state(Counter.decode(counter.encode())) == state(counter)


# ---- scanning only the buckets needed -------------------------------------------------------------------


def brute_window(counter: Counter, tier: Tier, seconds: int, now: float) -> tuple[int, int]:
    current = int(now // tier.size)
    start = current - seconds // tier.size + 1
    inside = [b for i, b in counter.buckets.get(tier.code, {}).items() if start <= i <= current]
    return sum(b[0] for b in inside), sum(b[1] for b in inside)


def test_a_bucket_exactly_at_the_window_start_counts_and_the_one_before_does_not() -> None:
    counter = Counter(("h",), has_sum=True)
    now = B + 10 * HOUR
    for hours_ago, value in ((3, 300), (2, 200), (1, 100), (0, 1)):
        counter.add(now - hours_ago * HOUR, value, now)
    assert counter.window(H, 3 * HOUR, now) == (3, 301)  # the buckets 2 h and 1 h ago and the current one
    assert counter.window(H, 4 * HOUR, now) == (4, 601)


def test_an_empty_counter_has_empty_windows_expiries_and_nothing_to_prune() -> None:
    counter = Counter(("m", "h"), has_sum=True)
    assert counter.window(M, HOUR, B) == (0, 0)
    assert counter.expiries(M, HOUR, B) == []
    assert counter.prune(B) is False
    assert Counter().window(H, HOUR, B) == (0, 0)


def test_when_every_bucket_has_expired_prune_drops_them_all() -> None:
    counter = Counter(("m", "h"), has_sum=True)
    for offset in range(0, 30 * MIN, 5 * MIN):
        counter.add(B + offset, 10, B + offset)
    later = B + 3 * DAY
    assert counter.prune(later) is True
    assert counter.buckets == {"m": {}, "h": {}}
    assert (counter.count, counter.total) == (6, 60)  # lifetime figures stay
    assert counter.window(H, 48 * HOUR, later) == (0, 0)
    assert counter.prune(later) is False


def test_a_late_event_keeps_the_buckets_in_time_order() -> None:
    counter = Counter(("h",), has_sum=True)
    now = B + 10 * HOUR
    counter.add(now, 1, now)
    counter.add(now - 5 * HOUR, 2, now)  # arrives after a newer one
    counter.add(now - 2 * HOUR, 3, now)
    assert list(counter.buckets["h"]) == sorted(counter.buckets["h"])
    assert counter.window(H, 3 * HOUR, now) == (2, 4)
    assert counter.window(H, 6 * HOUR, now) == (3, 6)


def test_buckets_ahead_of_the_clock_are_skipped_without_stopping_the_scan() -> None:
    counter = Counter(("m",), has_sum=True)
    counter.add(B, 1, B)
    counter.add(B + 5 * MIN, 2, B)  # stamped ahead of the clock
    assert counter.window(M, 10 * MIN, B) == (1, 1)
    assert counter.expiries(M, 10 * MIN, B) == [(B + 10 * MIN, 1, 1)]
    assert counter.window(M, 10 * MIN, B + 5 * MIN) == (2, 3)


def test_a_decoded_counter_writes_back_its_own_bytes_until_it_changes() -> None:
    counter = Counter(("m", "d"), has_sum=True)
    counter.add(B, 100, B)
    data = counter.encode()
    decoded = Counter.decode(data)
    assert not decoded.changed and decoded.encode() is decoded.encode()
    decoded.ensure(("m",), has_sum=True)  # nothing new
    assert not decoded.changed
    decoded.ensure(("h",), has_sum=True)
    assert decoded.changed and Counter.decode(decoded.encode()).buckets["h"] == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=-3 * DAY, max_value=400 * DAY + 2 * HOUR), st.integers(-1000, 1000)),
                max_size=40),
       st.integers(min_value=0, max_value=30 * DAY), st.sampled_from([(M, 10 * MIN), (M, HOUR), (H, 5 * HOUR),
                                                                    (H, 48 * HOUR), (D, 7 * DAY), (W, 26 * WEEK)]))
def test_window_expiries_and_prune_agree_with_looking_at_every_bucket(
        events: list[tuple[int, int]], later: int, window: tuple[Tier, int]) -> None:
    tier, seconds = window
    now = B + 400 * DAY
    counter = Counter(("m", "h", "d", "w"), has_sum=True)
    for offset, value in events:  # in any order: late ones, and some ahead of the clock
        counter.add(B + offset, value, now)
    decoded = Counter.decode(counter.encode())
    for subject in (counter, decoded):
        for moment in (now, now + later):
            assert subject.window(tier, seconds, moment) == brute_window(subject, tier, seconds, moment)
            width, current = seconds // tier.size, int(moment // tier.size)
            assert subject.expiries(tier, seconds, moment) == sorted(
                ((i + width) * tier.size, b[0], b[1]) for i, b in subject.buckets[tier.code].items()
                if current - width < i <= current)
    kept = {code: {i: list(b) for i, b in buckets.items() if i > int((now + later) // TIER_BY_CODE[code].size)
                   - TIER_BY_CODE[code].keep} for code, buckets in counter.buckets.items()}
    counter.prune(now + later)
    assert state(counter)["buckets"] == kept
