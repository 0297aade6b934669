"""Segment history: per segment and UTC day, its entries, its exits and its size at the day's close.

Two writers fill one row per (segment, day), kept for :data:`HISTORY_DAYS`:

* the changes function adds, once per batch, the entries and exits that took effect per (segment, day of the
  change): only membership writes that moved the segment's size count, so a redelivered or out-of-order change,
  which the members index refuses, is never counted twice (:func:`day_counts`);
* the daily snapshot (:func:`take_snapshot`, scheduled at 00:05 UTC) writes each enabled segment's size, as the
  members index counts it, into the row of the day that just closed, and compares it with the day before.

History is monitoring, not a source of truth: a failed update loses that batch's counts for the day and is
counted, never retried at the cost of the memberships (see :func:`cdp.pipeline.changes.publish_changes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cdp.ports import TransientError

if TYPE_CHECKING:  # cdp.pipeline.changes imports this module
    from cdp.pipeline.changes import MembershipChange

HISTORY_DAYS = 400  # how long a day's row is kept (the table's TTL)
DAY = 86_400
# A snapshot names the day that closed within this long before it: the 00:05 run writes yesterday's closing size,
# and a run later in the day writes today's provisional one, which the next nightly run replaces.
CLOSE_LAG_SECONDS = 6 * 3600


def day_of(at: float) -> str:
    """The UTC day of a Unix time, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def day_start(day: str) -> int:
    """The Unix time at which a ``YYYY-MM-DD`` UTC day begins (raises ValueError for anything else)."""
    return int(datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp())


def expires_at(day: str) -> int:
    """When a day's row expires: :data:`HISTORY_DAYS` after the day."""
    return day_start(day) + HISTORY_DAYS * DAY


def previous_day(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def snapshot_day(now: float) -> str:
    """The day whose closing size a snapshot taken at ``now`` records (see :data:`CLOSE_LAG_SECONDS`)."""
    return day_of(now - CLOSE_LAG_SECONDS)


@dataclass(frozen=True)
class DayCount:
    entered: int = 0
    exited: int = 0


def day_counts(outcomes: Iterable[tuple[MembershipChange, int]]) -> dict[tuple[str, str], DayCount]:
    """Entries and exits per (segment, day of the change) among membership writes and the size delta each made:
    an entry counts when it added a member (+1), an exit when it removed one (-1); a write that took no effect
    (0: this version or a newer one was already stored) counts nothing."""
    counts: dict[tuple[str, str], DayCount] = {}
    for change, delta in outcomes:
        if not delta:
            continue
        key = (change.segment_id, day_of(change.at))
        current = counts.get(key, DayCount())
        counts[key] = DayCount(current.entered + (delta > 0), current.exited + (delta < 0))
    return counts


class HistoryLog(Protocol):
    """The history as the changes function writes it."""

    def add_changes(self, segment_id: str, day: str, entered: int, exited: int) -> None:
        """Add to one day's entries and exits (one update). Raises TransientError when it did not happen."""
        ...


class SizeHistory(Protocol):
    """The history as the daily snapshot reads and writes it."""

    def sizes(self, segment_ids: Sequence[str], day: str) -> dict[str, int]:
        """The recorded sizes of these segments on ``day``; a segment with no size that day is absent."""
        ...

    def record_size(self, segment_id: str, day: str, size: int) -> None:
        """Set one day's size, keeping its entries and exits."""
        ...


class SegmentSizes(Protocol):
    def size(self, segment_id: str) -> int:
        """The segment's current number of members (raises TransientError when it cannot be read)."""
        ...


@dataclass(frozen=True)
class SegmentSize:
    segment_id: str
    size: int
    previous: int | None  # the size recorded the day before; None: none was
    change_percent: float | None  # None when there is no size the day before, or it was 0 (no base)


@dataclass
class Snapshot:
    day: str
    segments: list[SegmentSize] = field(default_factory=list)
    swinging: list[str] = field(default_factory=list)  # moved more than the threshold since the day before
    failed: dict[str, str] = field(default_factory=dict)  # segment id -> why its size was not recorded
    uncompared: str = ""  # why the day before could not be read (the sizes are recorded, not compared)


def change_percent(previous: int | None, size: int) -> float | None:
    """The size's change since ``previous``, in percent of it; None without a base to compare to."""
    if not previous:
        return None
    return round((size - previous) * 100.0 / previous, 2)


def take_snapshot(segment_ids: Sequence[str], members: SegmentSizes, history: SizeHistory, now: float,
                  swing_percent: float | None = None) -> Snapshot:
    """Record each segment's size in the row of :func:`snapshot_day`, compared with the day before; with
    ``swing_percent``, the segments whose size moved by more than that many percent are ``swinging``. A segment
    whose size cannot be read or written is in ``failed`` and the others proceed. Run again, it writes the same
    sizes (each is set, not added)."""
    snapshot = Snapshot(snapshot_day(now))
    try:
        before = history.sizes(segment_ids, previous_day(snapshot.day)) if segment_ids else {}
    except TransientError as error:
        # Without the day before the sizes are still worth recording; only the comparison is lost.
        snapshot.uncompared = f"the day before could not be read: {error}"
        before = {}
    for segment_id in segment_ids:
        try:
            size = members.size(segment_id)
            history.record_size(segment_id, snapshot.day, size)
        except TransientError as error:
            snapshot.failed[segment_id] = str(error)
            continue
        previous = before.get(segment_id)
        percent = change_percent(previous, size)
        snapshot.segments.append(SegmentSize(segment_id, size, previous, percent))
        if swing_percent is not None and percent is not None and abs(percent) > swing_percent:
            snapshot.swinging.append(segment_id)
    return snapshot
