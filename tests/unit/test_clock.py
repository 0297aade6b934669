"""Clocks: wall time, event time that never runs backwards, and a clock moved by hand."""

from __future__ import annotations

import time

from cdp.core.clock import Clock, EventClock, FixedClock, WallClock

B = 1_704_844_800.0  # 2024-01-10T00:00:00Z


def read(clock: Clock) -> float:
    return clock.now()


def test_wall_clock_is_the_machine_clock() -> None:
    before = time.time()
    now = read(WallClock())
    after = time.time()
    assert before <= now <= after


def test_event_clock_starts_at_zero_or_the_given_start() -> None:
    assert read(EventClock()) == 0.0
    assert read(EventClock(B)) == B


def test_event_clock_follows_the_latest_event() -> None:
    clock = EventClock()
    clock.observe(B)
    assert clock.now() == B
    clock.observe(B + 60.5)
    assert clock.now() == B + 60.5


def test_event_clock_never_moves_backwards() -> None:
    clock = EventClock(B)
    clock.observe(B - 3600)
    assert clock.now() == B
    clock.observe(B + 10)
    clock.observe(B + 5)
    clock.observe(B + 10)
    assert clock.now() == B + 10


def test_event_clock_ignores_events_before_its_start() -> None:
    clock = EventClock(B)
    for moment in (0.0, B - 1, B - 0.001):
        clock.observe(moment)
    assert clock.now() == B


def test_fixed_clock_moves_only_when_told() -> None:
    clock = FixedClock(B)
    assert read(clock) == B
    assert clock.now() == B
    clock.advance(90)
    assert clock.now() == B + 90
    clock.advance(0.5)
    assert clock.now() == B + 90.5


def test_fixed_clock_can_be_set_anywhere_including_backwards() -> None:
    clock = FixedClock(B)
    clock.set(B + 86400)
    assert clock.now() == B + 86400
    clock.set(B - 86400)
    assert clock.now() == B - 86400
    clock.advance(-60)
    assert clock.now() == B - 86460
