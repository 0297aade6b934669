"""Segment history, pure: the entries and exits a batch adds per (segment, day), and the daily size snapshot."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.config import ConfigError, HistoryConfig
from cdp.pipeline.changes import MembershipChange, TableChange, publish_changes
from cdp.pipeline.history import (
    DayCount,
    change_percent,
    day_counts,
    expires_at,
    previous_day,
    snapshot_day,
    take_snapshot,
)
from cdp.ports import TransientError
from cdp_dev.memory import MemoryMembersIndex
from tests.unit.test_members_sizes import CATALOGUE

SEGMENTS_DIR = Path(__file__).resolve().parents[2] / "segments"
DAY1 = int(datetime(2026, 3, 1, 23, 59, tzinfo=UTC).timestamp())  # a minute before midnight
DAY2 = DAY1 + 120  # a minute after


class MemoryHistory:
    """The history table in memory, counting its updates; ``failing`` days fail as throttled updates do."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, int]] = {}
        self.updates: list[tuple[str, str, int, int]] = []
        self.failing: set[str] = set()
        self.unreadable = False
        self._lock = threading.Lock()

    def add_changes(self, segment_id: str, day: str, entered: int, exited: int) -> None:
        with self._lock:
            if day in self.failing:
                raise TransientError("ProvisionedThroughputExceededException")
            self.updates.append((segment_id, day, entered, exited))
            row = self.rows.setdefault((segment_id, day), {})
            row["entered"] = row.get("entered", 0) + entered
            row["exited"] = row.get("exited", 0) + exited

    def record_size(self, segment_id: str, day: str, size: int) -> None:
        if segment_id in self.failing:
            raise TransientError("ThrottlingException")
        self.rows.setdefault((segment_id, day), {})["size"] = size

    def sizes(self, segment_ids: Sequence[str], day: str) -> dict[str, int]:
        if self.unreadable:
            raise TransientError("ServiceUnavailable")
        return {s: self.rows[(s, day)]["size"] for s in segment_ids if "size" in self.rows.get((s, day), {})}


class Bus:
    def publish(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        return []


def image(customer: str, version: int, segments: dict[str, int], at: int) -> dict[str, Any]:
    return {"customer_id": customer, "v": version, "ua": at, "m": segments,
            "tx": [[s, "entered", since, "c", "r"] for s, since in segments.items()]}


def records() -> list[TableChange]:
    """Three customers enter vip (two before midnight, one after), one of them leaves browsers after it."""
    return [
        TableChange("1", None, image("ann", 1, {"vip": DAY1}, DAY1)),
        TableChange("2", None, image("bob", 1, {"vip": DAY1, "browsers": DAY1}, DAY1)),
        TableChange("3", image("bob", 1, {"vip": DAY1, "browsers": DAY1}, DAY1),
                    image("bob", 2, {"vip": DAY1}, DAY2)),
        TableChange("4", None, image("cyd", 1, {"vip": DAY2}, DAY2)),
    ]


def test_a_batch_adds_its_entries_and_exits_once_per_segment_and_day_of_the_change() -> None:
    history = MemoryHistory()
    result = publish_changes(records(), CATALOGUE, MemoryMembersIndex(), Bus(), "bus", concurrency=4,
                             history=history)
    assert result.failed == [] and result.history_lost == {}
    assert sorted(history.updates) == [("browsers", "2026-03-01", 1, 0), ("browsers", "2026-03-02", 0, 1),
                                       ("vip", "2026-03-01", 2, 0), ("vip", "2026-03-02", 1, 0)]


def test_a_redelivered_batch_counts_nothing_again() -> None:
    history, index = MemoryHistory(), MemoryMembersIndex()
    publish_changes(records(), CATALOGUE, index, Bus(), "bus", history=history)
    before = dict(history.rows)
    publish_changes(records(), CATALOGUE, index, Bus(), "bus", history=history)  # Lambda retries the batch
    publish_changes(records()[1:3], CATALOGUE, index, Bus(), "bus", history=history)  # a bisected half
    assert history.rows == before
    assert history.rows[("vip", "2026-03-01")] == {"entered": 2, "exited": 0}


def test_a_failed_history_update_is_reported_and_does_not_fail_the_batch() -> None:
    history, index = MemoryHistory(), MemoryMembersIndex()
    history.failing = {"2026-03-02"}
    result = publish_changes(records(), CATALOGUE, index, Bus(), "bus", history=history)
    assert result.failed == [] and len(result.published) == 5
    assert result.history_lost == {("vip", "2026-03-02"): DayCount(1, 0), ("browsers", "2026-03-02"): DayCount(0, 1)}
    assert index.size("vip") == 3  # the memberships and sizes are unaffected
    assert sorted(history.rows) == [("browsers", "2026-03-01"), ("vip", "2026-03-01")]


def test_without_a_history_nothing_is_counted() -> None:
    result = publish_changes(records(), CATALOGUE, MemoryMembersIndex(), Bus(), "bus")
    assert result.history_lost == {} and len(result.applied) == 5


def test_day_counts_count_only_writes_that_moved_the_size() -> None:
    def change(kind: str, at: int) -> MembershipChange:
        return MembershipChange("ann", "vip", kind, at, 1, "", "")

    counts = day_counts([(change("entered", DAY1), 1), (change("entered", DAY1), 0), (change("exited", DAY2), -1),
                         (change("exited", DAY2), 0)])
    assert counts == {("vip", "2026-03-01"): DayCount(1, 0), ("vip", "2026-03-02"): DayCount(0, 1)}


def test_a_row_expires_400_days_after_its_day() -> None:
    assert expires_at("2026-03-01") == int(datetime(2027, 4, 5, tzinfo=UTC).timestamp())
    assert previous_day("2026-03-01") == "2026-02-28"


def test_the_nightly_run_records_yesterday_and_a_daytime_run_today() -> None:
    assert snapshot_day(datetime(2026, 3, 2, 0, 5, tzinfo=UTC).timestamp()) == "2026-03-01"
    assert snapshot_day(datetime(2026, 3, 2, 15, 0, tzinfo=UTC).timestamp()) == "2026-03-02"


class Sizes:
    def __init__(self, sizes: dict[str, int], failing: frozenset[str] = frozenset()) -> None:
        self.sizes, self.failing = sizes, failing

    def size(self, segment_id: str) -> int:
        if segment_id in self.failing:
            raise TransientError("ThrottlingException")
        return self.sizes[segment_id]


NIGHT = datetime(2026, 3, 2, 0, 5, tzinfo=UTC).timestamp()


def test_a_snapshot_records_sizes_and_their_change_since_the_day_before() -> None:
    history = MemoryHistory()
    history.rows = {("vip", "2026-02-28"): {"size": 200}, ("browsers", "2026-02-28"): {"size": 1000},
                    ("empty", "2026-02-28"): {"size": 0}}
    snapshot = take_snapshot(["browsers", "empty", "new", "vip"],
                             Sizes({"vip": 100, "browsers": 1100, "empty": 5, "new": 7}), history, NIGHT,
                             swing_percent=25)
    assert snapshot.day == "2026-03-01"
    assert {s.segment_id: (s.size, s.previous, s.change_percent) for s in snapshot.segments} == {
        "vip": (100, 200, -50.0), "browsers": (1100, 1000, 10.0), "empty": (5, 0, None), "new": (7, None, None)}
    assert snapshot.swinging == ["vip"]  # 0 -> 5 and a first size have no base to swing from
    assert history.rows[("vip", "2026-03-01")] == {"size": 100}


def test_without_a_threshold_nothing_swings() -> None:
    history = MemoryHistory()
    history.rows = {("vip", "2026-02-28"): {"size": 200}}
    assert take_snapshot(["vip"], Sizes({"vip": 1}), history, NIGHT).swinging == []


def test_a_size_that_cannot_be_read_fails_alone() -> None:
    history = MemoryHistory()
    snapshot = take_snapshot(["browsers", "vip"], Sizes({"vip": 3, "browsers": 4}, frozenset({"browsers"})),
                             history, NIGHT)
    assert snapshot.failed == {"browsers": "ThrottlingException"}
    assert [s.segment_id for s in snapshot.segments] == ["vip"]


def test_sizes_are_recorded_even_when_the_day_before_cannot_be_read() -> None:
    history = MemoryHistory()
    history.unreadable = True
    snapshot = take_snapshot(["vip"], Sizes({"vip": 3}), history, NIGHT, swing_percent=10)
    assert snapshot.uncompared.startswith("the day before could not be read")
    assert history.rows[("vip", "2026-03-01")] == {"size": 3} and snapshot.swinging == []


def test_change_percent() -> None:
    assert change_percent(None, 5) is None and change_percent(0, 5) is None
    assert change_percent(3, 4) == 33.33 and change_percent(4, 0) == -100.0


def test_the_snapshot_configuration_names_what_is_wrong() -> None:
    base = {"HISTORY_TABLE": "h", "MEMBERS_TABLE": "m", "CATALOGUE_PATH": str(SEGMENTS_DIR)}
    assert HistoryConfig.from_env(base).swing_percent is None
    assert HistoryConfig.from_env({**base, "SEGMENT_SWING_PERCENT": "0"}).swing_percent is None
    assert HistoryConfig.from_env({**base, "SEGMENT_SWING_PERCENT": "30"}).swing_percent == 30
    with pytest.raises(ConfigError, match="HISTORY_TABLE is required"):
        HistoryConfig.from_env({**base, "HISTORY_TABLE": ""})
    with pytest.raises(ConfigError, match="SEGMENT_SWING_PERCENT must be between 0 and 1000"):
        HistoryConfig.from_env({**base, "SEGMENT_SWING_PERCENT": "-5"})
