"""The ingest handler against moto with payloads as Segment's own libraries send them.

An ``Order Completed`` from analytics-python without ``order_id`` (Segment accepts it) is applied,
once, and the ``EventsWithSpecGaps`` metric counts it by the missing field, never by a value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from .support import Stack, failures, ingest_handler, kinesis_envelope


def python_order(customer_id: str, at: float, message_id: str) -> dict[str, Any]:
    """What analytics-python 2.x enqueues for ``analytics.track(user_id, "Order Completed", properties)``,
    as the collector puts it on the stream (with receivedAt)."""
    moment = datetime.fromtimestamp(at, UTC)
    return {
        "properties": {"revenue": 59.9, "currency": "EUR", "coupon": "WELCOME",
                       "products": [{"product_id": "sku-7", "name": "Mug", "price": 29.95, "quantity": 2}]},
        "integrations": {},
        "anonymousId": None,
        "timestamp": moment.isoformat(),  # "+00:00" with microseconds, as the library writes it
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
        "userId": customer_id,
        "type": "track",
        "event": "Order Completed",
        "messageId": message_id,
        "receivedAt": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def emitted(out: str, metric: str) -> list[dict[str, Any]]:
    """The EMF documents on stdout that carry ``metric``."""
    documents = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [doc for doc in documents if "_aws" in doc and metric in doc]


@pytest.fixture
def metrics_out(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    # Metrics keep a store every instance shares; the Lambda decorator flushes it, these tests do not.
    ingest_handler.metrics.clear_metrics()
    capsys.readouterr()
    yield capsys
    ingest_handler.metrics.clear_metrics()


def test_an_analytics_python_order_without_order_id_is_applied_once_and_its_gap_counted(
        stack: Stack, metrics_out: pytest.CaptureFixture[str]) -> None:
    at = stack.clock.now() - 60
    envelope = kinesis_envelope([python_order("paul", at, "9b2c1f0e-order")])

    response = stack.ingest(envelope)

    assert failures(response) == [] and stack.quarantine_keys() == []
    profile = stack.profile("paul")
    assert (profile.orders, profile.revenue, profile.last_order) == (1, 5990, int(at))
    assert profile.channels == {"server": int(at)} and profile.recent_orders == []
    out = metrics_out.readouterr().out
    [gap] = emitted(out, "EventsWithSpecGaps")
    assert gap["EventsWithSpecGaps"] == [1.0], gap
    assert (gap["field"], gap["service"]) == ("properties.order_id", "ingest")
    definition = gap["_aws"]["CloudWatchMetrics"][0]
    assert definition["Namespace"] == "cdp" and ["service", "field"] in definition["Dimensions"]
    assert emitted(out, "EventsRejected") == []
    for value in ("paul", "9b2c1f0e", "59.9", "WELCOME", "sku-7"):  # field names only, never a value
        assert value not in out, value

    # The same order put back on the stream (a redrive: a new sequence number) is a duplicate by its message id.
    again = stack.ingest(kinesis_envelope([python_order("paul", at, "9b2c1f0e-order")]))

    assert failures(again) == []
    assert (stack.profile("paul").orders, stack.profile("paul").revenue) == (1, 5990)
    assert emitted(metrics_out.readouterr().out, "EventsWithSpecGaps") == []

    # Another purchase, with its own message id, is another order.
    stack.ingest(kinesis_envelope([python_order("paul", at + 1, "4e7d9a33-order")]))
    assert stack.profile("paul").orders == 2
    [gap] = emitted(metrics_out.readouterr().out, "EventsWithSpecGaps")
    assert gap["field"] == "properties.order_id"


def test_no_gap_metric_is_printed_while_metrics_are_disabled(
        stack: Stack, metrics_out: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    stack.ingest(kinesis_envelope([python_order("pia", stack.clock.now() - 60, "pia-order")]))
    assert stack.profile("pia").orders == 1
    assert emitted(metrics_out.readouterr().out, "EventsWithSpecGaps") == []
