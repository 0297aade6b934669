"""Replaying a stream of events in event time, with deadlines firing as the replayed clock passes them.

This is the whole pipeline's behaviour (ingest, then the timers sweep) on one machine with
no AWS: the demo, segment story tests and ``cdp segments test`` run on it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from cdp.core.engine import Engine, Outcome, Transition
from cdp.core.events import Event
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile


class Replay:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.profiles: dict[str, Profile] = {}
        self.now = 0.0
        self._due: list[tuple[int, str]] = []  # (deadline, customer id); stale entries are skipped

    def profile(self, customer_id: str) -> Profile:
        profile = self.profiles.get(customer_id)
        if profile is None:
            profile = self.profiles[customer_id] = Profile(customer_id)
        return profile

    def _schedule(self, profile: Profile) -> None:
        if profile.next_deadline is not None:
            heapq.heappush(self._due, (profile.next_deadline, profile.customer_id))

    def advance_to(self, moment: float) -> list[Transition]:
        """Move the clock forward, re-evaluating each profile whose deadline passes, in time order."""
        transitions: list[Transition] = []
        while self._due and self._due[0][0] <= moment:
            deadline, customer_id = heapq.heappop(self._due)
            profile = self.profiles[customer_id]
            if profile.next_deadline != deadline:
                continue
            self.now = max(self.now, deadline)
            transitions += self.engine.evaluate(profile, deadline, touched=set())
            self._schedule(profile)
        self.now = max(self.now, moment)
        return transitions

    def apply(self, events: Iterable[Event]) -> tuple[list[Transition], Outcome]:
        """Apply one customer's events at the time of the latest of them."""
        batch = list(events)
        moment = max(event.timestamp for event in batch)
        transitions = self.advance_to(moment)
        profile = self.profile(batch[0].customer_id)
        outcome = self.engine.apply(profile, batch, self.now)
        self._schedule(profile)
        return transitions + outcome.transitions, outcome

    def refresh_population(self) -> list[Transition]:
        """Recompute population statistics from every profile and re-evaluate what depends on them."""
        profiles = list(self.profiles.values())
        self.engine.stats = PopulationStats.from_values(
            {
                "orders": [p.orders for p in profiles],
                "revenue": [p.revenue / 100 for p in profiles],
                "average_order_value": [p.revenue / 100 / p.orders if p.orders else 0.0 for p in profiles],
            },
            computed_at=int(self.now),
        )
        transitions: list[Transition] = []
        for profile in profiles:
            transitions += self.engine.evaluate(profile, self.now, touched={"stats"})
            self._schedule(profile)
        return transitions
