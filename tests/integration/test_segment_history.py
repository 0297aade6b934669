"""The segment history under moto: the changes function's daily entries and exits, the nightly size snapshot
(functions/history) with its metrics, and the API's read of a segment's days."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.aws.history import DynamoSegmentHistory, segment_history
from cdp.aws.members import DynamoMembersIndex
from cdp.core.clock import FixedClock
from cdp.pipeline.history import day_of
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp_dev.handlers import load_handler

from .support import (
    MEMBER_SHARDS,
    MEMBERS_TABLE,
    ROOT,
    SEGMENTS,
    InjectedError,
    Stack,
    changes_handler,
    failures,
    load_envelope,
)

history_handler = load_handler(ROOT, "history")
HISTORY_TABLE = "cdp-history"


@pytest.fixture
def history(stack: Stack) -> DynamoSegmentHistory:
    stack.dynamodb.create_table(
        TableName=HISTORY_TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "segment_id", "KeyType": "HASH"}, {"AttributeName": "day", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "segment_id", "AttributeType": "S"},
                              {"AttributeName": "day", "AttributeType": "S"}])
    return DynamoSegmentHistory(stack.dynamodb, HISTORY_TABLE, sleep=lambda _: None)


def value(metric: dict[str, Any], name: str) -> float:
    """A metric's value in an EMF line (Powertools writes a list of values)."""
    raw = metric[name]
    return float(raw[0] if isinstance(raw, list) else raw)


def rows(stack: Stack) -> dict[tuple[str, str], dict[str, Any]]:
    items = stack.dynamodb.scan(TableName=HISTORY_TABLE)["Items"]
    return {(i["segment_id"]["S"], i["day"]["S"]): {k: int(v["N"]) for k, v in i.items() if "N" in v} for i in items}


def replay(stack: Stack, history: DynamoSegmentHistory) -> None:
    """The sample batch ingested, and its table stream through the changes function with the history."""
    assert failures(stack.ingest(load_envelope("kinesis/batch.json"))) == []
    envelope = stack.stream_envelope()
    assert failures(stack.changes(envelope, history=history)) == []
    assert failures(stack.changes(envelope, history=history)) == []  # Lambda delivers the batch again


def test_a_segments_entries_less_its_exits_are_its_size_and_redelivery_counts_nothing(
        stack: Stack, history: DynamoSegmentHistory) -> None:
    replay(stack, history)
    found = rows(stack)
    assert found, "the sample makes transitions"
    index = DynamoMembersIndex(stack.dynamodb, MEMBERS_TABLE, MEMBER_SHARDS)
    for segment_id in {s for s, _ in found}:
        days = history.days(segment_id, "2000-01-01")
        assert sum(d["entered"] - d["exited"] for d in days) == index.size(segment_id), segment_id
        assert all(d["size"] is None for d in days)  # no snapshot yet
    for (_, day), row in found.items():
        start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
        assert row["expires_at"] == start + 400 * 86400


def test_one_update_per_segment_and_day_of_a_batch(stack: Stack, history: DynamoSegmentHistory) -> None:
    assert failures(stack.ingest(load_envelope("kinesis/batch.json"))) == []
    envelope = stack.stream_envelope()
    stack.counter.reset()
    assert failures(stack.changes(envelope, history=history)) == []
    updates = stack.counter.of("dynamodb")["UpdateItem"]
    size_counters = len({s for s, _ in rows(stack)})  # one size ADD per touched segment, too
    assert updates == len(rows(stack)) + size_counters


def test_a_failing_history_table_loses_counts_not_the_batch(
        stack: Stack, history: DynamoSegmentHistory, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    assert failures(stack.ingest(load_envelope("kinesis/batch.json"))) == []
    InjectedError(stack.dynamodb, "UpdateItem", "AccessDeniedException",
                  when=lambda body: body.get("TableName") == HISTORY_TABLE)
    response = changes_handler.handle(stack.stream_envelope(), None, stack.changes_deps(history=history))
    changes_handler.metrics.flush_metrics()
    assert failures(response) == []
    assert stack.members() and rows(stack) == {}
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [value(m, "HistoryUpdatesLost") > 0 for m in emitted if "HistoryUpdatesLost" in m] == [True], emitted


def test_the_nightly_snapshot_records_sizes_and_publishes_them(
        stack: Stack, history: DynamoSegmentHistory, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    replay(stack, history)
    index = DynamoMembersIndex(stack.dynamodb, MEMBERS_TABLE, MEMBER_SHARDS)
    night = datetime(2026, 10, 10, 0, 5, tzinfo=UTC).timestamp()
    vip_before = index.size("vip") * 2 or 10
    history.record_size("vip", "2026-10-08", vip_before)  # the day before's snapshot
    deps = history_handler.Dependencies(LiveCatalogue(None, lambda: stack.catalogue), index, history,
                                        FixedClock(night), swing_percent=20)
    capsys.readouterr()

    answer = history_handler.handle({}, None, deps)
    history_handler.metrics.flush_metrics()

    assert answer["day"] == "2026-10-09" and answer["segments"] == len(stack.catalogue.segments)
    assert "vip" in answer["swinging"]
    recorded = {s: r["size"] for (s, d), r in rows(stack).items() if d == "2026-10-09" and "size" in r}
    assert recorded == {s: index.size(s) for s in stack.catalogue.segments}
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    sizes = {m["segment"]: value(m, "SegmentSize") for m in emitted if "SegmentSize" in m}
    assert sizes == {s: index.size(s) for s in stack.catalogue.segments}
    [vip] = [m for m in emitted if m.get("segment") == "vip" and "SegmentSizeChangePercent" in m]
    assert value(vip, "SegmentSizeChangePercent") == round((index.size("vip") - vip_before) * 100 / vip_before, 2)
    assert [value(m, "SegmentsSwinging") for m in emitted if "SegmentsSwinging" in m] == [len(answer["swinging"])]


def test_the_api_reads_a_segments_days_from_a_date(stack: Stack, history: DynamoSegmentHistory) -> None:
    history.add_changes("vip", "2026-10-07", 3, 1)
    history.add_changes("vip", "2026-10-08", 2, 0)
    history.record_size("vip", "2026-10-08", 4)
    history.add_changes("browsers", "2026-10-08", 9, 9)
    assert history.days("vip", "2026-10-08") == [{"day": "2026-10-08", "size": 4, "entered": 2, "exited": 0}]
    assert [d["day"] for d in history.days("vip", "2026-01-01")] == ["2026-10-07", "2026-10-08"]
    assert history.days("nobody", "2026-01-01") == []


def test_the_history_is_configured_by_its_table(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    assert segment_history({}) is None
    assert segment_history({"HISTORY_TABLE": HISTORY_TABLE}) is not None
    for name, value in {"HISTORY_TABLE": HISTORY_TABLE, "MEMBERS_TABLE": MEMBERS_TABLE,
                        "CATALOGUE_PATH": str(SEGMENTS), "SEGMENT_SWING_PERCENT": "15"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DEFINITIONS_TABLE", raising=False)
    deps = history_handler.build()
    assert deps.swing_percent == 15 and sorted(deps.live.catalogue.segments) == sorted(stack.catalogue.segments)
    monkeypatch.delenv("HISTORY_TABLE")
    with pytest.raises(Exception, match="HISTORY_TABLE is required"):
        history_handler.build()
    assert day_of(0) == "1970-01-01"
