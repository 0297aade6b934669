"""Identity on the local stack, over HTTP: an anonymous visitor sends through the collector with the real
analytics-python SDK, identifies, and the API answers the merged id, the email address and the anonymous id with
the one canonical profile."""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

from tests.e2e.conftest import Running, customer, wait_for


def counts(profile: dict[str, Any]) -> dict[str, int]:
    return {c["key"]: c["lifetime"] for c in profile["counters"]}


def test_an_anonymous_visitor_who_identifies_is_one_customer_under_every_id(stack: Running) -> None:
    from segment.analytics import Client  # type: ignore[import-untyped]

    user, anonymous = customer(), f"anon-{uuid.uuid4().hex[:12]}"
    email = f"{user}@Example.com"
    errors: list[Any] = []
    client = Client(stack.health["collector"]["write_key"], host=stack.api, sync_mode=True,
                    on_error=lambda error, batch: errors.append(error))
    for number in range(3):
        client.track(anonymous_id=anonymous, event="Product Viewed", properties={"product_id": f"p{number}"})
    client.track(anonymous_id=anonymous, event="Order Completed",
                 properties={"order_id": f"o-{anonymous}", "revenue": 80.0})
    wait_for(lambda: stack.get(f"/customers/{anonymous}")[0] == 200 or None)
    client.identify(user, {"email": email}, anonymous_id=anonymous)
    client.track(anonymous_id=anonymous, event="Product Viewed", properties={"product_id": "late"})  # old id
    assert errors == []

    def merged() -> dict[str, Any] | None:
        status, body = stack.get(f"/customers/{anonymous}")
        # The late view goes under the old id, which may be on another shard than the identify: it can land on
        # the anonymous profile before the merge, so wait for the merge as well as for the four views.
        done = status == 200 and body.get("canonical_id") == user and counts(body).get("Product Viewed") == 4
        return body if done else None

    profile = wait_for(merged, timeout=60)
    assert (profile["customer_id"], profile["canonical_id"], profile["requested_id"]) == (user, user, anonymous)
    assert [entry["id"] for entry in profile["merged_ids"]] == [anonymous]
    assert counts(profile)["Order Completed"] == 1
    for query in (f"email={urllib.parse.quote(' ' + email.lower())}", f"anonymous_id={anonymous}"):
        status, found = stack.get(f"/customers?{query}")
        assert status == 200 and found["customer_id"] == user, query
    status, _ = stack.get(f"/customers?email={urllib.parse.quote('nobody@example.com')}")
    assert status == 404
