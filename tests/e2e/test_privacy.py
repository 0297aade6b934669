"""A deletion through the local stack, over HTTP: a customer with an email address, in ad audiences and on a
webhook list (the local sandbox), with a merged anonymous id and a quarantined record, is deleted with
``DELETE /customers/{id}``. Once ``GET /requests/{id}`` says done, every table, every object version of every
bucket and every sandbox audience is scanned for the customer's ids, address and their hashes. Only two
exceptions are allowed, both named here: the tombstones in the id map (keyed by the ids' digests, holding nothing
else of the customer: they block re-creation) and the request's audit record (the customer's digest only). Then
the customer's old events are redelivered to the stream, and no profile comes back.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from cdp.core.identity import customer_digest, identifier_digest
from tests.e2e.conftest import Running, customer, iso, track, wait_for


def delete(stack: Running, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(stack.api + path, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def audiences(stack: Running) -> dict[str, list[str]]:
    with urllib.request.urlopen(stack.health["sandbox"]["url"] + "/audiences", timeout=10) as response:
        held: dict[str, list[str]] = json.loads(response.read())
    return held


def binary_text(value: Any) -> str:
    """A binary attribute as text for the scan: decompressed when it is compressed, else byte for byte."""
    import zlib

    if not isinstance(value, bytes | bytearray):
        raise TypeError(type(value).__name__)
    try:
        return zlib.decompress(value).decode("utf-8", "replace")
    except zlib.error:
        return bytes(value).decode("latin-1")


def everything(stack: Running) -> dict[str, list[str]]:
    """Every item of every table and every object version of every bucket, as text, by store."""
    dynamodb, s3 = stack.client("dynamodb"), stack.client("s3")
    held: dict[str, list[str]] = {}
    for table in dynamodb.list_tables()["TableNames"]:
        items: list[str] = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            items += [json.dumps(item, default=binary_text) for item in page["Items"]]
        held[table] = items
    for bucket in (b["Name"] for b in s3.list_buckets()["Buckets"]):
        bodies: list[str] = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for version in page.get("Versions", []):
                body = s3.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["Body"]
                bodies.append(version["Key"] + "\n" + body.read().decode("utf-8", "replace"))
        held[f"s3:{bucket}"] = bodies
    return held


def quarantined(stack: Running, text: str) -> bool:
    """Whether an object version of the quarantine bucket holds ``text`` (its records' data is base64)."""
    import base64

    for store, bodies in everything(stack).items():
        for body in bodies if "quarantine" in store else []:
            for line in body.splitlines()[1:]:
                record = json.loads(line)
                if text in base64.b64decode(record["data"]).decode("utf-8", "replace"):
                    return True
    return False


def test_a_deleted_customer_leaves_nothing_behind_and_does_not_come_back(stack: Running, tmp_path: Path) -> None:
    who, anonymous = customer(), f"anon-{uuid.uuid4().hex[:12]}"
    email = f"{who}.Someone@Example.com"
    normalised = email.strip().lower()
    hashed = hashlib.sha256(normalised.encode()).hexdigest()  # what the ad platforms and lists are sent
    now = time.time()
    view = {**track(who, "Product Viewed", at=now - 4000, product_id="p0"), "userId": None, "anonymousId": anonymous}
    identify = {"type": "identify", "userId": who, "anonymousId": anonymous, "messageId": str(uuid.uuid4()),
                "timestamp": iso(now - 3600), "traits": {"email": email}}
    # Five orders of 150 in the last hour: high-value recent buyer (a Meta audience), repeat buyer (Google); an
    # email link clicked: email responders (a webhook list).
    orders = [track(who, "Order Completed", at=now - 3000 + i * 60, order_id=f"o-{who}-{i}", revenue=150.0)
              for i in range(5)]
    orders.append(track(who, "Email Link Clicked", at=now - 2000, campaign_id="c-1"))
    poison = track(who, "Product Viewed", at=32_503_680_000, product_id="from-the-future")  # quarantined
    messages = [view, identify, *orders, poison]
    assert stack.send([view], tmp_path).returncode == 0
    wait_for(lambda: stack.get(f"/customers/{anonymous}")[0] == 200 or None, timeout=30)
    assert stack.send(messages[1:], tmp_path).returncode == 0

    def holding() -> list[str]:
        return [name for name, held in audiences(stack).items() if {hashed, who, email, normalised} & set(held)]

    held_by = wait_for(lambda: found if len(found := holding()) >= 3 else None, timeout=60)
    assert {name.split(":")[0] for name in held_by} == {"meta", "google", "webhook"}, held_by
    wait_for(lambda: quarantined(stack, who) or None, timeout=30)

    status, exported = stack.get(f"/customers/{anonymous}/export")
    assert status == 200 and exported["ids"]["canonical_id"] == who and exported["ids"]["emails"] == [email]
    assert exported["deliveries"], exported

    status, accepted = delete(stack, f"/customers/{anonymous}")
    assert status == 202, accepted
    assert who not in json.dumps(accepted) and anonymous not in json.dumps(accepted)

    def finished() -> dict[str, Any] | None:
        code, body = stack.get(accepted["status_url"])
        assert code == 200, body
        return body if body["status"] in ("done", "failed") else None

    request = wait_for(finished, timeout=120, interval=0.5)
    assert request["status"] == "done", request
    assert request["counts"]["profiles"] == 2 and request["counts"]["id_map"] >= 3
    assert request["counts"]["quarantine"] >= 1

    needles = {who, anonymous, email, normalised, hashed, customer_digest(who), customer_digest(anonymous),
               identifier_digest("email", email)}
    tombstones = {customer_digest(who), customer_digest(anonymous), identifier_digest("email", email)}
    for store, items in everything(stack).items():
        for text in items:
            found = {needle for needle in needles if needle in text}
            if not found:
                continue
            if "IdentityMap" in store:  # exception 1: a tombstone, at a digest, holding no customer id
                assert json.loads(text)["kind"] == {"S": "tombstone"} and found <= tombstones, (store, text)
            elif "Requests" in store:  # exception 2: the audit record, with the customer's digest only
                assert found == {customer_digest(who)}, (store, text)
            else:
                raise AssertionError(f"{store} still holds {sorted(found)}: {text[:300]}")
    assert holding() == []  # every audience and list had the customer removed

    # Redelivered and replayed: every old event of theirs again, and none makes a profile.
    before = stack.get("/health")[1]["ingest"]["records"]
    assert stack.send(messages, tmp_path).returncode == 0
    wait_for(lambda: stack.get("/health")[1]["ingest"]["records"] >= before + len(messages) or None, timeout=30)
    time.sleep(1)
    for asked in (who, anonymous):
        assert stack.get(f"/customers/{asked}")[0] == 404
    dynamodb = stack.client("dynamodb")
    profiles = next(t for t in dynamodb.list_tables()["TableNames"] if "Profiles" in t)
    for asked in (who, anonymous):
        assert "Item" not in dynamodb.get_item(TableName=profiles, Key={"customer_id": {"S": asked}})
    shown = stack.cdp("requests", "show", accepted["request_id"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "done", shown.stderr


def test_the_cli_exports_then_deletes_a_customer_through_the_same_api(stack: Running, tmp_path: Path) -> None:
    who = customer()
    assert stack.send([track(who, "Product Viewed", at=time.time() - 60, product_id="p1")], tmp_path).returncode == 0
    wait_for(lambda: stack.get(f"/customers/{who}")[0] == 200 or None, timeout=30)

    exported = stack.cdp("customers", "export", who)
    assert exported.returncode == 0, exported.stderr
    export = json.loads(exported.stdout)
    assert export["ids"]["canonical_id"] == who and export["profile"]["customer_id"] == who

    started = stack.cdp("customers", "delete", who)
    assert started.returncode == 0, started.stderr
    request_id = json.loads(started.stdout)["request_id"]

    def done() -> dict[str, Any] | None:
        shown = stack.cdp("requests", "show", request_id)
        assert shown.returncode == 0, shown.stderr
        body: dict[str, Any] = json.loads(shown.stdout)
        return body if body["status"] in ("done", "failed") else None

    assert wait_for(done, timeout=120, interval=1.0)["status"] == "done"
    assert stack.get(f"/customers/{who}")[0] == 404
    missing = stack.cdp("customers", "export", who)
    assert missing.returncode != 0 and who not in missing.stdout + missing.stderr  # 404, naming nobody
