"""The segmentation engine: folds events into a profile, then re-evaluates the segments they touch.

``Engine.apply`` is what ingest calls once per customer per batch: the fold itself is
:func:`cdp.core.fold.fold`. ``Engine.evaluate`` is what the timers call when a profile's
deadline passes. Both return the membership transitions, each with the clause that flipped
(:func:`explain`), and leave the profile's next deadline set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from cdp.core.catalogue import Catalogue, Segment, Unit
from cdp.core.events import Event
from cdp.core.fold import MAX_CLOCK_SKEW, fold
from cdp.core.language import AllOf, AnyOf, Condition, Not
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile, ProfileView

ENTERED = "entered"
EXITED = "exited"


@dataclass(frozen=True, slots=True)
class Transition:
    """A customer entering or leaving a segment, and why."""

    customer_id: str
    segment_id: str
    segment_name: str
    kind: str
    at: int
    clause: str
    reason: str


@dataclass
class Outcome:
    transitions: list[Transition] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    beyond_retention: int = 0
    rejected: list[tuple[Event, str]] = field(default_factory=list)
    changed: bool = False
    next_deadline: int | None = None


class Engine:
    def __init__(self, catalogue: Catalogue, stats: PopulationStats | None = None,
                 max_future_skew: float = MAX_CLOCK_SKEW) -> None:
        self.catalogue = catalogue
        self.stats = stats
        self.max_future_skew = max_future_skew  # seconds an event may be stamped ahead of the clock

    def apply(self, profile: Profile, events: Iterable[Event], now: float) -> Outcome:
        """Fold one customer's events into the profile, then evaluate what they touched."""
        folded = fold(profile, events, self.catalogue, now, stats=self.stats, max_future_skew=self.max_future_skew)
        outcome = Outcome(applied=folded.applied, duplicates=folded.duplicates,
                          beyond_retention=folded.beyond_retention, rejected=folded.rejected,
                          changed=folded.applied > 0)
        before = (dict(profile.memberships), dict(profile.deadlines))
        outcome.transitions = self.evaluate(profile, now, folded.touched)
        if (dict(profile.memberships), dict(profile.deadlines)) != before:
            outcome.changed = True
        outcome.next_deadline = profile.next_deadline
        return outcome

    def set_manual(self, profile: Profile, segment_id: str, member: bool, now: float) -> Transition | None:
        """Add a customer to, or remove them from, a static segment. The write carries the transition."""
        segment = self.catalogue.segments.get(segment_id)
        if segment is None or not segment.manual:
            raise ValueError(f"{segment_id!r} is not an enabled static segment")
        if (segment_id in profile.memberships) == member:
            return None
        if member:
            profile.memberships[segment_id] = int(now)
        else:
            del profile.memberships[segment_id]
        if not profile.created_at:
            profile.created_at = int(now)
        profile.updated_at = int(now)
        transition = Transition(profile.customer_id, segment_id, segment.name, ENTERED if member else EXITED,
                                int(now), "manual", "added by hand" if member else "removed by hand")
        profile.transitions = [[transition.segment_id, transition.kind, transition.at, transition.clause,
                                transition.reason]]
        return transition

    # ---- evaluating segments ------------------------------------------------------------------

    def evaluate(self, profile: Profile, now: float, touched: set[str] | None = None) -> list[Transition]:
        """Re-evaluate the segments whose inputs were touched or whose deadline has passed.

        ``touched=None`` re-evaluates every segment (after a catalogue or statistics change).
        """
        view = ProfileView(profile, now, self.stats)
        if profile.catalogue != self.catalogue.fingerprint:
            # A new profile, or a changed catalogue: a condition can be true with none of its inputs
            # touched (e.g. "no order within 30 days"), so every segment is evaluated once.
            touched = None
            profile.catalogue = self.catalogue.fingerprint
        transitions = self._forget_removed(profile, now)
        changed: set[str] = set()  # ``s:<segment>`` for each flip so far: segments that refer to it follow
        for unit in self.catalogue.units:
            if touched is None or unit.inputs & touched or unit.inputs & changed or _is_due(unit, profile, now):
                _evaluate_unit(unit, view, touched, changed, transitions)
        # The write carries its own transitions, so the table stream can say why each one happened.
        profile.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in transitions]
        return transitions

    def _forget_removed(self, profile: Profile, now: float) -> list[Transition]:
        """Leave the segments no longer in the catalogue, and drop their deadlines."""
        segments = self.catalogue.segments
        transitions = []
        for segment_id in [s for s in profile.memberships if s not in segments]:
            del profile.memberships[segment_id]
            transitions.append(Transition(profile.customer_id, segment_id, segment_id, EXITED, int(now),
                                          "segment", "the segment was disabled or removed"))
        for segment_id in [s for s in profile.deadlines if s not in segments]:
            del profile.deadlines[segment_id]
        return transitions


def _is_due(unit: Unit, profile: Profile, now: float) -> bool:
    """Whether the deadline of one of the unit's segments has passed."""
    return any(profile.deadlines.get(s.id, math.inf) <= now for s in unit.segments)


def _evaluate_unit(unit: Unit, view: ProfileView, touched: set[str] | None, changed: set[str],
                   transitions: list[Transition]) -> None:
    """Evaluate a unit's segments and apply the flips, adding them to ``transitions``.

    In an exclusive group only the first eligible segment is a member.
    """
    profile = view.profile
    eligible = _eligible(unit, view)
    members = eligible[:1] if unit.segments[0].group else eligible
    for segment in unit.segments:
        member = segment in members
        if (segment.id in profile.memberships) == member:
            continue
        changed.add(f"s:{segment.id}")
        if member:
            profile.memberships[segment.id] = int(view.now)
            clause, reason = explain(segment, view, True, touched)
        else:
            del profile.memberships[segment.id]
            if segment in eligible:
                clause, reason = _outranked(segment, members[0])
            else:
                clause, reason = explain(segment, view, False, touched)
        transitions.append(Transition(profile.customer_id, segment.id, segment.name, ENTERED if member else EXITED,
                                      int(view.now), clause, reason))


def _eligible(unit: Unit, view: ProfileView) -> list[Segment]:
    """The unit's segments whose condition holds; each segment's next deadline is kept on the profile."""
    deadlines = view.profile.deadlines
    eligible: list[Segment] = []
    for segment in unit.segments:
        value, deadline = segment.condition.evaluate(view)
        if deadline is None:
            deadlines.pop(segment.id, None)
        else:
            deadlines[segment.id] = math.ceil(deadline)
        if value:
            eligible.append(segment)
    return eligible


def _outranked(segment: Segment, winner: Segment) -> tuple[str, str]:
    """Why an eligible segment of an exclusive group is left: a segment ranked above it holds."""
    return "group", f"{winner.id} takes precedence in exclusive group {segment.group} (priority {winner.priority})"


def explain(segment: Segment, view: ProfileView, value: bool, touched: set[str] | None) -> tuple[str, str]:
    """The clause that made ``segment`` become ``value``, and why: a touched leaf, else a time-driven one."""
    leaves = _deciding(segment.condition, view, value)
    chosen = None
    if touched is not None:
        chosen = next((leaf for leaf in leaves if leaf.inputs & touched), None)
    if chosen is None:
        chosen = next((leaf for leaf in leaves if leaf.time_driven), leaves[0])
    text = chosen.describe()
    return chosen.path, text if value else f"no longer: {text}"


def _deciding(node: Condition, view: ProfileView, want: bool) -> list[Condition]:
    """The leaves that make ``node`` evaluate to ``want``: where a flip must have happened."""
    if isinstance(node, Not):
        return _deciding(node.item, view, not want)
    if isinstance(node, (AllOf, AnyOf)):
        every = isinstance(node, AllOf) == want
        parts = [c for c in node.items if every or c.evaluate(view)[0] == want]
        return [leaf for part in parts for leaf in _deciding(part, view, want)]
    return [node]
