"""The segmentation engine: folds events into a profile, then re-evaluates the segments they touch.

``Engine.apply`` is what ingest calls once per customer per batch: the fold itself is
:func:`cdp.core.fold.fold`. ``Engine.evaluate`` is what the timers call when a profile's
deadline passes. Both return the membership transitions, each with the clause that flipped
(:func:`explain`), and leave the profile's next deadline set. Each current membership keeps the clause
it was entered by (``Profile.entered_by``) beside its since-time.

With a consent policy whose ``profiling`` use the customer's consent does not permit, no segment is
evaluated at all: the customer leaves every segment (clause ``consent``, the reason naming the missing
category) and keeps no deadline. The profile's catalogue fingerprint is cleared, so the first evaluation
once consent is given again is a full one.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field

from cdp.core.catalogue import Catalogue, Segment, Unit, fingerprint_version
from cdp.core.consent import ConsentPolicy
from cdp.core.events import Event
from cdp.core.fold import MAX_CLOCK_SKEW, fold
from cdp.core.language import AllOf, AnyOf, Condition, Not
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile, ProfileView
from cdp.core.traits import assign_at_ingest, model_documents

ENTERED = "entered"
EXITED = "exited"
CONSENT = "consent"  # the clause of the exits a missing profiling consent makes
EXPIRED = "expired"  # the clause of the exits of a profile that no event touched for the retention
EXPIRY = "~expiry"  # its deadline among the segments' (no segment id has a ~), so the timers sweep it
DAY = 86_400
TTL_GRACE = DAY  # DynamoDB may delete an expired item at once: the timers' exits go first
PROFILING = "profiling"  # the consent use that segments are evaluated at all


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
    spec_gaps: Tally[str] = field(default_factory=Tally)  # applied events without a spec field, by field


class NewerCatalogue(Exception):
    """The profile was evaluated by a newer catalogue version than the engine holds: folding events with the older
    one would drop the counters and latches only the newer one keeps, so the events wait (they are retried) until
    the function has picked the newer version up."""


class Engine:
    def __init__(self, catalogue: Catalogue, stats: PopulationStats | None = None,
                 max_future_skew: float = MAX_CLOCK_SKEW, consent_policy: ConsentPolicy | None = None,
                 retention_days: int = 0) -> None:
        self.catalogue = catalogue
        self.stats = stats
        self.max_future_skew = max_future_skew  # seconds an event may be stamped ahead of the clock
        self.consent_policy = consent_policy  # None: every use permitted
        self.retention_days = retention_days  # a profile no event touched this long expires; 0: never

    def profiling_refusal(self, profile: Profile) -> str | None:
        """Why the customer's consent does not permit evaluating segments for them (None: it does)."""
        policy = self.consent_policy
        if policy is None or not policy.uses.get(PROFILING):
            return None  # the consent is not even decoded: most policies leave profiling free
        return policy.refusal(PROFILING, profile.consent)

    def apply(self, profile: Profile, events: Iterable[Event], now: float) -> Outcome:
        """Fold one customer's events into the profile, then evaluate what they touched.

        Raises :class:`NewerCatalogue` when a newer catalogue than the engine's evaluated the profile."""
        if self.catalogue_behind(profile):
            newer = fingerprint_version(profile.catalogue)
            raise NewerCatalogue(f"the profile was evaluated by catalogue version {newer}; this function holds "
                                 f"{self.catalogue.version}")
        folded = fold(profile, events, self.catalogue, now, stats=self.stats, max_future_skew=self.max_future_skew)
        outcome = Outcome(applied=folded.applied, duplicates=folded.duplicates,
                          beyond_retention=folded.beyond_retention, rejected=folded.rejected,
                          changed=folded.applied > 0, spec_gaps=folded.spec_gaps)
        if folded.applied and self.retention_days:
            outcome.changed = _renew_expiry(profile, now, self.retention_days) or outcome.changed
        models = model_documents(self.stats)
        if folded.applied and models:
            folded.touched |= assign_at_ingest(profile, models, now)
        evaluation = self._evaluate(profile, now, folded.touched)
        outcome.transitions = evaluation.transitions
        outcome.changed = outcome.changed or evaluation.changed
        outcome.next_deadline = profile.next_deadline
        return outcome

    def catalogue_behind(self, profile: Profile) -> bool:
        """Whether the profile was evaluated by a newer catalogue version than the engine's."""
        return bool(profile.catalogue) and fingerprint_version(profile.catalogue) > self.catalogue.version

    def set_manual(self, profile: Profile, segment_id: str, member: bool, now: float) -> Transition | None:
        """Add a customer to, or remove them from, a static segment. The write carries the transition."""
        segment = self.catalogue.segments.get(segment_id)
        if segment is None or not segment.manual:
            raise ValueError(f"{segment_id!r} is not an enabled static segment")
        if (segment_id in profile.memberships) == member:
            return None
        if member and self.profiling_refusal(profile) is not None:
            return None  # without profiling consent the customer is in no segment, static ones included
        if member:
            profile.memberships[segment_id] = int(now)
            profile.entered_by[segment_id] = "manual"
        else:
            del profile.memberships[segment_id]
            profile.entered_by.pop(segment_id, None)
        if not profile.created_at:
            profile.created_at = int(now)
        profile.updated_at = int(now)
        if self.retention_days:  # an edit touches the profile, and one it creates expires like any other
            _renew_expiry(profile, now, self.retention_days)
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
        return self._evaluate(profile, now, touched).transitions

    def _evaluate(self, profile: Profile, now: float, touched: set[str] | None) -> Evaluation:
        """Evaluate the units that read a touched input or are due, then those reading a segment that flipped.

        Units are evaluated in the catalogue's order, in which a unit comes after every segment it refers to,
        so a flip is always seen by the units that follow it.
        """
        settled = self._settled(profile, now)
        if settled is not None:
            return settled
        catalogue = self.catalogue
        view = ProfileView(profile, now, self.stats)
        evaluation = Evaluation([])
        if profile.catalogue != catalogue.fingerprint:
            # A new profile, or a changed catalogue: a condition can be true with none of its inputs
            # touched (e.g. "no order within 30 days"), so every segment is evaluated once. Only then
            # can the profile hold a segment the catalogue no longer has.
            touched = None
            profile.catalogue = catalogue.fingerprint
            self._forget_removed(profile, now, evaluation)
        if touched is None:
            pending = list(range(len(catalogue.units)))
        else:
            pending = sorted(catalogue.units_reading(touched) | _due(catalogue, profile, now))
        queued = set(pending)
        units, dependants = catalogue.units, catalogue.dependants
        while pending:
            unit = units[heapq.heappop(pending)]
            if unit.grouped:
                flipped = _evaluate_group(unit, view, touched, evaluation)
            else:
                segment = unit.segments[0]
                flipped = [segment.id] if _evaluate_segment(segment, view, touched, evaluation) else []
            for segment_id in flipped:
                # The units that refer to a flipped segment follow it in the order: queue them.
                for index in dependants[segment_id]:
                    if index not in queued:
                        queued.add(index)
                        heapq.heappush(pending, index)
        # The write carries its own transitions, so the table stream can say why each one happened.
        profile.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in evaluation.transitions]
        return evaluation

    def _settled(self, profile: Profile, now: float) -> Evaluation | None:
        """What an evaluation is when no segment is evaluated: the profile expired, profiling consent is missing,
        or a newer catalogue than the engine's evaluated it. None: the segments are evaluated."""
        expiry = profile.deadlines.get(EXPIRY)
        if expiry is not None and expiry <= now:
            days = self.retention_days or "the retention's"
            return self._leave_everything(profile, now, EXPIRED, f"no event for {days} days: the profile expires")
        refusal = self.profiling_refusal(profile)
        if refusal is not None:
            return self._leave_everything(profile, now, CONSENT, refusal)
        if self.catalogue_behind(profile):
            return _defer_to_newer(profile, Evaluation([]))
        return None

    def _leave_everything(self, profile: Profile, now: float, clause: str, reason: str) -> Evaluation:
        """Without profiling consent (clause ``consent``), or once the profile expires (clause ``expired``):
        every segment left, no deadline, nothing evaluated."""
        segments = self.catalogue.all_segments
        at = int(now)
        evaluation = Evaluation([Transition(profile.customer_id, segment_id,
                                            segments[segment_id].name if segment_id in segments else segment_id,
                                            EXITED, at, clause, reason) for segment_id in profile.memberships])
        evaluation.changed = bool(profile.memberships or profile.deadlines or profile.catalogue)
        profile.memberships.clear()
        profile.entered_by.clear()
        expiry = profile.deadlines.get(EXPIRY) if clause != EXPIRED else None
        profile.deadlines.clear()
        if expiry is not None:  # a customer without profiling consent still expires
            profile.deadlines[EXPIRY] = expiry
        # Consent given again must evaluate every segment, not only those its inputs touch: a cleared
        # fingerprint is what a new profile has.
        profile.catalogue = ""
        profile.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in evaluation.transitions]
        return evaluation

    def _forget_removed(self, profile: Profile, now: float, evaluation: Evaluation) -> None:
        """Leave the segments no longer in the catalogue, and drop their deadlines."""
        segments = self.catalogue.segments
        for segment_id in [s for s in profile.memberships if s not in segments]:
            del profile.memberships[segment_id]
            profile.entered_by.pop(segment_id, None)
            evaluation.transitions.append(Transition(profile.customer_id, segment_id, segment_id, EXITED, int(now),
                                                     "segment", "segment disabled"))
            evaluation.changed = True
        for segment_id in [s for s in profile.deadlines if s not in segments and s != EXPIRY]:
            del profile.deadlines[segment_id]
            evaluation.changed = True


def _defer_to_newer(profile: Profile, evaluation: Evaluation) -> Evaluation:
    """A newer catalogue than the engine's evaluated the profile (this function has not picked it up yet):
    evaluating with the older one could re-enter a removed segment or leave a new one. Nothing is evaluated. The
    fingerprint keeps the newer version (so this older engine keeps deferring) with a digest no catalogue has (so
    the next evaluation by a catalogue that new is a full one)."""
    profile.catalogue = f"{fingerprint_version(profile.catalogue)}.stale"
    profile.transitions = []
    evaluation.changed = True
    return evaluation


def _renew_expiry(profile: Profile, now: float, days: int) -> bool:
    """Move the profile's expiry to ``days`` after the day of ``now`` (at day granularity, so a customer's
    due-index entry moves at most once a day), its TTL a day later; True when it moved."""
    expiry = (int(now) // DAY + 1 + days) * DAY
    if profile.deadlines.get(EXPIRY) == expiry:
        return False
    profile.deadlines[EXPIRY] = expiry
    profile.expires_at = expiry + TTL_GRACE
    return True


@dataclass
class Evaluation:
    """What evaluating a profile did: its transitions, and whether any membership or deadline changed."""

    transitions: list[Transition]
    changed: bool = False


def _due(catalogue: Catalogue, profile: Profile, now: float) -> set[int]:
    """The positions of the units with a segment whose deadline has passed, found from the profile's deadlines."""
    position = catalogue.position
    return {position[segment_id] for segment_id, deadline in profile.deadlines.items()
            if deadline <= now and segment_id in position}


def _evaluate_segment(segment: Segment, view: ProfileView, touched: set[str] | None,
                      evaluation: Evaluation) -> bool:
    """Evaluate a segment outside any exclusive group and apply its flip; returns whether it flipped."""
    profile = view.profile
    member = _holds(segment, view, evaluation)
    if (segment.id in profile.memberships) == member:
        return False
    clause, reason = explain(segment, view, member, touched)
    _join(profile, segment.id, member, int(view.now), clause)
    _record(evaluation, profile, segment, member, int(view.now), clause, reason)
    return True


def _evaluate_group(unit: Unit, view: ProfileView, touched: set[str] | None, evaluation: Evaluation) -> list[str]:
    """Evaluate an exclusive group and apply its flips; returns the flipped ids.

    Only the first eligible segment is a member.
    """
    profile = view.profile
    eligible = [segment for segment in unit.segments if _holds(segment, view, evaluation)]
    members = eligible[:1]
    flipped: list[str] = []
    for segment in unit.segments:
        member = segment in members
        if (segment.id in profile.memberships) == member:
            continue
        flipped.append(segment.id)
        if member:
            clause, reason = explain(segment, view, True, touched)
        elif segment in eligible:
            clause, reason = _outranked(segment, members[0])
        else:
            clause, reason = explain(segment, view, False, touched)
        _join(profile, segment.id, member, int(view.now), clause)
        _record(evaluation, profile, segment, member, int(view.now), clause, reason)
    return flipped


def _join(profile: Profile, segment_id: str, member: bool, at: int, clause: str) -> None:
    """Enter the segment (since ``at``, by ``clause``) or leave it."""
    if member:
        profile.memberships[segment_id] = at
        profile.entered_by[segment_id] = clause
    else:
        del profile.memberships[segment_id]
        profile.entered_by.pop(segment_id, None)


def _record(evaluation: Evaluation, profile: Profile, segment: Segment, member: bool, at: int, clause: str,
            reason: str) -> None:
    evaluation.transitions.append(Transition(profile.customer_id, segment.id, segment.name,
                                             ENTERED if member else EXITED, at, clause, reason))
    evaluation.changed = True


def _holds(segment: Segment, view: ProfileView, evaluation: Evaluation) -> bool:
    """Whether the segment's condition holds; its next deadline is kept on the profile."""
    value, deadline = segment.condition.evaluate(view)
    deadlines = view.profile.deadlines
    if deadline is None:
        if deadlines.pop(segment.id, None) is not None:
            evaluation.changed = True
    else:
        due = math.ceil(deadline)
        if deadlines.get(segment.id) != due:
            deadlines[segment.id] = due
            evaluation.changed = True
    return value


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
