"""Backfill delivery marks over the sample SQS envelopes (events/sqs/): the email function under moto sends only
entries for everyone, and the Meta audiences (over a fake Graph API) add "audiences" entries and no "none" ones."""

from __future__ import annotations

import json
from typing import Any

from cdp.integrations.meta import MetaAudiences
from cdp.pipeline.fanout import deliver, queue_messages
from cdp_dev.memory import MemoryDeliveryLedger
from tests.email_support import SAMPLE, T
from tests.integration.test_email import Aws, aws  # noqa: F401  (the fixture)
from tests.integration.test_meta import FakeGraph, audiences, graph, sleeps  # noqa: F401  (the fixtures)

ROOT_EVENTS = SAMPLE.parent


def marked(envelope: dict[str, Any], mark: str | None) -> dict[str, Any]:
    """The envelope with every entry's detail marked (None: unmarked, as before backfills)."""
    records = []
    for record in envelope["Records"]:
        event = json.loads(record["body"])
        if mark is not None and event.get("detail-type") == "Segment Entered" and isinstance(event.get("detail"), dict):
            event["detail"]["delivery"] = mark
        records.append({**record, "body": json.dumps(event)})
    return {**envelope, "Records": records}


def test_moto_an_email_entry_marked_for_audiences_or_nobody_sends_nothing(aws: Aws) -> None:  # noqa: F811
    sample = json.loads(SAMPLE.read_text())
    for mark in ("audiences", "none"):
        assert aws.handle(marked(sample, mark)) == []
        assert aws.sent() == []
    assert aws.clock.now() == T
    assert aws.handle(marked(sample, "all")) == []  # the same entry for everyone now sends: nothing was recorded
    assert len(aws.sent()) == 1


def test_meta_adds_audiences_entries_as_unmarked_ones_and_none_entries_not_at_all(
        graph: FakeGraph, audiences: MetaAudiences) -> None:  # noqa: F811
    sample = json.loads((ROOT_EVENTS / "meta-batch.json").read_text())
    plain = deliver(queue_messages(marked(sample, None)), audiences, MemoryDeliveryLedger())
    unmarked = graph.calls()
    assert any(method == "POST" for method, _, _ in unmarked)
    graph.requests.clear()

    for_audiences = deliver(queue_messages(marked(sample, "audiences")), audiences, MemoryDeliveryLedger())
    assert graph.calls() == unmarked and for_audiences.suppressed == 0
    graph.requests.clear()

    ledger = MemoryDeliveryLedger()
    messages = queue_messages(marked(sample, "none"))
    for_nobody = deliver(messages, audiences, ledger)
    assert [method for method, _, _ in graph.calls()] == [m for m, _, _ in unmarked if m != "POST"]
    entries = [mid for mid, body in messages
               if json.loads(body)["detail-type"] == "Segment Entered" and mid not in for_nobody.refused]
    assert for_nobody.suppressed == len(entries) > 0
    assert all(entry.kind != "entered" for entry in ledger.entries_by_key.values())
    # Unreadable events are still refused; an entry nobody sends is not checked for its identifiers.
    assert set(for_nobody.refused.items()) < set(plain.refused.items())
