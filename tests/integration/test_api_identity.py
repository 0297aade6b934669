"""The API's customer lookups through the id map, against moto (issue 17).

Profiles and the id map are written by the real ingest (``Identity`` over the moto-backed ``DynamoIdentityMap``),
except where a test needs a state the pipeline only passes through (a frozen profile the map does not show yet).
The ``api`` fixture is test_api's: every body answered here is checked against the OpenAPI document too. The id
map's requests go through pynamodb's own client; ``costs`` counts them with the profile reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cdp.aws.identity_map import DynamoIdentityMap
from cdp.core.clock import FixedClock
from cdp.core.identity import identifier_digest
from cdp.core.profile import Profile
from cdp.pipeline.identity import Identity

from . import test_api as base
from .support import InjectedError, failures, identify, iso, kinesis_envelope, track

api = base.api  # the API over this test's moto stack, with the id map's table
exchanges = base.exchanges

T, NOW = base.T, base.NOW
ALICE_EMAIL = "Alice@Example.com"


def id_map(api: base.Api) -> DynamoIdentityMap:
    identity_map = api.deps.identity_map
    assert isinstance(identity_map, DynamoIdentityMap)
    return identity_map


def ingest(api: base.Api, messages: list[dict[str, Any]], merge_known: bool = False) -> None:
    response = api.stack.ingest(kinesis_envelope(messages), clock=FixedClock(T),
                                identity=Identity(id_map(api), merge_known=merge_known))
    assert failures(response) == []


def anonymous_view(anonymous_id: str, message_id: str, at: float) -> dict[str, Any]:
    message = track("unused", "Product Viewed", at, message_id, product_id="p-1")
    del message["userId"]
    return {**message, "anonymousId": anonymous_id}


def merge(user_id: str, anonymous_id: str, message_id: str, at: float, **traits: Any) -> dict[str, Any]:
    """An identify naming both ids: it merges the anonymous id into the user id."""
    return {**identify(user_id, at, message_id, **traits), "anonymousId": anonymous_id}


def seed_merged_alice(api: base.Api) -> None:
    """anon-1 browses, then identifies as alice (with her email address): anon-1 is merged into alice."""
    ingest(api, [anonymous_view("anon-1", "v-1", T - 3600)])
    ingest(api, [merge("alice", "anon-1", "i-1", T - 600, email=ALICE_EMAIL, first_name="Alice")])


def lookup(api: base.Api, **query: str) -> base.Reply:
    return api.send(base.raw_event("GET", "/customers", {key: [value] for key, value in query.items()}))


def costs(api: base.Api, call: Callable[[], base.Reply]) -> tuple[base.Reply, dict[str, int]]:
    """The reply and the DynamoDB requests it took, the id map's included."""
    client = id_map(api).model._get_connection().connection.client
    api.stack.counter.register(client)
    api.stack.counter.reset()
    try:
        reply = call()
    finally:
        client.meta.events.unregister("before-call", api.stack.counter._count)
    return reply, api.stack.counter.of("dynamodb")


MERGED_ANON_1 = [{"id": "anon-1", "at": NOW, "message_id": "i-1"}]


# ---- GET /customers/{customerId} ----------------------------------------------------------------------


def test_a_merged_anonymous_id_answers_with_the_canonical_profile(api: base.Api) -> None:
    seed_merged_alice(api)

    reply, requests = costs(api, lambda: api.call("get-customer", customer="anon-1"))

    assert reply.status == 200, reply.text
    body = reply.json
    assert (body["customer_id"], body["canonical_id"], body["requested_id"]) == ("alice", "alice", "anon-1")
    assert body["merged_ids"] == MERGED_ANON_1
    assert body["traits"] == {"email": ALICE_EMAIL, "first_name": "Alice"}
    views = next(c for c in body["counters"] if c["key"] == "Product Viewed")
    assert views["lifetime"] == 1  # anon-1's view, absorbed into alice
    # The id map twice (anon-1's link, then whether alice is linked on), the canonical profile once.
    assert requests == {"BatchGetItem": 2, "GetItem": 1}

    canonical, requests = costs(api, lambda: api.call("get-customer", customer="alice"))
    assert canonical.status == 200 and "requested_id" not in canonical.json
    assert requests == {"BatchGetItem": 1, "GetItem": 1}
    assert {k: v for k, v in body.items() if k != "requested_id"} == canonical.json


def test_a_customer_with_nothing_merged_has_no_merged_ids_and_no_requested_id(api: base.Api) -> None:
    ingest(api, [identify("bob", T - 60, "b-1", first_name="Bob")])

    body = api.call("get-customer", customer="bob").json

    assert (body["customer_id"], body["canonical_id"], body["merged_ids"]) == ("bob", "bob", [])
    assert "requested_id" not in body


def test_a_chain_of_merges_resolves_to_the_last_canonical_customer(api: base.Api) -> None:
    seed_merged_alice(api)
    ingest(api, [merge("alice-2", "alice", "i-2", T - 60)], merge_known=True)  # alice is merged on

    for asked in ("anon-1", "alice"):
        body = api.call("get-customer", customer=asked).json
        assert (body["customer_id"], body["canonical_id"], body["requested_id"]) == ("alice-2", "alice-2", asked)
        assert {entry["id"] for entry in body["merged_ids"]} >= {"alice"}
    assert api.stack.profile("alice").merged_into == "alice-2"  # alice's own profile is frozen, never answered


def test_the_segments_route_answers_for_the_canonical_customer(api: base.Api) -> None:
    seed_merged_alice(api)

    reply = api.call("get-customer-segments", customer="anon-1")

    assert reply.status == 200
    assert (reply.json["customer_id"], reply.json["requested_id"]) == ("alice", "anon-1")
    assert "requested_id" not in api.call("get-customer-segments", customer="alice").json


def frozen(customer_id: str, into: str) -> Profile:
    profile = Profile(customer_id)
    profile.merged_into, profile.version = into, 1
    return profile


def test_a_frozen_profile_the_map_does_not_show_yet_is_followed_to_its_canonical(api: base.Api) -> None:
    seed_merged_alice(api)
    api.stack.store().save(frozen("anon-9", "alice"), 0)  # marked merged into alice, no link in the map

    reply = api.call("get-customer", customer="anon-9")

    assert reply.status == 200
    assert (reply.json["customer_id"], reply.json["requested_id"]) == ("alice", "anon-9")
    assert lookup(api, anonymous_id="anon-9").json["customer_id"] == "alice"


def test_a_frozen_profile_is_never_answered_as_live(api: base.Api) -> None:
    api.stack.store().save(frozen("anon-8", "gone"), 0)  # its customer has no profile
    api.stack.store().save(frozen("loop-a", "loop-b"), 0)
    api.stack.store().save(frozen("loop-b", "loop-a"), 0)

    for customer in ("anon-8", "loop-a"):
        for name in ("get-customer", "get-customer-segments"):
            base.problem(api.call(name, customer=customer), 404, "not_found")
    base.problem(lookup(api, anonymous_id="anon-8"), 404, "not_found")
    base.problem(api.call("get-me", claims={"sub": "anon-8"}), 404, "not_found")


# ---- GET /customers?email= and ?anonymous_id= ---------------------------------------------------------


@pytest.mark.parametrize("address", [ALICE_EMAIL, "alice@example.com", "  ALICE@EXAMPLE.COM ", "\talice@Example.com\n"])
def test_an_email_address_finds_the_canonical_profile_in_any_case_and_spacing(api: base.Api, address: str) -> None:
    seed_merged_alice(api)

    reply, requests = costs(api, lambda: lookup(api, email=address))

    assert reply.status == 200, reply.text
    assert reply.json == api.call("get-customer", customer="alice").json  # the same body, with no requested_id
    assert reply.json["merged_ids"] == MERGED_ANON_1
    assert requests == {"BatchGetItem": 2, "GetItem": 1}  # the email index, the customer's link, the profile


def test_an_anonymous_id_finds_the_customer_it_was_merged_into(api: base.Api) -> None:
    seed_merged_alice(api)
    ingest(api, [anonymous_view("anon-2", "v-2", T - 60)])  # never merged: its own customer

    merged = lookup(api, anonymous_id="anon-1")
    alone = lookup(api, anonymous_id="anon-2")

    assert merged.status == 200 and merged.json == api.call("get-customer", customer="anon-1").json
    assert merged.json["requested_id"] == "anon-1"
    assert alone.status == 200 and alone.json["customer_id"] == "anon-2" and "requested_id" not in alone.json


def test_unknown_ids_and_addresses_are_404_and_never_repeated_back(api: base.Api) -> None:
    seed_merged_alice(api)

    replies = {"email": lookup(api, email="nobody@example.com"), "anonymous_id": lookup(api, anonymous_id="nobody"),
               "customerId": api.call("get-customer", customer="nobody")}

    for parameter, reply in replies.items():
        body = base.problem(reply, 404, "not_found")
        assert body["message"].startswith(f"{parameter}: ")
        assert "nobody" not in reply.text


@pytest.mark.parametrize(("query", "field"), [
    ({"email": ALICE_EMAIL, "anonymous_id": "anon-1"}, "anonymous_id"),  # both
    ({"limit": "5"}, "email"),  # neither
    ({"email": ""}, "email"),
    ({"email": "   "}, "email"),
    ({"anonymous_id": ""}, "anonymous_id"),
])
def test_a_lookup_needs_exactly_one_parameter(api: base.Api, query: dict[str, str], field: str) -> None:
    seed_merged_alice(api)

    reply, requests = costs(api, lambda: lookup(api, **query))

    body = base.problem(reply, 400, "invalid_request", field)
    assert body["message"].startswith(f"{field}: ")
    assert "lice" not in reply.text  # neither the address nor the id is repeated back
    assert requests == {}


def test_get_customers_without_a_lookup_is_still_no_route(api: base.Api) -> None:
    """There is no customer listing: a bare GET /customers answers as it did before lookups."""
    reply, requests = costs(api, lambda: api.send(base.raw_event("GET", "/customers")))

    base.problem(reply, 404, "no_route")
    assert requests == {}


def test_an_email_index_pointing_at_a_profile_whose_email_changed_is_404(api: base.Api) -> None:
    seed_merged_alice(api)
    ingest(api, [identify("alice", T - 30, "i-3", email="alice@new.example")])

    old = lookup(api, email=ALICE_EMAIL)

    assert id_map(api).links([identifier_digest("email", ALICE_EMAIL)]) == {
        identifier_digest("email", ALICE_EMAIL): "alice"}  # the old entry is still there: the profile decides
    base.problem(old, 404, "not_found")
    assert "lice" not in old.text
    assert lookup(api, email="Alice@New.Example").json["customer_id"] == "alice"


def test_an_email_indexed_before_its_profile_was_written_is_404(api: base.Api) -> None:
    """The ingest indexes an address just before the profile's put; if that put fails, the entry leads to a
    profile without the address."""
    seed_merged_alice(api)
    id_map(api).index(identifier_digest("email", "carol@example.com"), "email", "alice", T)

    base.problem(lookup(api, email="carol@example.com"), 404, "not_found")


def test_a_throttled_id_map_is_503_with_retry_after(api: base.Api) -> None:
    seed_merged_alice(api)
    client = id_map(api).model._get_connection().connection.client

    calls: list[Callable[[], base.Reply]] = [lambda: api.call("get-customer", customer="anon-1"),
                                             lambda: lookup(api, email=ALICE_EMAIL),
                                             lambda: lookup(api, anonymous_id="anon-1")]
    for call in calls:
        injected = InjectedError(client, "BatchGetItem", "ProvisionedThroughputExceededException", limit=1)
        reply = call()
        injected.remove()
        base.problem(reply, 503, "unavailable")
        assert reply.header("Retry-After") == "1" and injected.injected == 1
        assert call().status == 200


def test_the_lookups_show_the_merge_audit_times(api: base.Api) -> None:
    """``merged_ids[].at`` is when the merge was made (the ingest's clock), as ISO 8601."""
    seed_merged_alice(api)
    stored = api.stack.profile("alice").merges

    body = lookup(api, email=ALICE_EMAIL).json

    assert [[entry["id"], entry["at"], entry["message_id"]] for entry in body["merged_ids"]] == [
        [merged, iso(at), message_id] for merged, at, message_id in stored]


def test_a_static_segment_edit_of_a_merged_id_edits_the_customer_it_belongs_to(api: base.Api) -> None:
    seed_merged_alice(api)

    reply = api.send(base.raw_event("POST", "/segments/vip/members", body='{"add": ["anon-1"]}'))

    assert reply.status == 200, reply.text
    assert reply.json["added"] == ["alice"]
    assert "vip" in api.stack.profile("alice").memberships
    assert api.stack.profile("anon-1").memberships == {}
