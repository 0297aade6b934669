"""The one clock abstraction: wall-clock time in production, event time for replays and tests."""

from __future__ import annotations

import time
from typing import Protocol

# Seconds an event may be stamped ahead of the wall clock (clock drift, queueing); CDP_MAX_FUTURE_SKEW_SECONDS.
DEFAULT_MAX_FUTURE_SKEW = 300


class Clock(Protocol):
    """Anything that tells the current time as Unix seconds."""

    def now(self) -> float: ...


class WallClock:
    """Production time: the machine's clock."""

    def now(self) -> float:
        return time.time()


class EventClock:
    """Event time: the latest event timestamp observed so far, never moving backwards.

    A year of history replayed today is then evaluated as of its own dates. It never moves past
    its wall clock plus ``max_ahead`` seconds: one event stamped 2999 by a broken device clock
    would otherwise move it, and every profile evaluated by it, into the future for good.
    """

    def __init__(self, start: float = 0.0, max_ahead: float = DEFAULT_MAX_FUTURE_SKEW,
                 wall: Clock | None = None) -> None:
        self._now = start
        self.max_ahead = max_ahead
        self.wall: Clock = wall or WallClock()

    def observe(self, timestamp: float) -> bool:
        """Follow the event's time; False, without moving, for one beyond wall time plus ``max_ahead``."""
        if timestamp > self.wall.now() + self.max_ahead:
            return False
        if timestamp > self._now:
            self._now = timestamp
        return True

    def now(self) -> float:
        return self._now


class FixedClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: float) -> None:
        self._now = start

    def set(self, timestamp: float) -> None:
        self._now = timestamp

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def now(self) -> float:
        return self._now


def wall_time(clock: Clock) -> float:
    """What the wall clock says as far as ``clock`` knows: an event clock's own wall clock, else the clock.

    In event time the events are in the past of the wall clock, so "too far in the future" is measured
    against this in both modes; a fixed clock (tests, simulations) is its own wall clock.
    """
    wall = getattr(clock, "wall", None)
    return float(wall.now()) if wall is not None else clock.now()


def clock_from_env(value: str, max_future_skew: float = DEFAULT_MAX_FUTURE_SKEW) -> Clock:
    """``CDP_CLOCK``: ``wall`` (the default) or ``event`` (replays evaluate in event time)."""
    if value in ("", "wall"):
        return WallClock()
    if value == "event":
        return EventClock(max_ahead=max_future_skew)
    raise ValueError(f"CDP_CLOCK must be wall or event, not {value!r}")
