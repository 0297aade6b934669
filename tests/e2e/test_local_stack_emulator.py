"""The local stack's replacements of moto's methods answer exactly as moto's own do, and its ingest totals add
up each invocation's batch result."""

from __future__ import annotations

import json
import types
from collections import Counter
from typing import Any

import pytest
from moto.events.utils import EventTemplateParser
from moto.kinesis.models import Shard

from cdp.pipeline.changes import ChangesResult
from cdp.pipeline.ingest import BatchResult
from cdp_dev import emulator
from cdp_dev.local_stack import ChangeTotals, IngestTotals, observe_batches


def filled_shard(records: int) -> Shard:
    shard = Shard(0, 0, 2 ** 128)
    for number in range(records):
        shard.put_record(f"customer-{number % 7}", f"data-{number}", None)  # type: ignore[arg-type]
    return shard


def read_all(shard: Shard, get: Any, limit: int | None) -> list[tuple[list[int], int, int]]:
    """Every page from the start, as a poller reads them (each from the last sequence returned)."""
    pages, after = [], "0"
    while True:
        records, last, behind = get(shard, after, limit)
        pages.append(([r.sequence_number for r in records], last, behind))
        if not records:
            return pages
        after = str(last)


@pytest.mark.parametrize(("records", "limit"), [(0, 10), (1, 10), (25, 10), (30, 10), (7, None), (12, 0)])
def test_kinesis_lookups_read_the_same_pages_as_moto(records: int, limit: int | None) -> None:
    shard = filled_shard(records)
    original = Shard.get_records if Shard.get_records is not emulator.shard_records_after \
        else emulator.ORIGINAL_GET_RECORDS
    assert read_all(shard, emulator.shard_records_after, limit) == read_all(shard, original, limit)


def test_kinesis_lookups_read_from_any_position_and_past_the_end() -> None:
    shard = filled_shard(20)
    original = Shard.get_records if Shard.get_records is not emulator.shard_records_after \
        else emulator.ORIGINAL_GET_RECORDS
    for after, limit in [("5", 3), ("19", 5), ("20", 5), ("400", 1), ("0", 100)]:
        mine, theirs = emulator.shard_records_after(shard, after, limit), original(shard, after, limit)
        assert ([r.sequence_number for r in mine[0]], mine[1]) == ([r.sequence_number for r in theirs[0]], theirs[1])


def test_kinesis_lookups_number_new_records_as_moto_does() -> None:
    emulator.install_kinesis_lookups()
    shard = filled_shard(5)
    assert [int(shard.put_record("k", "d", None)) for _ in range(3)] == [6, 7, 8]  # type: ignore[arg-type]
    assert (shard.get_min_sequence_number(), shard.get_max_sequence_number()) == (1, 8)
    assert (Shard(1, 0, 1).get_min_sequence_number(), Shard(1, 0, 1).get_max_sequence_number()) == (0, 0)


def test_an_event_renders_the_same_through_the_compiled_paths() -> None:
    event = {"version": "0", "id": "e-1", "detail-type": "Segment Entered", "source": "cdp.segments",
             "account": "123456789012", "time": 1790000000, "region": "us-east-1", "resources": [],
             "detail": {"segment": {"id": "vip"}, "customer_id": "c-1"}, "ingestion-time": 1790000000}
    before = EventTemplateParser.parse(None, {}, event)  # type: ignore[arg-type]
    emulator.install_event_path_cache()
    emulator.install_event_path_cache()  # installing twice wraps once
    custom = {"InputTemplate": '{"who": "<who>", "segment": "<segment>"}',
              "InputPathsMap": {"who": "$.detail.customer_id", "segment": "$.detail.segment.id"}}
    assert EventTemplateParser.parse(None, {}, event) == before  # type: ignore[arg-type]
    assert EventTemplateParser.parse(None, {}, event) == before  # type: ignore[arg-type]
    assert EventTemplateParser.parse(custom["InputTemplate"], custom["InputPathsMap"], event) == {  # type: ignore[arg-type]
        "who": "c-1", "segment": "vip"}
    assert json.loads(json.dumps(before))["detail"] == event["detail"]


def test_ingest_totals_add_up_each_invocations_batch_result() -> None:
    totals = IngestTotals()
    results = iter([BatchResult(applied=3, duplicates=1, failed=["9"]),
                    BatchResult(applied=1, quarantined=Counter({"properties.order_id": 2}))])
    module = types.SimpleNamespace(ingest_batch=lambda records, *rest: next(results))
    observe_batches(module, "ingest_batch", totals.add)
    observe_batches(module, "ingest_batch", totals.add)  # a second stack in the process counts once, not twice
    assert module.ingest_batch(["a", "b", "c", "d", "e"], "engine").applied == 3
    module.ingest_batch(["f", "g", "h"], "engine")
    assert totals.as_json() == {"records": 8, "applied": 4, "duplicates": 1, "quarantined": 2, "retried": 1}


def test_change_totals_count_published_transitions_and_retries() -> None:
    totals = ChangeTotals()
    module = types.SimpleNamespace(publish_changes=lambda records, *rest: ChangesResult(
        failed=["s-2"], published=[object(), object()]))  # type: ignore[list-item]
    observe_batches(module, "publish_changes", totals.add)
    module.publish_changes(["s-1", "s-2", "s-3"])
    assert totals.as_json() == {"records": 3, "published": 2, "retried": 1}
