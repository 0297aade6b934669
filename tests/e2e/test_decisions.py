"""Decisions on the local stack, over HTTP: events sent through the collector (Segment's Tracking API under /v1/),
the vip list edited through the API, and the shipped home-hero placement deciding.

A customer in segment vip who bought product B (sku-100) gets promotion C (promo-capsules); a vip who did not buy
it, and someone who bought it but is not a vip, get the default.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Running, customer, wait_for


@pytest.fixture(scope="module")
def write_key(stack: Running) -> str:
    key: str = stack.health["collector"]["write_key"]
    return key


def send(stack: Running, path: str, document: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    request = urllib.request.Request(stack.api + path, data=json.dumps(document).encode(), method="POST",
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read() or b"{}")
        return answer


def order(who: str, product_id: str) -> dict[str, Any]:
    return {"type": "track", "userId": who, "event": "Order Completed", "messageId": str(uuid.uuid4()),
            "properties": {"order_id": f"o-{uuid.uuid4().hex[:8]}", "revenue": 40.0, "currency": "USD",
                           "products": [{"product_id": product_id, "category": "coffee", "price": 40.0,
                                         "quantity": 1}]}}


def ordered(stack: Running, who: str) -> None:
    def check() -> bool:
        status, body = stack.get(f"/customers/{who}")
        return status == 200 and body["rfm"]["orders"] == 1

    wait_for(check, timeout=30)


def decision(stack: Running, who: str, query: str = "") -> dict[str, Any]:
    status, body = stack.get(f"/customers/{who}/decisions?placement=home-hero{query}")
    assert status == 200, body
    return body


def test_a_vip_who_bought_b_gets_promotion_c_and_one_who_did_not_the_default(stack: Running,
                                                                             write_key: str) -> None:
    buyer, browser, outsider = customer(), customer(), customer()
    batch = [order(buyer, "sku-100"), order(browser, "sku-200"), order(outsider, "sku-100")]
    answer = send(stack, "/v1/batch", {"batch": batch}, key=write_key)
    assert answer.get("success", True) is not False
    for who in (buyer, browser, outsider):
        ordered(stack, who)
    send(stack, "/segments/vip/members", {"add": [buyer, browser]})
    wait_for(lambda: "vip" in {s["id"] for s in stack.get(f"/customers/{buyer}/segments")[1]["segments"]})

    chosen = decision(stack, buyer, "&page=/")
    assert (chosen["rule"], chosen["content"]["id"]) == ("vip-bought-b", "promo-capsules")
    assert chosen["reason"] == "rule vip-bought-b is the only rule that matched"

    for who in (browser, outsider):
        plain = decision(stack, who)
        assert (plain["rule"], plain["content"]["id"], plain["reason"]) == (None, "hero-default", "no rule matched")

    mine = stack.get("/me/decisions?placement=home-hero&utm_campaign=spring-sale", headers={"X-Local-User": buyer})
    assert mine[0] == 200 and mine[1]["rule"] == "vip-bought-b"
    assert mine[1]["matched"] == ["vip-bought-b", "spring-campaign"]


def test_a_new_visitor_gets_the_default_or_a_context_rule(stack: Running) -> None:
    nobody = customer()
    assert decision(stack, nobody)["known"] is False
    assert decision(stack, nobody, "&utm_campaign=spring-sale")["content"]["id"] == "spring-sale"
