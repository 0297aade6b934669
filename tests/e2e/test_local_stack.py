"""End to end over the local stack: `cdp send`, then the HTTP API and a queue behind a bus rule."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Running, bus_events, customer, iso, track, wait_for


def test_health_names_the_components_and_the_templates_resources(stack: Running) -> None:
    status, health = stack.get("/health")
    assert status == 200 and health["status"] == "ok"
    assert set(health["components"]) >= {"kinesis->ingest", "table stream->changes", "schedule->timers", "api",
                                         "queue->email", "queue->webhook", "queue->meta", "queue->google",
                                         "queue->privacy",
                                         "feed keeper"}  # --no-feed: the feed queue keeps only the newest
    assert health["schedules"] == {"timers": 1, "history": 86400}  # the tick override is for minute schedules
    resources = health["resources"]
    assert len(resources["streams"]) == 1 and resources["buses"] == ["cdp-dev"]
    # profiles, members index, write keys (the collector's), the id map, the integrations' delivery ledger, the
    # data subject requests, the segment definitions, the segment history and the jobs
    assert sorted(name.rstrip("0123456789ABCDEF") for name in resources["tables"]) == [
        "CatalogueDefinitions", "FanoutLedger", "HistoryTable", "JobsTable", "PrivacyRequests", "StorageIdentityMap",
        "StorageMembers", "StorageProfiles", "StorageWriteKeys"]
    assert health["environment"]["ingest"]["PROFILES_TABLE"] in resources["tables"]


def test_a_sent_event_updates_the_profile(stack: Running, tmp_path: Path) -> None:
    who = customer()
    sent = stack.send([track(who, "Product Viewed", product_id="p1"), track(who, "Product Viewed", product_id="p2")],
                      tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert "sent 2 messages" in sent.stdout
    profile = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(stack.get(f"/customers/{who}")))
    views = next(c for c in profile["counters"] if c["key"] == "Product Viewed")
    assert views["lifetime"] == 2 and views["windows"]["24h"]["count"] == 2
    assert profile["channels"].keys() == {"web"}


def test_a_segment_is_entered_and_exited_on_the_bus(stack: Running, tmp_path: Path) -> None:
    who = customer()
    stack.send([track(who, "Product Added", product_id="p1", price=20)], tmp_path)
    entered = wait_for(lambda: [e for e in bus_events(stack, who) if e["detail"]["segment"]["id"] ==
                                "potential-abandoners"])
    assert entered[0]["detail-type"] == "Segment Entered" and entered[0]["detail"]["change"] == "entered"
    stack.send([track(who, "Order Completed", order_id=f"o-{who}", revenue=20)], tmp_path)
    exited = wait_for(lambda: [e for e in bus_events(stack, who)
                               if e["detail"]["segment"]["id"] == "potential-abandoners"])
    assert exited[0]["detail-type"] == "Segment Exited"
    status, segments = stack.get(f"/customers/{who}/segments")
    assert status == 200 and "recent-buyers" in [s["id"] for s in segments["segments"]]


def test_a_poison_pill_is_quarantined_and_the_rest_applied(stack: Running, tmp_path: Path) -> None:
    who = customer()
    poison = {"type": "track", "event": "Order Completed", "userId": who, "messageId": "poison-" + who,
              "timestamp": iso(time.time()), "properties": {"order_id": f"o-{who}", "revenue": -10}}
    stack.send([track(who, "Product Viewed", product_id="p1"), poison, track(who, "Product Viewed", product_id="p2")],
               tmp_path)
    profile = wait_for(lambda: (lambda r: r[1] if r[0] == 200 and r[1]["counters"] else None)(
        stack.get(f"/customers/{who}")))
    assert next(c for c in profile["counters"] if c["key"] == "Product Viewed")["lifetime"] == 2
    s3 = stack.client("s3")
    bucket = next(b for b in stack.health["resources"]["buckets"] if "quarantine" in b)

    def quarantined() -> list[dict[str, Any]]:
        lines = []
        for item in s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/").get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
            lines += [json.loads(line) for line in body.splitlines() if who in line or "poison-" + who in line]
        return lines

    (line,) = wait_for(quarantined)
    assert line["field"] == "properties.revenue" and line["reason"] == "properties.revenue: must not be negative"


def test_duplicates_are_ignored(stack: Running, tmp_path: Path) -> None:
    who = customer()
    events = [track(who, "Product Added", product_id="p1", price=5), track(who, "Product Viewed", product_id="p1")]
    stack.send(events, tmp_path)
    first = wait_for(lambda: (lambda r: r[1] if r[0] == 200 and len(r[1]["counters"]) >= 2 else None)(
        stack.get(f"/customers/{who}")))
    wait_for(lambda: bus_events(stack, who))
    stack.send(events, tmp_path)  # the same messages again, as a producer retry would
    marker = track(who, "Page Viewed")
    stack.send([marker], tmp_path)  # once this is applied, the duplicates before it have been seen too
    after = wait_for(lambda: (lambda r: r[1] if r[0] == 200 and r[1]["version"] > first["version"] else None)(
        stack.get(f"/customers/{who}")))
    counts = {c["key"]: c["lifetime"] for c in after["counters"]}
    assert counts["Product Added"] == 1 and counts["Product Viewed"] == 1
    assert after["cart"]["items"] == [{"product_id": "p1", "quantity": 1, "price": 5.0}]
    assert bus_events(stack, who) == []  # nothing new to publish


def test_a_deadline_passing_enters_a_segment_with_no_new_event(stack: Running, tmp_path: Path) -> None:
    """cart-abandoners: no Order Completed within 48 h of Product Added. The add is sent as if made
    48 h less 3 s ago, so its deadline falls 3 s from now and only the timers tick can act on it."""
    who = customer()
    added = time.time() - 48 * 3600 + 3
    stack.send([track(who, "Product Added", at=added, product_id="p1", price=20)], tmp_path)
    profile = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(stack.get(f"/customers/{who}")))
    assert "cart-abandoners" not in [s["id"] for s in profile["segments"]]
    entered = wait_for(lambda: [e for e in bus_events(stack, who) if e["detail"]["segment"]["id"] ==
                                "cart-abandoners"], timeout=30)
    assert entered[0]["detail-type"] == "Segment Entered"
    # profiles keep whole seconds, so the deadline is the add's second plus 48 h
    assert datetime.fromisoformat(entered[0]["time"].replace("Z", "+00:00")).timestamp() >= int(added) + 48 * 3600


def test_a_segment_entry_reaches_the_ad_audience_and_the_email_ledger(stack: Running, tmp_path: Path) -> None:
    """The bus rule of each integration delivers to its queue, whose consumer calls the integration:
    cart-abandoners goes to a Meta audience (the local sandbox) and to an SES template (the emulator).
    Everything checked is this test's own customer's: no other test's delivery can satisfy it."""
    who = customer()
    email = f"{who}@example.com"
    hashed = hashlib.sha256(email.encode()).hexdigest()  # Meta's EMAIL_SHA256 of the normalised address
    added = time.time() - 48 * 3600 + 2
    identify = {"type": "identify", "userId": who, "messageId": str(uuid.uuid4()), "timestamp": iso(added),
                "traits": {"email": email}}
    stack.send([identify, track(who, "Product Added", at=added, product_id="p1", price=20)], tmp_path)
    audience = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())[
        "context"]["integrations"]["meta"]["segments"]["cart-abandoners"]
    entered = wait_for(lambda: [e for e in bus_events(stack, who) if e["detail"]["segment"]["id"] ==
                                "cart-abandoners" and e["detail"]["change"] == "entered"], timeout=40)
    event_id = entered[0]["detail"]["event_id"]

    def delivered_to_meta() -> list[dict[str, Any]]:
        deliveries = stack.get("/health")[1]["sandbox"]["deliveries"]
        return [d for d in deliveries if d["integration"] == "meta" and d["target"] == audience
                and d["action"] == "add" and hashed in d["identifiers"]]

    wait_for(delivered_to_meta, timeout=40)
    dynamodb = stack.client("dynamodb")
    ledger = next(t for t in dynamodb.list_tables()["TableNames"] if "Ledger" in t)

    def item(key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = dynamodb.get_item(TableName=ledger, Key={"delivery": {"S": key}},
                                                         ConsistentRead=True).get("Item")
        return found

    meta = wait_for(lambda: item(f"meta:{audience}\x1fcart-abandoners\x1f{who}"))
    assert (meta["kind"]["S"], meta["event_id"]["S"]) == ("entered", event_id)
    assert hashed in meta["ids"]["S"]  # the identifiers an exit will remove
    emailed = wait_for(lambda: item(f"email\x1fcart-abandoners\x1f{who}"), timeout=20)
    assert (emailed["kind"]["S"], emailed["event_id"]["S"]) == ("entered", event_id)
    # Sent, not skipped: the send took the customer's frequency-cap slot under this event's id.
    cap = item(f"email-cap\x1f{who}")
    assert cap is not None and [pair["L"][1]["S"] for pair in cap["sends"]["L"]] == [event_id]
