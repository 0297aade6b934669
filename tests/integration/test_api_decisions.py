"""Decisions over the HTTP API, against moto: GET /customers/{customerId}/decisions and GET /me/decisions, driven by
the committed envelopes (events/api/get-customer-decision.json, get-me-decision.json) and the shipped placements.

Profiles are written by the real ingest, vip members by the real static-segment edit, merged ids by the real id
map. The ``api`` fixture is test_api's: every body answered here is checked against the OpenAPI document too.
"""

from __future__ import annotations

from typing import Any

import pytest

from cdp.core.catalogue import read_definitions
from cdp.core.placements import PlacementBook

from . import test_api as base
from .support import ROOT, identify, track
from .test_api_identity import anonymous_view, costs, ingest, merge

api, exchanges = base.api, base.exchanges
T, DAY = base.T, base.DAY


def order(customer_id: str, message_id: str, at: float, product_id: str) -> dict[str, Any]:
    return track(customer_id, "Order Completed", at, message_id, order_id=f"o-{message_id}", revenue=40.0,
                 products=[{"product_id": product_id, "category": "coffee", "price": 40.0, "quantity": 1}])


@pytest.fixture
def decisions(api: base.Api) -> base.Api:
    api.use(placements=PlacementBook(read_definitions(ROOT / "placements")))
    return api


def add_vip(api: base.Api, *customers: str) -> None:
    reply = api.call("edit-members", body={"add": list(customers)})
    assert reply.status == 200, reply.text
    base.flush_stream(api.stack)


def decide(api: base.Api, customer: str, **query: str) -> base.Reply:
    return api.call("get-customer-decision", customer=customer, query={"placement": "home-hero", **query})


def test_a_vip_who_bought_b_gets_the_promotion_and_one_who_did_not_the_default(decisions: base.Api) -> None:
    ingest(decisions, [identify("vera", T - 5 * DAY, "v-1"), order("vera", "v-2", T - 3 * DAY, "sku-100"),
                       identify("walt", T - 5 * DAY, "w-1"), order("xena", "x-1", T - 3 * DAY, "sku-200"),
                       order("yuri", "y-1", T - 40 * DAY, "sku-100")])
    add_vip(decisions, "vera", "walt", "xena", "yuri")

    reply, requests = costs(decisions, lambda: decide(decisions, "vera", page="/"))
    assert reply.status == 200, reply.text
    body = reply.json
    assert (body["customer_id"], body["known"], body["rule"]) == ("vera", True, "vip-bought-b")
    assert body["content"]["id"] == "promo-capsules" and body["content"]["payload"]["link"] == "/c/capsules"
    assert body["matched"] == ["vip-bought-b"] and body["context"] == {"page": "/"}
    assert requests == {"BatchGetItem": 1, "GetItem": 1}  # the id map, then one profile read

    walt = decide(decisions, "walt").json
    assert (walt["rule"], walt["content"]["id"], walt["reason"]) == (None, "hero-default", "no rule matched")
    assert decide(decisions, "xena").json["rule"] is None  # bought another product
    assert decide(decisions, "yuri").json["rule"] is None  # bought B, but more than 30 days ago


def test_the_rule_naming_the_primary_segment_wins_and_the_reason_says_so(decisions: base.Api) -> None:
    ingest(decisions, [order("vera", "v-2", T - 3 * DAY, "sku-100")])
    add_vip(decisions, "vera")

    body = decide(decisions, "vera", utm_campaign="spring-sale").json

    assert body["matched"] == ["vip-bought-b", "spring-campaign"]
    assert body["rule"] == "vip-bought-b"
    assert body["reason"] == ("rule vip-bought-b names vip, the customer's primary segment; "
                              "also matched: spring-campaign")


def test_an_unknown_customer_is_a_new_visitor(decisions: base.Api) -> None:
    body = decide(decisions, "nobody").json
    assert (body["customer_id"], body["known"], body["content"]["id"]) == ("nobody", False, "hero-default")
    campaign = decide(decisions, "nobody", utm_campaign="spring-sale").json
    assert (campaign["rule"], campaign["content"]["id"]) == ("spring-campaign", "spring-sale")


def test_a_merged_id_is_decided_as_its_customer(decisions: base.Api) -> None:
    ingest(decisions, [anonymous_view("anon-1", "a-1", T - 3600)])
    ingest(decisions, [merge("vera", "anon-1", "a-2", T - 600), order("vera", "v-2", T - 500, "sku-100")])
    add_vip(decisions, "vera")

    body = decide(decisions, "anon-1").json

    assert (body["customer_id"], body["requested_id"], body["rule"]) == ("vera", "anon-1", "vip-bought-b")


def test_an_unknown_placement_is_404_naming_it_and_a_missing_one_is_400(decisions: base.Api) -> None:
    body = base.problem(decide(decisions, "vera", placement="footer"), 404, "not_found")
    assert "'footer'" in body["message"] and "home-hero" in body["message"]
    base.problem(decisions.call("get-customer-decision", query={}), 400, "invalid_request", "placement")
    base.problem(decide(decisions, "vera", placement="Footer!"), 400, "invalid_request", "placement")
    base.problem(decide(decisions, "vera", device="x" * 65), 400, "invalid_request", "device")


def test_me_decisions_decide_for_the_caller_only(decisions: base.Api) -> None:
    ingest(decisions, [order("alice", "a-2", T - 3 * DAY, "sku-100")])
    add_vip(decisions, "alice")  # the envelope's caller (sub = alice)

    mine = decisions.call("get-me-decision").json
    assert (mine["customer_id"], mine["rule"]) == ("alice", "vip-bought-b")
    assert mine["context"] == {"page": "/", "utm_campaign": "spring-sale"}

    stranger = decisions.call("get-me-decision", claims={"sub": "nobody"}).json
    assert (stranger["customer_id"], stranger["known"], stranger["rule"]) == (None, False, "spring-campaign")
    unsigned = decisions.call("get-me-decision", claims={})
    base.problem(unsigned, 403, "forbidden")


def test_a_placement_the_live_catalogue_no_longer_validates_serves_its_default(decisions: base.Api) -> None:
    catalogue = decisions.deps.catalogue
    reduced = type(catalogue)([s for s in catalogue.all_segments.values() if s.id != "vip"], catalogue.metrics)
    decisions.use(catalogue=reduced)

    body = decide(decisions, "vera").json

    assert (body["rule"], body["content"]["id"]) == (None, "hero-default")
    assert "the placement is invalid" in body["reason"] and "'vip'" in body["reason"]


def test_the_openapi_document_describes_both_routes() -> None:
    paths = base.document()["paths"]
    for path, security in (("/customers/{customerId}/decisions", "iam"), ("/me/decisions", "cognito")):
        operation = paths[path]["get"]
        assert operation["security"] == [{security: []}]
        names = {p["name"]: p for p in operation["parameters"]}
        assert names["placement"]["required"] is True
        assert {"page", "device", "utm_campaign", "utm_source", "utm_medium"} <= set(names)
        assert set(operation["responses"]) >= {"200", "400", "404"}
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/DecisionDocument"}
