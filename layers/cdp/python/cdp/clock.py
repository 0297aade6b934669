"""The one clock abstraction: wall-clock time in production, event time for replays and tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time as Unix seconds."""

    def now(self) -> float: ...


class WallClock:
    """Production time: the machine's clock."""

    def now(self) -> float:
        return time.time()


class EventClock:
    """Event time: the latest event timestamp observed so far, never moving backwards.

    A year of history replayed today is then evaluated as of its own dates.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def observe(self, timestamp: float) -> None:
        if timestamp > self._now:
            self._now = timestamp

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


def clock_from_env(value: str) -> Clock:
    """``CDP_CLOCK``: ``wall`` (the default) or ``event`` (replays evaluate in event time)."""
    if value in ("", "wall"):
        return WallClock()
    if value == "event":
        return EventClock()
    raise ValueError(f"CDP_CLOCK must be wall or event, not {value!r}")
