"""The one profile write: read, change, conditional put, and on a conflict reload and change again.

Every writer of profiles (the ingest, the timers sweep, the API's static-segment edits) goes through
:func:`write_profile`. The profile is written with optimistic locking: the put is conditional on the
version that was read, so a concurrent writer's change is never overwritten. When the put finds
another version, the profile is read again (strongly consistent) and the change made again on top,
up to ``attempts`` puts in all. A profile merged into another customer is never changed. Nothing raises:
conflicts that do not let up and transient errors (throttling, a timeout) come back as a
:class:`WriteOutcome` that says why, for the caller to retry later or answer with.

Requests: one put per attempt, and one single-key load after each conflict but the last. The first
read is the caller's, so a batch is loaded with one call for all its customers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cdp.core.engine import Engine
from cdp.core.profile import Profile
from cdp.core.static_segments import StaticEdit, set_membership
from cdp.ports import ConflictError, ProfileStore, TransientError

MAX_WRITE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """How one profile write ended: written, unchanged (nothing to write), or given up with a reason."""

    profile: Profile  # as last changed (as written, when ``written``)
    written: bool = False
    conflicts: int = 0  # puts refused because the profile had changed since it was read
    error: ConflictError | TransientError | None = None  # why it was given up; None when not given up
    reason: str = ""  # the same, as a sentence without identifiers

    @property
    def failed(self) -> bool:
        return self.error is not None


def write_profile(store: ProfileStore, customer_id: str, profile: Profile | None,
                  change: Callable[[Profile], bool], attempts: int = MAX_WRITE_ATTEMPTS) -> WriteOutcome:
    """Apply ``change`` to the customer's profile and write it if it changed.

    ``profile`` is the one already read (None: the customer has none yet, so a new one is started).
    ``change`` changes the profile in place and says whether there is anything to write; it is called
    again on the reloaded profile after each conflict, so it must work from the profile it is given.
    """
    current = profile or Profile(customer_id)
    conflicts = 0
    for attempt in range(1, attempts + 1):
        if current.merged_into is not None:
            # Merged into another customer: kept as it was at the merge, never written again (the caller
            # finds ``profile.merged_into`` set and writes there instead, as the ingest does).
            return WriteOutcome(current, conflicts=conflicts)
        if not change(current):
            return WriteOutcome(current, conflicts=conflicts)
        expected = current.version
        current.version = expected + 1
        try:
            store.save(current, expected)
        except ConflictError as error:
            conflicts += 1
            if attempt == attempts:
                return WriteOutcome(current, conflicts=conflicts, error=error,
                                    reason=f"profile changed concurrently {attempts} times")
            try:
                current = store.load([customer_id]).get(customer_id) or Profile(customer_id)
            except TransientError as reload_error:
                return WriteOutcome(current, conflicts=conflicts, error=reload_error,
                                    reason=f"profile could not be reloaded: {reload_error}")
        except TransientError as error:
            return WriteOutcome(current, conflicts=conflicts, error=error,
                                reason=f"profile could not be written: {error}")
        else:
            return WriteOutcome(current, written=True, conflicts=conflicts)
    raise ValueError(f"attempts must be at least 1, not {attempts}")


@dataclass
class StaticEditResult:
    """Which customers an edit of a static segment changed, in the order they were asked for."""

    added: list[str]
    removed: list[str]
    unchanged: list[str]


def edit_static_segment(store: ProfileStore, engine: Engine, edit: StaticEdit,
                        now: Callable[[], float]) -> StaticEditResult:
    """Add and remove the customers of a checked edit (see :func:`cdp.core.static_segments.static_edit`).

    One load for all of them, then one write per customer whose membership changes; the table stream
    publishes each change. A write that cannot be made raises its error (ConflictError when the profile
    kept changing, TransientError when the store is busy); the customers before it stay edited.
    """
    result = StaticEditResult([], [], [])
    profiles = store.load(list(edit.members))
    for customer_id, member in edit.members.items():
        outcome = write_profile(store, customer_id, profiles.get(customer_id),
                                _membership_change(engine, edit.segment_id, member, now))
        if outcome.error is not None:
            raise outcome.error
        if not outcome.written:
            result.unchanged.append(customer_id)
        else:
            (result.added if member else result.removed).append(customer_id)
    return result


def _membership_change(engine: Engine, segment_id: str, member: bool,
                       now: Callable[[], float]) -> Callable[[Profile], bool]:
    return lambda profile: set_membership(engine, profile, segment_id, member, now())
