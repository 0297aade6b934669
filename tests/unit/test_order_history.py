"""The generated order history: its counts, customers, time order, shape and determinism."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdp.core.events import ORDER_COMPLETED, parse_record
from cdp_dev import cli
from cdp_dev.order_history import DAYS_PER_MONTH, HistoryShape, history, write_history

END = datetime(2026, 10, 1, tzinfo=UTC)
SMALL = HistoryShape(orders=3_000, customers=1_000, months=18, seed=7, end=END)


@pytest.fixture(scope="module")
def messages() -> list[dict[str, Any]]:
    return list(history(SMALL))


def when(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(message["timestamp"])


def test_counts_orders_and_one_identify_per_customer(messages: list[dict[str, Any]]) -> None:
    orders = [m for m in messages if m["type"] == "track"]
    identifies = [m for m in messages if m["type"] == "identify"]
    assert len(orders) == 3_000 and all(m["event"] == ORDER_COMPLETED for m in orders)
    assert len(identifies) == 1_000
    assert {m["userId"] for m in orders} == {m["userId"] for m in identifies}
    assert len({m["userId"] for m in identifies}) == 1_000


def test_messages_are_in_time_order_within_the_window(messages: list[dict[str, Any]]) -> None:
    times = [when(m) for m in messages]
    assert times == sorted(times)
    assert times[-1] < END
    assert times[0] >= END - timedelta(days=round(18 * DAYS_PER_MONTH))
    assert all(m["timestamp"].endswith("Z") for m in messages)


def test_each_customer_is_identified_before_their_first_order(messages: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for message in messages:
        if message["type"] == "identify":
            assert message["userId"] not in seen
            assert "@" in message["traits"]["email"] and message["traits"]["first_name"]
        else:
            assert message["userId"] in seen, "an order before its customer's identify"
        seen.add(message["userId"])


def test_many_buy_once_and_a_few_buy_often(messages: list[dict[str, Any]]) -> None:
    per_customer = Counter(m["userId"] for m in messages if m["type"] == "track")
    one_time = sum(1 for count in per_customer.values() if count == 1)
    assert 0.45 < one_time / len(per_customer) < 0.8
    mean = 3_000 / 1_000
    assert max(per_customer.values()) >= 5 * mean
    top_tenth = sorted(per_customer.values(), reverse=True)[:100]
    assert sum(top_tenth) > 0.3 * 3_000  # a tenth of the customers place about a third of the orders or more


def test_ids_are_unique_and_orders_are_valued_by_their_products(messages: list[dict[str, Any]]) -> None:
    assert len({m["messageId"] for m in messages}) == len(messages)
    assert all(len(m["messageId"]) < 100 for m in messages)
    orders = [m["properties"] for m in messages if m["type"] == "track"]
    assert len({o["order_id"] for o in orders}) == len(orders)
    for order in orders:
        assert order["products"] and all(p["product_id"] and p["sku"] and p["quantity"] >= 1
                                         for p in order["products"])
        assert order["revenue"] == pytest.approx(sum(p["price"] * p["quantity"] for p in order["products"]))
        assert order["currency"] in {"EUR", "GBP", "USD"}


def test_every_message_is_accepted_by_the_parser(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        event = parse_record(json.dumps(message).encode())
        assert event.customer_id == message["userId"]
        if message["type"] == "track":
            assert event.order_id == message["properties"]["order_id"]
            assert event.amount == pytest.approx(message["properties"]["revenue"])


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not() -> None:
    shape = HistoryShape(orders=400, customers=150, months=6, seed=3, end=END)
    first, again, other = io.StringIO(), io.StringIO(), io.StringIO()
    assert write_history(shape, first) == 550
    write_history(shape, again)
    write_history(HistoryShape(orders=400, customers=150, months=6, seed=4, end=END), other)
    assert first.getvalue() == again.getvalue()
    assert first.getvalue() != other.getvalue()


def test_fewer_orders_than_customers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        HistoryShape(orders=10, customers=11)


def test_the_command_writes_a_tenth_with_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "history.jsonl"
    code = cli.main(["history", "--orders", "1000", "--customers", "300", "--months", "3", "--quick",
                     "--end", "2026-10-01", "--out", str(out)])
    assert code == 0
    lines = out.read_text().splitlines()
    kinds = Counter(json.loads(line)["type"] for line in lines)
    assert kinds == {"track": 100, "identify": 30}
    assert max(json.loads(line)["timestamp"] for line in lines) < "2026-10-01"
    assert "wrote 130 messages" in capsys.readouterr().err
