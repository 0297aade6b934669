"""Backfill delivery marks, pure: the sixth element of a transition becomes the event's ``delivery``, and each
kind of destination acts only on the entries meant for it (email: "all"; audiences: "all" and "audiences")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cdp.pipeline.changes import InvalidImage, MembershipChange, bus_entry, check_image, diff
from cdp.pipeline.fanout import (
    AUDIENCES,
    EMAIL,
    ENTERED,
    EXITED,
    DeliveryResult,
    InvalidDelivery,
    parse_message,
    report,
    withhold,
)
from cdp.pipeline.fanout import deliver as deliver_to_audience
from cdp_dev.memory import MemoryDeliveryLedger
from tests.unit.test_email import World
from tests.unit.test_fanout import AT, CART, CATALOGUE, ROOT, FakeDestination

SCHEMA = json.loads((ROOT / "events" / "schemas" / "segment-membership.v1.json").read_text())


def image(customer: str, version: int, segments: dict[str, int], tx: list[list[Any]]) -> dict[str, Any]:
    return {"customer_id": customer, "v": version, "ua": AT + version, "m": segments, "tx": tx,
            "t": {"email": f"{customer}@example.com"}}


def entered(customer: str, mark: str | None, version: int = 1) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A customer entering the cart segment, by a backfill with ``mark`` (None: by an event, no mark)."""
    transition: list[Any] = [CART, ENTERED, AT, "condition", "backfill"]
    if mark is not None:
        transition.append(mark)
    return None, image(customer, version, {CART: AT}, [transition])


def exited(customer: str, version: int, mark: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    transition: list[Any] = [CART, EXITED, AT + version, "condition", "left"]
    if mark is not None:
        transition.append(mark)
    return image(customer, version - 1, {CART: AT}, []), image(customer, version, {}, [transition])


def body(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """The queue message body of the one change between two images, as the changes function publishes it."""
    [change] = diff(old, new)
    entry = bus_entry(change, new, CATALOGUE, "cdp-bus")
    return json.dumps({"version": "0", "id": "x", "detail-type": entry["DetailType"], "source": entry["Source"],
                       "detail": json.loads(entry["Detail"])})


@pytest.mark.parametrize("mark", [None, "all", "audiences", "none"])
def test_the_transitions_mark_is_the_changes_delivery_and_in_the_schema(mark: str | None) -> None:
    old, new = entered("ann", mark)
    [change] = diff(old, new)
    assert change.delivery == (mark or "all")
    detail = json.loads(bus_entry(change, new, CATALOGUE, "cdp-bus")["Detail"])
    assert detail["delivery"] == (mark or "all")
    Draft202012Validator(SCHEMA).validate(detail)
    assert change.event_id == MembershipChange("ann", CART, ENTERED, AT, 1, "", "").event_id  # ids do not move


def test_an_exit_keeps_its_mark_and_a_deleted_profiles_exit_goes_to_everyone() -> None:
    [change] = diff(*exited("ann", 2, "none"))
    assert change.delivery == "none"
    old, _ = exited("ann", 2, "none")
    [deletion] = diff(old, None)
    assert deletion.delivery == "all"


def test_an_unknown_mark_is_an_invalid_image_naming_the_rule() -> None:
    _, new = entered("ann", "everyone")
    with pytest.raises(InvalidImage, match="tx delivery mark must be one of all, audiences, none"):
        check_image(new, "new")
    check_image(entered("ann", "audiences")[1], "new")


def test_an_event_without_delivery_is_for_everyone_and_an_unknown_one_is_refused() -> None:
    event = json.loads(body(*entered("ann", None)))
    del event["detail"]["delivery"]  # as every event published before backfills
    assert parse_message("m", json.dumps(event)).delivery == "all"
    event["detail"]["delivery"] = "some"
    with pytest.raises(InvalidDelivery, match=r"detail\.delivery: must be one of all, audiences, none"):
        parse_message("m", json.dumps(event))


@pytest.mark.parametrize(("mark", "email", "audiences"), [
    ("all", True, True), ("audiences", False, True), ("none", False, False)])
def test_each_kind_of_destination_acts_on_the_entries_meant_for_it(mark: str, email: bool, audiences: bool) -> None:
    event = parse_message("m", body(*entered("ann", mark)))
    for kind, passes in ((EMAIL, email), (AUDIENCES, audiences)):
        result = DeliveryResult()
        assert withhold([event], kind, result) == ([event] if passes else [])
        assert result.suppressed == (0 if passes else 1)
        assert [reason for _, reason in result.skipped] == (
            [] if passes else [f"backfill entry not delivered to {kind} (delivery {mark})"])


@pytest.mark.parametrize("mark", ["audiences", "none"])
def test_exits_are_always_delivered(mark: str) -> None:
    event = parse_message("m", body(*exited("ann", 2, mark)))
    for kind in (EMAIL, AUDIENCES):
        assert withhold([event], kind, DeliveryResult()) == [event]


def test_an_audience_adds_audiences_entries_but_not_none_ones_and_records_nothing_for_them() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    messages = [("m1", body(*entered("ann", "audiences"))), ("m2", body(*entered("bob", "none"))),
                ("m3", body(*entered("cyd", None)))]
    result = deliver_to_audience(messages, destination, ledger)
    added = [row.customer_id for _, kind, rows in destination.sent if kind == ENTERED for row in rows]
    assert sorted(added) == ["ann", "cyd"]
    assert result.suppressed == 1 and [e.customer_id for e, _ in result.skipped] == ["bob"]
    assert ledger.entries("fake:aud-cart", [(CART, "bob")]) == {}


def test_an_exit_after_a_suppressed_entry_removes_nobody_that_was_there() -> None:
    destination, ledger = FakeDestination(), MemoryDeliveryLedger()
    deliver_to_audience([("m1", body(*entered("bob", "none")))], destination, ledger)
    result = deliver_to_audience([("m2", body(*exited("bob", 2)))], destination, ledger)
    assert destination.audiences.get("aud-cart", set()) == set()  # the platform never held bob, nor does now
    assert [kind for _, kind, _ in destination.sent] == [EXITED]  # a removal of a non-member: a no-op there
    assert not result.retry and not result.refused


def test_email_sends_only_entries_for_everyone() -> None:
    world = World()
    for customer in ("ann", "bob", "cyd"):
        world.customer(customer, email=f"{customer}@example.com")
    result = world.deliver([("m1", body(*entered("ann", "audiences"))), ("m2", body(*entered("bob", "none"))),
                            ("m3", body(*entered("cyd", "all")))])
    assert [to for _, to, _ in world.sender.sent] == ["cyd@example.com"]
    assert result.suppressed == 2
    assert world.ledger.entry(CART, "ann") is None and world.ledger.entry(CART, "bob") is None


def test_the_suppressed_count_is_a_metric() -> None:
    class Metrics:
        def __init__(self) -> None:
            self.values: dict[str, int] = {}

        def add_metric(self, name: str, unit: str, value: int) -> None:
            self.values[name] = value

    class Logger:
        def warning(self, message: str, extra: dict[str, Any]) -> None:
            pass

    metrics = Metrics()
    result = DeliveryResult()
    withhold([parse_message("m", body(*entered("ann", "none")))], AUDIENCES, result)
    report(result, 0, metrics, Logger())
    assert metrics.values["BackfillSuppressed"] == 1
